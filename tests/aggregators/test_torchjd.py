"""Directions against TorchJD 0.18 (a test-only peer) for the methods it has.

Where TorchJD computes the same thing exactly (closed forms, or its QP with the regularisation
switched off) the directions agree to 1e-6 relative; where its solver is approximate (MGDA's
Frank-Wolfe, Nash-MTL's sequence of cvxpy problems, CAGrad's ``norm_eps``) the tolerance says how
approximate. TorchJD's NashMTL needs ``ecos`` (``pip install --no-deps ecos``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mtlagg.aggregators import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    Constant,
    DualProj,
    FairGrad,
    GradDrop,
    Krum,
    Mean,
    NashMTL,
    PCGrad,
    Sum,
    TrimmedMean,
    UPGrad,
)

from ._matrices import conflicting

tj = pytest.importorskip("torchjd.aggregation")
exact_projector = pytest.importorskip("torchjd.linalg").QuadprogProjector(norm_eps=0.0, reg_eps=0.0)


def _matrices() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    return [
        torch.randn(5, 20, generator=g, dtype=torch.float64),
        conflicting(8, 40, g),
        conflicting(12, 60, g),
        torch.randn(3, 9, generator=g, dtype=torch.float64),
    ]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


CASES = [
    ("mean", lambda T: Mean(), lambda T: tj.Mean(), 1e-12),
    ("sum", lambda T: Sum(), lambda T: tj.Sum(), 1e-12),
    (
        "constant",
        lambda T: Constant(torch.arange(1.0, T + 1)),
        lambda T: tj.Constant(torch.arange(1.0, T + 1, dtype=torch.float64)),
        1e-12,
    ),
    ("upgrad", lambda T: UPGrad(), lambda T: tj.UPGrad(projector=exact_projector), 1e-6),
    (
        "upgrad-pref",
        lambda T: UPGrad(torch.linspace(0.2, 1.0, T)),
        lambda T: tj.UPGrad(torch.linspace(0.2, 1.0, T, dtype=torch.float64), projector=exact_projector),
        1e-6,
    ),
    ("dualproj", lambda T: DualProj(), lambda T: tj.DualProj(projector=exact_projector), 1e-6),
    # TorchJD's Frank-Wolfe stops early: 2000 steps still leave a few % (test_values checks MGDA
    # against quadprog to 1e-6).
    ("mgda", lambda T: MGDA(), lambda T: tj.MGDA(epsilon=1e-12, max_iters=2000), 5e-2),
    # TorchJD's Clarabel call uses default tolerances: about 1e-4 (mtlagg agrees with a tightly
    # solved cvxpy problem to 1e-7 in test_values).
    ("cagrad", lambda T: CAGrad(0.5, rescale=0), lambda T: tj.CAGrad(c=0.5), 3e-4),
    ("cagrad-c1", lambda T: CAGrad(1.0, rescale=0), lambda T: tj.CAGrad(c=1.0), 3e-4),
    ("imtlg", lambda T: IMTLG(), lambda T: tj.IMTLG(), 1e-6),
    ("alignedmtl", lambda T: AlignedMTL(), lambda T: tj.AlignedMTL(), 1e-6),
    ("alignedmtl-rmse", lambda T: AlignedMTL(scale_mode="rmse"), lambda T: tj.AlignedMTL(scale_mode="rmse"), 1e-6),
    ("config", lambda T: ConFIG(), lambda T: tj.ConFIG(), 1e-6),
    ("trimmedmean", lambda T: TrimmedMean(1), lambda T: tj.TrimmedMean(1), 1e-12),
    ("fairgrad", lambda T: FairGrad(2.0), lambda T: tj.FairGrad(alpha=2.0), 1e-5),
    ("fairgrad-1", lambda T: FairGrad(1.0), lambda T: tj.FairGrad(alpha=1.0), 1e-5),
    ("nashmtl", lambda T: NashMTL(max_norm=None), lambda T: tj.NashMTL(n_tasks=T, max_norm=0.0), 2e-3),
    ("nashmtl-clipped", lambda T: NashMTL(max_norm=1.0), lambda T: tj.NashMTL(n_tasks=T, max_norm=1.0), 2e-3),
]


@pytest.mark.parametrize(("name", "ours", "theirs", "tolerance"), CASES, ids=[c[0] for c in CASES])
def test_same_direction_as_torchjd(name: str, ours, theirs, tolerance: float) -> None:
    for J in _matrices():
        T = J.shape[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's warnings (non-DPP problem) inside TorchJD
            expected = theirs(T)(J)
        assert _relative(ours(T)(J), expected) <= tolerance, name


def test_pcgrad_matches_torchjd_for_two_tasks() -> None:
    """With two tasks the projection order does not matter."""
    for J in _matrices():
        pair = J[:2]
        assert _relative(PCGrad()(pair), tj.PCGrad()(pair)) <= 1e-10


def test_graddrop_matches_torchjd_with_the_same_draws() -> None:
    J = _matrices()[1]
    torch.manual_seed(5)
    theirs = tj.GradDrop(leak=torch.full((8,), 0.2, dtype=torch.float64))(J)
    torch.manual_seed(5)
    ours = GradDrop(0.2)(J)
    assert _relative(ours, theirs) <= 1e-12


def test_krum_matches_torchjd_when_the_outliers_are_clear() -> None:
    """TorchJD scores with distances, the paper (and mtlagg) with squared distances: same choice
    when the honest gradients cluster and the Byzantine ones are far away."""
    g = torch.Generator().manual_seed(4)
    honest = 1 + 0.1 * torch.randn(7, 10, generator=g, dtype=torch.float64)
    byzantine = 10 * torch.randn(2, 10, generator=g, dtype=torch.float64)
    J = torch.cat([byzantine, honest])
    for selected in (1, 3):
        ours, theirs = Krum(2, selected)(J), tj.Krum(n_byzantine=2, n_selected=selected)(J)
        assert _relative(ours, theirs) <= 1e-12
        assert np.isclose(ours.norm().item(), theirs.norm().item())
