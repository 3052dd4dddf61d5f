r"""The weighted FairGrad system with :math:`\alpha = 2`, shared by PIVRG and ConsMTL.

Find :math:`x > 0` with

.. math:: (G x)_i = \sqrt{p_i / x_i}\qquad (i = 1..T),

for a Gramian :math:`G` and positive priorities :math:`p`. These are the optimality conditions of
the strictly convex problem :math:`\min_{x>0} \tfrac12 x^\top G x - 2\sum_i \sqrt{p_i x_i}`, so the
solution is unique when it exists; Newton's method with a backtracking line search that keeps
:math:`x > 0` finds it to machine precision in a handful of steps (MTLlib solves the same system
with ``scipy.optimize.least_squares``, whose tolerance degrades when the gradients are small).

Tasks with a zero gradient (:math:`G_{ii} = 0`, so row :math:`i` of :math:`G` is zero) have no
solution (:math:`\sqrt{p_i/x_i} \to 0` only as :math:`x_i\to\infty`); they get weight 0, which leaves
the direction unchanged, and the others are solved without them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlagg.errors import SolverError

TOLERANCE = 1e-10


def _check_solvable(A: Tensor) -> None:
    """The potential is bounded below (a solution exists) iff no non-negative combination of the
    gradients vanishes, i.e. 0 is not in their convex hull."""
    eigenvalues = torch.linalg.eigvalsh(A)
    if bool(eigenvalues[0] > 1e-9 * eigenvalues[-1]):
        return
    from mtlagg.solvers import solve_nonneg_qp

    weights = solve_nonneg_qp(A, torch.zeros(A.shape[0], dtype=A.dtype, device=A.device), simplex=True)
    if bool(weights @ A @ weights <= 1e-10 * (weights @ A.diagonal().sqrt()) ** 2):
        raise SolverError(
            "the weighted FairGrad system (alpha = 2) has no solution: 0 is in the convex hull of the task "
            "gradients (e.g. two exactly opposite gradients, a Pareto-stationary point)"
        )


def solve_weighted_fairgrad(gramian: Tensor, priorities: Tensor, *, max_iterations: int = 200) -> Tensor:
    """The solution ``x`` (float64, on the Gramian's device) of :math:`Gx = \\sqrt{p/x}`."""
    G = gramian.detach().to(torch.float64)
    p = priorities.detach().to(G)
    T = G.shape[0]
    if p.shape != (T,) or not bool((p > 0).all()):
        raise ValueError(f"the priorities must be {T} positive numbers, got {p.tolist()}")
    x_full = torch.zeros(T, dtype=torch.float64, device=G.device)
    diagonal = G.diagonal()
    alive = diagonal > 1e-30 * max(float(diagonal.max()), 1e-300)
    if not bool(alive.any()):
        return x_full
    index = torch.nonzero(alive).flatten()
    A = G[index][:, index]
    q = p[index]
    scale = float(A.diagonal().max())
    A = A / scale  # the solution of A/s is s^(2/3) times the solution of A
    _check_solvable(A)
    y = (q ** (1 / 3)) * A.diagonal() ** (-2 / 3)  # exact when A is diagonal

    def objective(v: Tensor) -> Tensor:
        return 0.5 * v @ A @ v - 2 * torch.sqrt(q * v).sum()

    def relative_residual(v: Tensor) -> float:
        root_v = torch.sqrt(q / v)
        return float(((A @ v - root_v) / root_v).abs().max())

    for _ in range(max_iterations):
        root = torch.sqrt(q / y)
        residual = A @ y - root
        if float((residual.abs() / root).max()) <= TOLERANCE:
            break
        hessian = A + torch.diag(0.5 * root / y)
        try:
            step = torch.linalg.solve(hessian, -residual)
        except RuntimeError as error:
            raise SolverError(f"the weighted FairGrad Newton step failed ({error})") from error
        t = 1.0
        # stay positive
        negative = step < 0
        if bool(negative.any()):
            t = min(1.0, 0.99 * float((-y[negative] / step[negative]).min()))
        current = objective(y)
        slope = float(residual @ step)
        size = float((residual / root).abs().max())
        while t > 1e-12:
            candidate = y + t * step
            # Armijo on the objective; near the solution its decrease is below rounding, so a step that
            # shrinks the relative residual is accepted too.
            if bool(objective(candidate) <= current + 1e-4 * t * slope) or relative_residual(candidate) < size:
                break
            t *= 0.5
        y = y + t * step
    else:
        raise SolverError(f"the weighted FairGrad system did not converge in {max_iterations} Newton steps (T={T})")
    root = torch.sqrt(q / y)
    if float(((A @ y - root).abs() / root).max()) > 1e3 * TOLERANCE:
        raise SolverError("the weighted FairGrad solution does not satisfy its equations to tolerance")
    x_full[index] = y * scale ** (-2 / 3)
    return x_full
