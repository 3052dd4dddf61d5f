"""Each aggregator's direction against an independent computation of its definition (float64).

Optimisation-based methods are compared with quadprog / cvxpy / scipy solving the same problem,
closed-form methods with a direct numpy implementation of the paper's formula, and two-task
closed forms where they exist. Directions agree to 1e-5 relative (1e-7 where the reference is
exact).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlagg.aggregators import (
    IMTLG,
    MGDA,
    SI,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    Krum,
    LogCAGrad,
    LogIMTL,
    LogLoss,
    LogMGDA,
    NashMTL,
    PCGrad,
    Random,
    TrimmedMean,
    UPGrad,
)

from ._matrices import conflicting, of_rank, positive_losses
from ._oracles import cvxpy_cagrad, numpy, quadprog_nonneg, quadprog_simplex, scipy_alpha_fair

SEEDS = range(8)


def _random_problem(seed: int, *, full_rank: bool = True) -> np.ndarray:
    """A float64 matrix: generic or conflicting rows, T in [2, 16], full row rank by default."""
    g = torch.Generator().manual_seed(seed)
    T = int(torch.randint(2, 17, (), generator=g))
    n = T + int(torch.randint(1, 30, (), generator=g)) if full_rank else int(torch.randint(2, 30, (), generator=g))
    J = conflicting(T, n, g) if seed % 2 else torch.randn(T, n, generator=g, dtype=torch.float64)
    return numpy(J)


def _direction(aggregator, J: np.ndarray, losses: np.ndarray | None = None) -> np.ndarray:
    kwargs = {} if losses is None else {"losses": torch.from_numpy(losses)}
    return numpy(aggregator(torch.from_numpy(J), **kwargs))


def _close(d: np.ndarray, expected: np.ndarray, rel: float = 1e-5) -> None:
    scale = max(np.linalg.norm(expected), 1e-300)
    assert np.linalg.norm(d - expected) <= rel * scale, (d, expected)


# -- dual-cone projections ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_upgrad_against_quadprog(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    G = J @ J.T
    pref = np.linspace(0.5, 1.5, T)
    for p, aggregator in [(np.full(T, 1 / T), UPGrad()), (pref, UPGrad(torch.from_numpy(pref)))]:
        w = sum(quadprog_nonneg(G, np.zeros(T), p[k] * np.eye(T)[k]) for k in range(T))
        _close(_direction(aggregator, J), w @ J, 1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_dualproj_against_quadprog(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    v = quadprog_nonneg(J @ J.T, np.zeros(T), np.full(T, 1 / T))
    _close(_direction(DualProj(), J), v @ J, 1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_upgrad_and_dualproj_on_rank_deficient_matrices_against_cvxpy(seed: int) -> None:
    import cvxpy as cp

    g = torch.Generator().manual_seed(50 + seed)
    T, n = 8, 12
    J = numpy(of_rank(T, n, 3, g))
    # The primal definitions: projections onto {x : Jx >= 0} in R^n.
    projections = []
    for target in [*J, J.mean(axis=0)]:
        x = cp.Variable(n)
        cp.Problem(cp.Minimize(cp.sum_squares(x - target)), [J @ x >= 0]).solve(solver=cp.CLARABEL)
        projections.append(x.value)
    scale = np.linalg.norm(J, axis=1).max()
    assert np.linalg.norm(_direction(UPGrad(), J) - np.mean(projections[:-1], axis=0)) <= 1e-6 * scale
    assert np.linalg.norm(_direction(DualProj(), J) - projections[-1]) <= 1e-6 * scale


# -- MGDA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("seed", SEEDS)
def test_mgda_against_quadprog(seed: int, normalization: str) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    losses = numpy(positive_losses(T, seed))
    scales = np.ones(T)
    if normalization in ("l2", "loss+"):
        scales *= np.linalg.norm(J, axis=1)
    if normalization in ("loss", "loss+"):
        scales *= losses
    normalized = J / scales[:, None]
    alpha = quadprog_simplex(normalized @ normalized.T, np.zeros(T))
    _close(_direction(MGDA(normalization), J, losses), alpha @ normalized, 1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_mgda_two_task_closed_form(seed: int) -> None:
    g = torch.Generator().manual_seed(70 + seed)
    g1, g2 = numpy(torch.randn(2, 5, generator=g, dtype=torch.float64))
    gamma = min(max((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0), 1.0)
    _close(_direction(MGDA(), np.stack([g1, g2])), gamma * g1 + (1 - gamma) * g2, 1e-10)


# -- CAGrad ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.4, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(6))
def test_cagrad_against_cvxpy(seed: int, c: float) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    G = J @ J.T
    w, _ = cvxpy_cagrad(G, c)
    g0 = J.mean(axis=0)
    gw = w @ J
    expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    for rescale, factor in [(0, 1.0), (1, 1 + c**2), (2, 1 + c)]:
        _close(_direction(CAGrad(c, rescale=rescale), J), expected / factor, 1e-5)
    del T


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_two_task_closed_form(seed: int) -> None:
    from .test_solvers import _cagrad_two_tasks

    g = torch.Generator().manual_seed(80 + seed)
    g1, g2 = numpy(torch.randn(2, 4, generator=g, dtype=torch.float64))
    c = 0.5
    w = _cagrad_two_tasks(g1, g2, c)
    gw, g0 = w * g1 + (1 - w) * g2, (g1 + g2) / 2
    expected = (g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw) / (1 + c**2)
    _close(_direction(CAGrad(c), np.stack([g1, g2])), expected, 1e-8)


def test_cagrad_degenerate_optimum_returns_the_dual_projection_of_the_mean() -> None:
    import cvxpy as cp

    # 0.4 g1 + 0.4 g2 + 0.2 g3 = 0; the dual cone is the half-line x1 = x2 = 0, x3 >= 0.
    J = np.array([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    d = _direction(CAGrad(1.5, rescale=0), J)
    # The nearest point to the mean gradient with J x >= 0 (the projection onto the dual cone).
    x = cp.Variable(3)
    cp.Problem(cp.Minimize(cp.sum_squares(x - J.mean(axis=0))), [J @ x >= 0]).solve(solver=cp.CLARABEL)
    _close(d, x.value, 1e-6)
    _close(d, np.array([0.0, 0.0, 0.25]), 1e-9)


# -- NashMTL and FairGrad -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_nashmtl_against_scipy(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    G = J @ J.T
    alpha = scipy_alpha_fair(G, 1.0)
    _close(_direction(NashMTL(max_norm=None), J), alpha @ J, 1e-7)
    d = _direction(NashMTL(), J)  # clipped to norm 1 (the raw norm is sqrt(T) > 1)
    _close(d, alpha @ J / math.sqrt(T), 1e-7)
    assert np.linalg.norm(d) == pytest.approx(1.0, rel=1e-9)


def test_nashmtl_two_task_closed_form() -> None:
    J = np.array([[1.0, 0.2, 0.0], [0.3, -0.1, 2.0]])
    G = J @ J.T
    rho = math.sqrt(G[0, 0] / G[1, 1])
    a1 = 1 / math.sqrt(G[0, 0] + G[0, 1] * rho)
    _close(_direction(NashMTL(max_norm=None), J), a1 * J[0] + a1 * rho * J[1], 1e-10)
    _close(_direction(NashMTL(max_norm=0.3), J), 0.3 * (a1 * J[0] + a1 * rho * J[1]) / math.sqrt(2), 1e-10)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", range(5))
def test_fairgrad_against_scipy(seed: int, alpha: float) -> None:
    J = _random_problem(seed)
    w = scipy_alpha_fair(J @ J.T, alpha)
    _close(_direction(FairGrad(alpha), J), w @ J, 1e-7)


# -- closed-form weightings -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_imtlg_against_the_paper_formula(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    units = J / np.linalg.norm(J, axis=1, keepdims=True)
    D = J[0] - J[1:]
    U = units[0] - units[1:]
    if T == 1:
        alpha = np.ones(1)
    else:
        rest = J[0] @ U.T @ np.linalg.inv(D @ U.T)
        alpha = np.concatenate([[1 - rest.sum()], rest])
    _close(_direction(IMTLG(), J), alpha @ J, 1e-7)
    # The defining property: equal projections on every unit gradient.
    d = _direction(IMTLG(), J)
    projections = units @ d
    assert np.ptp(projections) <= 1e-7 * np.abs(projections).max()


def test_imtlg_two_tasks_and_one_task() -> None:
    g1, g2 = np.array([2.0, 0.0]), np.array([0.5, 1.0])
    u1, u2 = g1 / np.linalg.norm(g1), g2 / np.linalg.norm(g2)
    a2 = g1 @ (u1 - u2) / ((g1 - g2) @ (u1 - u2))
    _close(_direction(IMTLG(), np.stack([g1, g2])), (1 - a2) * g1 + a2 * g2, 1e-12)
    _close(_direction(IMTLG(), g1[None]), g1, 1e-12)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("seed", SEEDS)
def test_alignedmtl_against_the_svd(seed: int, scale_mode: str) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    U, S, Vt = np.linalg.svd(J, full_matrices=False)
    # (the median of an even count is the lower middle value, as torch.median and the official code)
    lower_median = np.sort(S)[(len(S) - 1) // 2]
    sigma = {"min": S.min(), "median": lower_median, "rmse": np.sqrt(np.mean(S**2))}[scale_mode]
    aligned = sigma * U @ Vt  # equal singular values
    _close(_direction(AlignedMTL(scale_mode=scale_mode), J), np.full(T, 1 / T) @ aligned, 1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_config_against_the_official_formula(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    for p in (np.ones(T), np.linspace(0.2, 1.0, T)):
        units = J / np.linalg.norm(J, axis=1, keepdims=True)
        b = np.linalg.pinv(units) @ p
        b = b / np.linalg.norm(b)
        expected = (J @ b).sum() * b
        _close(_direction(ConFIG(torch.from_numpy(p)), J), expected, 1e-7)


@pytest.mark.parametrize(("f", "m"), [(0, 1), (1, 1), (1, 3), (2, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_krum_against_brute_force(seed: int, f: int, m: int) -> None:
    g = torch.Generator().manual_seed(90 + seed)
    T = 2 * f + 3 + seed
    J = numpy(torch.randn(T, 6, generator=g, dtype=torch.float64))
    scores = []
    for i in range(T):
        distances = sorted(np.sum((J[i] - J[j]) ** 2) for j in range(T) if j != i)
        scores.append(sum(distances[: T - f - 2]))
    selected = np.argsort(scores, kind="stable")[:m]
    _close(_direction(Krum(f, m), J), J[selected].mean(axis=0), 1e-10)


@pytest.mark.parametrize("b", [0, 1, 2])
def test_trimmedmean_against_numpy(b: int) -> None:
    J = numpy(torch.randn(7, 11, generator=torch.Generator().manual_seed(b), dtype=torch.float64))
    expected = np.sort(J, axis=0)[b : 7 - b].mean(axis=0)
    _close(_direction(TrimmedMean(b), J), expected, 1e-12)


# -- random methods, with the same draws ----------------------------------------------------------


def test_random_is_the_softmax_of_gaussian_draws() -> None:
    J = numpy(torch.randn(5, 8, dtype=torch.float64))
    draws = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = numpy(torch.softmax(draws, dim=0)) @ J
    for kind in ("loss", "gradient"):
        _close(_direction(Random(kind, generator=torch.Generator().manual_seed(4)), J), expected, 1e-12)
    assert Random("loss").weights_task_params and not Random("gradient").weights_task_params


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_against_the_vector_algorithm(seed: int, reduction: str) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    T = 3 + seed
    J = numpy(conflicting(T, 10, g))
    orders = PCGrad(generator=torch.Generator().manual_seed(seed)).random_orders(T).tolist()
    total = np.zeros(J.shape[1])
    for i in range(T):
        projected = J[i].copy()
        for j in orders[i]:
            dot = projected @ J[j]
            if dot < 0:
                projected -= dot / (J[j] @ J[j]) * J[j]
        total += projected
    expected = total if reduction == "sum" else total / T
    d = _direction(PCGrad(reduction, generator=torch.Generator().manual_seed(seed)), J)
    _close(d, expected, 1e-10)


def test_pcgrad_two_tasks_projects_each_onto_the_other_normal_plane() -> None:
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    _close(_direction(PCGrad(), np.stack([g1, g2])), p1 + p2, 1e-12)


@pytest.mark.parametrize("leak", [0.0, 0.25])
def test_graddrop_against_the_algorithm(leak: float) -> None:
    J = numpy(torch.randn(4, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    uniform = numpy(torch.rand(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    purity = 0.5 * (1 + J.sum(axis=0) / np.abs(J).sum(axis=0))
    masks = ((purity > uniform) & (J > 0)) | ((purity < uniform) & (J < 0))
    expected = ((leak + (1 - leak) * masks) * J).sum(axis=0)
    d = _direction(GradDrop(leak, generator=torch.Generator().manual_seed(2)), J)
    _close(d, expected, 1e-12)


def test_graddrop_batch_separated_sums_signed_gradients_over_the_batch() -> None:
    """The paper's activation-layer branch: G_i = sum over the batch of sign(A) * grad_A L_i."""
    from mtlagg.aggregators import AggregatorInput

    T, B, R = 3, 4, 5
    g = torch.Generator().manual_seed(3)
    J = torch.randn(T, B * R, generator=g, dtype=torch.float64)
    values = torch.randn(B * R, generator=g, dtype=torch.float64)
    uniform = torch.rand(R, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    signals = (J.reshape(T, B, R) * values.reshape(B, R).sign()).sum(dim=1)
    purity = 0.5 * (1 + signals.sum(0) / signals.abs().sum(0))
    masks = ((purity > uniform) & (signals > 0)) | ((purity < uniform) & (signals < 0))
    expected = (J.reshape(T, B, R) * masks[:, None, :]).sum(0).reshape(-1)
    aggregator = GradDrop(batch_separated=True, generator=torch.Generator().manual_seed(9))
    inputs = AggregatorInput(T, jacobian=J, input_values=values, block_sizes=[B * R], block_shapes=[(B, R)])
    assert torch.allclose(aggregator.compute_direction(inputs), expected, atol=1e-12)


# -- log-loss wrappers ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_log_loss_methods_act_on_the_log_loss_gradients(seed: int) -> None:
    J = _random_problem(seed)
    T = J.shape[0]
    losses = numpy(positive_losses(T, seed))
    log_gradients = J / losses[:, None]
    _close(_direction(SI(), J, losses), log_gradients.sum(axis=0), 1e-12)
    _close(_direction(LogMGDA(eps=0.0), J, losses), _direction(MGDA(), log_gradients), 1e-9)
    _close(_direction(LogCAGrad(), J, losses), _direction(CAGrad(), log_gradients), 1e-9)
    shifted = J / (losses + 1e-8)[:, None]
    _close(_direction(LogIMTL(), J, losses), _direction(IMTLG(), shifted), 1e-9)
    if T >= 3:
        _close(_direction(LogLoss(TrimmedMean(1)), J, losses), _direction(TrimmedMean(1), log_gradients), 1e-12)
    _close(_direction(LogLoss(UPGrad(), eps=0.5), J, losses), _direction(UPGrad(), J / (losses + 0.5)[:, None]), 1e-9)
