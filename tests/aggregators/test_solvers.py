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
    solve_dual_cone,
    solve_dual_cone_diagonal,
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


def _select_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dual-cone projections on the CPU through the numba kernel, the numpy iterations, or the
    torch solver alone (the numpy path declined)."""
    from mtlagg.solvers import compiled, dual_cone

    if path == "numba":
        pytest.importorskip("numba")
        monkeypatch.setattr(compiled, "_setting", True)
    else:
        monkeypatch.setattr(compiled, "_setting", False)
    if path == "torch-only":
        monkeypatch.setattr(dual_cone, "solve_numpy", lambda *args: None)


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


# -- solve_dual_cone: the batched dual-cone projections of UPGrad / DualProj -------------------------


def _upgrad_weights(T: int, g: torch.Generator, extra: int = 2) -> torch.Tensor:
    """The UPGrad rows ``e_k / T`` and a few random non-negative rows."""
    return torch.cat([torch.eye(T, dtype=torch.float64) / T, torch.rand(extra, T, generator=g, dtype=torch.float64)])


def _primal_projection(J: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``argmin ||x - target||`` s.t. ``J x >= 0`` in R^n (cvxpy / Clarabel): unique, whatever the rank.
    (Zero and repeated rows, vacuous or redundant constraints that Clarabel handles badly, are
    removed: the feasible set is the same.)"""
    import cvxpy as cp

    J = np.unique(J[np.abs(J).max(axis=1) > 0], axis=0)
    x = cp.Variable(J.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - target)), [J @ x >= 0])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
    assert problem.status == "optimal"
    return np.asarray(x.value)


@pytest.mark.parametrize(
    ("T", "n", "kind"),
    [
        (1, 3, "normal"),
        (2, 5, "conflicting"),
        (7, 20, "normal"),
        (16, 40, "conflicting"),
        (17, 40, "normal"),
        (40, 200, "conflicting"),
        (40, 60, "normal"),
        (96, 300, "conflicting"),
    ],
)
@pytest.mark.parametrize("path", ["numba", "numpy", "torch-only"])
def test_dual_cone_matches_quadprog_on_full_rank_problems(
    T: int, n: int, kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _select_path(path, monkeypatch)
    g = torch.Generator().manual_seed(T + n)
    J = conflicting(T, n, g) if kind == "conflicting" else torch.randn(T, n, generator=g, dtype=torch.float64)
    G = J @ J.T
    U = _upgrad_weights(T, g)
    V = project_weights(G, U)
    X = solve_dual_cone(G, U)
    assert torch.equal(V, U + X) and (X >= 0).all()
    for b in range(U.shape[0]):
        expected = quadprog_nonneg(numpy(G), np.zeros(T), numpy(U[b]))
        assert np.abs(numpy(V[b]) - expected).max() <= 1e-7 * (1 + np.abs(expected).max())


def test_dual_cone_on_large_full_rank_problems() -> None:
    """T = 256 (grouped block sizes, the fixed-set form of the blocks): every problem satisfies the
    KKT conditions (checked in numpy), a few against quadprog."""
    g = torch.Generator().manual_seed(256)
    J = conflicting(256, 600, g)
    G = J @ J.T
    U = torch.eye(256, dtype=torch.float64) / 256
    V = project_weights(G, U)
    Gn, scale = numpy(G), float(G.diagonal().max())
    for b in range(256):
        x = numpy(V[b] - U[b])
        assert kkt_violation(Gn / scale, Gn @ numpy(U[b]) / scale, x, False) <= 1e-8
    for b in (0, 101, 255):
        expected = quadprog_nonneg(Gn, np.zeros(256), numpy(U[b]))
        assert np.abs(numpy(V[b]) - expected).max() <= 1e-7 * (1 + np.abs(expected).max())


@pytest.mark.parametrize(("T", "n", "rank"), [(6, 20, 2), (12, 30, 4), (40, 100, 10), (64, 100, 16), (256, 100, 64)])
def test_dual_cone_on_rank_deficient_problems(T: int, n: int, rank: int) -> None:
    """``T > rank(G)`` (the minimisers are not unique, the primal-dual active set cycles): Lawson-Hanson
    in the rank space. KKT in numpy for every problem, and the directions ``J^T v`` (unique) against
    cvxpy's projections in R^n for a few."""
    g = torch.Generator().manual_seed(T + rank)
    J = (
        of_rank(T, n, rank, g)
        if T < 64
        else conflicting(T, n, g)[:, :rank] @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    )
    G = J @ J.T
    U = _upgrad_weights(T, g, extra=1)
    V = project_weights(G, U)
    Gn, scale = numpy(G), float(G.diagonal().max())
    for b in range(U.shape[0]):
        x = numpy(V[b] - U[b])
        assert kkt_violation(Gn / scale, Gn @ numpy(U[b]) / scale, x, False) <= 1e-8
    Jn = numpy(J)
    for b in (0, T // 2, U.shape[0] - 1):
        expected = _primal_projection(Jn, numpy(U[b]) @ Jn)
        ours = numpy(V[b]) @ Jn
        assert np.linalg.norm(ours - expected) <= 1e-6 * np.linalg.norm(Jn, axis=1).max()
    # The weights stay on the scale of u (a basic solution, no blow-up along the null space).
    assert float(V.abs().max()) <= 1e3 * float(U.abs().max())


@pytest.mark.parametrize(("T", "rank"), [(20, 5), (40, 10), (100, 10)])
def test_upgrad_on_rank_deficient_float32_jacobians(T: int, rank: int) -> None:
    """A float32 Gramian of rank-deficient gradients has eigenvalues of rounding noise (about 1e-7
    relative, of both signs). Solved as exact, they gave weights of 1e6-1e9 and directions that
    conflict with the tasks (``min J d = -0.4`` at T=40, rank 10); truncated at ``T eps``, the direction
    is the float64 one up to float32 precision."""
    from mtlagg.aggregators import DualProj, UPGrad

    g = torch.Generator().manual_seed(T)
    # J = A Q with orthonormal rows Q (rank x n): the projections, in the row space, are computed
    # in the coefficient space, y = Q x (projection of Q t onto {y : A y >= 0}).
    A = conflicting(T, rank, g)
    Q = torch.linalg.qr(torch.randn(2000, rank, generator=g, dtype=torch.float64)).Q.T
    J64 = A @ Q
    J32 = J64.float()
    An, Qn, Jn = numpy(A), numpy(Q), numpy(J64)
    scale = float(J64.norm(dim=1).max())
    for aggregator, targets in [(UPGrad(), An), (DualProj(), An.mean(axis=0, keepdims=True))]:
        d32 = numpy(aggregator(J32))
        expected = np.mean([_primal_projection(An, t) for t in targets], axis=0) @ Qn
        assert np.linalg.norm(d32 - expected) <= 1e-4 * scale
        assert (Jn @ d32).min() >= -1e-4 * scale**2
        assert float(aggregator.weights(J32 @ J32.T).abs().max()) <= 1e3  # (the bug: 1e6 to 1e9)


def test_dual_cone_degenerate_cases() -> None:
    """Zero rows, duplicated rows, T = 1, the zero matrix, a single conflicting pair."""
    g = torch.Generator().manual_seed(5)
    J = torch.randn(7, 15, generator=g, dtype=torch.float64)
    J[[1, 5]] = 0
    J2 = torch.randn(8, 15, generator=g, dtype=torch.float64)
    J2[4:] = J2[:4]
    for matrix in (J, J2):
        G = matrix @ matrix.T
        T = G.shape[0]
        U = _upgrad_weights(T, g)
        V = project_weights(G, U)
        Jn = numpy(matrix)
        for b in range(U.shape[0]):
            expected = _primal_projection(Jn, numpy(U[b]) @ Jn)
            assert np.linalg.norm(numpy(V[b]) @ Jn - expected) <= 1e-6 * np.linalg.norm(Jn, axis=1).max()
            assert (numpy(V[b]) >= numpy(U[b]) - 1e-12).all()
    # T = 1: every u is its own projection (g^T g >= 0); the zero matrix likewise.
    assert project_weights(torch.tensor([[3.0]]), torch.tensor([0.7])).tolist() == pytest.approx([0.7])
    assert torch.equal(project_weights(torch.zeros(4, 4), torch.eye(4) / 4), torch.eye(4, dtype=torch.float64) / 4)
    # Two opposite gradients: the projections are 0, v_k = (1/2, 1/2) (exactly cancelling rows).
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    V = project_weights(J @ J.T, torch.eye(2, dtype=torch.float64) / 2)
    assert (V @ J).abs().max() <= 1e-12
    assert V.tolist() == [pytest.approx([0.5, 0.5], abs=1e-12)] * 2


def test_dual_cone_warm_start_and_forms_agree() -> None:
    """Warm starts (right, all-free, random guesses) and the fixed-set form of the blocks (used
    when G^{-1} is available) give the same answer as the plain free-set form."""
    from mtlagg.solvers import dual_cone, pdas

    g = torch.Generator().manual_seed(41)
    J = conflicting(40, 120, g)
    G = J @ J.T
    U = _upgrad_weights(40, g)
    cold = solve_dual_cone(G, U)
    for guess in (cold > 0, torch.ones_like(cold, dtype=torch.bool), torch.rand(cold.shape, generator=g) < 0.3):
        assert torch.allclose(solve_dual_cone(G, U, initial_free=guess), cold, atol=1e-12, rtol=0)
    Gs = G / G.diagonal().max()
    C = U @ Gs
    plain, settled = pdas.primal_dual_active_set(Gs, C, C < -pdas.FLIP, 25)
    mixed, settled_mixed = pdas.primal_dual_active_set(Gs, C, C < -pdas.FLIP, 25, inverse=torch.linalg.inv(Gs), U=U)
    assert settled is None and settled_mixed is None
    assert torch.allclose(plain, mixed, atol=1e-12, rtol=0) and torch.allclose(plain, cold, atol=1e-12, rtol=0)
    assert dual_cone._INVERTIBLE < 1e-3  # (the mixed form is the one the solver uses on this matrix)


def test_fixed_set_form_forced_on_every_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fixed-set form chosen whenever it is the smaller block (no work threshold), the
    gathered source switches from ``[G, I]`` to ``[G, G^{-1}, I]`` mid-solve; same answers."""
    from mtlagg.solvers import pdas

    g = torch.Generator().manual_seed(43)
    J = conflicting(40, 120, g)
    Gs = J @ J.T
    Gs = Gs / Gs.diagonal().max()
    U = _upgrad_weights(40, g, extra=6)
    C = U @ Gs
    plain, settled = pdas.primal_dual_active_set(Gs, C, C < -pdas.FLIP, 25)
    sources: list[int] = []
    original = pdas._gather_source

    def spy(G, inverse, neg_c, Uw):  # type: ignore[no-untyped-def]
        sources.append(0 if inverse is None else 1)
        return original(G, inverse, neg_c, Uw)

    monkeypatch.setattr(pdas, "_gather_source", spy)
    monkeypatch.setattr(pdas, "_MIXED_WORK", 0)
    start = torch.ones_like(C, dtype=torch.bool)  # (large free sets from the first round: N-form)
    mixed, settled_mixed = pdas.primal_dual_active_set(Gs, C, start, 25, inverse=lambda: torch.linalg.inv(Gs), U=U)
    assert 1 in sources
    assert settled is None and settled_mixed is None
    assert torch.allclose(plain, mixed, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("T", "n", "rank"), [(1, 4, None), (5, 30, None), (40, 200, None), (40, 200, 12)])
def test_dual_cone_diagonal_matches_the_general_form(T: int, n: int, rank: int | None) -> None:
    """``solve_dual_cone_diagonal(G, s)`` is ``solve_dual_cone(G, diag(s))``, zero scales included
    (their problems have the answer 0), on the dense, gathered and rank-deficient paths."""
    g = torch.Generator().manual_seed(T + n + (rank or 0))
    J = conflicting(T, n, g)
    if rank is not None:
        J = torch.randn(T, rank, generator=g, dtype=torch.float64) @ J[:rank]
    G = J @ J.T
    scales = torch.rand(T, generator=g, dtype=torch.float64)
    scales[::3] = 0.0
    X = solve_dual_cone_diagonal(G, scales)
    expected = solve_dual_cone(G, torch.diag(scales))
    assert X.shape == (T, T) and (X >= 0).all()
    assert torch.allclose(X, expected, atol=1e-12 * (1 + float(expected.abs().max())), rtol=0)
    assert (X[::3] == 0).all()
    if T > 1:
        start = torch.ones(T, T, dtype=torch.bool)
        assert torch.allclose(solve_dual_cone_diagonal(G, scales, initial_free=start), X, atol=1e-10, rtol=0)
    summed = solve_dual_cone_diagonal(G, scales, summed=True)
    assert summed.shape == (T,) and torch.allclose(summed, scales + X.sum(dim=0), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"scales must have shape"):
        solve_dual_cone_diagonal(G, torch.diag(scales))
    with pytest.raises(ValueError, match=r"initial_free must have shape"):
        solve_dual_cone_diagonal(G, scales, initial_free=torch.ones(T + 1, T, dtype=torch.bool))


@pytest.mark.parametrize(
    ("T", "B"), [(1, 1), (2, 2), (5, 5), (10, 10), (16, 16), (40, 1), (40, 7), (40, 40), (12, 300)]
)
@pytest.mark.parametrize("path", ["numba", "numpy"])
def test_numpy_fast_path_equals_the_torch_solver(T: int, B: int, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU path (numpy, or its numba kernel) gives the torch solver's answers (cold and warm
    starts, diagonal weights too), and it is the path taken on the CPU at these sizes."""
    from mtlagg.solvers import dual_cone, numpy_pdas
    from mtlagg.solvers.numpy_pdas import solve_numpy

    _select_path(path, monkeypatch)
    if path == "numba":  # (the kernel answers, not the numpy iterations)
        monkeypatch.setattr(numpy_pdas, "_active_set", lambda *args: pytest.fail("the numpy iterations ran"))

    g = torch.Generator().manual_seed(10 * T + B)
    for trial in range(4):
        J = conflicting(T, 3 * T + 2, g) if trial % 2 else torch.randn(T, 2 * T + 1, generator=g, dtype=torch.float64)
        G = J @ J.T
        U = torch.rand(B, T, generator=g, dtype=torch.float64) * (torch.rand(B, T, generator=g) < 0.5)
        fast = solve_numpy(numpy(G), numpy(U), False, 2.2e-16)
        assert fast is not None
        warm = solve_numpy(numpy(G), numpy(U), False, 2.2e-16, np.ones((B, T), dtype=bool))
        scales = torch.rand(T, generator=g, dtype=torch.float64)
        fast_diagonal = solve_numpy(numpy(G), numpy(scales), True, 2.2e-16)
        with monkeypatch.context() as patch:
            patch.setattr(dual_cone, "solve_numpy", lambda *args: None)
            slow = numpy(solve_dual_cone(G, U))
            slow_diagonal = numpy(solve_dual_cone_diagonal(G, scales))
        scale = 1 + np.abs(slow).max()
        assert np.abs(fast - slow).max() <= 1e-10 * scale and np.abs(warm - slow).max() <= 1e-10 * scale
        assert np.abs(fast_diagonal - slow_diagonal).max() <= 1e-10 * (1 + np.abs(slow_diagonal).max())
    calls: list[int] = []
    original = dual_cone.solve_numpy
    monkeypatch.setattr(dual_cone, "solve_numpy", lambda *args: calls.append(1) or original(*args))
    solve_dual_cone(G, U)
    assert calls == [1]


def test_numpy_fast_path_declines_what_it_cannot_certify() -> None:
    """Rank-deficient, non-finite, zero and indefinite Gramians: ``None``, for the torch solver to
    handle (truncation, errors); the combined answer is still right (checked elsewhere)."""
    from mtlagg.solvers.numpy_pdas import solve_numpy

    g = torch.Generator().manual_seed(5)
    J = of_rank(6, 20, 3, g)
    U = np.full((1, 6), 1 / 6)
    assert solve_numpy(numpy(J @ J.T), U, False, 2.2e-16) is None
    assert solve_numpy(numpy((J @ J.T).float().double()), U, False, 1.2e-7) is None
    bad = numpy(torch.eye(6, dtype=torch.float64))
    bad[2, 2] = np.nan
    assert solve_numpy(bad, U, False, 2.2e-16) is None
    assert solve_numpy(np.zeros((6, 6)), U, False, 2.2e-16) is None
    assert solve_numpy(np.diag([1.0, -1.0, 1.0, 1.0, 1.0, 1.0]), U, False, 2.2e-16) is None
    with pytest.raises(SolverError):
        solve_dual_cone(torch.from_numpy(bad), torch.from_numpy(U))


def test_dual_cone_result_is_usable_by_autograd_and_errors() -> None:
    G = torch.tensor([[2.0, -1.0], [-1.0, 2.0]])
    X = solve_dual_cone(G, torch.eye(2) / 2)
    J = torch.randn(2, 3, requires_grad=True)
    (X.float().sum(dim=0) @ J).sum().backward()  # (not an inference-mode tensor)
    assert J.grad is not None
    with pytest.raises(ValueError, match=r"weights must have shape \(B, 2\), got \(3,\)"):
        solve_dual_cone(G, torch.ones(3))
    with pytest.raises(ValueError, match="the Gramian must be a square matrix"):
        solve_dual_cone(torch.ones(2, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"initial_free must have shape \(1, 2\)"):
        solve_dual_cone(G, torch.ones(1, 2), initial_free=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(SolverError, match="NaN or Inf entries"):
        solve_dual_cone(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), torch.ones(1, 2))


@pytest.mark.parametrize("seed", range(6))
def test_lawson_hanson_matches_scipy_nnls(seed: int) -> None:
    """The batched Lawson-Hanson of the rank-deficient path against scipy's NNLS (same residual; the
    minimiser need not be unique), with its passive sets independent (at most rank(G) positives)."""
    from scipy.optimize import nnls

    from mtlagg.solvers.nnls import lawson_hanson

    g = torch.Generator().manual_seed(700 + seed)
    r, T = [(3, 10), (8, 8), (5, 40), (12, 30), (20, 60), (1, 5)][seed]
    R = torch.randn(r, T, generator=g, dtype=torch.float64) * torch.exp(
        torch.randn(T, generator=g, dtype=torch.float64)
    )
    Y = torch.randn(4, r, generator=g, dtype=torch.float64)
    G, C = R.T @ R, Y @ R
    for factor in (None, R):
        X, done = lawson_hanson(
            G, C, r, tolerance=torch.full((4,), 1e-12, dtype=torch.float64), factor=factor, targets=Y
        )
        assert done.all() and (X >= 0).all()
        assert ((X > 0).sum(dim=1) <= r).all()
        for b in range(4):
            _, expected = nnls(numpy(R), -numpy(Y[b]))
            ours = float(np.linalg.norm(numpy(R) @ numpy(X[b]) + numpy(Y[b])))
            assert ours <= expected + 1e-10 * (1 + expected)


@pytest.mark.parametrize(
    ("T", "kind"), [(3, "normal"), (10, "conflicting"), (40, "conflicting"), (40, "normal"), (128, "conflicting")]
)
def test_dual_cone_fast_path_solves_standard_problems(T: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On well-conditioned full-rank problems the primal-dual active set settles every problem and
    passes the KKT check by itself (the fallbacks, correct but slower, are not needed): a wrong
    initial guess or a wrong "x = 0 is optimal" shortcut would end up there."""
    from mtlagg.solvers import dual_cone

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fallback was used")

    monkeypatch.setattr(dual_cone, "_repair", fail)
    g = torch.Generator().manual_seed(T)
    J = conflicting(T, 3 * T, g) if kind == "conflicting" else torch.randn(T, 3 * T, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        G = (J @ J.T).to(dtype)
        for U in (torch.eye(T) / T, torch.full((1, T), 1.0 / T)):
            X = solve_dual_cone(G, U)
            assert torch.isfinite(X).all() and (X >= 0).all()
