r"""The alpha-fair weights of FairGrad and Nash-MTL: :math:`(G w)_i = w_i^{-1/\alpha}`, ``w > 0``.

Ban & Ji (ICML 2024) choose the update :math:`d = J^\top w` that maximises the alpha-fair utility
of the task improvements; its optimality condition is :math:`G w = w^{-1/\alpha}` (elementwise).
With :math:`\alpha = 1` this is Nash-MTL's bargaining condition :math:`w_i (G w)_i = 1` (Navon et
al., ICML 2022).

These are the stationarity conditions of the strictly convex function

.. math::
    \phi(w) = \tfrac12 w^\top G w - \sum_i h(w_i), \qquad h'(t) = t^{-1/\alpha}
    \quad (h = \log \text{ for } \alpha = 1,\; h(t) = t^{1 - 1/\alpha} / (1 - 1/\alpha) \text{ otherwise}),

on :math:`w > 0`. It is minimised by Newton's method with a backtracking (Armijo) line search
that keeps :math:`w > 0`: globally convergent, quadratically convergent near the solution, a
handful of ``T x T`` solves in float64. The start is the solution for a diagonal ``G``
(:math:`w_i = G_{ii}^{-\alpha/(1+\alpha)}`) or a warm start. Convergence is declared when
:math:`\max_i |w_i^{1/\alpha} (G w)_i - 1| \le` ``tol``.

A solution exists iff no non-negative combination of the task gradients vanishes, i.e. the
origin is outside their convex hull (then :math:`\phi` is bounded below); a zero task gradient,
or gradients in direct opposition, make the equations unsolvable. The solver reports that as
``converged=False`` (the iterates run off to infinity or to 0); the aggregators decide what to do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

#: Default convergence tolerance on the relative residual of the equations.
FAIR_TOLERANCE = 1e-10


class FairSolution(NamedTuple):
    """``weights`` (float64, for the raw Gramian), whether the residual reached the tolerance,
    the final residual and the number of Newton steps."""

    weights: Tensor
    converged: bool
    residual: float
    iterations: int


def solve_alpha_fair(
    gramian: Tensor,
    alpha: float,
    *,
    initial: Tensor | None = None,
    tol: float = FAIR_TOLERANCE,
    max_iterations: int = 100,
) -> FairSolution:
    """Solve :math:`(G w)_i = w_i^{-1/\\alpha}`, ``w > 0`` (see the module docstring).

    Args:
        gramian: the ``T x T`` Gramian (any float dtype; solved in float64).
        alpha: the fairness parameter, ``> 0`` (1 is Nash-MTL).
        initial: optional warm start (positive weights for the raw Gramian).
        tol: tolerance on :math:`\\max_i |w_i^{1/\\alpha} (G w)_i - 1|`.
        max_iterations: Newton steps before giving up.
    """
    G = gramian.to(torch.float64)
    G = (G + G.T) / 2
    T = G.shape[0]
    q = 1.0 / alpha
    # Solve for G / s, then w = w_s * s^(-alpha / (1 + alpha)) solves the raw equations.
    s = float(G.diagonal().max())
    if not s > 0 or not math.isfinite(s):
        return FairSolution(torch.zeros(T, dtype=torch.float64, device=G.device), False, math.inf, 0)
    G = G / s
    factor = s ** (-alpha / (1 + alpha))
    diagonal = G.diagonal()
    if initial is not None:
        w = initial.to(device=G.device, dtype=torch.float64) / factor
        if not bool((w > 0).all() & torch.isfinite(w).all()):
            w = None  # an unusable warm start: start cold
    else:
        w = None
    start = torch.where(diagonal > 0, diagonal, 1.0) ** (-1.0 / (1 + q))
    if w is None:
        w = start

    def objective(v: Tensor) -> float:
        utility = v.log().sum() if q == 1 else (v ** (1 - q)).sum() / (1 - q)
        return float(0.5 * (v @ G @ v) - utility)

    residual = math.inf
    value: float | None = None
    inverse_start = 1 / start
    for iteration in range(max_iterations + 1):
        Gw = G @ w
        inverse = w.reciprocal() if q == 1 else w ** (-q)  # w^(-1/alpha)
        gradient = Gw - inverse
        # Newton step on phi: (G + diag(q w^(-q-1))) step = -gradient.
        hessian = G + torch.diag(inverse / w if q == 1 else (q * inverse) / w)
        step, info = torch.linalg.solve_ex(hessian, gradient)
        ratio = w * inverse_start
        stats = torch.stack(
            [
                (gradient / inverse).abs().amax(),  # = max |w^q (G w)_i - 1|
                gradient @ step,  # = -(Newton decrement)^2
                (step / w).amax(),  # the step is -step: its most negative relative move
                torch.maximum(ratio.amax(), ratio.amin().reciprocal()),
                info.to(G.dtype),
            ]
        ).tolist()
        residual, decrement, fastest, spread, failed = stats
        if residual <= tol:
            return FairSolution(w * factor, True, residual, iteration)
        if iteration == max_iterations or failed or not math.isfinite(residual + decrement) or spread > 1e12:
            break  # (a singular Hessian, or w running off to infinity or to 0: no solution)
        # Fraction to the boundary: the largest step (up to 1) that keeps w > 0, with a margin.
        t = min(1.0, 0.99 / fastest) if fastest > 0 else 1.0
        if decrement < 0.1:
            # Near the solution (Newton decrement below 0.1): full steps, no line search.
            w = torch.add(w, step, alpha=-t)
            value = None
            continue
        # Backtracking (Armijo) on phi.
        if value is None:
            value = objective(w)
        for _ in range(40):
            candidate = torch.add(w, step, alpha=-t)
            candidate_value = objective(candidate)
            if candidate_value <= value - 1e-4 * t * decrement:
                break
            t *= 0.5
        else:
            break
        w, value = candidate, candidate_value
    return FairSolution(w * factor, False, residual, iteration)
