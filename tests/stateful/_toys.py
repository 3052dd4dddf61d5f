"""Tiny multi-task problems shared by the tests of the methods with memory."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import Tensor, nn

import mtlagg


class ToyNet(nn.Module):
    """A shared trunk (two linear layers) and one linear head per task."""

    def __init__(self, num_tasks: int = 3, dim: int = 5, hidden: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


def toy_batch(generator: torch.Generator, num_tasks: int = 3, n: int = 16, dim: int = 5, scales=None):
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    targets = []
    for t in range(num_tasks):
        scale = 1.0 if scales is None else scales[t]
        targets.append(
            scale * (x[:, t % dim : t % dim + 1] + 0.1 * torch.randn(n, 1, generator=generator, dtype=torch.float64))
        )
    return x, targets


def mse_losses(forward: Callable, batch) -> list[Tensor]:
    x, targets = batch
    return [nn.functional.mse_loss(p, y) for p, y in zip(forward(x), targets)]


def make_model(seed: int = 0, num_tasks: int = 3) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet(num_tasks).double()


def roundtrip(obj):
    """Save ``obj.state_dict()`` with ``torch.save`` and load it back (as a checkpoint would)."""
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def snapshot(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def backward_step(model: ToyNet, aggregator, batch, **kwargs):
    return mtlagg.backward(mse_losses(model, batch), model.trunk.named_parameters(), aggregator, **kwargs)


def train_single_batch(model: ToyNet, aggregator, name: str, steps: int, device: torch.device | None = None):
    """``steps`` SGD steps of the one-line use (FAMO's extra update, DWA's epoch ends included);
    the batches drawn on the CPU and moved to ``device``. Returns the last ``backward`` result."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    result = None
    for step in range(steps):
        x, targets = toy_batch(generator)
        batch = (x, targets) if device is None else (x.to(device), [t.to(device) for t in targets])
        optimizer.zero_grad()
        result = mtlagg.backward(mse_losses(model, batch), model.trunk.named_parameters(), aggregator)
        optimizer.step()
        if name == "famo":
            with torch.no_grad():
                aggregator.update(mse_losses(model, batch))
        if name == "dwa" and step % 2 == 1:
            aggregator.end_epoch()
    return result
