"""The primal-dual active set of :mod:`~mtlagg.solvers.numpy_pdas`, compiled by numba.

Imported only through :mod:`~mtlagg.solvers.compiled` (numba is an optional dependency). One
problem at a time, in place: gather the free block, factorise it (Cholesky), solve, and update the
free set from the signs of ``x`` and of the gradient, until the set stops changing. No numpy call
per iteration, so each of the ``B`` problems costs its arithmetic (microseconds at ``T = 40``)
instead of the dozens of array calls per batched round of the numpy version.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def primal_dual_active_set(
    G: np.ndarray, C: np.ndarray, free0: np.ndarray, max_iterations: int, flip: float
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled (run through the tests)
    """``x`` (``(B, T)``) of :math:`\\min_{x \\ge 0} \\tfrac12 x^\\top G x + c_b^\\top x` for every
    row ``c_b`` of ``C``, from the starting free sets ``free0``, and which problems settled (a
    problem that has not settled, or whose block is not numerically positive definite, is
    ``False``: the caller declines it). ``G`` must be scaled to a unit largest diagonal entry;
    ``flip`` is the sign threshold (:data:`~mtlagg.solvers.pdas.FLIP`: an argument, not a global,
    so that numba's on-disk cache, keyed on this file, cannot keep a stale value)."""
    B, T = C.shape
    X = np.zeros((B, T))
    settled = np.zeros(B, dtype=np.bool_)
    L = np.empty((T, T))
    y = np.empty(T)
    index = np.empty(T, dtype=np.int64)
    free = np.empty(T, dtype=np.bool_)
    for b in range(B):
        for i in range(T):
            free[i] = free0[b, i]
        for _ in range(max_iterations):
            size = 0
            for i in range(T):
                if free[i]:
                    index[size] = i
                    size += 1
            for p in range(size):
                row = index[p]
                for q in range(p + 1):
                    L[p, q] = G[row, index[q]]
                y[p] = -C[b, row]
            # Cholesky factorisation of the free block, in place (lower triangle).
            positive = True
            for j in range(size):
                pivot = L[j, j]
                for k in range(j):
                    pivot -= L[j, k] * L[j, k]
                if not pivot > 0.0:
                    positive = False
                    break
                pivot = math.sqrt(pivot)
                L[j, j] = pivot
                for i in range(j + 1, size):
                    value = L[i, j]
                    for k in range(j):
                        value -= L[i, k] * L[j, k]
                    L[i, j] = value / pivot
            if not positive:
                break
            for i in range(size):  # L z = -c_F
                value = y[i]
                for k in range(i):
                    value -= L[i, k] * y[k]
                y[i] = value / L[i, i]
            for i in range(size - 1, -1, -1):  # L^T x_F = z
                value = y[i]
                for k in range(i + 1, size):
                    value -= L[k, i] * y[k]
                y[i] = value / L[i, i]
            for i in range(T):
                X[b, i] = 0.0
            for p in range(size):
                X[b, index[p]] = y[p]
            # Free coordinates stay while x > -flip, fixed ones enter when the gradient is below -flip.
            changed = False
            for i in range(T):
                if free[i]:
                    stays = X[b, i] > -flip
                else:
                    gradient = C[b, i]
                    for p in range(size):
                        gradient += G[i, index[p]] * y[p]
                    stays = gradient < -flip
                if stays != free[i]:
                    changed = True
                    free[i] = stays
            if not changed:
                settled[b] = True
                break
    return X, settled
