"""Properties every stateless aggregator must have, on generic and degenerate matrices.

Structure (finite output of the right shape and dtype, for float64/32/16 and bfloat16 inputs),
non-conflict where promised, permutation equivariance, linearity under scaling of the rows,
zero directions on strongly stationary matrices, and agreement between ``weights`` and the
direction for weighted aggregators.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mtlagg.aggregators import WeightedAggregator

from ._matrices import CASES, positive_losses, sample
from ._specs import SPEC_IDS, SPECS, Spec

CASE_IDS = list(CASES)


def _call(spec: Spec, J: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    aggregator = spec.make(J.shape[0])
    with warnings.catch_warnings():
        if spec.may_warn:
            warnings.simplefilter("ignore", RuntimeWarning)
        return aggregator(J, losses=losses)


def _skip_if_too_few(spec: Spec, num_tasks: int) -> None:
    if num_tasks < spec.min_tasks:
        pytest.skip(f"{spec.id} needs at least {spec.min_tasks} tasks")


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_finite_output_of_the_right_shape_and_dtype(spec: Spec, case: str) -> None:
    J = sample(case)
    _skip_if_too_few(spec, J.shape[0])
    losses = positive_losses(J.shape[0])
    for dtype in (torch.float64, torch.float32):
        direction = _call(spec, J.to(dtype), losses)
        assert direction.shape == (J.shape[1],)
        assert direction.dtype == dtype
        assert torch.isfinite(direction).all(), direction


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_half_precision_inputs(spec: Spec, dtype: torch.dtype) -> None:
    J = sample("conflicting-8x30")
    losses = positive_losses(8)
    direction = _call(spec, J.to(dtype), losses)
    reference = _call(spec, J.to(dtype).to(torch.float64), losses)
    assert direction.dtype == dtype and direction.shape == (30,)
    assert torch.isfinite(direction).all()
    if spec.id.startswith("graddrop"):
        return  # random masks drawn from rounded purities: no reference to compare with
    scale = J.abs().max() * J.shape[0]
    # Half precision rounds the inputs and the output; the method itself runs in float32/64.
    assert (direction.double() - reference).abs().max() <= 2e-2 * scale


def _alignment_tolerance(J: torch.Tensor) -> float:
    """Round-off of ``J d`` for a direction on the scale of the rows."""
    return 1e-9 * float(J.norm(dim=1).max()) ** 2 * J.shape[0] + 1e-300


@pytest.mark.parametrize("case", CASE_IDS)
@pytest.mark.parametrize(
    "spec", [s for s in SPECS if s.non_conflicting], ids=[s.id for s in SPECS if s.non_conflicting]
)
def test_non_conflicting(spec: Spec, case: str) -> None:
    J = sample(case)
    _skip_if_too_few(spec, J.shape[0])
    d = _call(spec, J, positive_losses(J.shape[0]))
    assert (J @ d).min() >= -_alignment_tolerance(J)
    assert spec.make(J.shape[0]).non_conflicting


@pytest.mark.parametrize("case", [c for c in CASE_IDS if not c.startswith("zero")])
@pytest.mark.parametrize(
    "spec", [s for s in SPECS if not s.non_conflicting], ids=[s.id for s in SPECS if not s.non_conflicting]
)
def test_declared_conflicting_methods_are_not_marked_non_conflicting(spec: Spec, case: str) -> None:
    assert not spec.make(4).non_conflicting


@pytest.mark.parametrize(
    "spec", [s for s in SPECS if s.zero_when_stationary], ids=[s.id for s in SPECS if s.zero_when_stationary]
)
@pytest.mark.parametrize("seed", range(3))
def test_zero_direction_on_strongly_stationary_matrices(spec: Spec, seed: int) -> None:
    J = sample("stationary-5x12", seed)
    d = _call(spec, J, positive_losses(5))
    assert d.norm() <= 1e-7 * J.norm(dim=1).max()


@pytest.mark.parametrize("case", [c for c in CASE_IDS if not c.startswith(("zero", "duplicated"))])
@pytest.mark.parametrize(
    "spec", [s for s in SPECS if s.permutation_equivariant], ids=[s.id for s in SPECS if s.permutation_equivariant]
)
def test_permutation_equivariance(spec: Spec, case: str) -> None:
    J = sample(case)
    T = J.shape[0]
    _skip_if_too_few(spec, T)
    losses = positive_losses(T)
    permutation = torch.randperm(T, generator=torch.Generator().manual_seed(3))
    d = _call(spec, J, losses)
    d_permuted = _call(spec, J[permutation], losses[permutation])
    scale = float(J.norm(dim=1).max()) * T + float(d.norm())
    assert (d - d_permuted).abs().max() <= 1e-7 * scale + 1e-300


@pytest.mark.parametrize("case", [c for c in CASE_IDS if not c.startswith("zero")])
@pytest.mark.parametrize("spec", [s for s in SPECS if s.linear], ids=[s.id for s in SPECS if s.linear])
def test_linear_under_scaling_of_the_rows(spec: Spec, case: str) -> None:
    J = sample(case)
    T = J.shape[0]
    g = torch.Generator().manual_seed(5)
    c1 = torch.rand(T, generator=g, dtype=torch.float64) + 0.1
    c2 = torch.rand(T, generator=g, dtype=torch.float64) + 0.1
    a, b = 0.7, 1.9
    losses = positive_losses(T)
    combined = _call(spec, (a * c1 + b * c2)[:, None] * J, losses)
    separate = a * _call(spec, c1[:, None] * J, losses) + b * _call(spec, c2[:, None] * J, losses)
    scale = float(J.norm(dim=1).max()) * T * 5
    assert (combined - separate).abs().max() <= 1e-7 * scale + 1e-300


WEIGHTED = [s for s in SPECS if isinstance(s.make(6), WeightedAggregator)]


@pytest.mark.parametrize("case", ["normal-5x20", "conflicting-8x30", "rank2-6x25", "duplicated-6x15", "huge-1e8"])
@pytest.mark.parametrize("spec", WEIGHTED, ids=[s.id for s in WEIGHTED])
def test_weights_reproduce_the_direction(spec: Spec, case: str) -> None:
    J = sample(case)
    T = J.shape[0]
    _skip_if_too_few(spec, T)
    losses = positive_losses(T)
    d = _call(spec, J, losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aggregator = spec.make(T)
        if aggregator.needs == aggregator.needs.LOSSES:
            w = aggregator.weights(losses=losses, num_tasks=T)
        else:
            w = aggregator.weights(J @ J.T, losses=losses)
        w_jacobian = spec.make(T).weights_from_jacobian(J, losses=losses)
    scale = float(J.norm(dim=1).max()) * T
    assert w.shape == (T,) and w.dtype == torch.float64
    assert (w @ J - d).abs().max() <= 1e-9 * scale + 1e-300
    assert (w_jacobian @ J - d).abs().max() <= 1e-9 * scale + 1e-300


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_stateless_and_pure(spec: Spec) -> None:
    aggregator = spec.make(8)
    J = sample("conflicting-8x30")
    losses = positive_losses(8)
    assert aggregator.state_dict() == {}
    aggregator.load_state_dict({})
    aggregator.reset()
    first = _call(spec, J, losses)
    assert torch.equal(first, _call(spec, J, losses))  # fresh generators: same stream
    assert repr(aggregator).startswith(type(aggregator).__name__ + "(")
