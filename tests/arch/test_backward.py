"""``mtlagg.backward`` on every architecture, on the parameter and the ``features=`` paths.

The references are computed independently with ``torch.autograd.grad``: the per-task Jacobian
with respect to the shared parameters (parameter path) or to ``model.representation`` (features
path), aggregated by hand, then back-propagated by hand.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import Tensor

import mtlagg
from mtlagg.aggregators import Aggregator, AggregatorInput, Constant, Needs, UPGrad

from ._models import TASKS, VARIANTS, batch, build, losses_of, targets_for, variant_id

WEIGHTS = [0.5, 1.25, 2.0]


class CoordinateMedian(Aggregator):
    """A test-only unweighted aggregator: the coordinate-wise median of the task gradients."""

    needs: ClassVar[Needs] = Needs.JACOBIAN

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        assert inputs.jacobian is not None
        return inputs.jacobian.median(dim=0).values


def forward(name, kind, options):
    torch.manual_seed(0)
    model = build(name, kind, **options).double()
    x = batch(kind).double()
    outputs = model(x)
    targets = {t: v.double() for t, v in targets_for(x).items()}
    return model, losses_of(model, outputs, targets)


def jacobian(losses: list[Tensor], inputs: list[Tensor]) -> Tensor:
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(i) if g is None else g).reshape(-1) for i, g in zip(inputs, grads)]))
    return torch.stack(rows)


def reference(model, losses, path, direction_of):
    """Expected ``.grad`` of every parameter: shared from the aggregated direction, task ones from
    their own loss (``weight_task_params=False``)."""
    shared = list(model.shared_parameters())
    expected = {}
    if path == "param":
        d = direction_of(jacobian(losses, shared))
        for p, piece in zip(shared, d.split([p.numel() for p in shared])):
            expected[id(p)] = piece.reshape(p.shape)
    else:
        features = model.representation
        d = direction_of(jacobian(losses, features))
        pieces = [piece.reshape(f.shape) for f, piece in zip(features, d.split([f.numel() for f in features]))]
        grads = torch.autograd.grad(features, shared, pieces, retain_graph=True, allow_unused=True)
        for p, g in zip(shared, grads):
            expected[id(p)] = torch.zeros_like(p) if g is None else g
    for i, t in enumerate(model.task_names):
        params = list(model.task_parameters(t))
        for p, g in zip(params, torch.autograd.grad(losses[i], params, retain_graph=True)):
            expected[id(p)] = g
    return expected


def run(model, losses, path, aggregator, **kwargs):
    features = model.representation if path == "features" else None
    return mtlagg.backward(losses, model.named_shared_parameters(), aggregator, features=features, **kwargs)


def assert_grads(model, expected):
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        torch.testing.assert_close(p.grad, expected[id(p)], rtol=1e-7, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("path", ["param", "features"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_fixed_weights_equal_plain_backward(variant, path):
    """With fixed weights both paths equal ``sum_i w_i L_i`` backward: the cut is exact."""
    model, losses = forward(*variant)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    expected = reference(model, losses, path, lambda J: weights @ J)
    plain = torch.autograd.grad(
        sum(w * loss for w, loss in zip(WEIGHTS, losses)), list(model.shared_parameters()), retain_graph=True
    )
    for p, g in zip(model.shared_parameters(), plain):
        torch.testing.assert_close(expected[id(p)], g, rtol=1e-7, atol=1e-9)
    run(model, losses, path, Constant(WEIGHTS), compute_gramian=True)
    assert_grads(model, expected)


@pytest.mark.parametrize("path", ["param", "features"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_upgrad_weighted_gramian(variant, path):
    model, losses = forward(*variant)
    expected = reference(model, losses, path, UPGrad())
    result = run(model, losses, path, UPGrad())
    assert result.weights is not None and result.weights.shape == (len(TASKS),)
    assert_grads(model, expected)


@pytest.mark.parametrize("path", ["param", "features"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_unweighted_jacobian_aggregator(variant, path):
    model, losses = forward(*variant)
    aggregator = CoordinateMedian()
    expected = reference(model, losses, path, aggregator)
    result = run(model, losses, path, aggregator)
    assert result.weights is None
    assert_grads(model, expected)


@pytest.mark.parametrize("name", ["hps", "mmoe", "mtan", "ple", "cross_stitch", "ltb", "dselect_k", "cgc"])
@pytest.mark.parametrize("path", ["param", "features"])
def test_multi_input_backward(name, path):
    torch.manual_seed(0)
    model = build(name, "vector", multi_input=True).double()
    inputs = {t: batch("vector", size=3 + i, seed=10 + i).double() for i, t in enumerate(TASKS)}
    outputs = model(inputs)
    losses = model.add_regularization([(o**2).mean() for o in outputs.values()])
    if path == "features":
        assert len(model.representation) >= len(TASKS)  # one cut per task's run (shared blocks once)
    aggregator = CoordinateMedian()
    expected = reference(model, losses, path, aggregator)
    run(model, losses, path, aggregator)
    assert_grads(model, expected)


@pytest.mark.parametrize("variant", VARIANTS[:16], ids=variant_id)
def test_loss_only_aggregator(variant):
    """A loss-only weighted aggregator runs one ordinary backward; ``features=`` is not needed."""
    model, losses = forward(*variant)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    expected = reference(model, losses, "param", lambda J: weights @ J)
    result = run(model, losses, "features", Constant(WEIGHTS))
    torch.testing.assert_close(result.weights, weights.to(result.weights))
    assert_grads(model, expected)
