"""State round trip: k steps, save, load into a fresh object, continue == the uninterrupted run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import mtlagg
from mtlagg.aggregators import (
    CRMOGM,
    DBMTL,
    DWA,
    FAMO,
    IMTL,
    IMTLL,
    MGDA,
    PCD,
    PIVRG,
    STCH,
    UW,
    ExcessMTL,
    GO4Align,
    GradNorm,
    GradVac,
    MoCo,
    MoDo,
    SDMGrad,
)
from mtlagg.bilevel import FORUM, MOML, AutoLambda

from ._toys import make_model, mse_losses, roundtrip, snapshot, toy_batch

STEPS, CHECKPOINT = 6, 3


AGGREGATORS: dict[str, Callable] = {
    "uw": UW,
    "imtll": IMTLL,
    "imtl": IMTL,
    "dwa": DWA,
    "dwa_window": lambda: DWA(window=2),
    "famo": FAMO,
    "stch": lambda: STCH(warmup_epochs=1),
    "go4align": lambda: GO4Align(num_groups=2, robust_step_size=0.1),
    "gradnorm": GradNorm,
    "gradvac_layer": lambda: GradVac(group_type="layer"),
    "moco": MoCo,
    "dbmtl": DBMTL,
    "excessmtl": ExcessMTL,
    "pcd": lambda: PCD(beta=0.5),
    "crmogm": lambda: CRMOGM(MGDA(), alpha=0.5),
    "crmogm_stateful_inner": lambda: CRMOGM(IMTL(), alpha=0.5),
    "pivrg": PIVRG,
    "sdmgrad": SDMGrad,
    "modo": lambda: MoDo(gamma=0.1),
    "moml": lambda: MOML(weight_lr=0.1, chunk_size=1),
    "autolambda": lambda: AutoLambda(inner_lr=0.1, weight_lr=0.1),
    "forum": lambda: FORUM(inner_step=2, weight_lr=0.1, chunk_size=1),
}


def one_step(method, model, optimizer, generator, step) -> None:
    """One training step with ``method``, including the extra calls it needs."""
    optimizer.zero_grad()
    if isinstance(method, (MOML, AutoLambda, FORUM)):
        method.step(model, mse_losses, toy_batch(generator), toy_batch(generator))
    elif isinstance(method, (SDMGrad, MoDo)):
        batches = [toy_batch(generator) for _ in range(method.num_batches)]
        mtlagg.multibatch_backward([mse_losses(model, b) for b in batches], model.trunk.parameters(), method)
    else:
        batch = toy_batch(generator)
        if isinstance(method, PIVRG) and step % 2 == 0:
            method.set_scores(torch.randn(3, generator=generator, dtype=torch.float64) * 10)
        mtlagg.backward(mse_losses(model, batch), model.trunk.named_parameters(), method)
    optimizer.step()
    if isinstance(method, FAMO):
        with torch.no_grad():
            method.update(mse_losses(model, batch))
    if isinstance(method, (DWA, STCH)) and getattr(method, "window", None) is None and step % 2 == 1:
        method.end_epoch()


def train(factory: Callable, checkpoint: int | None, load: bool = True):
    model = make_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    method = factory()
    for step in range(STEPS):
        if step == checkpoint:
            saved = roundtrip(method)
            method = factory()
            if load:
                method.load_state_dict(saved)
        one_step(method, model, optimizer, generator, step)
    return snapshot(model), method


def assert_same_state(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_interrupted_run_is_the_uninterrupted_run(name):
    factory = AGGREGATORS[name]
    torch.manual_seed(123)
    params_a, method_a = train(factory, checkpoint=None)
    torch.manual_seed(123)
    params_b, method_b = train(factory, checkpoint=CHECKPOINT)
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)
    assert_same_state(method_a.state_dict(), method_b.state_dict())
    # control: without loading the state, the run differs (the state matters)
    torch.manual_seed(123)
    params_c, _ = train(factory, checkpoint=CHECKPOINT, load=False)
    assert any(not torch.equal(a, c) for a, c in zip(params_a, params_c))
    # reset() forgets everything
    fresh = factory().state_dict()
    method_a.reset()
    reset_state = method_a.state_dict()
    reset_state.pop("rng", None), fresh.pop("rng", None)
    if name.startswith("crmogm"):
        reset_state.pop("inner"), fresh.pop("inner")
    assert_same_state(reset_state, fresh)


def test_state_dict_is_a_copy():
    uw = UW()
    uw.weights(losses=torch.tensor([1.0, 2.0]))
    saved = uw.state_dict()
    uw.weights(losses=torch.tensor([1.0, 2.0]))
    assert not torch.equal(saved["log_var"], uw.state_dict()["log_var"])


def test_loading_the_state_of_another_method():
    famo = FAMO()
    famo.weights(losses=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"cannot load this state into UW: missing keys \['log_var'\]"):
        UW().load_state_dict(famo.state_dict())


def test_gradvac_rng_is_part_of_the_state():
    gv = GradVac(generator=torch.Generator().manual_seed(5))
    J = torch.randn(4, 6, dtype=torch.float64)
    gv(J)
    saved = roundtrip(gv)
    expected = gv(J)
    other = GradVac(generator=torch.Generator().manual_seed(99))
    other.load_state_dict(saved)
    torch.testing.assert_close(other(J), expected, rtol=0, atol=0)
