r"""Primal-dual active set for a batch of non-negative QPs that share one positive definite matrix.

Solves :math:`\min_{x \ge 0} \tfrac12 x^\top G x + c_b^\top x` for every row ``c_b`` of ``C``
(Hintermüller, Ito & Kunisch, SIAM J. Optim. 13, 2002): guess the free (positive) coordinates,
solve the equality-constrained problem on them, update the guess from the signs of the free
coordinates and of the gradient on the fixed ones; a guess that no longer changes satisfies the
KKT conditions up to round-off. This is the semismooth Newton method on ``min(x, Gx + c) = 0``:
a handful of iterations, each one batched factorisation.

This version is written for the many small problems of the dual-cone projections (UPGrad,
DualProj), where the cost of each torch operation matters more than the flops: the problems that
settle leave the working batch; the free blocks are gathered into ``s x s`` matrices (``s`` the
largest free set of the working batch, the others padded with identity rows) with one flat index,
or, when the working batch is small, the whole matrix is masked and two iterations run between
host synchronisations. The host reads two numbers per synchronisation.

``G`` must be positive definite (its free blocks are factorised without a ridge). Problems that
cycle (possible when ``G`` is not an M-matrix, in practice only on nearly singular problems) or run
out of iterations are reported unsettled; the caller checks the KKT conditions of the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Sign threshold of the active-set updates (the problems are scaled to a unit diagonal).
FLIP = 1e-13
#: Up to this many variables, or this many problem-variables squared in the working batch, the
#: whole masked matrix is factorised (fewer operations than a gather).
_DENSE_VARIABLES = 16
_DENSE_ENTRIES = 12_000
#: From this iteration on, a problem that returns to the free set it had two iterations before is
#: cycling: it stops, unsettled.
_CYCLE_CHECK = 8


def primal_dual_active_set(
    G: Tensor,
    C: Tensor,
    free: Tensor,
    max_iterations: int,
    *,
    inverse: Tensor | None = None,
    U: Tensor | None = None,
    sizes: list[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Returns ``x`` (``(B, T)``, clamped at 0) and which problems settled (``None``: all).

    Args:
        G: ``(T, T)`` positive definite.
        C: ``(B, T)`` linear terms.
        free: ``(B, T)`` initial guess of the free coordinates.
        max_iterations: iterations before the unsettled problems are given up.
        inverse, U: ``G^{-1}`` and weights with ``C = U G``. With them, a problem whose free set
            is the larger part is solved through its fixed set ``N`` instead (``v = u + x =
            G^{-1}_{:N} l`` with ``G^{-1}_{NN} l = u_N``): blocks of ``min(|F|, |N|)``.
        sizes: the host's copy of ``free.sum(1)`` with ``-1`` where ``C >= -FLIP`` (``x = 0``
            optimal), if the caller read it already.
    """
    batch, T = C.shape
    dtype, device = C.dtype, C.device
    eye = torch.eye(T, dtype=dtype, device=device)
    positions = torch.arange(T, device=device)
    dummies = positions + T
    source: Tensor | None = None
    X = torch.zeros_like(C)
    if sizes is None:
        sizes = trivial_sizes(C, free).tolist()
    alive = [i for i, s in enumerate(sizes) if s >= 0]
    if not alive:
        return X, None
    working = torch.tensor(alive, device=device) if len(alive) < batch else None
    sizes = [sizes[i] for i in alive]
    Cw, fw = (C, free) if working is None else (C[working], free[working])
    # (b, 4T): the right-hand sides of both forms, F-form (-c) then N-form (u), zero-padded.
    mixed = inverse is not None and U is not None
    Uw = None if U is None else (U if working is None else U[working])
    rhs = torch.nn.functional.pad(-Cw, (0, T))
    if mixed:
        rhs = torch.cat([rhs, torch.nn.functional.pad(Uw, (0, T))], dim=1)
    before = fw
    cycled: list[Tensor] = []
    iteration = 0
    moved = len(alive)
    while iteration < max_iterations:
        b = Cw.shape[0]
        size = max(sizes)
        by_fixed = mixed and 2 * size > T
        if by_fixed:
            size = max(min(s, T - s) for s in sizes)
        dense = T <= _DENSE_VARIABLES or b * T * T <= _DENSE_ENTRIES or 4 * size > 3 * T
        steps = 2 if dense else 1
        for step in range(steps):
            if dense:
                block = torch.where(fw[:, :, None] & fw[:, None, :], G, eye)
                factor, _ = torch.linalg.cholesky_ex(block)
                xw = _solve(factor, torch.where(fw, rhs[:, :T], 0.0)[:, :, None])
                gradient = torch.addmm(Cw, xw, G)
            elif size == 0:
                xw, gradient = torch.zeros_like(Cw), Cw
            else:
                if source is None:
                    source = torch.block_diag(G, eye).view(-1)
                    if mixed:
                        source = torch.cat([source, torch.block_diag(inverse, eye).view(-1)])
                # The ``size`` smallest keys: the selected coordinates (F, or N for the problems
                # solved through N), padded with distinct dummies.
                if by_fixed:
                    through_fixed = 2 * fw.sum(dim=1) > T
                    selected = fw ^ through_fixed[:, None]
                else:
                    selected = fw
                keys = torch.where(selected, positions, dummies)
                index = torch.topk(keys, size, dim=1, largest=False, sorted=False).values
                rows = index * (2 * T)
                if by_fixed:
                    offset = through_fixed * (2 * T)
                    rows = rows + (offset * (2 * T))[:, None]
                    right = rhs.gather(1, index + offset[:, None])
                else:
                    right = rhs.gather(1, index)
                flat = rows.unsqueeze(2) + index.unsqueeze(1)
                block = source.index_select(0, flat.view(-1)).view(b, size, size)
                factor, _ = torch.linalg.cholesky_ex(block)
                y = Cw.new_zeros(b, 2 * T).scatter_(1, index, _solve(factor, right[:, :, None]))[:, :T]
                if by_fixed:
                    # F-form: x = y, gradient G x + c; N-form: multipliers y = (G v)_N, x = G^{-1} y - u.
                    xn = torch.addmm(Uw, y, inverse, alpha=1, beta=-1)
                    xw = torch.where(through_fixed[:, None], xn, y)
                    gradient = torch.where(through_fixed[:, None], y, torch.addmm(Cw, y, G))
                else:
                    xw, gradient = y, torch.addmm(Cw, y, G)
            new_free = torch.where(fw, xw > -FLIP, gradient < -FLIP)
            iteration += 1
            if step < steps - 1:
                before, fw = fw, new_free
        moving = (new_free != fw).any(dim=1)
        if iteration >= _CYCLE_CHECK:
            cycling = moving & (new_free == before).all(dim=1)
            if bool(cycling.any()):
                index = torch.nonzero(cycling).flatten()
                cycled.append(index if working is None else working[index])
                new_free = torch.where(cycling[:, None], fw, new_free)
                moving = moving & ~cycling
        before = fw
        if working is None:
            X = xw
        else:
            X.index_copy_(0, working, xw)
        sizes = new_free.sum(dim=1).masked_fill_(~moving, -1).tolist()
        alive = [i for i, s in enumerate(sizes) if s >= 0]
        moved = len(alive)
        if moved == 0:
            break
        if moved < b:
            sizes = [sizes[i] for i in alive]
            keep = torch.tensor(alive, device=device)
            working = keep if working is None else working[keep]
            Cw, rhs, new_free, before = Cw[keep], rhs[keep], new_free[keep], before[keep]
            if Uw is not None:
                Uw = Uw[keep]
        fw = new_free
    if moved == 0 and not cycled:
        return X.clamp_min(0), None
    settled = torch.ones(batch, dtype=torch.bool, device=device)
    if moved > 0:
        settled[slice(None) if working is None else working] = False
    for index in cycled:
        settled[index] = False
    return X.clamp_min(0), settled


def trivial_sizes(C: Tensor, free: Tensor) -> Tensor:
    """``free.sum(1)``, with ``-1`` for the problems whose answer is ``x = 0`` (``c >= 0``)."""
    return free.sum(dim=1).masked_fill_((C >= -FLIP).all(dim=1), -1)


def _solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` by two triangular solves; ``(b, s, 1) -> (b, s)``."""
    return torch.linalg.solve_triangular(
        factor.mT, torch.linalg.solve_triangular(factor, rhs, upper=False), upper=True
    )[:, :, 0]
