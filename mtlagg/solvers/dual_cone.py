r"""Projections onto the dual cone of the task gradients, in weight space.

For a Gramian :math:`G = J J^\top` and a vector :math:`u \ge 0` of weights, the projection of
:math:`J^\top u` onto the dual cone :math:`\{x : J x \ge 0\}` is :math:`J^\top v` with

.. math:: v = \arg\min_{v \ge u} v^\top G v

(Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", Prop. 1). Writing
:math:`v = u + x` this is the non-negative QP :math:`\min_{x \ge 0} \tfrac12 x^\top G x + (G u)^\top x`.
UPGrad solves ``T`` of them (``u = p_k e_k``) and DualProj one; all share ``G``.

**The matrix actually solved.** A Gramian is known to the precision it was formed in: its entries
carry errors of about ``eps * sqrt(G_ii G_jj)`` (``eps`` the unit round-off of its dtype), so its
eigenvalues below about ``T * eps * max_i G_ii`` are noise. Solving with them as if exact puts
weights of ``1 / sqrt(noise)`` on directions the gradients do not have, and the direction ``J^T v``
then conflicts with the tasks (a float32 Gramian of rank-deficient gradients: weights of 1e6 and
more). So the problems are solved for the matrix ``G_r`` with those eigenvalues set to 0 (its
positive semi-definite part, truncated at ``T * eps * max_i G_ii``); ``G_r = G`` whenever ``G`` is
certified to be above that level, which a Cholesky factorisation decides cheaply
(``1 / trace(G^{-1}) <= lambda_min``). Then:

* **full rank** (``G_r = G``): the primal-dual active set of :mod:`~mtlagg.solvers.pdas` (a few
  iterations, each one batched factorisation of the free blocks); on the CPU, up to 64 tasks, the
  same method runs first in numpy (:mod:`~mtlagg.solvers.numpy_pdas`, its iterations compiled by
  numba when installed; it answers only what it certifies);
* **rank r < T**: ``G_r = R^T R`` with ``R`` (``r x T``) from the eigendecomposition, and the
  Lawson-Hanson active set of :mod:`~mtlagg.solvers.nnls`, whose passive sets stay independent
  (at most ``r`` coordinates, positive definite blocks) however singular ``G_r`` is; its work grows
  with ``r``, not ``T``;
* problems the primal-dual method does not settle (it can cycle on nearly singular matrices) go
  to Lawson-Hanson, and what that does not solve to the general fallbacks of
  :func:`~mtlagg.solvers.solve_nonneg_qp` (proximal point, interior point).

Every answer is checked against the KKT conditions of the matrix it solved, to
:data:`~mtlagg.solvers.QP_TOLERANCE` relative to its largest diagonal entry; failure raises
:class:`~mtlagg.errors.SolverError`. Everything is float64, on the Gramian's device, batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mtlagg.errors import SolverError

from .nnls import lawson_hanson
from .numpy_pdas import MAX_TASKS, solve_numpy
from .pdas import FLIP, always_dense, primal_dual_active_set
from .qp import _RIDGE, QP_TOLERANCE, _all_satisfy_kkt, _fallback, _satisfies_kkt

#: ``G^{-1}`` is used in the active-set solves when ``1 / trace(G^{-1})`` (a lower bound on the smallest
#: eigenvalue, relative to the largest diagonal entry) is above this.
_INVERTIBLE = 1e-7


def project_weights(gramian: Tensor, weights: Tensor, *, eps: float | None = None) -> Tensor:
    """``v`` for every row ``u`` of ``weights`` (``(T,)`` or ``(B, T)``); float64 on the Gramian's device.

    ``eps``: the relative precision of the Gramian (default: the unit round-off of its dtype).
    """
    u = weights.to(device=gramian.device, dtype=torch.float64)
    squeeze = u.dim() == 1
    u2 = u.reshape(-1, u.shape[-1])
    v = u2 + solve_dual_cone(gramian, u2, eps=eps)
    return v[0] if squeeze else v


def solve_dual_cone(
    gramian: Tensor,
    weights: Tensor,
    *,
    eps: float | None = None,
    initial_free: Tensor | None = None,
) -> Tensor:
    """``x = v - u >= 0`` for every row ``u`` of ``weights`` (``(B, T)``); see the module docstring.

    Args:
        gramian: ``(T, T)`` Gramian (any float dtype; solved in float64).
        weights: ``(B, T)`` non-negative weights ``u``.
        eps: relative precision of the Gramian (default: unit round-off of ``gramian.dtype``).
        initial_free: optional ``(B, T)`` guess of the positive coordinates of ``x`` (warm start
            of the primal-dual active set; ignored on rank-deficient problems).

    Raises:
        ValueError: on inconsistent shapes.
        SolverError: non-finite input, or an answer that fails the KKT check.
    """
    T = _check_gramian(gramian)
    if weights.dim() != 2 or weights.shape[1] != T:
        raise ValueError(f"weights must have shape (B, {T}), got {tuple(weights.shape)}")
    return _solve_checked(gramian, weights, False, eps, initial_free)


def solve_dual_cone_diagonal(
    gramian: Tensor,
    scales: Tensor,
    *,
    eps: float | None = None,
    initial_free: Tensor | None = None,
    summed: bool = False,
) -> Tensor:
    """:func:`solve_dual_cone` for ``weights = diag(scales)`` (the ``T`` problems of UPGrad,
    ``u = p_k e_k``), without forming the diagonal matrix: row ``k`` of the ``(T, T)`` answer is
    the ``x`` of ``u = scales_k e_k``. ``summed=True`` returns ``sum_k v_k = scales + sum_k x_k``
    instead (UPGrad's weights, ``(T,)``), summed where the problems were solved."""
    T = _check_gramian(gramian)
    if scales.shape != (T,):
        raise ValueError(f"scales must have shape ({T},), got {tuple(scales.shape)}")
    return _solve_checked(gramian, scales, True, eps, initial_free, summed)


def _check_gramian(gramian: Tensor) -> int:
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"the Gramian must be a square matrix, got shape {tuple(gramian.shape)}")
    if gramian.shape[0] == 0:
        raise ValueError("cannot project with no tasks")
    return gramian.shape[0]


def _solve_checked(
    gramian: Tensor,
    weights: Tensor,
    diagonal: bool,
    eps: float | None,
    initial_free: Tensor | None,
    summed: bool = False,
) -> Tensor:
    if eps is None:
        eps = torch.finfo(gramian.dtype).eps
    shape = (gramian.shape[0],) * 2 if diagonal else weights.shape
    if initial_free is not None and initial_free.shape != shape:
        raise ValueError(f"initial_free must have shape {tuple(shape)}, got {tuple(initial_free.shape)}")
    T = gramian.shape[0]
    batch = T if diagonal else weights.shape[0]
    if gramian.device.type == "cpu" and weights.device.type == "cpu" and T <= MAX_TASKS and batch > 0:
        # On the CPU, numpy on the same memory (see mtlagg.solvers.numpy_pdas); it answers only
        # when certain, and the torch path below decides otherwise.
        start = None if initial_free is None else initial_free.detach().cpu().numpy()
        u = _float64_array(weights)
        x = solve_numpy(_float64_array(gramian), u, diagonal, eps, start)
        if x is not None:
            return torch.from_numpy(u + x.sum(axis=0) if summed else x)
    # (no autograd bookkeeping in the solver: a few microseconds per operation at these sizes)
    with torch.inference_mode():
        x = _solve(gramian, weights, diagonal, eps, initial_free)
    x = x.clone()  # (a normal tensor again, usable by autograd)
    return x.sum(dim=0) + weights.to(x) if summed else x


def _float64_array(tensor: Tensor) -> np.ndarray:
    """A float64 numpy copy of a CPU tensor (numpy has no bfloat16: those through torch)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.float32, torch.float64, torch.float16):
        return tensor.numpy().astype(np.float64)
    return tensor.to(torch.float64).numpy()


def _solve(gramian: Tensor, weights: Tensor, diagonal: bool, eps: float, initial_free: Tensor | None) -> Tensor:
    T = gramian.shape[0]
    G = gramian.to(torch.float64)
    w = weights.to(device=G.device, dtype=torch.float64)
    # Scale to a unit largest diagonal entry (the minimiser does not change) and symmetrise.
    largest = G.diagonal().amax()
    G = torch.add(G, G.T).mul_(0.5 / largest)  # (G = 0: NaN here, zeros returned below)
    # The linear terms c = u G: with diagonal weights, row k is scales_k G_k.
    C = G * w[:, None] if diagonal else w @ G
    # Certification: the Cholesky factorisation exists and 1 / trace(G^{-1}) (<= lambda_min) is
    # above the noise level; with the sizes of the initial free sets, one host synchronisation.
    factor, info = torch.linalg.cholesky_ex(G)
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    inverse_factor = torch.linalg.solve_triangular(factor, eye, upper=False)
    inverse: Tensor | None = None
    small = always_dense(*C.shape)  # (no block sizes needed: fewer operations)
    descent = C < -FLIP  # (the coordinates with a descent direction at x = 0)
    if initial_free is not None:
        free = initial_free.to(device=C.device, dtype=torch.bool)
    elif small:
        free = descent
    else:
        # Also positive in the solution with every coordinate free but the support of u: for
        # u = p_k e_k (UPGrad), x_i = p_k (G^{-1})_{ik} / (G^{-1})_{kk}. The intersection of the two
        # guesses saves the primal-dual method about one of its five iterations on conflicting
        # gradients (measured; a guess only, the answer does not depend on it).
        inverse = inverse_factor.T @ inverse_factor
        free = descent & ((inverse if diagonal else w @ inverse) > 0)
    # (info, ||L^{-1}||_F^2 = trace(G^{-1}), the largest diagonal entry, then the sizes of the free
    # sets, -1 where x = 0 is known to be optimal: no descent direction at 0)
    head = torch.stack([info.to(G.dtype), inverse_factor.square().sum(), largest])
    if small:
        stats = head.tolist()
    else:
        sizes = free.sum(dim=1).masked_fill_(~descent.any(dim=1), -1)
        stats = torch.cat([head, sizes.to(G.dtype)]).tolist()
    info, trace, largest = stats[:3]
    cutoff = T * eps
    U = torch.diag(w) if diagonal else w
    if info == 0 and math.isfinite(trace) and 1.0 / trace > cutoff:
        sizes_list = None if small else [int(s) for s in stats[3:]]
        # (the fixed-set form of the active-set solves multiplies by G^{-1}: only when it is
        # accurate, and formed only if the solver gathers blocks)
        if 1.0 / trace <= _INVERTIBLE:
            form: Tensor | Callable[[], Tensor] | None = None
        else:
            form = inverse if inverse is not None else (lambda: inverse_factor.T @ inverse_factor)
        return _full_rank(G, C, free, sizes_list, form, U)
    if largest == 0:
        return torch.zeros_like(C)  # G = 0: every u is its own projection
    if not (math.isfinite(largest) and bool(torch.isfinite(G).all() & torch.isfinite(C).all())):
        raise SolverError("the QP has NaN or Inf entries (a non-finite task gradient reached the aggregator)")
    if largest < 0:
        raise SolverError(f"the Gramian has a negative diagonal entry ({largest:g}): it is not a Gramian")
    values, vectors = torch.linalg.eigh(G)
    keep = values > cutoff
    rank, smallest = int(keep.sum()), float(values[0])
    if rank == T:
        # (the trace bound is loose for large T: the eigenvalues decide)
        inverse = (lambda: (vectors / values) @ vectors.T) if smallest > _INVERTIBLE else None
        return _full_rank(G, C, free, None, inverse, U)
    if rank == 0:
        return torch.zeros_like(C)
    R = vectors[:, keep].T * values[keep].sqrt()[:, None]  # (r, T)
    G_r = R.T @ R
    # The linear terms in the range of G_r: c = G_r u = (R u)^T R exactly (u is known).
    Y = U @ R.T
    return _rank_deficient(G_r, Y @ R, rank, R, Y)


def _full_rank(
    G: Tensor,
    C: Tensor,
    free: Tensor,
    sizes: list[int] | None,
    inverse: Tensor | Callable[[], Tensor] | None,
    U: Tensor | None,
) -> Tensor:
    T = G.shape[0]
    X, settled = primal_dual_active_set(G, C, free, min(2 * T + 10, 25), inverse=inverse, U=U, sizes=sizes)
    if settled is None and _all_satisfy_kkt(G, C, X, False):
        return X
    ok = _satisfies_kkt(G, C, X, False)
    if settled is not None:
        ok &= settled
    return _repair(G, C, X, ok, T)


def _rank_deficient(G: Tensor, C: Tensor, rank: int, R: Tensor, Y: Tensor) -> Tensor:
    X, _ = lawson_hanson(G, C, rank, tolerance=_add_tolerance(C), factor=R, targets=Y)
    if _all_satisfy_kkt(G, C, X, False):
        return X
    ok = _satisfies_kkt(G, C, X, False)
    return _repair(G, C, X, ok, rank, lawson_hanson_done=True)


def _add_tolerance(C: Tensor) -> Tensor:
    """Lawson-Hanson adds a coordinate while its gradient is below minus this (well inside the KKT
    tolerance: round-off would otherwise keep adding and dropping coordinates)."""
    return 0.1 * QP_TOLERANCE * (1 + C.abs().amax(dim=1))


def _repair(G: Tensor, C: Tensor, X: Tensor, ok: Tensor, rank: int, lawson_hanson_done: bool = False) -> Tensor:
    """Lawson-Hanson, then the general fallbacks, for the problems not yet solved."""
    T = G.shape[0]
    bad = torch.nonzero(~ok).flatten()
    if not lawson_hanson_done:
        Xb, _ = lawson_hanson(G, C[bad], rank, tolerance=_add_tolerance(C[bad]))
        good = _satisfies_kkt(G, C[bad], Xb, False)
        X = X.index_copy(0, bad[good], Xb[good])
        bad = bad[~good]
        if bad.numel() == 0:
            return X
    # The general chain of solve_nonneg_qp (primal active set, proximal point, PSD repair,
    # interior point; raises SolverError), on the matrix with its usual ridge.
    ridged = G + _RIDGE * torch.eye(T, dtype=G.dtype, device=G.device)
    failed = torch.zeros(C.shape[0], dtype=torch.bool, device=C.device).index_fill(0, bad, True)
    return _fallback(ridged, C, X, failed, False, min(2 * T + 10, 25), 200)
