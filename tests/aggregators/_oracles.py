"""Independent references: quadprog, cvxpy, scipy and numpy implementations of the same problems."""

from __future__ import annotations

import warnings

import numpy as np
import quadprog
import torch
from scipy.optimize import least_squares
from torch import Tensor


def quadprog_nonneg(Q: np.ndarray, c: np.ndarray, lower: np.ndarray | None = None) -> np.ndarray:
    """``argmin 1/2 x'Qx + c'x`` s.t. ``x >= lower`` (``Q`` positive definite; solved at unit scale,
    where quadprog is accurate)."""
    m = len(c)
    lower = np.zeros(m) if lower is None else lower
    scale = np.diag(Q).max()
    return quadprog.solve_qp(Q / scale, -c / scale, np.eye(m), lower, 0)[0]


def quadprog_simplex(Q: np.ndarray, c: np.ndarray) -> np.ndarray:
    m = len(c)
    scale = np.diag(Q).max()
    constraints = np.hstack([np.ones((m, 1)), np.eye(m)])
    return quadprog.solve_qp(Q / scale, -c / scale, constraints, np.concatenate([[1.0], np.zeros(m)]), 1)[0]


#: Clarabel pushed to its accuracy limit (it warns that it cannot certify these; the answers are
#: then accurate to about 1e-8 relative, which is what the tests need).
_TIGHT = {"tol_gap_abs": 1e-14, "tol_gap_rel": 1e-14, "tol_feas": 1e-14, "tol_ktratio": 1e-12, "max_iter": 500}


def _solve(problem: object) -> None:
    import cvxpy as cp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver=cp.CLARABEL, **_TIGHT)  # type: ignore[attr-defined]


def cvxpy_qp(Q: np.ndarray, c: np.ndarray, simplex: bool) -> tuple[np.ndarray, float]:
    """Any PSD ``Q`` (factored through its eigendecomposition); returns ``x`` and the optimal value."""
    import cvxpy as cp

    m = len(c)
    values, vectors = np.linalg.eigh((Q + Q.T) / 2)
    factor = vectors * np.sqrt(np.clip(values, 0, None))
    x = cp.Variable(m)
    constraints = [x >= 0] + ([cp.sum(x) == 1] if simplex else [])
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(factor.T @ x) + c @ x), constraints)
    _solve(problem)
    return np.asarray(x.value), float(problem.value)


def cvxpy_cagrad(G: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """The CAGrad dual ``min_{w in simplex} w'b + c ||g0|| ||J'w||`` (``b = G 1/T``)."""
    import cvxpy as cp

    T = G.shape[0]
    values, vectors = np.linalg.eigh((G + G.T) / 2)
    factor = vectors * np.sqrt(np.clip(values, 0, None))
    b = G.mean(axis=1)
    r = c * np.sqrt(max(b.mean(), 0.0))
    w = cp.Variable(T)
    problem = cp.Problem(cp.Minimize(b @ w + r * cp.norm(factor.T @ w)), [w >= 0, cp.sum(w) == 1])
    _solve(problem)
    return np.asarray(w.value), float(problem.value)


def cagrad_objective(G: np.ndarray, c: float, w: np.ndarray) -> float:
    b = G.mean(axis=1)
    r = c * np.sqrt(max(b.mean(), 0.0))
    return float(b @ w + r * np.sqrt(max(w @ G @ w, 0.0)))


def scipy_alpha_fair(G: np.ndarray, alpha: float) -> np.ndarray:
    """``G w = w^(-1/alpha)``, ``w > 0``, by scipy (on ``G`` scaled to a unit diagonal maximum, then
    scaled back): Levenberg-Marquardt on the log-space residual and the official code's bounded
    least squares from ``1/T``; the better of the two, which must reach 1e-9."""
    T = G.shape[0]
    scale = np.diag(G).max()
    A = G / scale

    def log_residual(log_w: np.ndarray) -> np.ndarray:
        w = np.exp(log_w)
        return w ** (1 / alpha) * (A @ w) - 1

    def relative(w: np.ndarray) -> float:
        return float(np.abs(w ** (1 / alpha) * (A @ w) - 1).max())

    candidates = []
    start = -np.log(np.diag(A)) / (1 + 1 / alpha)
    lm = least_squares(log_residual, start, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=100000)
    candidates.append(np.exp(lm.x))
    trf = least_squares(
        lambda w: A @ w - w ** (-1 / alpha),
        np.ones(T) / T,
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=100000,
    )
    candidates.append(trf.x)
    best = min(candidates, key=relative)
    assert relative(best) < 1e-9, "the scipy oracle did not converge"
    return best * scale ** (-alpha / (1 + alpha))


def kkt_violation(Q: np.ndarray, c: np.ndarray, x: np.ndarray, simplex: bool) -> float:
    """The largest violation of the KKT conditions, relative to the problem's size."""
    gradient = Q @ x + c
    if simplex:
        gradient = gradient - (x @ gradient) / x.sum()
    size = 1 + np.abs(c).max() + np.abs(x).max()
    violations = [-x.min(), -gradient.min(), np.abs(x * gradient).max() / size]
    if simplex:
        violations.append(abs(x.sum() - 1))
    return float(max(violations) / size)


def numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()
