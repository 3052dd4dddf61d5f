"""The solvers of ``mtlagg.solvers`` against independent references, on many random problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlagg.errors import SolverError
from mtlagg.solvers import (
    project_onto_simplex,
    project_weights,
    solve_alpha_fair,
    solve_cagrad_dual,
    solve_nonneg_qp,
)

from ._matrices import conflicting, of_rank
from ._oracles import (
    cagrad_objective,
    cvxpy_cagrad,
    cvxpy_qp,
    kkt_violation,
    numpy,
    quadprog_nonneg,
    quadprog_simplex,
    scipy_alpha_fair,
)


def _gramian(T: int, n: int, g: torch.Generator) -> torch.Tensor:
    J = torch.randn(T, n, generator=g, dtype=torch.float64)
    return J @ J.T


# -- solve_nonneg_qp ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_qp_matches_quadprog_on_positive_definite_problems(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 41, (), generator=g))
    Q = _gramian(m, m + 5 + seed, g) * 10 ** float(torch.empty(()).uniform_(-6, 6, generator=g))
    batch = 4
    c = torch.randn(batch, m, generator=g, dtype=torch.float64) * Q.diagonal().max()
    x = solve_nonneg_qp(Q, c)
    xs = solve_nonneg_qp(Q, torch.zeros(m, dtype=torch.float64) + c[0].abs().mean(), simplex=True)
    for b in range(batch):
        expected = quadprog_nonneg(numpy(Q), numpy(c[b]))
        assert np.abs(numpy(x[b]) - expected).max() <= 1e-7 * (1 + np.abs(expected).max())
    expected = quadprog_simplex(numpy(Q), numpy(torch.zeros(m, dtype=torch.float64) + c[0].abs().mean()))
    assert np.abs(numpy(xs) - expected).max() <= 1e-7


@pytest.mark.parametrize("seed", range(12))
def test_qp_batched_matrices(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    batch, m = 6, int(torch.randint(2, 20, (), generator=g))
    Qs = torch.stack([_gramian(m, 2 * m, g) for _ in range(batch)])
    c = torch.randn(batch, m, generator=g, dtype=torch.float64)
    for simplex in (False, True):
        x = solve_nonneg_qp(Qs, c, simplex=simplex)
        for b in range(batch):
            solve = quadprog_simplex if simplex else quadprog_nonneg
            expected = solve(numpy(Qs[b]), numpy(c[b]))
            assert np.abs(numpy(x[b]) - expected).max() <= 1e-7 * (1 + np.abs(expected).max())


def _degenerate_gramians() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    cases = []
    for T, n, rank in [(6, 20, 2), (12, 4, 4), (20, 60, 5), (8, 8, 1)]:
        J = of_rank(T, n, rank, g)
        cases.append((f"rank{rank}-{T}x{n}", J @ J.T))
    J = torch.randn(8, 15, generator=g, dtype=torch.float64)
    J[4:] = J[:4]
    cases.append(("duplicated", J @ J.T))
    J = torch.randn(7, 15, generator=g, dtype=torch.float64)
    J[[1, 5]] = 0
    cases.append(("zero-rows", J @ J.T))
    J = conflicting(30, 100, g)
    cases.append(("conflicting", J @ J.T))
    cases.append(("tiny", 1e-16 * cases[-1][1]))
    cases.append(("huge", 1e16 * cases[-2][1]))
    cases.append(("zero", torch.zeros(5, 5, dtype=torch.float64)))
    cases.append(("one", torch.tensor([[2.5]], dtype=torch.float64)))
    return cases


@pytest.mark.parametrize("simplex", [False, True], ids=["orthant", "simplex"])
@pytest.mark.parametrize(("name", "Q"), _degenerate_gramians(), ids=[n for n, _ in _degenerate_gramians()])
def test_qp_on_degenerate_problems(name: str, Q: torch.Tensor, simplex: bool) -> None:
    """Singular / scaled problems (c in the range of Q): KKT conditions checked independently in
    numpy, and the optimal value against cvxpy (Clarabel)."""
    T = Q.shape[0]
    g = torch.Generator().manual_seed(T)
    # The UPGrad linear terms (columns of Q scaled by 1/T), and one random combination.
    c = torch.cat([Q / T, (torch.randn(1, T, generator=g, dtype=torch.float64) @ Q)])
    if simplex:
        c = torch.zeros(1, T, dtype=torch.float64)
    x = solve_nonneg_qp(Q, c, simplex=simplex)
    scale = float(Q.diagonal().max()) or 1.0
    for b in range(min(c.shape[0], 6)):
        Qn, cn, xn = numpy(Q) / scale, numpy(c[b]) / scale, numpy(x[b])
        assert kkt_violation(Qn, cn, xn, simplex) <= 1e-8
        _, value = cvxpy_qp(Qn, cn, simplex)
        ours = 0.5 * xn @ Qn @ xn + cn @ xn
        assert ours <= value + 1e-7 * (1 + abs(value))


def test_qp_closed_forms_for_one_and_two_variables() -> None:
    Q = torch.tensor([[4.0]], dtype=torch.float64)
    x = solve_nonneg_qp(Q, torch.tensor([[-2.0], [3.0]], dtype=torch.float64))
    assert torch.allclose(x, torch.tensor([[0.5], [0.0]], dtype=torch.float64))
    assert solve_nonneg_qp(Q, torch.zeros(1, dtype=torch.float64), simplex=True).item() == pytest.approx(1.0)
    # Two variables on the simplex: MGDA's closed form.
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-0.5, 2.0], dtype=torch.float64)
    J = torch.stack([g1, g2])
    gamma = float(((g2 - g1) @ g2) / (g1 - g2).norm() ** 2)
    x = solve_nonneg_qp(J @ J.T, torch.zeros(2, dtype=torch.float64), simplex=True)
    assert x.tolist() == pytest.approx([min(max(gamma, 0), 1), 1 - min(max(gamma, 0), 1)], abs=1e-12)


def test_qp_warm_start_gives_the_same_answer() -> None:
    g = torch.Generator().manual_seed(3)
    Q = conflicting(25, 70, g)
    Q = Q @ Q.T
    c = Q / 25
    cold = solve_nonneg_qp(Q, c)
    assert torch.allclose(solve_nonneg_qp(Q, c, initial_free=cold > 0), cold, atol=1e-12)
    assert torch.allclose(solve_nonneg_qp(Q, c, initial_free=torch.ones_like(c, dtype=torch.bool)), cold, atol=1e-10)


def test_qp_float32_gramian_slightly_indefinite() -> None:
    """A Gramian formed in float32 from duplicated rows has eigenvalues of about -1e-7 * norm."""
    g = torch.Generator().manual_seed(11)
    J = torch.randn(6, 300, generator=g)
    J[3:] = J[:3] * 1.0000001
    G = J @ J.T
    assert torch.linalg.eigvalsh(G.double()).min() < 0
    x = solve_nonneg_qp(G, G / 6)
    assert torch.isfinite(x).all() and (x >= 0).all()


def test_qp_errors() -> None:
    Q = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Q must be \(3, 3\) or \(2, 3, 3\), got shape \(4, 4\)"):
        solve_nonneg_qp(torch.eye(4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="c must be"):
        solve_nonneg_qp(Q, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="no variables"):
        solve_nonneg_qp(torch.zeros(0, 0), torch.zeros(0))
    with pytest.raises(SolverError, match="NaN or Inf entries"):
        solve_nonneg_qp(Q, torch.tensor([float("nan"), 0.0, -1.0]))
    with pytest.raises(SolverError, match="NaN or Inf entries"):
        solve_nonneg_qp(torch.full((3, 3), float("inf")), torch.tensor([0.0, 0.0, -1.0]))


# -- project_weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_project_weights_matches_quadprog(seed: int) -> None:
    g = torch.Generator().manual_seed(200 + seed)
    T = int(torch.randint(2, 25, (), generator=g))
    G = _gramian(T, T + 10, g)
    u = torch.rand(3, T, generator=g, dtype=torch.float64)
    v = project_weights(G, u)
    for b in range(3):
        expected = quadprog_nonneg(numpy(G), np.zeros(T), numpy(u[b]))
        assert np.abs(numpy(v[b]) - expected).max() <= 1e-7 * (1 + np.abs(expected).max())


# -- solve_cagrad_dual ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_cagrad_dual_matches_cvxpy(seed: int) -> None:
    g = torch.Generator().manual_seed(300 + seed)
    T = int(torch.randint(2, 30, (), generator=g))
    n = int(torch.randint(2, 60, (), generator=g))
    kind = seed % 3
    if kind == 0:
        J = torch.randn(T, n, generator=g, dtype=torch.float64)
    elif kind == 1:
        J = conflicting(T, n, g)
    else:
        J = of_rank(T, n, max(1, min(T, n) // 3), g)
    G = J @ J.T
    c = [0.1, 0.4, 0.5, 0.9, 1.0, 2.5][seed % 6]
    solution = solve_cagrad_dual(G, c)
    w = numpy(solution.weights)
    _, value = cvxpy_cagrad(numpy(G), c)
    ours = cagrad_objective(numpy(G), c, w)
    assert ours <= value + 1e-7 * float(G.diagonal().max())
    assert abs(w.sum() - 1) < 1e-9 and w.min() >= -1e-12
    if not solution.degenerate and solution.ratio > 0:
        norm = math.sqrt(max(w @ numpy(G) @ w, 0))
        b = numpy(G).mean(axis=1)
        assert solution.ratio == pytest.approx(c * math.sqrt(b.mean()) / norm, rel=1e-7)


def _cagrad_two_tasks(g1: np.ndarray, g2: np.ndarray, c: float) -> float:
    """Closed form of the CAGrad dual for two tasks: the weight on g1 (stationarity of a 1-D problem)."""
    g0 = (g1 + g2) / 2
    r = c * np.linalg.norm(g0)
    kappa = -((g1 - g2) @ g0) / r
    a, beta, gamma = (g1 - g2) @ (g1 - g2), g2 @ (g1 - g2), g2 @ g2
    candidates = [0.0, 1.0]
    if kappa**2 < a:
        inner = beta**2 + a * (kappa**2 * gamma - beta**2) / (a - kappa**2)
        for sign in (1, -1):
            w = (-beta + sign * math.sqrt(max(inner, 0))) / a
            if 0 <= w <= 1 and np.sign(a * w + beta) == np.sign(kappa):
                candidates.append(w)

    def objective(w: float) -> float:
        gw = g2 + w * (g1 - g2)
        return float(gw @ g0 + r * np.linalg.norm(gw))

    return min(candidates, key=objective)


@pytest.mark.parametrize("seed", range(10))
def test_cagrad_dual_two_task_closed_form(seed: int) -> None:
    g = torch.Generator().manual_seed(400 + seed)
    J = torch.randn(2, 6, generator=g, dtype=torch.float64)
    c = [0.2, 0.5, 0.8][seed % 3]
    expected = _cagrad_two_tasks(numpy(J[0]), numpy(J[1]), c)
    assert solve_cagrad_dual(J @ J.T, c).weights[0].item() == pytest.approx(expected, abs=1e-9)


def test_cagrad_dual_degenerate_and_trivial_cases() -> None:
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)  # 0 in the hull
    solution = solve_cagrad_dual(J @ J.T, 1.5)
    assert solution.degenerate and solution.ratio == 0.0
    zero = solve_cagrad_dual(torch.zeros(3, 3), 0.5)
    assert zero.ratio == 0.0 and not zero.degenerate
    assert solve_cagrad_dual(J @ J.T, 0.0).ratio == 0.0


# -- solve_alpha_fair -----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", range(6))
def test_alpha_fair_matches_scipy(alpha: float, seed: int) -> None:
    g = torch.Generator().manual_seed(500 + seed)
    T = int(torch.randint(2, 30, (), generator=g))
    J = conflicting(T, 3 * T, g) * 10 ** float(torch.empty(()).uniform_(-4, 4, generator=g))
    G = J @ J.T
    solution = solve_alpha_fair(G, alpha)
    assert solution.converged and solution.residual <= 1e-10
    expected = scipy_alpha_fair(numpy(G), alpha)
    assert np.abs(numpy(solution.weights) - expected).max() <= 1e-7 * np.abs(expected).max()


def test_alpha_fair_two_task_nash_closed_form() -> None:
    J = torch.tensor([[1.0, 0.2, 0.0], [0.3, -0.1, 2.0]], dtype=torch.float64)
    G = J @ J.T
    rho = math.sqrt(G[0, 0] / G[1, 1])
    a1 = 1 / math.sqrt(G[0, 0] + G[0, 1] * rho)
    assert solve_alpha_fair(G, 1.0).weights.tolist() == pytest.approx([a1, a1 * rho], rel=1e-10)


def test_alpha_fair_reports_unsolvable_equations() -> None:
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # opposite gradients
    assert not solve_alpha_fair(J @ J.T, 1.0).converged
    J = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # a zero gradient
    assert not solve_alpha_fair(J @ J.T, 2.0).converged
    assert not solve_alpha_fair(torch.zeros(2, 2), 2.0).converged


def test_alpha_fair_warm_start() -> None:
    g = torch.Generator().manual_seed(9)
    J = conflicting(12, 40, g)
    G = J @ J.T
    cold = solve_alpha_fair(G, 1.0)
    warm = solve_alpha_fair(G, 1.0, initial=cold.weights)
    assert warm.converged and warm.iterations == 0
    assert torch.allclose(warm.weights, cold.weights, rtol=1e-12)
    bad = solve_alpha_fair(G, 1.0, initial=-cold.weights)  # unusable warm start: cold start
    assert bad.converged and torch.allclose(bad.weights, cold.weights, rtol=1e-9)


# -- project_onto_simplex -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_simplex_projection_matches_the_qp(seed: int) -> None:
    g = torch.Generator().manual_seed(600 + seed)
    v = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3
    projected = project_onto_simplex(v)
    for b in range(4):
        # argmin ||x - v||^2 on the simplex = QP with Q = I, c = -v.
        expected = quadprog_simplex(np.eye(9), -numpy(v[b]))
        assert np.abs(numpy(projected[b]) - expected).max() <= 1e-10
    with pytest.raises(ValueError, match="empty vector"):
        project_onto_simplex(torch.zeros(0))
