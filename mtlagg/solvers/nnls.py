r"""Batched Lawson-Hanson active set for non-negative QPs whose matrix may be singular.

Solves, for every row ``c_b`` of ``C``,

.. math:: \min_{x \ge 0} \tfrac12 x^\top G x + c_b^\top x, \qquad G = R^\top R \text{ (PSD, shared)},

with ``c_b`` in the range of ``G``: the non-negative least-squares problem
:math:`\min_{x \ge 0} \lVert R x + y_b \rVert^2` with :math:`R^\top y_b = c_b` (Lawson & Hanson,
"Solving Least Squares Problems", 1974, ch. 23). The passive set (the positive coordinates) grows
one coordinate at a time, the one with the most negative gradient along its unit column
(``grad_j / ||r_j||``); when the least-squares solution
on the passive set leaves the orthant, the iterate moves towards it up to the boundary and the
coordinates that reach 0 leave the set. The columns of ``R`` on the passive set stay linearly
independent (a column in the span of the others has a zero gradient at the least-squares solution
and is never added), so the passive set has at most ``rank(G)`` coordinates and every block that
is factorised is positive definite, however singular ``G`` is: the method is immune to the
degeneracy (non-unique minimisers) that makes the primal-dual active set cycle. Its work is a
multiple of ``rank(G)`` iterations, each a few triangular solves of size ``rank(G)``.

The Cholesky factor ``L`` of the passive block, and ``L^{-1}`` applied to the passive part of
``-c``, are updated, not recomputed, when a coordinate is added (one triangular solve for the new
row); they are recomputed, for the problems concerned only, when coordinates leave. The problems
of the batch run in lockstep; those that finish leave the working batch when it has halved. The
host reads two numbers per iteration.

The caller checks the KKT conditions of the answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: An added coordinate whose squared distance to the span of the passive columns is below this
#: (relative to its squared norm) is numerically dependent: it is not added.
_DEPENDENT = 1e-13
#: The passive-set slots grow by this many at a time.
_CHUNK = 16


def lawson_hanson(
    G: Tensor,
    C: Tensor,
    rank: int,
    *,
    tolerance: Tensor,
    factor: Tensor | None = None,
    targets: Tensor | None = None,
    max_iterations: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Solve the batch; returns ``x`` (``(B, T)``, ``>= 0``) and which problems finished.

    Args:
        G: ``(T, T)`` symmetric positive semi-definite, float64.
        C: ``(B, T)`` linear terms in the range of ``G``.
        rank: an upper bound on the rank of ``G`` (the size of the largest passive set).
        tolerance: ``(B,)`` gradient threshold: a coordinate is added while its gradient is below
            ``-tolerance``.
        factor, targets: optional ``R`` (``(r, T)``, ``G = R^T R``) and ``Y`` (``(B, r)``,
            ``C = Y R``); with ``r <= T / 2`` the gradients ``(x R^T + Y) R`` are formed through
            them (fewer flops).
        max_iterations: default ``4 * rank + 20``.
    """
    batch, T = C.shape
    k = max(1, min(rank, T))
    iterations = max_iterations if max_iterations is not None else 4 * k + 20
    dtype, device = C.dtype, C.device
    # Dummy coordinates T + p pad the passive set at position p: identity block, zero column.
    padded = torch.zeros(T + k, T + k, dtype=dtype, device=device)
    padded[:T, :T] = G
    padded[T:, T:] = torch.eye(k, dtype=dtype, device=device)
    flat = padded.view(-1)
    diagonal = G.diagonal()
    inverse_norm = diagonal.clamp_min(1e-300).rsqrt()
    through = factor is not None and targets is not None and 2 * factor.shape[0] <= T
    # The passive sets are stored in ``m`` slots (grown by _CHUNK up to k as they fill): early
    # iterations work on small triangular factors.
    m = min(k, _CHUNK)
    positions = torch.arange(m, device=device)

    x_out = torch.zeros(batch, T, dtype=dtype, device=device)
    finished_out = torch.zeros(batch, dtype=torch.bool, device=device)
    # The working batch.
    index = torch.arange(batch, device=device)
    Cw, tol = C, tolerance
    negative = torch.nn.functional.pad(-C, (0, k))
    linear = targets if through else None
    order = (positions + T).expand(batch, m).clone()
    count = torch.zeros(batch, dtype=torch.long, device=device)
    L = torch.eye(m, dtype=dtype, device=device).expand(batch, m, m).clone()
    forward = torch.zeros(batch, m, dtype=dtype, device=device)  # L^{-1} (-c_P), 0 on the padding
    xo = torch.zeros(batch, m, dtype=dtype, device=device)  # x on the passive set, in its order
    excluded = torch.zeros(batch, T, dtype=torch.bool, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)

    for _ in range(iterations):
        b = Cw.shape[0]
        ar = rows[:b]
        valid = positions < count[:, None]
        # The least-squares solution on the passive set (0 on the padding).
        z = torch.linalg.solve_triangular(L, forward[:, None, :], upper=False, left=False)[:, 0, :]
        bad = valid & (z <= 0)
        infeasible = bad.any(dim=1) & ~finished
        # Towards z, up to the first passive coordinate that reaches 0.
        ratio = torch.where(bad, xo / (xo - z).clamp_min(1e-300), torch.inf)
        alpha, first = ratio.min(dim=1)
        alpha = torch.where(infeasible, alpha.clamp(0, 1), 1.0)
        xo = torch.where(finished[:, None], xo, xo + alpha[:, None] * (z - xo))
        leaving = infeasible[:, None] & valid & ((xo <= 0) | (positions == first[:, None]))
        xo = torch.where(leaving | ~valid, 0.0, xo)
        # The gradient, and the coordinate to add where the iterate is the least-squares solution.
        x = xo.new_zeros(b, T + k).scatter_(1, order, xo)[:, :T]
        if through:
            gradient = torch.addmm(linear, x, factor.T) @ factor
        else:
            gradient = torch.addmm(Cw, x, G)
        passive = torch.zeros(b, T + k, dtype=torch.bool, device=device).scatter_(1, order, valid)[:, :T]
        # (pricing by the gradient along the unit column, grad_j / ||r_j||: half the drops of the
        # plain most-negative-gradient rule on degenerate problems)
        value, best = torch.where(passive | excluded, torch.inf, gradient * inverse_norm).min(dim=1)
        value = value / inverse_norm[best]
        add = ~infeasible & ~finished & (value < -tol) & (count < k)
        finished = finished | (~infeasible & ~add)
        # Add ``best``: one new row of L and one new entry of L^{-1} (-c_P).
        column = flat.index_select(0, (order * (T + k) + best[:, None]).view(-1)).view(b, m)
        row = torch.linalg.solve_triangular(L, column[:, :, None], upper=False)[:, :, 0]
        own = diagonal.index_select(0, best)
        squared = own - (row * row).sum(dim=1)
        independent = squared > _DEPENDENT * own.clamp_min(1e-300)
        excluded.view(-1).index_fill_(0, (ar * T + best)[add & ~independent], True)
        add = add & independent
        pivot = squared.clamp_min(1e-300).sqrt()
        slot = count.clamp(max=m - 1)
        entry = (negative.gather(1, best[:, None])[:, 0] - (row * forward).sum(dim=1)) / pivot
        row = row.scatter(1, slot[:, None], pivot[:, None])
        where = ar * m + slot
        rows_of_L = L.view(b * m, m)
        rows_of_L.index_copy_(0, where, torch.where(add[:, None], row, rows_of_L.index_select(0, where)))
        forward.scatter_(1, slot[:, None], torch.where(add, entry, forward.gather(1, slot[:, None])[:, 0])[:, None])
        order.scatter_(1, slot[:, None], torch.where(add, best, order.gather(1, slot[:, None])[:, 0])[:, None])
        count = count + add
        stats = torch.stack([infeasible.any(), (~finished).sum(), count.max()]).tolist()
        any_infeasible, remaining, fullest = stats
        if any_infeasible:
            _drop(order, count, xo, L, forward, negative, leaving, infeasible, flat, T, k)
        if remaining == 0 or 2 * remaining <= b:
            # Write back (the finished problems are final) and shrink the working batch.
            x_out[index] = x
            finished_out[index] = finished
            if remaining == 0:
                break
            keep = torch.nonzero(~finished).flatten()
            index, Cw, tol, negative = index[keep], Cw[keep], tol[keep], negative[keep]
            order, count, L, forward, xo = order[keep], count[keep], L[keep], forward[keep], xo[keep]
            excluded, finished = excluded[keep], finished[keep]
            if linear is not None:
                linear = linear[keep]
        if fullest >= m and m < k:
            # Grow the slots: identity rows, dummy coordinates, zeros.
            grown = min(k, m + _CHUNK)
            b = Cw.shape[0]
            wider = torch.eye(grown, dtype=dtype, device=device).expand(b, grown, grown).clone()
            wider[:, :m, :m] = L
            L = wider
            positions = torch.arange(grown, device=device)
            order = torch.cat([order, (positions[m:] + T).expand(b, grown - m)], dim=1)
            forward = torch.nn.functional.pad(forward, (0, grown - m))
            xo = torch.nn.functional.pad(xo, (0, grown - m))
            m = grown
    else:
        x_out[index] = xo.new_zeros(Cw.shape[0], T + k).scatter_(1, order, xo)[:, :T]
        finished_out[index] = finished
    return x_out.clamp_min(0), finished_out


def _drop(
    order: Tensor,
    count: Tensor,
    xo: Tensor,
    L: Tensor,
    forward: Tensor,
    negative: Tensor,
    leaving: Tensor,
    infeasible: Tensor,
    flat: Tensor,
    T: int,
    k: int,
) -> None:
    """Remove the leaving coordinates from the passive sets (keeping the order of the others) and
    refactorise the passive blocks of the problems concerned; in place."""
    index = torch.nonzero(infeasible).flatten()
    m = order.shape[1]
    positions = torch.arange(m, device=order.device)
    keep = (positions < count[index, None]) & ~leaving[index]
    permutation = torch.where(keep, positions, positions + m).argsort(dim=1)
    new_count = keep.sum(dim=1)
    inside = positions < new_count[:, None]
    new_order = torch.where(inside, order[index].gather(1, permutation), positions + T)
    block = flat.index_select(0, ((new_order * (T + k))[:, :, None] + new_order[:, None, :]).view(-1))
    block = block.view(-1, m, m)
    new_L, _ = torch.linalg.cholesky_ex(block)
    rhs = negative[index].gather(1, new_order)[:, :, None]
    order[index] = new_order
    count[index] = new_count
    xo[index] = torch.where(inside, xo[index].gather(1, permutation), 0.0)
    L[index] = new_L
    forward[index] = torch.linalg.solve_triangular(new_L, rhs, upper=False)[:, :, 0]
