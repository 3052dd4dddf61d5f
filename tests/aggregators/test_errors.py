"""Bad input and bad hyperparameters: each raises with a message that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

from mtlagg.aggregators import (
    MGDA,
    SI,
    AlignedMTL,
    CAGrad,
    ConFIG,
    Constant,
    DualProj,
    FairGrad,
    GradDrop,
    Krum,
    LogLoss,
    LogMGDA,
    NashMTL,
    PCGrad,
    Random,
    TrimmedMean,
    UPGrad,
)
from mtlagg.errors import SolverError

from ._matrices import positive_losses, sample
from ._specs import SPEC_IDS, SPECS, Spec


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_bad_jacobians_and_losses(spec: Spec) -> None:
    aggregator = spec.make(5)
    J = sample("normal-5x20")
    losses = positive_losses(5)
    with pytest.raises(ValueError, match=r"must be a T x n matrix, got shape \(20,\)"):
        aggregator(J[0], losses=losses)
    with pytest.raises(ValueError, match="has no rows"):
        aggregator(J[:0], losses=losses[:0])
    with pytest.raises(TypeError, match="must be floating point"):
        aggregator(J.to(torch.int64), losses=losses)
    bad = J.clone()
    bad[3, 7] = math.nan
    with pytest.raises(ValueError, match=r"holds NaN or Inf in the rows of tasks \[3\]"):
        aggregator(bad, losses=losses)
    bad[3, 7] = math.inf
    with pytest.raises(ValueError, match=r"holds NaN or Inf in the rows of tasks \[3\]"):
        aggregator(bad, losses=losses)
    with pytest.raises(ValueError, match=r"losses must have shape \(5,\)"):
        aggregator(J, losses=losses[:3])
    bad_losses = losses.clone()
    bad_losses[1] = math.nan
    with pytest.raises(ValueError, match=r"losses holds NaN or Inf"):
        aggregator(J, losses=bad_losses)


@pytest.mark.parametrize(
    "make",
    [lambda: MGDA("loss"), lambda: SI(), lambda: LogMGDA(), lambda: LogLoss(UPGrad())],
    ids=["mgda-loss", "si", "log-mgda", "logloss"],
)
def test_methods_that_need_the_losses_say_so(make) -> None:
    with pytest.raises(ValueError, match="needs the loss values: pass losses="):
        make()(sample("normal-5x20"))


def test_cagrad_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"c must be >= 0.0, got -0.1"):
        CAGrad(-0.1)
    with pytest.raises(ValueError, match="c must be finite"):
        CAGrad(math.nan)
    with pytest.raises(TypeError, match="c must be a number, got str"):
        CAGrad("0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rescale must be 0, 1 or 2, got 3"):
        CAGrad(0.5, rescale=3)  # type: ignore[arg-type]


def test_mgda_hyperparameters_and_losses() -> None:
    with pytest.raises(ValueError, match=r"normalization must be one of \('none', 'l2', 'loss', 'loss\+'\)"):
        MGDA("l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"divides by the losses, which must be >= 0"):
        MGDA("loss")(sample("normal-5x20"), losses=torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]))


def test_random_pcgrad_graddrop_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"kind must be 'loss' \(RLW\) or 'gradient' \(RGW\)"):
        Random("weights")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass the generator by keyword"):
        Random(torch.Generator())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator, got int"):
        Random(generator=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        PCGrad("max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        PCGrad(generator="seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"leak must lie in \[0, 1\], got \[1.5\]"):
        GradDrop([1.5])
    with pytest.raises(ValueError, match="leak must be a number or a 1-D sequence"):
        GradDrop([[0.1]])
    with pytest.raises(TypeError, match="f must be callable"):
        GradDrop(f=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch_separated must be a bool"):
        GradDrop(batch_separated=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leak has 2 entries but there are 5 tasks"):
        GradDrop([0.1, 0.2])(sample("normal-5x20"))
    J = sample("normal-5x20")
    with pytest.raises(ValueError, match=r"needs the values and the shapes of the feature tensors"):
        GradDrop(batch_separated=True)(J, input_values=torch.ones(20, dtype=J.dtype))
    with pytest.raises(ValueError, match=r"needs input_values="):
        GradDrop(batch_separated=True)(J)


def test_preference_vectors() -> None:
    J = sample("normal-5x20")
    for cls in (UPGrad, DualProj, AlignedMTL, ConFIG):
        with pytest.raises(ValueError, match=r"pref_vector must hold finite non-negative numbers"):
            cls(torch.tensor([1.0, -1.0]))
        with pytest.raises(ValueError, match=r"pref_vector must be a non-empty 1-D tensor, got shape \(2, 2\)"):
            cls(torch.ones(2, 2))
        with pytest.raises(ValueError, match="pref_vector has 3 entries but there are 5 tasks"):
            cls(torch.ones(3))(J)
    with pytest.raises(ValueError, match=r"scale_mode must be one of \('min', 'median', 'rmse'\), got 'max'"):
        AlignedMTL(scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Constant was given 3 weights but there are 5 tasks"):
        Constant([1.0, 2.0, 3.0])(J)


def test_krum_and_trimmed_mean_need_enough_tasks() -> None:
    with pytest.raises(ValueError, match="n_byzantine must be >= 0, got -1"):
        Krum(-1)
    with pytest.raises(ValueError, match="n_selected must be >= 1, got 0"):
        Krum(1, 0)
    with pytest.raises(TypeError, match="n_byzantine must be an int, got float"):
        Krum(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs more than 2 \* n_byzantine \+ 2 = 4 tasks, got 4"):
        Krum(1)(sample("normal-9x11")[:4])
    with pytest.raises(ValueError, match="cannot select n_selected=6 of 5 tasks"):
        Krum(1, 6)(sample("normal-5x20"))
    with pytest.raises(ValueError, match="trim_number must be >= 0, got -2"):
        TrimmedMean(-2)
    with pytest.raises(ValueError, match=r"needs more than 2 \* trim_number = 4 tasks, got 4"):
        TrimmedMean(2)(sample("normal-9x11")[:4])


def test_fairgrad_and_nashmtl_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"alpha must be > 0.0, got 0.0"):
        FairGrad(0.0)
    with pytest.raises(ValueError, match=r"on_failure must be one of \('raise', 'warn'\)"):
        FairGrad(on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tol must be > 0.0"):
        FairGrad(tol=0.0)
    with pytest.raises(ValueError, match=r"max_norm must be > 0.0, got 0.0"):
        NashMTL(max_norm=0.0)
    with pytest.raises(ValueError, match="update_weights_every must be >= 1, got 0"):
        NashMTL(update_weights_every=0)
    with pytest.raises(TypeError, match="warm_start must be a bool"):
        NashMTL(warm_start=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iterations must be >= 1"):
        NashMTL(max_iterations=0)


@pytest.mark.parametrize("cls", [NashMTL, FairGrad], ids=["nashmtl", "fairgrad"])
def test_unsolvable_bargaining_raises_or_warns_loudly(cls) -> None:
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(SolverError, match=r"were not solved .* no solution when a non-negative combination"):
        cls(on_failure="raise")(opposite)
    with pytest.warns(RuntimeWarning, match=r"were not solved .* The weights are 0"):
        d = cls()(opposite)
    assert torch.equal(d, torch.zeros(2))
    zero_row = torch.tensor([[1.0, 0.2], [0.0, 0.0], [0.3, 1.0]])
    with pytest.raises(SolverError, match=r"the gradients of tasks \[1\] are zero"):
        cls(on_failure="raise")(zero_row)
    with pytest.warns(RuntimeWarning, match=r"the gradients of tasks \[1\] are zero.*get weight 0"):
        weights = cls().weights(zero_row @ zero_row.T)
    assert weights[1] == 0 and (weights[[0, 2]] > 0).all()
    with pytest.warns(RuntimeWarning, match="every task gradient is zero"):
        assert torch.equal(cls()(torch.zeros(3, 4)), torch.zeros(4))


def test_log_loss_arguments_and_losses() -> None:
    with pytest.raises(TypeError, match="aggregator must be an Aggregator instance"):
        LogLoss(UPGrad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aggregator must be an Aggregator instance"):
        LogLoss("upgrad")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LogLoss of a LogLoss"):
        LogLoss(SI())
    with pytest.raises(ValueError, match=r"eps must be >= 0.0"):
        LogLoss(UPGrad(), eps=-1.0)
    J = sample("normal-5x20")
    with pytest.raises(ValueError, match=r"takes log\(L_i \+ eps\), so every L_i \+ eps must be > 0"):
        SI()(J, losses=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"takes log\(L_i \+ eps\)"):
        LogLoss(TrimmedMean(1))(J, losses=torch.tensor([1.0, -2.0, 1.0, 1.0, 1.0]))
    # eps makes zero losses admissible.
    assert torch.isfinite(SI(eps=1e-3)(J, losses=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))).all()


def test_weights_need_the_gramian_and_log_loss_keeps_the_kind_of_aggregator() -> None:
    from mtlagg.aggregators import WeightedAggregator

    with pytest.raises(ValueError, match="computes its weights from the Gramian: pass it"):
        UPGrad().weights(num_tasks=3)
    assert isinstance(LogLoss(UPGrad()), WeightedAggregator)
    assert not isinstance(LogLoss(TrimmedMean(1)), WeightedAggregator)
    assert isinstance(LogLoss(TrimmedMean(1)), LogLoss) and isinstance(SI(), LogLoss)


def test_jacobian_checked_when_a_gramian_aggregator_never_forms_the_gramian() -> None:
    """Aggregators of the Gramian check the Jacobian through the Gramian's diagonal; one whose
    weights do not need the Gramian after all still gets the Jacobian checked before ``w^T J``."""
    from mtlagg.aggregators import WeightedAggregator
    from mtlagg.aggregators._base import AggregatorInput

    class Uniform(WeightedAggregator):
        def compute_weights(self, inputs: AggregatorInput) -> torch.Tensor:
            return torch.full((inputs.num_tasks,), 1.0 / inputs.num_tasks, dtype=torch.float64)

    J = torch.randn(4, 6, dtype=torch.float64)
    J[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"the Jacobian holds NaN or Inf in the rows of tasks \[2\]"):
        Uniform()(J)
    assert torch.isfinite(Uniform()(torch.randn(4, 6))).all()
