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
#: Below this norm of ``g_w`` the optimum is checked against the origin.
_SUSPICIOUS_NORM = 1e-4
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
    T = A.shape[0]
    scale = float(A.diagonal().max())
    uniform = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
    if not scale > 0:
        if scale != scale:
            raise SolverError("CAGrad: the Gramian has NaN or Inf entries")
        return CAGradDual(uniform, 0.0, False)
    # Symmetrised and scaled to a unit diagonal maximum (the faces are factorised with the ridge of
    # the QP solver; norms, objectives and the KKT check use the matrix itself).
    A = (A + A.T) * (0.5 / scale)
    b = A.mean(dim=1)
    r = c * math.sqrt(max(float(b.mean()), 0.0))
    if r <= 1e-12:
        return CAGradDual(uniform, 0.0, False)
    found = _active_set(A, b, r)
    if found is None or not _kkt_holds(A, b, r, *found):
        found = _newton(A, b, r)
    w, s = found
    _check_kkt(A, b, r, w, s)
    if s < _SUSPICIOUS_NORM:
        # Near g_w = 0 the KKT conditions cannot tell a tiny optimum from the origin (F's gradient
        # is discontinuous there). If the origin is in the hull (F = 0 there) and does at least as
        # well as w, the optimum is the origin.
        origin = solve_nonneg_qp(A, torch.zeros_like(b), simplex=True)
        if _norm(A, origin) <= DEGENERATE_NORM and float(b @ w) + r * s >= -1e-12:
            return CAGradDual(origin, 0.0, True)
    if s <= DEGENERATE_NORM:
        return CAGradDual(w, 0.0, True)
    return CAGradDual(w, r / s, False)


class _Face(NamedTuple):
    """The solution on a face: ``w(sigma) = y * (nu1 + sigma * nu2) - sigma * z`` (``A y = 1``,
    ``A z = b`` on the face, zero elsewhere), with ``nu1 = ||g_{w_1}||^2 = 1 / sum(y)``,
    ``nu2 = sum(z) / sum(y)`` and ``curvature = w_2^T A w_2 = b^T z - sum(z)^2 / sum(y)``."""

    y: Tensor
    z: Tensor
    nu1: float
    nu2: float
    curvature: float

    def weights(self, sigma: float) -> Tensor:
        return torch.add(self.y * (self.nu1 + sigma * self.nu2), self.z, alpha=-sigma)

    def root(self, r: float) -> float | None:
        """The ``sigma`` with ``||g_{w(sigma)}|| = r sigma`` on this face, if any."""
        denominator = r * r - self.curvature
        if not denominator > 0:
            return None
        return math.sqrt(max(self.nu1, 0.0) / denominator)


def _on_face(A: Tensor, rhs: Tensor, eye: Tensor, free: Tensor) -> _Face:
    """Solve on the face ``free`` (``rhs`` = the columns ``1`` and ``b``); one host synchronisation."""
    factor, _ = torch.linalg.cholesky_ex(torch.where(free[:, None] & free[None, :], A, eye))
    solution = torch.linalg.solve_triangular(
        factor.T, torch.linalg.solve_triangular(factor, torch.where(free[:, None], rhs, 0.0), upper=False), upper=True
    )
    y, z = solution.unbind(1)
    total_y, total_z, bz = torch.stack([y.sum(), z.sum(), rhs[:, 1] @ z]).tolist()
    if not (math.isfinite(total_y) and math.isfinite(total_z) and total_y > 0):
        return _Face(y, z, math.nan, math.nan, math.nan)
    return _Face(y, z, 1 / total_y, total_z / total_y, bz - total_z * total_z / total_y)


def _active_set(A: Tensor, b: Tensor, r: float) -> tuple[Tensor, float] | None:
    """The active-set iteration on ``F``; ``None`` when it does not settle on a valid face."""
    T = A.shape[0]
    eye = torch.eye(T, dtype=A.dtype, device=A.device)
    ridged = A + _RIDGE * eye
    rhs = torch.stack([torch.ones_like(b), b], dim=1)
    # Start from the tasks whose gradient has a below-average inner product with the mean
    # gradient: the optimum weighs the tasks the mean gradient helps least.
    free = b < b.mean()
    if not bool(free.any()):
        free = torch.ones_like(free)
    sigma_cap = 1 / r  # ||g_w|| <= 1 after scaling, so sigma = ||g_w|| / r <= 1 / r
    for _ in range(2 * T + 5):
        face = _on_face(ridged, rhs, eye, free)
        if not (face.nu1 > DEGENERATE_NORM**2 and math.isfinite(face.curvature)):
            return None  # (a failed solve, or a face holding the origin: the safeguarded search decides)
        root = face.root(r)
        sigma = sigma_cap if root is None else min(root, sigma_cap)
        w = face.weights(sigma)
        reduced = torch.addmv(b, A, w, beta=sigma) - (face.nu1 + sigma * face.nu2)
        new_free = torch.where(free, w > -_FLIP, reduced < -_FLIP)
        if torch.equal(new_free, free):
            if root is None or root > sigma_cap:
                return None
            w = w.clamp_min(0)
            return w / w.sum(), r * sigma
        if not bool(new_free.any()):
            return None
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
    eye = torch.eye(b.shape[0], dtype=A.dtype, device=A.device)
    ridged = A + _RIDGE * eye
    rhs = torch.stack([torch.ones_like(b), b], dim=1)
    for _ in range(200):
        w = solve_nonneg_qp(A, sigma * b, simplex=True, initial_free=w > 0)
        s = _norm(A, w)
        if s > r * sigma:
            low = sigma
        else:
            high = sigma
        face = _on_face(ridged, rhs, eye, w > 0)
        root = face.root(r) if math.isfinite(face.curvature) else None
        if root is not None:
            candidate = face.weights(root).clamp_min(0)
            candidate = candidate / candidate.sum()
            if _kkt_holds(A, b, r, candidate, r * root):
                return candidate, r * root
        else:
            root = math.inf
        if r * high <= 1e-3 * DEGENERATE_NORM:
            return solve_nonneg_qp(A, torch.zeros_like(b), simplex=True), 0.0
        if high - low <= 1e-15 * high:
            return w, s
        sigma = root if low < root < high else 0.5 * (low + high)
    raise SolverError("CAGrad: the search for the dual optimum did not converge")


def _kkt_holds(A: Tensor, b: Tensor, r: float, w: Tensor, s: float) -> bool:
    """The KKT conditions of ``F`` on the simplex at ``w`` (with ``s`` the claimed ``||g_w||``)."""
    tol = 1e3 * QP_TOLERANCE
    Aw = A @ w
    norm = (w @ Aw).clamp_min(0).sqrt()
    # The gradient of F, b + r A w / ||g_w||, minus its multiplier on the simplex (w^T gradient).
    gradient = b + (r / norm.clamp_min(1e-300)) * Aw
    reduced = gradient - w @ gradient
    values = torch.stack(
        [norm, w.sum(), w.min(), reduced.min(), (w * reduced).abs().max(), torch.isfinite(w).all().to(w.dtype)]
    ).tolist()
    norm_value, total, smallest, reduced_min, complementarity, finite = values
    if not (finite == 1 and abs(total - 1) <= tol and smallest >= -tol and abs(norm_value - s) <= tol * (1 + s)):
        return False
    if norm_value <= DEGENERATE_NORM:
        # An optimum at g_w = 0 has F = 0, so F must be >= 0 everywhere; check it at the vertices.
        vertices = b + r * A.diagonal().clamp_min(0).sqrt()
        return float(vertices.min()) >= -tol
    return reduced_min >= -tol * (1 + r) and complementarity <= tol * (1 + r)


def _check_kkt(A: Tensor, b: Tensor, r: float, w: Tensor, s: float) -> None:
    if not _kkt_holds(A, b, r, w, s):
        raise SolverError("CAGrad: the dual problem was not solved to tolerance; the Gramian may be ill-conditioned")
