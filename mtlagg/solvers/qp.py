r"""Batched convex QPs over the non-negative orthant or the probability simplex.

Solves, for every problem ``b`` of a batch,

.. math::
    \min_x \tfrac12 x^\top Q_b x + c_b^\top x \quad \text{s.t.}\quad x \ge 0
    \;\;[\text{and } \mathbf 1^\top x = 1 \text{ if } \texttt{simplex}],

with ``Q_b`` symmetric positive semi-definite (a Gramian). This covers the dual-cone projections
of UPGrad / DualProj (``x >= 0``) and the min-norm problem of MGDA (``simplex``).

Method:

1. **Primal-dual active set** (Hintermüller, Ito & Kunisch 2002): guess the active set, solve the
   equality-constrained problem on the free coordinates exactly, update the guess from the signs of
   the primal and dual variables; it stops when the guess no longer changes, at which point the KKT
   conditions hold exactly (up to round-off). It usually takes a handful of iterations, each one
   batched linear solve.
2. Problems it does not settle (it can cycle on non-M-matrices) go to a **Mehrotra primal-dual
   interior-point method**, whose answer is then polished by the active-set step of 1.
3. The KKT conditions of every answer are checked against :data:`QP_TOLERANCE` (relative to the
   scale of ``Q``); failure raises :class:`~mtlagg.errors.SolverError`.

Singular ``Q`` (duplicated or dependent task gradients) is handled with a ridge of ``1e-12`` times
the largest diagonal entry on the free block: the objective value, and thus the aggregated
direction ``J^T x``, is exact to that tolerance even where ``x`` itself is not unique.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlagg.errors import SolverError

#: Tolerance of the KKT check, relative to the largest diagonal entry of ``Q``.
QP_TOLERANCE = 1e-9
_RIDGE = 1e-12


def solve_nonneg_qp(
    Q: Tensor,
    c: Tensor,
    *,
    simplex: bool = False,
    initial_free: Tensor | None = None,
    max_active_set_iterations: int | None = None,
    max_interior_point_iterations: int = 200,
) -> Tensor:
    """Solve a batch of QPs; see the module docstring.

    Args:
        Q: ``(m, m)`` or ``(B, m, m)`` symmetric PSD matrices (broadcast over the batch).
        c: ``(m,)`` or ``(B, m)`` linear terms.
        simplex: add the constraint ``sum(x) = 1``.
        initial_free: optional guess of the coordinates that are positive at the solution (a warm
            start for the active-set method), with the batch shape of ``c``.

    Returns:
        ``x`` with the batch shape of ``c`` (float64, on ``c``'s device).
    """
    squeeze = c.dim() == 1
    c = c.to(torch.float64).reshape(-1, c.shape[-1])
    m = c.shape[-1]
    Q = torch.broadcast_to(Q.to(torch.float64), (c.shape[0], m, m))
    if m == 0:
        raise ValueError("cannot solve a QP with no variables")
    if not bool(torch.isfinite(Q).all() & torch.isfinite(c).all()):
        raise SolverError("the QP has NaN or Inf entries (a non-finite task gradient reached the aggregator)")
    # Scale so that the largest diagonal entry is 1: the minimiser does not change.
    scale = Q.diagonal(dim1=-2, dim2=-1).amax(dim=-1)
    zero_q = scale <= 0
    scale = torch.where(zero_q, torch.ones_like(scale), scale)
    Q = Q / scale[:, None, None]
    c = c / scale[:, None]
    if initial_free is not None:
        initial_free = initial_free.reshape(c.shape).to(torch.bool)
    x = _active_set(Q, c, simplex, initial_free=initial_free, max_iterations=max_active_set_iterations or 3 * m + 10)
    bad = ~_satisfies_kkt(Q, c, x, simplex)
    if bool(bad.any()):
        index = torch.nonzero(bad).flatten()
        x_ipm = _interior_point(Q[index], c[index], simplex, max_interior_point_iterations)
        polished = _active_set(Q[index], c[index], simplex, initial_free=x_ipm > 1e-9, max_iterations=m + 5)
        use_polished = _satisfies_kkt(Q[index], c[index], polished, simplex)
        x_fix = torch.where(use_polished[:, None], polished, x_ipm)
        x = x.index_copy(0, index, x_fix)
        still = ~_satisfies_kkt(Q[index], c[index], x_fix, simplex)
        if bool(still.any()):
            raise SolverError(
                f"the QP solver did not reach its tolerance ({QP_TOLERANCE:g}) on {int(still.sum())} of "
                f"{c.shape[0]} problems (m={m}); the Gramian may be too ill-conditioned"
            )
    return x[0] if squeeze else x


def _multipliers(Q: Tensor, c: Tensor, x: Tensor, simplex: bool) -> tuple[Tensor, Tensor]:
    """Gradient ``Qx + c`` and, for the simplex, the multiplier of ``sum(x) = 1``."""
    gradient = torch.einsum("bij,bj->bi", Q, x) + c
    if not simplex:
        return gradient, torch.zeros_like(gradient[:, 0])
    # On the support the gradient equals the multiplier; elsewhere it is >= it.
    weights = (x > 0).to(x.dtype)
    count = weights.sum(dim=-1).clamp_min(1)
    mu = (gradient * weights).sum(dim=-1) / count
    mu = torch.where(weights.sum(dim=-1) > 0, mu, gradient.amin(dim=-1))
    return gradient, mu


def _satisfies_kkt(Q: Tensor, c: Tensor, x: Tensor, simplex: bool) -> Tensor:
    gradient, mu = _multipliers(Q, c, x, simplex)
    reduced = gradient - mu[:, None]
    tol = QP_TOLERANCE * (1 + c.abs().amax(dim=-1) + x.abs().amax(dim=-1))
    ok = torch.isfinite(x).all(dim=-1)
    ok &= x.amin(dim=-1) >= -tol
    ok &= reduced.amin(dim=-1) >= -tol
    ok &= (x.clamp_min(0) * reduced).abs().amax(dim=-1) <= tol * (1 + x.abs().amax(dim=-1))
    if simplex:
        ok &= (x.sum(dim=-1) - 1).abs() <= tol
    return ok


def _solve_on_free_set(Q: Tensor, c: Tensor, free: Tensor, simplex: bool) -> tuple[Tensor, Tensor]:
    """Minimise with the coordinates outside ``free`` fixed at 0 (and ``sum(x) = 1``).

    Returns ``x`` and the multiplier of ``sum(x) = 1`` (zeros without the simplex constraint).
    """
    f = free.to(Q.dtype)
    m = Q.shape[-1]
    M = Q * f[:, :, None] * f[:, None, :] + torch.diag_embed(1 - f + _RIDGE * f)
    rhs = -c * f
    if not simplex:
        return torch.linalg.solve(M, rhs), torch.zeros_like(c[:, 0])
    K = Q.new_zeros(Q.shape[0], m + 1, m + 1)
    K[:, :m, :m] = M
    K[:, :m, m] = -f
    K[:, m, :m] = f
    solution = torch.linalg.solve(K, torch.cat([rhs, torch.ones_like(rhs[:, :1])], dim=-1))
    return solution[:, :m], solution[:, m]


def _active_set(Q: Tensor, c: Tensor, simplex: bool, initial_free: Tensor | None, max_iterations: int) -> Tensor:
    if initial_free is None:
        # From x = 0: the coordinates with a negative gradient are free (all of them on the simplex).
        initial_free = torch.ones_like(c, dtype=torch.bool) if simplex else c < 0
    free = initial_free.clone()
    if simplex:
        free |= free.sum(dim=-1, keepdim=True) == 0
    x, mu = _solve_on_free_set(Q, c, free, simplex)
    for _ in range(max_iterations):
        gradient = torch.einsum("bij,bj->bi", Q, x) + c - mu[:, None]
        # Free coordinates stay free while positive; fixed ones are freed when their reduced
        # gradient is negative (the primal-dual active-set rule with constant 1).
        new_free = torch.where(free, x, -gradient) > 0
        if simplex:
            new_free |= new_free.sum(dim=-1, keepdim=True) == 0
        if bool((new_free == free).all()):
            break
        free = new_free
        x, mu = _solve_on_free_set(Q, c, free, simplex)
    return x.clamp_min(0)


def _interior_point(Q: Tensor, c: Tensor, simplex: bool, max_iterations: int) -> Tensor:
    """Mehrotra predictor-corrector; robust fallback for the active-set method."""
    batch, m = c.shape
    x = torch.full_like(c, 1.0 / m if simplex else 1.0)
    z = torch.ones_like(c)
    y = torch.zeros(batch, dtype=c.dtype, device=c.device)
    ones = torch.ones_like(c)
    eye = torch.eye(m, dtype=c.dtype, device=c.device)
    done = torch.zeros(batch, dtype=torch.bool, device=c.device)

    def newton(rd: Tensor, rp: Tensor, rc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        H = Q + torch.diag_embed(z / x) + _RIDGE * eye
        L, _ = torch.linalg.cholesky_ex(H)
        rhs = -rd - rc / x
        if simplex:
            both = torch.cholesky_solve(torch.stack([rhs, ones], dim=-1), L)
            u, v = both[..., 0], both[..., 1]
            dy = (-rp - u.sum(-1)) / v.sum(-1)
            dx = u + v * dy[:, None]
        else:
            dx = torch.cholesky_solve(rhs[..., None], L)[..., 0]
            dy = torch.zeros_like(y)
        dz = (-rc - z * dx) / x
        return dx, dy, dz

    def step_length(v: Tensor, dv: Tensor) -> Tensor:
        ratio = torch.where(dv < 0, -v / dv, torch.full_like(v, float("inf")))
        return ratio.amin(dim=-1).clamp(max=1.0)

    for _ in range(max_iterations):
        rd = torch.einsum("bij,bj->bi", Q, x) + c - z - (y[:, None] if simplex else 0)
        rp = x.sum(-1) - 1 if simplex else torch.zeros_like(y)
        mu = (x * z).mean(-1)
        converged = (rd.abs().amax(-1) <= 1e-13) & (rp.abs() <= 1e-13) & (mu <= 1e-14)
        done = done | converged
        if bool(done.all()):
            break
        dx, dy, dz = newton(rd, rp, x * z)
        alpha = torch.minimum(step_length(x, dx), step_length(z, dz))
        mu_aff = ((x + alpha[:, None] * dx) * (z + alpha[:, None] * dz)).mean(-1)
        sigma = (mu_aff / mu.clamp_min(1e-300)).clamp(0, 1) ** 3
        dx, dy, dz = newton(rd, rp, x * z + dx * dz - (sigma * mu)[:, None])
        alpha = 0.99 * torch.minimum(step_length(x, dx), step_length(z, dz))
        keep = done[:, None]
        x = torch.where(keep, x, x + alpha[:, None] * dx).clamp_min(1e-300)
        z = torch.where(keep, z, z + alpha[:, None] * dz).clamp_min(1e-300)
        y = torch.where(done, y, y + alpha * dy)
    return x
