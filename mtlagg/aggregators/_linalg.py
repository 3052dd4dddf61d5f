"""Pseudo-inverse solves with a documented cutoff, fast on well-conditioned Gramians."""

from __future__ import annotations

import torch
from torch import Tensor


def pinv_solve(G: Tensor, rhs: Tensor, eps: float) -> Tensor:
    """``G^+ rhs`` for a symmetric PSD float64 ``G``, eigenvalues ``<= T * eps * lambda_max`` treated as 0.

    Fast path: a Cholesky factor ``L`` of ``G`` bounds the smallest eigenvalue from below by
    ``1 / ||L^-1||_F^2``; when that bound clears ``T * eps * trace(G)`` (an upper bound of the
    cutoff), no eigenvalue is cut and ``G^+ = G^-1``. Otherwise (or if the factorisation fails)
    the eigendecomposition does it.
    """
    T = G.shape[0]
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    factor, info = torch.linalg.cholesky_ex(G)
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    bound, trace, failed = torch.stack(
        [inverse.square().sum().reciprocal(), G.diagonal().sum(), info.to(G.dtype)]
    ).tolist()
    if not failed and bound > T * eps * trace:
        return inverse.T @ (inverse @ rhs)
    values, vectors = torch.linalg.eigh(G)
    cutoff = values.max().clamp_min(0) * T * eps
    inverse_values = torch.where(values > cutoff, 1 / torch.where(values > cutoff, values, 1), 0.0)
    return vectors @ (
        inverse_values[:, None] * (vectors.T @ rhs) if rhs.dim() == 2 else inverse_values * (vectors.T @ rhs)
    )
