r"""The dual problem of CAGrad, solved exactly.

.. math::
    \min_{w \in \Delta} \; F(w) = w^\top b + r \sqrt{w^\top A w},
    \qquad b = A \mathbf 1 / T,\; r = c \,\lVert g_0 \rVert,

with ``A`` the Gramian (``g_w = J^T w``, ``w^T b = <g_w, g_0>``). With :math:`s = \lVert g_w\rVert`
and :math:`\sigma = s / r`, the optimality conditions of ``F`` are those of the simplex QP
:math:`\min_{w\in\Delta} \tfrac12 w^\top A w + \sigma\, b^\top w` together with
:math:`\lVert g_w \rVert = r\sigma`.

On a fixed set ``I`` of positive coordinates the QP's solution is affine in ``sigma``:
:math:`w = w_1 + \sigma w_2` with :math:`w_1 = y / \mathbf 1^\top y`, :math:`A_{II} y = \mathbf 1`
(the min-norm point of that face, :math:`\lVert g_{w_1}\rVert^2 = \nu_1 = 1/\mathbf 1^\top y`) and
:math:`\mathbf 1^\top w_2 = 0`. Since :math:`w_1^\top A w_2 = \nu_1 \mathbf 1^\top w_2 = 0`, the
condition :math:`\lVert g_w\rVert^2 = r^2\sigma^2` reads :math:`\nu_1 + \sigma^2 w_2^\top A w_2 =
r^2 \sigma^2`, whose root is :math:`\sigma = \sqrt{\nu_1 / (r^2 - w_2^\top A w_2)}`: one linear
solve (two right-hand sides) and a square root per candidate set.

1. **Active set** on ``F``: from all coordinates free, take the exact root on the current set,
   update the set from the signs of ``w`` and of the reduced gradient (the primal-dual rule),
   stop when the set no longer changes. A few iterations in practice.
2. If that does not settle, a **safeguarded Newton iteration on sigma**: at each trial ``sigma``
   the simplex QP is solved exactly (warm-started), the root on its active set is the next trial,
   and a bracket on which :math:`\lVert g_{w(\sigma)}\rVert - r\sigma` changes sign (the norm is
   non-decreasing in ``sigma``) falls back to bisection when the trial leaves it.
3. The KKT conditions of ``F`` are checked on the answer; failure raises
   :class:`~mtlagg.errors.SolverError`.

Everything is float64, on the Gramian's device, scaled so that the largest diagonal entry of ``A``
is 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mtlagg.errors import SolverError

from .qp import _RIDGE, QP_TOLERANCE, solve_nonneg_qp

#: Below this norm of ``g_w`` (relative to the largest task-gradient norm) the dual optimum is
#: treated as the origin: ``g_w / ||g_w||`` cannot be formed accurately there.
DEGENERATE_NORM = 1e-8
_FLIP = 1e-13


class CAGradDual(NamedTuple):
    """The solution of the CAGrad dual.

    ``weights``: the optimal ``w`` on the simplex (float64). ``ratio``: ``r / ||g_w||``, so that the
    update is ``g_0 + ratio * g_w``; 0 when ``r = 0``. ``degenerate``: the optimum has
    ``g_w = 0`` (to :data:`DEGENERATE_NORM`), where the update is not given by the formula.
    """

    weights: Tensor
    ratio: float
    degenerate: bool


def solve_cagrad_dual(gramian: Tensor, c: float) -> CAGradDual:
    """Solve the CAGrad dual for the ``T x T`` Gramian and the radius factor ``c >= 0``."""
    A = gramian.to(torch.float64)
    A = (A + A.T) / 2
    T = A.shape[0]
    scale = float(A.diagonal().max())
    uniform = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
    if scale <= 0:
        return CAGradDual(uniform, 0.0, False)
    A = A / scale
    b = A.mean(dim=1)
    r = c * math.sqrt(max(float(b.mean()), 0.0))
    if r <= 1e-12:
        return CAGradDual(uniform, 0.0, False)
    found = _active_set(A, b, r)
    if found is None or not _kkt_holds(A, b, r, *found):
        found = _newton(A, b, r)
    w, s = found
    _check_kkt(A, b, r, w, s)
    if s <= DEGENERATE_NORM:
        return CAGradDual(w, 0.0, True)
    return CAGradDual(w, r / s, False)


def _on_face(A: Tensor, b: Tensor, free: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, float, float]:
    """``w_1, w_2, nu_1, nu_2`` on the face ``free`` (zeros elsewhere), ``nu_1 = ||g_{w_1}||^2`` and
    ``w_2^T A w_2``."""
    T = A.shape[0]
    eye = torch.eye(T, dtype=A.dtype, device=A.device)
    block = torch.where(free[:, None] & free[None, :], A + _RIDGE * eye, eye)
    rhs = torch.where(free[:, None], torch.stack([torch.ones_like(b), b], dim=1), 0.0)
    factor, info = torch.linalg.cholesky_ex(block)
    if int(info) != 0:
        solution = torch.linalg.solve(block, rhs)
    else:
        solution = torch.cholesky_solve(rhs, factor)
    y, z = solution.unbind(1)
    total_y, total_z = y.sum(), z.sum()
    w1 = y / total_y
    w2 = (total_z / total_y) * y - z
    nu1 = 1 / total_y
    nu2 = total_z / total_y
    values = torch.stack([nu1, w2 @ A @ w2]).tolist()
    return w1, w2, nu1, nu2, values[0], values[1]


def _active_set(A: Tensor, b: Tensor, r: float) -> tuple[Tensor, float] | None:
    T = A.shape[0]
    free = torch.ones(T, dtype=torch.bool, device=A.device)
    sigma_cap = 1 / r  # ||g_w|| <= 1 after scaling, so sigma = ||g_w|| / r <= 1 / r
    for _ in range(2 * T + 5):
        w1, w2, nu1, nu2, norm1, curvature = _on_face(A, b, free)
        if not (math.isfinite(norm1) and math.isfinite(curvature)) or norm1 <= DEGENERATE_NORM**2:
            return None  # (a face holding the origin: the safeguarded search decides)
        denominator = r * r - curvature
        sigma = math.sqrt(max(norm1, 0.0) / denominator) if denominator > 0 else sigma_cap
        sigma = min(sigma, sigma_cap)
        w = w1 + sigma * w2
        reduced = A @ w + sigma * b - (nu1 + sigma * nu2)
        new_free = torch.where(free, w > -_FLIP, reduced < -_FLIP)
        if not bool(new_free.any()):
            return None
        if bool(torch.equal(new_free, free)):
            if denominator <= 0:
                return None
            w = w.clamp_min(0)
            return w / w.sum(), r * sigma
        free = new_free
    return None


def _norm(A: Tensor, w: Tensor) -> float:
    return math.sqrt(max(float(w @ A @ w), 0.0))


def _newton(A: Tensor, b: Tensor, r: float) -> tuple[Tensor, float]:
    """Find ``sigma`` with ``||g_{w(sigma)}|| = r sigma``, ``w(sigma)`` the exact simplex-QP solution.

    ``h(sigma) = ||g_{w(sigma)}|| - r sigma`` is >= 0 at 0 and <= 0 at ``1 / r``; its root is the
    optimum. When it is at 0 (to :data:`DEGENERATE_NORM`), the optimum has ``g_w = 0``.
    """
    low, high = 0.0, 1.0 / r
    sigma = 0.5 * high
    w = torch.full_like(b, 1.0 / b.shape[0])
    for _ in range(200):
        w = solve_nonneg_qp(A, sigma * b, simplex=True, initial_free=w > 0)
        s = _norm(A, w)
        if s > r * sigma:
            low = sigma
        else:
            high = sigma
        w1, w2, _, _, norm1, curvature = _on_face(A, b, w > 0)
        root = math.inf
        if r * r > curvature:
            root = math.sqrt(max(norm1, 0.0) / (r * r - curvature))
            candidate = (w1 + root * w2).clamp_min(0)
            candidate = candidate / candidate.sum()
            if _kkt_holds(A, b, r, candidate, r * root):
                return candidate, r * root
        if r * high <= 1e-3 * DEGENERATE_NORM:
            return solve_nonneg_qp(A, torch.zeros_like(b), simplex=True), 0.0
        if high - low <= 1e-15 * high:
            return w, s
        sigma = root if low < root < high else 0.5 * (low + high)
    raise SolverError("CAGrad: the search for the dual optimum did not converge")


def _kkt_holds(A: Tensor, b: Tensor, r: float, w: Tensor, s: float) -> bool:
    """The KKT conditions of ``F`` on the simplex at ``w`` (with ``s`` the claimed ``||g_w||``)."""
    norm = _norm(A, w)
    tol = 1e3 * QP_TOLERANCE
    if not (bool(torch.isfinite(w).all()) and abs(float(w.sum()) - 1) <= tol and float(w.min()) >= -tol):
        return False
    if abs(norm - s) > tol * (1 + s):
        return False
    if norm <= DEGENERATE_NORM:
        # An optimum at g_w = 0 has F = 0, so F must be >= 0 everywhere; check it at the vertices.
        vertices = b + r * A.diagonal().clamp_min(0).sqrt()
        return float(vertices.min()) >= -tol
    gradient = b + (r / norm) * (A @ w)
    mu = float(w @ gradient)
    reduced = gradient - mu
    return float(reduced.min()) >= -tol * (1 + r) and float((w * reduced).abs().max()) <= tol * (1 + r)


def _check_kkt(A: Tensor, b: Tensor, r: float, w: Tensor, s: float) -> None:
    if not _kkt_holds(A, b, r, w, s):
        raise SolverError("CAGrad: the dual problem was not solved to tolerance; the Gramian may be ill-conditioned")
