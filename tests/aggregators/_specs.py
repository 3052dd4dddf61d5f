"""The stateless aggregators under test, with the properties each one promises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtlagg.aggregators import (
    IMTLG,
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
    LogCAGrad,
    LogIMTL,
    LogLoss,
    LogMGDA,
    Mean,
    NashMTL,
    PCGrad,
    Random,
    Sum,
    TrimmedMean,
    UPGrad,
)
from mtlagg.aggregators._base import Aggregator


def _seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Spec:
    """``make(T)`` builds a fresh aggregator for ``T`` tasks (same random stream every time)."""

    id: str
    make: Callable[[int], Aggregator]
    non_conflicting: bool = False
    permutation_equivariant: bool = False
    linear: bool = False
    min_tasks: int = 1
    #: may warn (and return documented zero weights) on degenerate matrices.
    may_warn: bool = False
    #: the direction is exactly 0 on strongly stationary matrices (non-conflicting and weighted).
    zero_when_stationary: bool = False


SPECS: list[Spec] = [
    Spec("mean", lambda T: Mean(), permutation_equivariant=True, linear=True),
    Spec("sum", lambda T: Sum(), permutation_equivariant=True, linear=True),
    Spec("constant", lambda T: Constant(torch.arange(1.0, T + 1)), linear=True),
    Spec("random-rlw", lambda T: Random(generator=_seeded()), linear=True),
    Spec("random-rgw", lambda T: Random("gradient", generator=_seeded()), linear=True),
    Spec("mgda", lambda T: MGDA(), non_conflicting=True, permutation_equivariant=True, zero_when_stationary=True),
    Spec("mgda-l2", lambda T: MGDA("l2"), non_conflicting=True, permutation_equivariant=True),
    Spec("mgda-loss", lambda T: MGDA("loss"), non_conflicting=True, permutation_equivariant=True),
    Spec("mgda-loss+", lambda T: MGDA("loss+"), non_conflicting=True, permutation_equivariant=True),
    Spec("pcgrad", lambda T: PCGrad(generator=_seeded()), linear=True),
    Spec("pcgrad-mean", lambda T: PCGrad("mean", generator=_seeded()), linear=True),
    Spec("graddrop", lambda T: GradDrop(generator=_seeded())),
    Spec("graddrop-leak", lambda T: GradDrop(0.3, generator=_seeded())),
    Spec("imtlg", lambda T: IMTLG(), permutation_equivariant=True),
    Spec("cagrad", lambda T: CAGrad(), permutation_equivariant=True),
    Spec("cagrad-c0.5-r0", lambda T: CAGrad(0.5, rescale=0), permutation_equivariant=True),
    Spec(
        "cagrad-c1",
        lambda T: CAGrad(1.0),
        non_conflicting=True,
        permutation_equivariant=True,
        zero_when_stationary=True,
    ),
    Spec("cagrad-c2-r2", lambda T: CAGrad(2.0, rescale=2), non_conflicting=True, permutation_equivariant=True),
    Spec(
        "nashmtl",
        lambda T: NashMTL(),
        non_conflicting=True,
        permutation_equivariant=True,
        may_warn=True,
        zero_when_stationary=True,
    ),
    Spec("nashmtl-noclip", lambda T: NashMTL(None), non_conflicting=True, permutation_equivariant=True, may_warn=True),
    Spec("alignedmtl", lambda T: AlignedMTL(), permutation_equivariant=True),
    Spec("alignedmtl-median", lambda T: AlignedMTL(scale_mode="median"), permutation_equivariant=True),
    Spec("alignedmtl-rmse", lambda T: AlignedMTL(scale_mode="rmse"), permutation_equivariant=True),
    Spec(
        "upgrad",
        lambda T: UPGrad(),
        non_conflicting=True,
        permutation_equivariant=True,
        linear=True,
        zero_when_stationary=True,
    ),
    Spec("upgrad-pref", lambda T: UPGrad(torch.linspace(0.5, 1.5, T)), non_conflicting=True, linear=True),
    Spec(
        "dualproj", lambda T: DualProj(), non_conflicting=True, permutation_equivariant=True, zero_when_stationary=True
    ),
    Spec("config", lambda T: ConFIG(), permutation_equivariant=True, linear=True),
    Spec("krum", lambda T: Krum(1), permutation_equivariant=True, min_tasks=5),
    Spec("multikrum", lambda T: Krum(1, n_selected=2), permutation_equivariant=True, min_tasks=5),
    Spec("trimmedmean", lambda T: TrimmedMean(1), permutation_equivariant=True, min_tasks=3),
    Spec(
        "fairgrad",
        lambda T: FairGrad(),
        non_conflicting=True,
        permutation_equivariant=True,
        may_warn=True,
        zero_when_stationary=True,
    ),
    Spec("fairgrad-0.5", lambda T: FairGrad(0.5), non_conflicting=True, permutation_equivariant=True, may_warn=True),
    Spec("si", lambda T: SI(), permutation_equivariant=True, linear=True),
    Spec("log-mgda", lambda T: LogMGDA(), non_conflicting=True, permutation_equivariant=True),
    Spec("log-cagrad", lambda T: LogCAGrad(), permutation_equivariant=True),
    Spec("log-imtl", lambda T: LogIMTL(), permutation_equivariant=True),
    Spec("logloss-upgrad", lambda T: LogLoss(UPGrad()), non_conflicting=True, permutation_equivariant=True),
    Spec("logloss-trimmedmean", lambda T: LogLoss(TrimmedMean(1)), permutation_equivariant=True, min_tasks=3),
]

SPEC_IDS = [spec.id for spec in SPECS]
