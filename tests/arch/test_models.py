"""Behaviour common to every architecture: shapes, determinism, state_dict, training."""

from __future__ import annotations

import io

import pytest
import torch

import mtlagg
from mtlagg.aggregators import UPGrad

from ._models import NAMES, TASKS, VARIANTS, batch, build, losses_of, targets_for, variant_id


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_output_shapes_and_order(variant):
    name, kind, options = variant
    model = build(name, kind, **options)
    out = model(batch(kind, size=5))
    assert list(out) == list(TASKS)
    assert all(o.shape == (5, 1) for o in out.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["vector", "image"])
def test_per_task_forward_matches_the_full_forward(name, kind):
    model = build(name, kind).eval()
    x = batch(kind)
    with torch.no_grad():
        full = model(x)
        for t in TASKS:
            single = model(x, task=t)
            assert list(single) == [t]
            torch.testing.assert_close(single[t], full[t])


@pytest.mark.parametrize("name", NAMES)
def test_multi_input_runs_each_task_on_its_own_batch(name):
    torch.manual_seed(0)
    multi = build(name, "vector", multi_input=True).eval()
    torch.manual_seed(0)
    single = build(name, "vector").eval()
    inputs = {t: batch("vector", size=2 + i, seed=i) for i, t in enumerate(TASKS)}
    with torch.no_grad():
        out = multi(inputs)
        assert [o.shape[0] for o in out.values()] == [2, 3, 4]
        for t in TASKS:
            torch.testing.assert_close(out[t], single(inputs[t])[t])
            torch.testing.assert_close(multi(inputs[t], task=t)[t], out[t])
        partial = multi({"c": inputs["c"]})
        assert list(partial) == ["c"]


def train_step(model, x, targets, optimizer):
    optimizer.zero_grad()
    losses = losses_of(model, model(x), targets)
    mtlagg.backward(losses, model.shared_parameters(), UPGrad(), features=model.representation)
    optimizer.step()
    return torch.stack([loss.detach() for loss in losses]).sum().item()


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_deterministic_under_a_seed(variant):
    name, kind, options = variant
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build(name, kind, **options)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x = batch(kind)
        train_step(model, x, targets_for(x), optimizer)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        if isinstance(states[0][key], torch.Tensor):
            torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)
        else:  # extra state (LTB's temperature and branching mode)
            assert states[0][key] == states[1][key]


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_state_dict_round_trip(variant):
    name, kind, options = variant
    torch.manual_seed(4)
    model = build(name, kind, **options)
    x = batch(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train_step(model, x, targets_for(x), optimizer)  # moves weights and batch-norm statistics
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(5)
    other = build(name, kind, **options)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=False))
    model.eval()
    other.eval()
    with torch.no_grad():
        for t, o in model(x).items():
            torch.testing.assert_close(other(x)[t], o, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_deterministic(name):
    model = build(name, "image").eval()
    x = batch("image")
    with torch.no_grad():
        first = model(x)
        second = model(x)
    for t in TASKS:
        torch.testing.assert_close(first[t], second[t], rtol=0, atol=0)


def synthetic_problem(n: int = 64, seed: int = 0):
    """Three regression tasks sharing a nonlinear latent of a 5-d input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    latent = torch.tanh(x @ torch.randn(5, 3, generator=g))
    targets = {t: latent @ torch.randn(3, 1, generator=g) + 0.3 * x[:, i : i + 1] for i, t in enumerate(TASKS)}
    return x, targets


@pytest.mark.parametrize("path", ["param", "features"])
@pytest.mark.parametrize("name", NAMES)
def test_short_training_run_reduces_the_loss(name, path):
    torch.manual_seed(0)
    model = build(name, "vector")
    x, targets = synthetic_problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    history = []
    for _ in range(30):
        optimizer.zero_grad()
        outputs = model(x)
        plain = [((outputs[t] - targets[t]) ** 2).mean() for t in TASKS]
        features = model.representation if path == "features" else None
        mtlagg.backward(model.add_regularization(plain), model.shared_parameters(), UPGrad(), features=features)
        optimizer.step()
        history.append(sum(loss.item() for loss in plain))
    assert history[-1] < 0.6 * history[0], history[::5]
