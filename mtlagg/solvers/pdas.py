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
or, when the working batch is small, the whole matrix is masked (and, on accelerators, two
iterations run between host synchronisations). The host reads one number per problem and
synchronisation. The sign tests of both kinds of coordinates are one comparison (minus the
gradient is formed lowered by ``2 * FLIP``).

``G`` must be positive definite (its free blocks are factorised without a ridge). Problems that
cycle (possible when ``G`` is not an M-matrix, in practice only on nearly singular problems) or run
out of iterations are reported unsettled; the caller checks the KKT conditions of the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

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
#: The fixed-set form of the blocks is used when it saves at least this much factorisation work
#: (``b * s^3``, about the cost of its extra operations on a CPU).
_MIXED_WORK = 400_000
#: From this much factorisation work (``b * s^3``) per iteration, the problems are grouped by size.
_BUCKET_WORK = 20_000_000


def primal_dual_active_set(
    G: Tensor,
    C: Tensor,
    free: Tensor,
    max_iterations: int,
    *,
    inverse: Tensor | Callable[[], Tensor] | None = None,
    U: Tensor | None = None,
    sizes: list[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Returns ``x`` (``(B, T)``, clamped at 0) and which problems settled (``None``: all).

    Args:
        G: ``(T, T)`` positive definite.
        C: ``(B, T)`` linear terms.
        free: ``(B, T)`` initial guess of the free coordinates.
        max_iterations: iterations before the unsettled problems are given up.
        inverse, U: ``G^{-1}`` (or a function that forms it when needed) and weights with
            ``C = U G``. With them, a problem whose free set
            is the larger part is solved through its fixed set ``N`` instead (``v = u + x =
            G^{-1}_{:N} l`` with ``G^{-1}_{NN} l = u_N``): blocks of ``min(|F|, |N|)``.
        sizes: the host's copy of ``free.sum(1)`` with ``-1`` where ``x = 0`` is known to be
            optimal (``c >= 0``), if the caller read it already.
    """
    batch, T = C.shape
    dtype, device = C.dtype, C.device
    X = torch.zeros_like(C)
    if sizes is None:
        # (small problems are solved on the masked matrix, whatever their sizes: no need to read
        # them; the problems with x = 0 settle in the first iteration)
        sizes = [T] * batch if always_dense(batch, T) else trivial_sizes(C, free).tolist()
    alive = [i for i, s in enumerate(sizes) if s >= 0]
    if not alive:
        return X, None
    mixed = inverse is not None and U is not None
    eye = torch.eye(T, dtype=dtype, device=device)
    # Coordinates of the gathered blocks: [0, T) rows of G (F-form), then, once a problem is solved
    # through its fixed set, [T, 2T) rows of G^{-1} (N-form), then dummies (identity, zero
    # right-hand side) that pad every set to ``size`` (see :func:`_gather_source`).
    width = 0
    positions = torch.arange(T, device=device)
    source: Tensor | None = None
    working = torch.tensor(alive, device=device) if len(alive) < batch else None
    sizes = [sizes[i] for i in alive]
    Cw, fw = (C, free) if working is None else (C[working], free[working])
    del C  # (only its working rows from here on)
    Uw = None if not mixed else (U if working is None else U[working])
    # The right-hand sides: -c (F-form), then u (N-form), then the dummies' zeros (formed when the
    # blocks are first gathered).
    rhs = -Cw
    del Cw
    # -c - 2 FLIP: ``addmm(lowered, x, G, alpha=-1)`` is minus the gradient, lowered by 2 FLIP, so
    # that one comparison decides both kinds of coordinates (free: x > -FLIP; fixed: g < -FLIP).
    lowered = rhs - 2 * FLIP
    settled_w = [False] * len(alive)
    before = fw
    cycled: list[Tensor] = []
    iteration = 0
    while iteration < max_iterations:
        b = rhs.shape[0]
        size = max(sizes)
        through_fixed = [2 * s > T for s in sizes] if mixed and 2 * size > T else [False] * b
        if mixed and any(through_fixed):
            smaller = max(T - s if f else s for s, f in zip(sizes, through_fixed, strict=True))
            # (the fixed-set form costs a few more operations: only where the blocks shrink enough)
            if b * (size**3 - smaller**3) >= _MIXED_WORK:
                # (at least one padding coordinate: an empty fixed set is not x = 0 but x = -u, which
                # the blocks give, not the shortcut for empty free sets)
                size = max(smaller, 1)
            else:
                through_fixed = [False] * b
        dense = always_dense(b, T) or 4 * size > 3 * T
        # (two iterations per host synchronisation on accelerators, where a synchronisation stalls the
        # queue; on the CPU it costs less than the second iteration would)
        steps = 2 if dense and device.type != "cpu" else 1
        for step in range(steps):
            if dense:
                block = torch.where(fw[:, :, None] & fw[:, None, :], G, eye)
                factor, _ = torch.linalg.cholesky_ex(block)
                right = torch.where(fw, rhs[:, :T], 0.0)[:, :, None]
                xw = _solve(factor, right[:, :, 0])
                descent = torch.addmm(lowered, xw, G, alpha=-1)
            elif size == 0:
                xw, descent = torch.zeros_like(lowered), lowered
            else:
                fixed = torch.tensor(through_fixed, device=device)[:, None] if any(through_fixed) else None
                if source is None or (fixed is not None and width == 2 * T):
                    if fixed is not None and callable(inverse):
                        inverse = inverse()
                    through = inverse if fixed is not None and not callable(inverse) else None
                    source, rhs = _gather_source(G, through, rhs[:, :T], Uw)
                    width = rhs.shape[1]
                    dummies = positions + (width - T)
                # The ``size`` smallest keys: the selected coordinates (F, or N + T for the problems
                # solved through N), then distinct dummies.
                if fixed is None:
                    keys = torch.where(fw, positions, dummies)
                else:
                    keys = torch.where(fw ^ fixed, positions + T * fixed, dummies)
                groups = None
                if b * size**3 >= _BUCKET_WORK:
                    groups = _groups([T - s if f else s for s, f in zip(sizes, through_fixed, strict=True)])
                index = torch.topk(keys, size, dim=1, largest=False, sorted=groups is not None).values
                if groups is None:
                    y = torch.zeros_like(rhs).scatter_(1, index, _block_solve(source, rhs, index, width))
                else:
                    # Problems of similar sizes together, each group padded to its own largest size.
                    y = torch.zeros_like(rhs)
                    for members, largest in groups:
                        rows = torch.tensor(members, device=device)
                        part = index[rows, :largest]
                        solution = _block_solve(source, rhs[rows], part, width)
                        y.index_copy_(0, rows, y[rows].scatter_(1, part, solution))
                if fixed is None:
                    xw = y[:, :T]
                    descent = torch.addmm(lowered, xw, G, alpha=-1)
                else:
                    # N-form: the multipliers l = (G v)_N are the gradient, x = G^{-1} l - u.
                    multipliers = y[:, T : 2 * T]
                    xw = torch.addmm(y[:, :T] - Uw * fixed, multipliers, inverse)
                    descent = torch.where(fixed, -multipliers - 2 * FLIP, torch.addmm(lowered, y[:, :T], G, alpha=-1))
            new_free = torch.where(fw, xw, descent) > -FLIP
            iteration += 1
            if step < steps - 1:
                before, fw = fw, new_free
        flipped = new_free != fw
        if iteration >= _CYCLE_CHECK:
            changed = flipped.any(dim=1)
            cycling = changed & (new_free == before).all(dim=1)
            if bool(cycling.any()):
                index = torch.nonzero(cycling).flatten()
                cycled.append(index if working is None else working[index])
                new_free = torch.where(cycling[:, None], fw, new_free)
                flipped = flipped & ~cycling[:, None]
        before = fw
        # One host synchronisation: the new sizes and the numbers of flips (size + flips * (T + 1)).
        codes = _codes(new_free, flipped, T)
        sizes = [c % (T + 1) for c in codes]
        settled_w = [c <= T for c in codes]
        moved = b - sum(settled_w)
        fw = new_free
        # (the settled problems stay in the working batch, unchanged, until it halves)
        last = moved == 0 or iteration >= max_iterations
        if last or 2 * moved <= b or moved * T * T <= _DENSE_ENTRIES < b * T * T:
            if working is None:
                X = xw
            else:
                X.index_copy_(0, working, xw)
            if last:
                break
            alive = [i for i, settled in enumerate(settled_w) if not settled]
            keep = torch.tensor(alive, device=device)
            working = keep if working is None else working[keep]
            rhs, lowered, fw = rhs[keep], lowered[keep], fw[keep]
            if iteration + 1 >= _CYCLE_CHECK:
                before = before[keep]
            if Uw is not None:
                Uw = Uw[keep]
            sizes = [sizes[i] for i in alive]
            settled_w = [False] * len(alive)
    if all(settled_w) and not cycled:
        return X.clamp_min(0), None
    settled = torch.ones(batch, dtype=torch.bool, device=device)
    if not all(settled_w):
        settled[working if working is not None else slice(None)] = torch.tensor(settled_w, device=device)
    for index in cycled:
        settled[index] = False
    return X.clamp_min(0), settled


def _codes(new_free: Tensor, flipped: Tensor, T: int) -> list[int]:
    """``|F| + (T + 1) * flips`` per problem, read by the host (byte arithmetic while it fits)."""
    if T < 254:  # (1 + T + 1 <= 255)
        return torch.add(new_free.view(torch.uint8), flipped.view(torch.uint8), alpha=T + 1).sum(dim=1).tolist()
    return torch.add(new_free.sum(dim=1), flipped.sum(dim=1), alpha=T + 1).tolist()


def _gather_source(G: Tensor, inverse: Tensor | None, neg_c: Tensor, U: Tensor | None) -> tuple[Tensor, Tensor]:
    """The flattened matrix the blocks are gathered from and the right-hand sides, side by side:
    ``[G, 0; 0, I]`` and ``[-c, 0]``, or with the fixed-set form ``diag(G, G^{-1}, I)`` and ``[-c, u, 0]``."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    zeros = torch.zeros_like(neg_c)
    if inverse is None:
        return torch.block_diag(G, eye).view(-1), torch.cat([neg_c, zeros], dim=1)
    assert U is not None
    return torch.block_diag(G, inverse, eye).view(-1), torch.cat([neg_c, U, zeros], dim=1)


def _block_solve(source: Tensor, rhs: Tensor, index: Tensor, width: int) -> Tensor:
    """Solve on the blocks of ``source`` (``width x width``, flattened) at ``index`` (``(b, s)``),
    with the entries of ``rhs`` at ``index``; returns ``(b, s)``."""
    b, size = index.shape
    flat = torch.add(index.unsqueeze(1), index.unsqueeze(2), alpha=width)
    block = source.index_select(0, flat.view(-1)).view(b, size, size)
    factor, _ = torch.linalg.cholesky_ex(block)
    return _solve(factor, rhs.gather(1, index))


def _groups(sizes: list[int]) -> list[tuple[list[int], int]]:
    """Split the problems into up to ``_BUCKETS`` groups of consecutive sizes, minimising the
    padded factorisation work ``sum_g n_g s_g^3`` (a few hundred candidates, on the host)."""
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    ranked = [sizes[i] for i in order]
    n = len(ranked)
    best: tuple[float, list[int]] = (float(n * max(ranked, default=0) ** 3), [])
    for first in range(1, n):
        cost = first * ranked[first - 1] ** 3 + (n - first) * ranked[-1] ** 3
        if cost < best[0]:
            best = (cost, [first])
        for second in range(first + 1, n, max(1, n // 32)):
            cost = first * ranked[first - 1] ** 3 + (second - first) * ranked[second - 1] ** 3
            cost += (n - second) * ranked[-1] ** 3
            if cost < best[0]:
                best = (cost, [first, second])
    bounds = [0, *best[1], n]
    return [(order[a:z], max(ranked[z - 1], 1)) for a, z in itertools.pairwise(bounds) if z > a]


def _solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} r`` for every row ``r`` of ``rhs`` (``(b, s)``): a forward solve, then the
    backward one written as ``x^T L = w^T`` (no transposed copy of the factor)."""
    forward = torch.linalg.solve_triangular(factor, rhs[:, :, None], upper=False)
    return torch.linalg.solve_triangular(factor, forward.mT, upper=False, left=False)[:, 0, :]


def always_dense(batch: int, T: int) -> bool:
    """Whether a working batch of this size is solved on the masked matrix (not gathered blocks)."""
    return T <= _DENSE_VARIABLES or batch * T * T <= _DENSE_ENTRIES


def trivial_sizes(C: Tensor, free: Tensor) -> Tensor:
    """``free.sum(1)``, with ``-1`` for the problems whose answer is ``x = 0`` (``c >= 0``)."""
    return free.sum(dim=1).masked_fill_((C >= -FLIP).all(dim=1), -1)
