"""Registry, documentation, the one-line use in a training loop, and errors on bad input."""

from __future__ import annotations

import pytest
import torch

import mtlagg
from mtlagg.aggregators import (
    DWA,
    FAMO,
    GLS,
    PIVRG,
    REGISTRY,
    STCH,
    UW,
    ConsMTL,
    GradNorm,
    GradVac,
    MoCo,
    MoDo,
    SDMGrad,
    lookup,
)
from mtlagg.bilevel import FORUM, MOML, AutoLambda

from ._toys import make_model, mse_losses, toy_batch, train_single_batch

NAMES = [
    "uw", "dwa", "gls", "imtll", "imtl", "famo", "stch", "go4align",
    "gradnorm", "gradvac", "moco", "dbmtl", "excessmtl", "pcd", "crmogm", "pivrg", "consmtl",
    "sdmgrad", "modo", "moml", "autolambda", "forum",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_registered_documented_and_constructible(name):
    cls = lookup(name)
    assert REGISTRY[cls.__name__.lower()] is cls
    doc = cls.__doc__ or ""
    assert "Needs" in doc or "Call" in doc, name  # what the method needs / which call to use
    assert any(str(year) in doc for year in range(2018, 2027)), name  # the paper
    assert "Default" in doc or "default" in doc, name
    cls()  # the CLI builds every method by name with its defaults


def test_bilevel_methods_are_marked():
    for cls in (MOML, AutoLambda, FORUM):
        assert lookup(cls.__name__).kind == "bilevel"


SINGLE_BATCH = ["uw", "dwa", "gls", "imtll", "imtl", "famo", "go4align", "gradnorm", "gradvac", "moco", "dbmtl",
                "excessmtl", "pcd", "crmogm", "pivrg"]  # fmt: skip


@pytest.mark.parametrize("name", SINGLE_BATCH)
def test_one_line_use_in_a_training_loop(name):
    model = make_model(0)
    result = train_single_batch(model, lookup(name)(), name, steps=4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(result.losses).all()


class TestCallOrder:
    def test_famo_backward_twice_without_update(self):
        famo = FAMO()
        famo.weights(losses=torch.tensor([1.0, 2.0]))
        with pytest.raises(RuntimeError, match=r"FAMO.update\(new_losses\) was not called after the last step"):
            famo.weights(losses=torch.tensor([1.0, 2.0]))

    def test_famo_update_before_backward(self):
        with pytest.raises(RuntimeError, match="none is pending"):
            FAMO().update(torch.tensor([1.0, 2.0]))

    def test_famo_update_with_the_wrong_number_of_losses(self):
        famo = FAMO()
        famo.weights(losses=torch.tensor([1.0, 2.0]))
        with pytest.raises(ValueError, match=r"FAMO\.update got 3 losses but the step had 2 tasks"):
            famo.update(torch.tensor([1.0, 2.0, 3.0]))

    def test_famo_loss_below_its_bound(self):
        with pytest.raises(ValueError, match="needs every loss above its lower bound"):
            FAMO(min_losses=[0.5, 0.5]).weights(losses=torch.tensor([1.0, 0.2]))

    def test_dwa_end_epoch_without_steps(self):
        with pytest.raises(RuntimeError, match="no step ran since the last one"):
            DWA().end_epoch()

    def test_dwa_window_has_no_epochs(self):
        with pytest.raises(RuntimeError, match=r"DWA\(window=3\) weighs per iteration"):
            DWA(window=3).end_epoch()

    def test_stch_nadir_epoch_without_steps(self):
        with pytest.raises(RuntimeError, match="closed the last warm-up epoch, but no step ran in it"):
            STCH(warmup_epochs=1).end_epoch()

    def test_stch_needs_a_nadir_without_warmup(self):
        with pytest.raises(ValueError, match="pass nadir="):
            STCH(warmup_epochs=0)


class TestBadInput:
    def test_wrong_number_of_losses_for_the_state(self):
        uw = UW()
        uw.weights(losses=torch.tensor([1.0, 2.0, 3.0]))
        with pytest.raises(ValueError, match=r"UW holds state for 3 tasks but this step has 2 losses; call reset\(\)"):
            uw.weights(losses=torch.tensor([1.0, 2.0]))
        uw.reset()
        uw.weights(losses=torch.tensor([1.0, 2.0]))

    def test_wrong_number_of_tasks_through_backward(self):
        model = make_model(0)
        gradnorm = GradNorm()
        batch = toy_batch(torch.Generator().manual_seed(0))
        mtlagg.backward(mse_losses(model, batch), model.trunk.parameters(), gradnorm)
        with pytest.raises(ValueError, match="GradNorm holds state for 3 tasks"):
            mtlagg.backward(mse_losses(model, batch)[:2], model.trunk.parameters(), gradnorm)

    def test_gradvac_layers_need_parameter_names(self):
        model = make_model(0)
        batch = toy_batch(torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match=r"pass shared_params as model\.named_parameters\(\)"):
            mtlagg.backward(mse_losses(model, batch), model.trunk.parameters(), GradVac(group_type="layer"))

    def test_memory_of_another_shape(self):
        moco = MoCo()
        moco(torch.randn(2, 4), losses=torch.ones(2))
        with pytest.raises(ValueError, match=r"tracking variables are \(2, 4\) but the Jacobian is \(2, 5\)"):
            moco(torch.randn(2, 5), losses=torch.ones(2))

    def test_gls_and_stch_need_positive_losses(self):
        with pytest.raises(ValueError, match="needs them positive"):
            STCH(nadir=torch.ones(2), warmup_epochs=0).weights(losses=torch.tensor([1.0, -1.0]))
        with pytest.raises(ValueError, match="needs them positive"):
            GLS().weights(losses=torch.tensor([-1.0, 1.0]))

    def test_loss_weighting_needs_the_losses(self):
        with pytest.raises(ValueError, match="UW needs the loss values"):
            UW().weights(num_tasks=2)

    def test_non_finite_losses_are_caught_before_the_state_changes(self):
        model = make_model(0)
        batch = toy_batch(torch.Generator().manual_seed(0))
        losses = mse_losses(model, batch)
        losses[1] = losses[1] * float("nan")
        uw = UW()
        with pytest.raises(mtlagg.NonFiniteError):
            mtlagg.backward(losses, model.trunk.parameters(), uw)
        assert uw.state_dict()["log_var"] is None

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: UW(weight_optimizer="rmsprop"), "weight_optimizer must be 'adam' or 'sgd'"),
            (lambda: UW(weight_lr=-1), "weight_lr must be non-negative"),
            (lambda: DWA(temperature=0), "temperature must be positive"),
            (lambda: GradVac(group_type="module"), "group_type must be"),
            (lambda: PIVRG(bound=1.0), "bound must be > 1"),
            (lambda: MoDo(num_batches=4), "num_batches must be 2 or 3"),
            (lambda: SDMGrad(momentum=1.0), r"momentum must be in \[0, 1\)"),
            (lambda: ConsMTL(lambda_=-1), "lambda_ must be non-negative"),
            (lambda: MOML(outer="test"), "outer must be 'validation' or 'split'"),
            (lambda: AutoLambda(hypergradient="approx"), "hypergradient must be"),
        ],
    )
    def test_hyper_parameters_are_checked(self, make, message):
        with pytest.raises(ValueError, match=message):
            make()
