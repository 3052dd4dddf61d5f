r"""The dual problem of CAGrad, solved exactly.

.. math::
    \min_{w \in \Delta} \; F(w) = w^\top b + r \sqrt{w^\top A w},
    \qquad b = A \mathbf 1 / T,\; r = c \,\lVert g_0 \rVert,

with ``A`` the Gramian (``g_w = J^T w`` and ``w^T b = <g_w, g_0>``). Writing :math:`\sigma =
\lVert g_w \rVert / r`, the KKT conditions on a fixed set of free coordinates are linear in
``(w, ν)`` for given ``σ``:

.. math::
    A_{II} w_I - \nu \mathbf 1 = -\sigma b_I, \qquad \mathbf 1^\top w_I = 1,

so ``w = w_1 + σ w_2`` (two solves of the same bordered system) and the consistency condition
:math:`w^\top A w = r^2 \sigma^2` is a quadratic in ``σ`` with exactly one positive root. A
primal-dual active-set iteration over the free set then finds the exact optimum, usually in a few
steps. If it does not settle, a bisection on ``s = ||g_w||`` over exact simplex QPs (always
convergent, slower) takes over. The answer's KKT conditions are checked before returning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlagg.errors import SolverError

from .qp import _RIDGE, QP_TOLERANCE, solve_nonneg_qp


def solve_cagrad_dual(gramian: Tensor, c: float) -> tuple[Tensor, float]:
    """Return ``(w, ratio)`` with ``w`` the optimal dual weights and ``ratio = r / ||g_w||``.

    ``ratio`` is 0 when ``r = 0`` or ``g_w = 0`` (the update is then the mean gradient).
    The answer is float64 on the Gramian's device.
    """
    A = gramian.to(torch.float64)
    T = A.shape[0]
    scale = float(A.diagonal().max())
    uniform = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
    if scale <= 0:
        return uniform, 0.0
    A = A / scale
    b = A.mean(dim=1)
    g0_norm = math.sqrt(max(float(b.mean()), 0.0))
    r = c * g0_norm
    if r <= 1e-12:
        return uniform, 0.0
    result = _active_set(A, b, r)
    if result is None:
        result = _bisection(A, b, r)
    w, s = result
    _check_kkt(A, b, r, w, s)
    if s <= 1e-12:
        return uniform, 0.0
    return w, r / s


def _closed_form(A: Tensor, b: Tensor, r: float, free: Tensor) -> tuple[Tensor, Tensor, float] | None:
    """Optimum of the problem with the coordinates outside ``free`` fixed at 0, if it exists."""
    T = A.shape[0]
    f = free.to(A.dtype)
    K = A.new_zeros(T + 1, T + 1)
    K[:T, :T] = A * f[:, None] * f[None, :] + torch.diag(1 - f + _RIDGE * f)
    K[:T, T] = -f
    K[T, :T] = f
    rhs = A.new_zeros(T + 1, 2)
    rhs[T, 0] = 1.0
    rhs[:T, 1] = -b * f
    sol = torch.linalg.solve(K, rhs)
    w1, w2 = sol[:T, 0], sol[:T, 1]
    nu1, nu2 = sol[T, 0], sol[T, 1]
    Aw1, Aw2 = A @ w1, A @ w2
    a0, a1, a2 = float(w1 @ Aw1), float(w1 @ Aw2), float(w2 @ Aw2) - r * r
    if a2 >= 0:
        return None
    disc = a1 * a1 - a2 * max(a0, 0.0)
    sigma = (-a1 - math.sqrt(max(disc, 0.0))) / a2
    if not math.isfinite(sigma) or sigma <= 0:
        return None
    w = w1 + sigma * w2
    nu = nu1 + sigma * nu2
    # Reduced gradient of F (divided by r/s = 1/σ): σ b + A w - ν.
    reduced = sigma * b + Aw1 + sigma * Aw2 - nu
    return w, reduced, r * sigma


def _active_set(A: Tensor, b: Tensor, r: float) -> tuple[Tensor, float] | None:
    T = A.shape[0]
    free = torch.ones(T, dtype=torch.bool, device=A.device)
    for _ in range(3 * T + 10):
        found = _closed_form(A, b, r, free)
        if found is None:
            return None
        w, reduced, s = found
        new_free = torch.where(free, w, -reduced) > 0
        if not bool(new_free.any()):
            return None
        if bool((new_free == free).all()):
            return torch.where(free, w, torch.zeros_like(w)).clamp_min(0), s
        free = new_free
    return None


def _norm_of_combination(A: Tensor, w: Tensor) -> float:
    return math.sqrt(max(float(w @ A @ w), 0.0))


def _bisection(A: Tensor, b: Tensor, r: float) -> tuple[Tensor, float]:
    """Find ``s = ||g_{w(s)}||`` where ``w(s)`` minimises ``w^T b + r/(2s) w^T A w`` on the simplex."""

    def at(s: float) -> tuple[Tensor, float]:
        w = solve_nonneg_qp(A * (r / s), b, simplex=True)
        return w, _norm_of_combination(A, w)

    zeros = torch.zeros_like(b)
    min_norm = _norm_of_combination(A, solve_nonneg_qp(A, zeros, simplex=True))
    lo, hi = max(min_norm, 1e-15), math.sqrt(float(A.diagonal().max()))
    w, g = at(hi)
    if g >= hi:
        return w, g
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        w, g = at(mid)
        if g >= mid:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return at(hi)


def _check_kkt(A: Tensor, b: Tensor, r: float, w: Tensor, s: float) -> None:
    tol = 1e3 * QP_TOLERANCE
    norm = _norm_of_combination(A, w)
    ok = bool(torch.isfinite(w).all()) and abs(float(w.sum()) - 1) <= tol and float(w.min()) >= -tol
    if ok and norm > 1e-9:
        gradient = b + (r / norm) * (A @ w)
        support = w > 1e-12
        mu = float(gradient[support].mean())
        ok = float((gradient - mu).min()) >= -tol * (1 + r) and float((gradient[support] - mu).abs().max()) <= tol * (
            1 + r
        )
        ok = ok and abs(norm - s) <= tol * (1 + s)
    if not ok:
        raise SolverError("CAGrad: the dual problem was not solved to tolerance; the Gramian may be ill-conditioned")
