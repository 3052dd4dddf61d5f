"""``features=`` with linear heads: the factored representation gradients (delta_t, A_t) against the
explicit rows of the definition, on heads that qualify and on heads that must take the explicit path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import mtlagg
import mtlagg._jacobian as engine
from mtlagg.aggregators import MGDA, Aggregator, Mean, PCGrad, UPGrad

from .models import flat_grad, reference_jacobian

N, D, T = 12, 7, 4


def _trunk() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, D), nn.Tanh()).double()
    x = torch.randn(N, 5, dtype=torch.float64)
    return trunk, x, trunk(x)


def _linear_heads(z: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Multi-output heads, with and without bias (addmm and mm), nonlinear after the first layer."""
    weights = [torch.randn(D, 1 + i % 3, dtype=torch.float64, requires_grad=True) for i in range(T)]
    biases = [torch.randn(1 + i % 3, dtype=torch.float64, requires_grad=True) for i in range(T)]
    losses = []
    for i in range(T):
        out = torch.addmm(biases[i], z, weights[i]) if i % 2 == 0 else z @ weights[i]
        losses.append(torch.sin(out).pow(2).mean() * (i + 1))
    return losses, weights + biases


def _expected(losses: list[Tensor], z: Tensor, shared: list[Tensor], aggregator: Aggregator) -> Tensor:
    jacobian = reference_jacobian(losses, [z])
    direction = aggregator(jacobian, losses=torch.stack([loss.detach() for loss in losses])).view_as(z)
    return torch.cat([g.flatten() for g in torch.autograd.grad(z, shared, direction, retain_graph=True)])


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    found: list[dict] = []
    original = engine._linear_heads

    def spy(*args: object) -> dict:
        heads = original(*args)  # type: ignore[arg-type]
        found.append(heads)
        return heads

    monkeypatch.setattr(engine, "_linear_heads", spy)
    return found


MAKERS: dict[str, Callable[[], Aggregator]] = {
    "upgrad": UPGrad,
    "mean": Mean,
    "mgda": MGDA,
    "pcgrad": lambda: PCGrad(generator=torch.Generator().manual_seed(2)),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_linear_heads_are_factored_and_match_the_definition(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _spy(monkeypatch)
    trunk, _, z = _trunk()
    losses, head_params = _linear_heads(z)
    shared = list(trunk.parameters())
    expected = _expected(losses, z, shared, MAKERS[name]())
    own = [
        torch.autograd.grad(loss, [p for p in head_params if p is not None], retain_graph=True, allow_unused=True)
        for loss in losses
    ]
    jacobian = reference_jacobian(losses, [z])
    result = mtlagg.backward(losses, shared, MAKERS[name](), features=z, compute_gramian=True)
    assert found and sorted(found[-1][0]) == list(range(T))  # every task took the factored form
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result.gramian, jacobian @ jacobian.T, rtol=1e-9, atol=1e-12)
    for i in range(T):  # each head parameter gets its own task's gradient
        for p, g in zip(head_params, own[i]):
            if g is not None:
                torch.testing.assert_close(p.grad, g)


def _nonlinear_use(z: Tensor, weights: list[Tensor]) -> list[Tensor]:
    """Task 0 uses z twice (linear and squared): not a linear head."""
    return [(z @ weights[0]).mean() + z.pow(2).mean()] + [torch.cos(z @ w).mean() for w in weights[1:]]


def _shared_first_layer(z: Tensor, weights: list[Tensor]) -> list[Tensor]:
    """One linear layer feeds tasks 0 and 1 (a consumer common to two tasks)."""
    common = z @ weights[0]
    return [common.pow(2).mean(), common.sin().mean()] + [torch.cos(z @ w).mean() for w in weights[2:]]


def _three_dimensional(z: Tensor, weights: list[Tensor]) -> list[Tensor]:
    """A 3-d feature (a linear layer over its last dimension is not an addmm of z)."""
    z3 = z.view(N // 2, 2, D)
    return [torch.tanh(z3 @ w).mean() for w in weights]


@pytest.mark.parametrize("heads", [_nonlinear_use, _shared_first_layer, _three_dimensional])
def test_heads_that_do_not_qualify_take_the_explicit_path(heads: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _spy(monkeypatch)
    trunk, _, z = _trunk()
    weights = [torch.randn(D, 2, dtype=torch.float64, requires_grad=True) for _ in range(T)]
    feature = z.view(N // 2, 2, D) if heads is _three_dimensional else z
    losses = heads(z, weights)
    shared = list(trunk.parameters())
    expected = _expected(losses, z, shared, UPGrad())
    mtlagg.backward(losses, shared, UPGrad(), features=feature if heads is not _three_dimensional else z)
    assert found and found[-1] == {}
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)


def test_tasks_that_do_not_reach_the_feature_are_zero_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _spy(monkeypatch)
    trunk, _, z = _trunk()
    weights = [torch.randn(D, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    constant = torch.tensor(1.5, dtype=torch.float64)
    losses = [torch.sin(z @ weights[0]).mean(), constant, torch.cos(z @ weights[1]).mean()]
    shared = list(trunk.parameters())
    expected = _expected(losses, z, shared, UPGrad())
    result = mtlagg.backward(losses, shared, UPGrad(), features=z, compute_gramian=True)
    assert sorted(found[-1][0]) == [0, 2]
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)
    assert torch.all(result.gramian[1] == 0) and torch.all(result.gramian[:, 1] == 0)


def test_a_nonfinite_task_is_zeroed_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _spy(monkeypatch)
    trunk, _, z = _trunk()
    weights = [torch.randn(D, 2, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    losses = [torch.sin(z @ w).mean() for w in weights]
    losses[1] = losses[1] * torch.tensor(float("nan"), dtype=torch.float64)
    clean = [losses[0], torch.zeros((), dtype=torch.float64), losses[2]]
    shared = list(trunk.parameters())
    expected = _expected(clean, z, shared, UPGrad())
    with pytest.warns(RuntimeWarning, match=r"dropped tasks \[1\]"):
        mtlagg.backward(losses, shared, UPGrad(), features=z, on_nonfinite="zero")
    assert sorted(found[-1][0]) == [0, 1, 2]
    torch.testing.assert_close(flat_grad(shared), expected, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(flat_grad(shared)).all()


def test_the_explicit_rows_are_kept_where_they_are_cheaper() -> None:
    assert engine.factored_is_cheaper(40, 256, 512, 40)
    # one wide head per task (as many outputs as the representation): the rows are cheaper
    assert not engine.factored_is_cheaper(2, 256, 512, 2 * 512)
