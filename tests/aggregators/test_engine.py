"""Every aggregator through ``mtlagg.backward``: the shared gradients equal the aggregator applied
to the Jacobian that ``mtlagg.jacobian`` returns, on the parameter and on the ``features=`` path;
and the state of NashMTL's opt-in options."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mtlagg
from mtlagg.aggregators import GradDrop, NashMTL, Random, WeightedAggregator

from ._specs import SPEC_IDS, SPECS, Spec


def _model(T: int, seed: int = 0) -> tuple[nn.Module, list[nn.Module], torch.Tensor]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh()).double()
    heads = [nn.Linear(8, 1).double() for _ in range(T)]
    x = torch.randn(16, 6, dtype=torch.float64)
    return trunk, heads, x


def _losses(trunk: nn.Module, heads: list[nn.Module], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    z = trunk(x)
    return [(head(z) - i).pow(2).mean() + 0.1 for i, head in enumerate(heads)], z


@pytest.mark.parametrize("features", [False, True], ids=["parameters", "features"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_backward_applies_the_aggregator_to_the_jacobian(spec: Spec, features: bool) -> None:
    T = 6
    trunk, heads, x = _model(T)
    params = list(trunk.parameters())
    losses, z = _losses(trunk, heads, x)
    inputs = [z] if features else params
    J = mtlagg.jacobian(losses, inputs)
    values = torch.stack([loss.detach() for loss in losses])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = spec.make(T)(J, losses=values)
        losses, z = _losses(trunk, heads, x)
        result = mtlagg.backward(losses, params, spec.make(T), features=z if features else None)
    if features:
        expected_grads = torch.autograd.grad(trunk(x), params, expected.reshape(16, 8))
    else:
        expected_grads = torch.split(expected, [p.numel() for p in params])
    for p, g in zip(params, expected_grads):
        assert torch.allclose(p.grad, g.reshape(p.shape), atol=1e-10, rtol=1e-8), spec.id
    if isinstance(spec.make(T), WeightedAggregator):
        assert result.weights is not None and result.weights.shape == (T,)


def test_graddrop_on_features_uses_the_batch_dimension() -> None:
    T = 3
    trunk, heads, x = _model(T, seed=1)
    params = list(trunk.parameters())
    losses, z = _losses(trunk, heads, x)
    J = mtlagg.jacobian(losses, [z])
    aggregator = GradDrop(batch_separated=True, generator=torch.Generator().manual_seed(2))
    assert aggregator.uses_input_values
    losses, z = _losses(trunk, heads, x)
    mtlagg.backward(losses, params, aggregator, features=z)
    # The paper's masks: one per unit (8), from the batch sums of sign(z) * grad_z L_i.
    uniform = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    blocks = J.reshape(T, 16, 8)
    signals = (blocks * trunk(x).detach().sign()).sum(dim=1)
    purity = 0.5 * (1 + signals.sum(0) / signals.abs().sum(0))
    masks = ((purity > uniform) & (signals > 0)) | ((purity < uniform) & (signals < 0))
    direction = (blocks * masks[:, None, :]).sum(0)
    expected = torch.autograd.grad(trunk(x), params, direction)
    for p, g in zip(params, expected):
        assert torch.allclose(p.grad, g, atol=1e-12)


def test_random_variants_state_their_task_parameter_semantics() -> None:
    """RLW weights the heads' gradients (weight_task_params=True), RGW does not."""
    T = 3
    for kind in ("loss", "gradient"):
        trunk, heads, x = _model(T, seed=2)
        losses, _ = _losses(trunk, heads, x)
        aggregator = Random(kind, generator=torch.Generator().manual_seed(0))
        result = mtlagg.backward(
            losses, trunk.parameters(), aggregator, weight_task_params=aggregator.weights_task_params
        )
        losses, _ = _losses(trunk, heads, x)
        own = torch.autograd.grad(losses[1], list(heads[1].parameters()))
        factor = result.weights[1] if kind == "loss" else 1.0
        assert torch.allclose(heads[1].weight.grad, factor * own[0])


def test_nashmtl_update_weights_every_reuses_the_weights() -> None:
    g = torch.Generator().manual_seed(3)
    Js = [torch.randn(4, 10, generator=g, dtype=torch.float64) + 0.5 for _ in range(5)]
    aggregator = NashMTL(max_norm=None, update_weights_every=2)
    weights = [aggregator.weights_from_jacobian(J) for J in Js]
    fresh = [NashMTL(max_norm=None).weights_from_jacobian(J) for J in Js]
    assert torch.allclose(weights[0], fresh[0]) and torch.equal(weights[1], weights[0])
    assert torch.allclose(weights[2], fresh[2]) and torch.equal(weights[3], weights[2])
    assert aggregator.state_dict()["step"] == 5


def test_nashmtl_state_round_trip_and_reset() -> None:
    g = torch.Generator().manual_seed(4)
    Js = [torch.randn(4, 10, generator=g, dtype=torch.float64) + 0.5 for _ in range(6)]
    reference = NashMTL(update_weights_every=3, warm_start=True)
    outputs = [reference(J) for J in Js]
    first = NashMTL(update_weights_every=3, warm_start=True)
    for J in Js[:4]:
        first(J)
    saved = first.state_dict()
    second = NashMTL(update_weights_every=3, warm_start=True)
    second.load_state_dict(saved)
    for J, expected in zip(Js[4:], outputs[4:]):
        assert torch.equal(second(J), expected)
    second.reset()
    assert second.state_dict() == {"step": 0, "weights": None}
    assert torch.equal(second(Js[0]), outputs[0])
    with pytest.raises(ValueError, match=r"NashMTL state must have the keys \['step', 'weights'\]"):
        second.load_state_dict({"step": 1})
    with pytest.raises(ValueError, match="is stateless; cannot load state"):
        NashMTL().load_state_dict(saved)
    assert NashMTL().state_dict() == {}


def test_nashmtl_warm_start_converges_to_the_same_weights() -> None:
    g = torch.Generator().manual_seed(5)
    J = torch.randn(6, 20, generator=g, dtype=torch.float64) + 0.3
    warm = NashMTL(warm_start=True)
    first, second = warm.weights_from_jacobian(J), warm.weights_from_jacobian(J)
    assert torch.allclose(first, second, rtol=1e-12) and torch.allclose(first, NashMTL().weights_from_jacobian(J))


def test_upgrad_warm_start_gives_the_cold_answers_and_keeps_its_state() -> None:
    from mtlagg.aggregators import UPGrad

    from ._matrices import conflicting

    g = torch.Generator().manual_seed(6)
    base = conflicting(12, 40, g)
    sequence = [base + 0.05 * torch.randn(base.shape, generator=g, dtype=torch.float64) for _ in range(5)]
    warm = UPGrad(warm_start=True)
    for J in sequence:
        assert torch.allclose(warm(J), UPGrad()(J), atol=1e-12)
    state = warm.state_dict()
    assert state["free"].shape == (12, 12) and state["free"].dtype == torch.bool
    other = UPGrad(warm_start=True)
    other.load_state_dict(state)
    assert torch.equal(other.state_dict()["free"], state["free"])
    other.reset()
    assert other.state_dict() == {"free": None}
    with pytest.raises(ValueError, match=r"UPGrad state must have the key \['free'\]"):
        other.load_state_dict({})
    assert UPGrad().state_dict() == {}
    with pytest.raises(TypeError, match="warm_start must be a bool"):
        UPGrad(warm_start=1)  # type: ignore[arg-type]
