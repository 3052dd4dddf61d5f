"""The two-phase engine on awkward graphs: every case against per-task ``autograd.grad``.

Each case builds losses whose graphs exercise one structure the engine must get right (residual
connections, parameter reuse, parameters reached both through the trunk and directly, heads
sharing modules, multi-input, convolutions, sequences, a loss vector, losses of losses, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import mtlagg
from mtlagg.aggregators import UPGrad

from .models import flat_grad, reference_jacobian

Case = Callable[[], tuple[list[Tensor], list[Tensor]]]
DT = torch.float64


def _x(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=DT)


def residual() -> tuple[list[Tensor], list[Tensor]]:
    a, b = nn.Linear(6, 6).double(), nn.Linear(6, 6).double()
    x = _x(5, 6)
    h = x + torch.tanh(a(x))
    z = h + torch.relu(b(h))
    heads = [nn.Linear(6, 1).double() for _ in range(3)]
    return [hd(z).pow(2).mean() for hd in heads], [*a.parameters(), *b.parameters()]


def tied_weights() -> tuple[list[Tensor], list[Tensor]]:
    layer = nn.Linear(4, 4).double()
    z = torch.tanh(layer(torch.tanh(layer(_x(6, 4)))))
    return [z[:, 0].pow(2).mean(), z[:, 1:].sum(), (z * z).mean()], list(layer.parameters())


def shared_parameter_used_by_a_head() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Linear(3, 4).double()
    z = torch.sigmoid(trunk(_x(5, 3)))
    losses = [(z @ trunk.bias).mean(), z.pow(2).sum(), (z.sum(1) * trunk.weight[0, 0]).mean()]
    return losses, list(trunk.parameters())


def heads_sharing_a_module() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Sequential(nn.Linear(4, 5), nn.ReLU()).double()
    decoder = nn.Linear(5, 2).double()  # not shared: reached by tasks 0 and 1
    z = trunk(_x(7, 4))
    d = decoder(z)
    return [d[:, 0].pow(2).mean(), d[:, 1].abs().mean(), z.mean()], list(trunk.parameters())


def multi_input() -> tuple[list[Tensor], list[Tensor]]:
    encoder = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    heads = [nn.Linear(4, 1).double() for _ in range(3)]
    losses = [heads[i](encoder(_x(6, 3))).pow(2).mean() for i in range(3)]
    return losses, list(encoder.parameters())


def conv_batchnorm_pool() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 6)
    ).double()
    z = trunk(_x(3, 2, 4, 4))
    heads = [nn.Linear(6, 2).double() for _ in range(2)]
    return [nn.functional.cross_entropy(h(z), torch.tensor([0, 1, 1])) for h in heads], list(trunk.parameters())


def sequence_linear_without_bias() -> tuple[list[Tensor], list[Tensor]]:
    proj = nn.Linear(4, 6, bias=False).double()
    mix = nn.Linear(6, 6).double()
    z = mix(torch.relu(proj(_x(2, 5, 4))))  # 3-D input: flattened linear; trunk ends on a linear layer
    return [z[..., :3].pow(2).mean(), z[..., 3:].mean(), z.std()], [*proj.parameters(), *mix.parameters()]


def loss_vector() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Linear(3, 4).double()
    z = torch.tanh(trunk(_x(5, 3)))
    vector = torch.stack([z[:, 0].mean(), z.pow(2).mean(), z[:, 3].exp().mean()])
    return list(vector.unbind()), list(trunk.parameters())


def loss_of_a_loss() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Linear(3, 4).double()
    z = torch.tanh(trunk(_x(5, 3)))
    first = z.pow(2).mean()
    return [first, 2 * first + z[:, 0].mean(), z.sum()], list(trunk.parameters())


def embedding() -> tuple[list[Tensor], list[Tensor]]:
    table = nn.Embedding(10, 4).double()
    layer = nn.Linear(4, 4).double()
    z = torch.tanh(layer(table(torch.tensor([[1, 2, 3], [3, 4, 9]])).mean(1)))
    return [z[:, 0].sum(), z[:, 1].pow(2).sum(), z.mean()], [*table.parameters(), *layer.parameters()]


def unused_parameter_and_constant_loss() -> tuple[list[Tensor], list[Tensor]]:
    trunk = nn.Linear(3, 4).double()
    unused = nn.Parameter(torch.ones(2, dtype=DT))
    z = trunk(_x(5, 3))
    return [z.pow(2).mean(), torch.tensor(3.0, dtype=DT)], [*trunk.parameters(), unused]


def stagewise_attention() -> tuple[list[Tensor], list[Tensor]]:
    """MTAN-like: each task reads every stage of the trunk (its boundary spans several depths)."""
    stage1, stage2 = nn.Linear(4, 5).double(), nn.Linear(5, 5).double()
    h1 = torch.relu(stage1(_x(6, 4)))
    h2 = torch.tanh(stage2(h1))
    attention = [nn.Linear(5, 5).double() for _ in range(3)]
    losses = [(torch.sigmoid(a(h1)) * h2).pow(2).mean() for a in attention]
    losses[2] = losses[2] + h2.mean()  # one task also reads the last stage directly
    return losses, [*stage1.parameters(), *stage2.parameters()]


def wide_layers_small_batch() -> tuple[list[Tensor], list[Tensor]]:
    """Few rows and wide layers: the Gramian of the linear layers goes through the kernel x x^T."""
    trunk = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh()).double()
    z = trunk(_x(3, 30))
    heads = [nn.Linear(40, 1).double() for _ in range(6)]
    return [h(z).pow(2).mean() for h in heads], list(trunk.parameters())


CASES: dict[str, Case] = {
    "wide_layers_small_batch": wide_layers_small_batch,
    "stagewise_attention": stagewise_attention,
    "residual": residual,
    "tied_weights": tied_weights,
    "shared_parameter_used_by_a_head": shared_parameter_used_by_a_head,
    "heads_sharing_a_module": heads_sharing_a_module,
    "multi_input": multi_input,
    "conv_batchnorm_pool": conv_batchnorm_pool,
    "sequence_linear_without_bias": sequence_linear_without_bias,
    "loss_vector": loss_vector,
    "loss_of_a_loss": loss_of_a_loss,
    "embedding": embedding,
    "unused_parameter_and_constant_loss": unused_parameter_and_constant_loss,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [None, 1, 2, 64])
def test_jacobian_matches_autograd(case: str, chunk_size: int | None) -> None:
    losses, params = CASES[case]()
    expected = reference_jacobian(losses, params)
    got = mtlagg.jacobian(losses, params, chunk_size=chunk_size, retain_graph=True)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(mtlagg.gramian(losses, params, chunk_size=chunk_size), expected @ expected.T)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_matches_hand_computation(case: str) -> None:
    losses, params = CASES[case]()
    jacobian = reference_jacobian(losses, params)
    expected = UPGrad()(jacobian)
    reached = [p for p in params if p.requires_grad]
    mtlagg.backward(losses, reached, UPGrad())
    got = flat_grad(reached)
    torch.testing.assert_close(got, expected)


def test_nested_features_are_rejected() -> None:
    trunk = nn.Linear(3, 4).double()
    z1 = torch.tanh(trunk(_x(5, 3)))
    z2 = z1 * 2
    losses = [z1.mean(), z2.pow(2).mean()]
    with pytest.raises(ValueError, match=r"features\[1\] depends on features\[0\]"):
        mtlagg.backward(losses, trunk.parameters(), UPGrad(), features=[z1, z2])


def test_both_routes_of_the_factored_layers_are_exercised() -> None:
    from mtlagg._linear import FactoredLinear

    deltas = torch.zeros(6, 3, 40, dtype=DT)
    assert FactoredLinear(torch.zeros(40, 40), None, torch.zeros(3, 40, dtype=DT), deltas).use_kernel()
    deltas = torch.zeros(6, 64, 40, dtype=DT)
    assert not FactoredLinear(torch.zeros(40, 40), None, torch.zeros(64, 40, dtype=DT), deltas).use_kernel()
