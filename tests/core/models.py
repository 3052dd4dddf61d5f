"""Small multi-task models and hand-computed references for the engine tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mtlagg.aggregators import Aggregator


class MultiHead(nn.Module):
    """A shared trunk and one linear head per task (hard parameter sharing)."""

    def __init__(self, trunk: nn.Module, width: int, num_tasks: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [head(z).squeeze(-1) for head in self.heads]


def mlp_model(num_tasks: int = 3, dtype: torch.dtype = torch.float64, batchnorm: bool = False) -> MultiHead:
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 6), nn.Tanh()]
    return MultiHead(nn.Sequential(*layers), 6, num_tasks).to(dtype)


def mse_losses(model: MultiHead, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    z, outputs = model(x)
    return z, [((out - y[:, i]) ** 2).mean() for i, out in enumerate(outputs)]


def reference_jacobian(losses: list[Tensor], params: list[Tensor]) -> Tensor:
    """Per-task ``autograd.grad``, stacked: the definition of the Jacobian."""
    rows = []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros_like(p).flatten() for p in params]))
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))
    return torch.stack(rows)


def reference_update(
    losses: list[Tensor], params: list[Tensor], make_aggregator: Callable[[], Aggregator]
) -> tuple[Tensor, Tensor]:
    """The aggregated direction computed by hand, and the Jacobian it came from."""
    jacobian = reference_jacobian(losses, params)
    values = torch.stack([loss.detach() for loss in losses])
    return make_aggregator()(jacobian, losses=values), jacobian


def flat_grad(params: list[Tensor]) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
