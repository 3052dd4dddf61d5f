r"""Batched convex QPs over the non-negative orthant or the probability simplex.

Solves, for every problem ``b`` of a batch,

.. math::
    \min_x \tfrac12 x^\top Q_b x + c_b^\top x \quad \text{s.t.}\quad x \ge 0
    \;\;[\text{and } \mathbf 1^\top x = 1 \text{ if } \texttt{simplex}],

with ``Q_b`` symmetric positive semi-definite (a Gramian) and, when ``Q_b`` is singular, ``c_b`` in
its range (true of every problem the aggregators pose: the linear terms are combinations of the
Gramian's columns). This covers the dual-cone projections of UPGrad / DualProj (``x >= 0``) and the
min-norm problem of MGDA (``simplex``).

Method:

1. **Primal-dual active set** (Hintermüller, Ito & Kunisch, SIAM J. Optim. 2002): guess the set of
   free (positive) coordinates, solve the equality-constrained problem on it exactly, update the
   guess from the signs of the primal variables and of the reduced gradient; when the guess no
   longer changes, the KKT conditions hold up to round-off. Each iteration is one batched
   linear solve, **restricted to the free coordinates**: the free blocks are gathered into
   ``s x s`` matrices (``s`` the largest free set of the batch) so that a batch of problems whose
   solutions have few positive coordinates costs a few small factorisations, not ``B`` full ones.
   Problems that do not settle in ``2m + 10`` iterations (the method can cycle when ``Q`` is not
   an M-matrix) go to step 2.
2. A **Mehrotra primal-dual interior-point method**, whose answer is then polished by the
   active-set step of 1 started from its support.
3. The KKT conditions of every answer are checked against :data:`QP_TOLERANCE` (relative to the
   largest diagonal entry of ``Q``); failure raises :class:`~mtlagg.errors.SolverError`.

The matrix gets a ridge of ``1e-12`` times its largest diagonal entry, so that singular free
blocks (duplicated or dependent task gradients) factorise: the optimal value is exact to that
relative tolerance even where ``x`` is not unique. On such degenerate problems the aggregated
direction ``J^T x`` is accurate to about ``sqrt(1e-12) = 1e-6`` times ``||x||`` (a direction error
``e`` costs ``e^2 / 2`` in the objective); on full-rank problems it is accurate to round-off.

Everything runs in float64 on the device of the input. The only host synchronisation is one
small read per active-set iteration (did any free set change, and how large is the largest one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlagg.errors import SolverError

#: Tolerance of the KKT check, relative to the largest diagonal entry of ``Q``.
QP_TOLERANCE = 1e-9
_RIDGE = 1e-12
#: Sign threshold of the active-set updates (relative); keeps round-off from flipping coordinates.
_FLIP = 1e-13


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
        Q: ``(m, m)`` (shared by every problem) or ``(B, m, m)`` symmetric PSD matrices.
        c: ``(m,)`` or ``(B, m)`` linear terms.
        simplex: add the constraint ``sum(x) = 1``.
        initial_free: optional guess of the coordinates that are positive at the solution (a warm
            start for the active-set method), with the batch shape of ``c``.
        max_active_set_iterations: iterations of the active-set method before the fallbacks
            (default ``2m + 10``).
        max_interior_point_iterations: iterations of the interior-point fallback.

    Returns:
        ``x`` with the batch shape of ``c`` (float64, on ``c``'s device).

    Raises:
        ValueError: on inconsistent shapes.
        SolverError: when an answer does not satisfy the KKT conditions to :data:`QP_TOLERANCE`
            (non-finite input ends here too).
    """
    if c.dim() not in (1, 2):
        raise ValueError(f"c must be (m,) or (B, m), got shape {tuple(c.shape)}")
    squeeze = c.dim() == 1
    m = c.shape[-1]
    if m == 0:
        raise ValueError("cannot solve a QP with no variables")
    c = c.to(torch.float64).reshape(-1, m)
    batch = c.shape[0]
    Q = Q.to(device=c.device, dtype=torch.float64)
    if Q.dim() == 3 and Q.shape[0] == 1:
        Q = Q[0]
    if Q.shape[-2:] != (m, m) or Q.dim() not in (2, 3) or (Q.dim() == 3 and Q.shape[0] != batch):
        raise ValueError(f"Q must be ({m}, {m}) or ({batch}, {m}, {m}), got shape {tuple(Q.shape)}")
    # Symmetrise (a Gramian formed in float32 need not be exactly symmetric) and scale so that the
    # largest diagonal entry is 1: the minimiser does not change.
    if Q.dim() == 2:
        scale = float(Q.diagonal().max())
        scale = 0.5 / scale if scale > 0 else 0.5
        Q = (Q + Q.T) * scale
        c = c * (2 * scale)
    else:
        scale = Q.diagonal(dim1=-2, dim2=-1).amax(dim=-1)
        scale = 0.5 / torch.where(scale > 0, scale, 1.0)
        Q = (Q + Q.mT) * scale[:, None, None]
        c = c * (2 * scale[:, None])
    # The ridge (see the module docstring), in place on this private copy: every step below,
    # the KKT check included, works with the same matrix.
    Q.diagonal(dim1=-2, dim2=-1).add_(_RIDGE)
    if initial_free is None:
        # From x = 0: the coordinates with a negative gradient are free (all of them on the simplex).
        free = torch.ones_like(c, dtype=torch.bool) if simplex else c < -_FLIP
    else:
        free = initial_free.reshape(c.shape).to(device=c.device, dtype=torch.bool)
    # (the method settles in a handful of iterations or cycles: no point waiting 2m + 10)
    iterations = max_active_set_iterations if max_active_set_iterations is not None else min(2 * m + 10, 25)
    x, settled = _active_set(Q, c, simplex, free, iterations)
    if not (bool(settled.all()) if settled is not None else True) or not _all_satisfy_kkt(Q, c, x, simplex):
        ok = _satisfies_kkt(Q, c, x, simplex)
        if settled is not None:
            ok &= settled
        x = _fallback(Q, c, x, ~ok, simplex, iterations, max_interior_point_iterations)
    return x[0] if squeeze else x


def _fallback(
    Q: Tensor, c: Tensor, x: Tensor, bad: Tensor, simplex: bool, iterations: int, ipm_iterations: int
) -> Tensor:
    """The slow, robust path for the problems the active-set method did not solve.

    In order: a primal active-set method (Lawson & Hanson's NNLS; Wolfe's min-norm-point method on
    the simplex) that adds one coordinate at a time and keeps the free block non-singular (finite,
    and immune to the cycling of the primal-dual method on degenerate, rank-deficient problems);
    proximal-point iterations of the primal-dual method; both again on the matrix made numerically
    positive semi-definite (a Gramian formed in float32 can have eigenvalues of about ``-1e-7``
    times its norm, on which factorisations fail); the interior-point method, polished by an
    active-set step, as the last resort.
    """
    m = c.shape[-1]
    index = torch.nonzero(bad).flatten()
    Q_bad = Q if Q.dim() == 2 else Q[index]
    c_bad = c[index]
    if not bool(torch.isfinite(Q_bad).all() & torch.isfinite(c_bad).all()):
        raise SolverError("the QP has NaN or Inf entries (a non-finite task gradient reached the aggregator)")
    fixed = x[index]
    ok = torch.zeros(index.shape[0], dtype=torch.bool, device=c.device)
    for repaired in (False, True):
        if repaired:
            Q_bad = _psd_part(Q_bad)
            Q_bad.diagonal(dim1=-2, dim2=-1).add_(_RIDGE)
        for stage in ("primal", "proximal"):
            if bool(ok.all()):
                break
            rest = torch.nonzero(~ok).flatten()
            Q_rest = Q_bad if Q_bad.dim() == 2 else Q_bad[rest]
            if stage == "primal":
                found, done = _primal_active_set(Q_rest, c_bad[rest], simplex, 2 * m + 10)
                done &= _satisfies_kkt(Q_rest, c_bad[rest], found, simplex)
            else:
                found, done = _proximal_active_set(Q_rest, c_bad[rest], simplex, fixed[rest], iterations)
            fixed = fixed.index_copy(0, rest, torch.where(done[:, None], found, fixed[rest]))
            ok = ok.index_copy(0, rest, done)
    if not bool(ok.all()):
        x_ipm = _interior_point(Q_bad, c_bad, simplex, ipm_iterations)
        polished, _ = _active_set(Q_bad, c_bad, simplex, x_ipm > 1e-9, m + 5)  # (checked below)
        use_polished = _satisfies_kkt(Q_bad, c_bad, polished, simplex)
        candidate = torch.where(use_polished[:, None], polished, x_ipm.clamp_min(0))
        fixed = torch.where(ok[:, None], fixed, candidate)
        ok = _satisfies_kkt(Q_bad, c_bad, fixed, simplex)
        if not bool(ok.all()):
            raise SolverError(
                f"the QP solver did not reach its tolerance ({QP_TOLERANCE:g}) on {int((~ok).sum())} of "
                f"{c.shape[0]} problems (m={m}); the Gramian may be too ill-conditioned"
            )
    return x.index_copy(0, index, fixed)


#: The proximal weight of the fallback, relative to the largest diagonal entry of ``Q``.
_PROXIMAL = 1e-3


def _proximal_active_set(
    Q: Tensor, c: Tensor, simplex: bool, x: Tensor, iterations: int, max_steps: int = 10
) -> tuple[Tensor, Tensor]:
    """Proximal-point iterations, each solved by the primal-dual active-set method.

    Degenerate (rank-deficient) problems make the primal-dual method cycle: the minimiser is not
    unique and the free blocks are singular. The proximal problems
    ``min 1/2 x^T Q x + c^T x + rho/2 ||x - x_k||^2`` are strongly convex and well conditioned, the
    active-set method settles on them in a few warm-started iterations, and their solutions
    converge to a solution of the original problem (Rockafellar 1976); the iteration stops, problem
    by problem, when the original KKT conditions hold. Returns ``x`` and which problems converged.
    """
    batch = c.shape[0]
    shifted = Q.clone()
    shifted.diagonal(dim1=-2, dim2=-1).add_(_PROXIMAL)
    x = x.clamp_min(0)
    ok = torch.zeros(batch, dtype=torch.bool, device=c.device)
    working = torch.arange(batch, device=c.device)
    for _ in range(max_steps):
        Q_w = shifted if shifted.dim() == 2 else shifted[working]
        x_w, _ = _active_set(Q_w, c[working] - _PROXIMAL * x[working], simplex, x[working] > 0, min(iterations, 15))
        x = x.index_copy(0, working, x_w)
        # Iterate well past the tolerance of the check: on degenerate problems the direction's
        # accuracy is about the square root of the KKT residual.
        converged = _satisfies_kkt(Q if Q.dim() == 2 else Q[working], c[working], x_w, simplex, 1e-3 * QP_TOLERANCE)
        ok = ok.index_copy(0, working, converged)
        if bool(converged.all()):
            break
        working = working[~converged]
    Q_w = Q if Q.dim() == 2 else Q[working]
    ok = ok.index_copy(0, working, _satisfies_kkt(Q_w, c[working], x[working], simplex))
    return x, ok


def _primal_active_set(Q: Tensor, c: Tensor, simplex: bool, max_iterations: int) -> tuple[Tensor, Tensor]:
    """Lawson-Hanson / Wolfe primal active set, batched; returns ``x`` and which problems finished.

    ``x`` stays feasible. Each iteration either adds to the free set the coordinate with the most
    negative reduced gradient (when the minimiser on the free set is feasible; the objective
    strictly decreases) or, when that minimiser leaves the orthant, moves to the boundary towards
    it and drops the coordinates that reach 0.
    """
    batch, m = c.shape
    eye = torch.eye(m, dtype=c.dtype, device=c.device)
    ridged = Q
    rhs = torch.stack([torch.ones_like(c), -c], dim=-1) if simplex else -c[:, :, None]
    if simplex:
        # Start at the best vertex.
        vertex = (0.5 * Q.diagonal(dim1=-2, dim2=-1) + c).argmin(dim=-1)
        free = torch.nn.functional.one_hot(vertex, m).to(torch.bool)
        x = free.to(c.dtype)
    else:
        free = torch.zeros_like(c, dtype=torch.bool)
        x = torch.zeros_like(c)
    done = torch.zeros(batch, dtype=torch.bool, device=c.device)
    gathered = _Gathered(ridged, rhs) if m > _DENSE_MAX else None
    size = int(free.sum(dim=-1).max())
    for _ in range(max_iterations):
        if gathered is not None and 4 * size <= 3 * m:
            # The free sets stay small (at most the rank of Q): solve on gathered blocks.
            z, nu = gathered.solve(free, max(size, 1), simplex)
        else:
            block = torch.where(free[:, :, None] & free[:, None, :], ridged, eye)
            factor, _ = torch.linalg.cholesky_ex(block)
            z, nu = _combine(_cholesky_solve(factor, torch.where(free[:, :, None], rhs, 0.0)), simplex)
        leaving = free & (z <= 0)
        inner = leaving.any(dim=-1) & ~done
        # Inner step: towards z, up to the first coordinate that reaches 0.
        ratio = torch.where(leaving, x / (x - z).clamp_min(1e-300), torch.inf).amin(dim=-1, keepdim=True).clamp(0, 1)
        stepped = (x + ratio * (z - x)).clamp_min(0)
        stepped = torch.where(free & (stepped > 0) & ~leaving | (free & (stepped > 0)), stepped, 0.0)
        # Outer step: z is feasible; add the most negative reduced gradient, or finish.
        gradient = _matvec(Q, z) + c
        if nu is not None:
            gradient = gradient - nu
        reduced = torch.where(free, torch.inf, gradient)
        best = reduced.argmin(dim=-1)
        # (a reduced gradient within the KKT tolerance is not worth a coordinate: on degenerate
        # problems round-off would keep adding and dropping coordinates)
        improving = reduced.gather(1, best[:, None])[:, 0] < -0.1 * QP_TOLERANCE
        outer = ~inner & ~done
        finished = outer & ~improving
        x = torch.where(inner[:, None], stepped, torch.where(outer[:, None], z.clamp_min(0), x))
        added = torch.nn.functional.one_hot(best, m).to(torch.bool) & (outer & improving)[:, None]
        free = torch.where(inner[:, None], free & (stepped > 0), free | added)
        done = done | finished
        finished_all, size = torch.stack([done.all().to(torch.int64), free.sum(dim=-1).max()]).tolist()
        if finished_all:
            break
    return x, done


def _psd_part(Q: Tensor) -> Tensor:
    """``Q`` with its negative eigenvalues set to 0 (identity on PSD matrices, up to round-off)."""
    values, vectors = torch.linalg.eigh(Q)
    repaired = (vectors * values.clamp_min(0)[..., None, :]) @ vectors.mT
    return (repaired + repaired.mT) / 2


def _matvec(Q: Tensor, x: Tensor) -> Tensor:
    """``Q_b x_b`` for every problem (``Q`` symmetric, shared or batched)."""
    if Q.dim() == 2:
        return x @ Q
    return torch.bmm(Q, x[:, :, None])[:, :, 0]


def _all_satisfy_kkt(Q: Tensor, c: Tensor, x: Tensor, simplex: bool) -> bool:
    """:func:`_satisfies_kkt` for the whole batch at once, with the batch's largest sizes in the
    tolerance (one host synchronisation, fewer operations)."""
    gradient = _matvec(Q, x) + c
    if simplex:
        gradient = gradient - (x * gradient).sum(dim=-1, keepdim=True) / x.sum(dim=-1, keepdim=True)
        violation = torch.maximum(-gradient, (x * gradient).abs()).amax()
        stats = torch.stack([violation, x.amax(), c.abs().amax(), (x.sum(-1) - 1).abs().amax()]).tolist()
    else:
        stats = torch.stack([torch.maximum(-gradient, (x * gradient).abs()).amax(), x.amax(), c.abs().amax()]).tolist()
        stats.append(0.0)
    violation, largest_x, largest_c, total = stats
    size = 1 + largest_x + largest_c
    return violation <= QP_TOLERANCE * size * size and total <= QP_TOLERANCE


def _satisfies_kkt(Q: Tensor, c: Tensor, x: Tensor, simplex: bool, tolerance: float = QP_TOLERANCE) -> Tensor:
    """Per problem: are the KKT conditions met to :data:`QP_TOLERANCE`? (``x >= 0`` is assumed.)

    With ``g = Qx + c`` (minus the multiplier of ``sum(x) = 1``): dual feasibility ``g >= 0`` and
    complementarity ``x_i g_i = 0``, relative to the size of the problem; on the simplex also
    ``sum(x) = 1``. NaN fails.
    """
    gradient = _matvec(Q, x) + c
    if simplex:
        # The multiplier by complementarity (weighting by x makes it insensitive to coordinates
        # that round-off left barely positive).
        gradient = gradient - (x * gradient).sum(dim=-1, keepdim=True) / x.sum(dim=-1, keepdim=True)
    violation = torch.maximum(-gradient, (x * gradient).abs()).amax(dim=-1)
    size = 1 + x.amax(dim=-1) + c.abs().amax(dim=-1)
    ok = violation <= tolerance * size * size
    if simplex:
        ok &= (x.sum(dim=-1) - 1).abs() <= tolerance
    return ok


#: Up to this many variables every solve uses the whole masked matrix (tiny factorisations).
_DENSE_MAX = 16
#: Dense active-set iterations between two host synchronisations.
_BURST = 2
#: From this iteration on, the active-set method looks for cycles.
_CYCLE_CHECK = 8


def _active_set(Q: Tensor, c: Tensor, simplex: bool, free: Tensor, max_iterations: int) -> tuple[Tensor, Tensor | None]:
    """The primal-dual active-set iteration; returns ``x`` (clamped at 0) and which problems settled
    (``None``: all of them).

    A problem settles when its free set stops changing; the KKT conditions then hold up to
    round-off (the caller checks them). Settled problems leave the working batch. Each iteration
    solves the equality-constrained problems of the working batch in one of two ways, whichever is
    cheaper: on the whole ``m x m`` matrix with the fixed rows and columns replaced by the
    identity's (few operations), or on the free blocks gathered into ``s x s`` matrices (``s`` the
    largest free set; fewer flops when the free sets are small and the batch is large). A free
    block that cannot be factorised (``Q`` not numerically positive semi-definite) gives a wrong
    point, which the caller's check rejects.
    """
    batch, m = c.shape
    if simplex:
        free = free | ~free.any(dim=-1, keepdim=True)
        rhs = torch.stack([torch.ones_like(c), -c], dim=-1)
    else:
        rhs = -c[:, :, None]
    eye = torch.eye(m, dtype=c.dtype, device=c.device)
    gathered: _Gathered | None = None
    x = c  # (replaced by the first iterate)
    working: Tensor | None = None  # indices of the problems still moving (None: all of them)
    Qw, cw = Q, c
    moving = free[:, 0]  # (replaced in the first iteration)
    size = int(free.sum(dim=-1).max()) if m > _DENSE_MAX else m
    iteration = 0
    cycled: list[Tensor] = []
    before = free
    while iteration <= max_iterations:
        count = cw.shape[0]
        dense = m <= _DENSE_MAX or count < 8 or 4 * size > 3 * m
        # Dense solves need no sizes: run a burst of them between host synchronisations (a
        # settled problem stays settled, so the extra iterations are harmless).
        steps = _BURST if dense else 1
        for step in range(steps):
            if size == 0:
                xw, nu = torch.zeros_like(cw), None
            elif dense:
                factor, _ = torch.linalg.cholesky_ex(torch.where(free[:, :, None] & free[:, None, :], Qw, eye))
                xw, nu = _combine(_cholesky_solve(factor, torch.where(free[:, :, None], rhs, 0.0)), simplex)
            else:
                if gathered is None:
                    gathered = _Gathered(Qw, rhs)
                xw, nu = gathered.solve(free, size, simplex)
            if Qw.dim() == 2:
                gradient = torch.addmm(cw if nu is None else cw - nu, xw, Qw)
            else:
                gradient = _matvec(Qw, xw) + (cw if nu is None else cw - nu)
            # The primal-dual active-set rule: free coordinates stay free while positive, fixed
            # ones are freed when their reduced gradient is negative (both up to round-off).
            new_free = torch.where(free, xw > -_FLIP, gradient < -_FLIP)
            if simplex:
                new_free = new_free | ~new_free.any(dim=-1, keepdim=True)
            iteration += 1
            if step < steps - 1:
                before, free = free, new_free
        moving = (new_free != free).any(dim=-1)
        if iteration >= _CYCLE_CHECK:
            # Past the usual number of iterations, a problem returning to the free set it had two
            # iterations ago is cycling (degenerate problems): it stops here, unsettled.
            cycling = moving & (new_free == before).all(dim=-1)
            if bool(cycling.any()):
                index = torch.nonzero(cycling).flatten()
                cycled.append(index if working is None else working[index])
                new_free = torch.where(cycling[:, None], free, new_free)
                moving = moving & ~cycling
        before = free
        if working is None:
            x = xw
        else:
            x.index_copy_(0, working, xw)
        # One host synchronisation: how many problems move, and their largest free set.
        if m <= _DENSE_MAX:
            moved = int(moving.sum())
        else:
            moved, size = torch.stack([moving.sum(), (new_free.sum(dim=-1) * moving).amax()]).tolist()
        if moved == 0:
            break
        if moved < count:
            keep = torch.nonzero(moving).flatten()
            working = keep if working is None else working[keep]
            cw, new_free, rhs, before = cw[keep], new_free[keep], rhs[keep], before[keep]
            if Qw.dim() == 3:
                Qw = Qw[keep]
            if gathered is not None:
                gathered.subset(keep)
        free = new_free
    if moved == 0 and not cycled:
        return x.clamp_min(0), None
    settled = torch.ones(batch, dtype=torch.bool, device=c.device)
    if moved > 0:
        # Out of iterations: the problems still in the working batch (all still moving) failed.
        settled[slice(None) if working is None else working] = False
    for index in cycled:
        settled[index] = False
    return x.clamp_min(0), settled


class _Gathered:
    """Solves on free blocks gathered into ``s x s`` matrices.

    ``Q`` and the right-hand sides are extended with ``m`` dummy coordinates (identity block, zero
    right-hand side): a free set of ``k < s`` coordinates is padded with distinct dummies, so the
    gathered block is ``Q_FF`` bordered by an identity and the padded unknowns come out exactly 0.
    """

    def __init__(self, Q: Tensor, rhs: Tensor) -> None:
        m = rhs.shape[1]
        eye = torch.eye(m, dtype=Q.dtype, device=Q.device)
        if Q.dim() == 2:
            self.Q = torch.block_diag(Q, eye)
        else:
            self.Q = Q.new_zeros(Q.shape[0], 2 * m, 2 * m)
            self.Q[:, :m, :m] = Q
            self.Q[:, m:, m:] = eye
        self.rhs = torch.nn.functional.pad(rhs, (0, 0, 0, m))
        self.positions = torch.arange(m, device=Q.device)

    def subset(self, keep: Tensor) -> None:
        if self.Q.dim() == 3:
            self.Q = self.Q[keep]
        self.rhs = self.rhs[keep]

    def solve(self, free: Tensor, size: int, simplex: bool) -> tuple[Tensor, Tensor | None]:
        count, m = free.shape
        # Free coordinate j keeps the key j, fixed coordinate j gets the dummy m + j: the ``size``
        # smallest keys are the free coordinates, padded with distinct dummies.
        keys = torch.where(free, self.positions, self.positions + m)
        index = torch.topk(keys, size, dim=-1, largest=False).values
        if self.Q.dim() == 3:
            rows = self.Q.gather(1, index[:, :, None].expand(count, size, 2 * m))
            block = rows.gather(2, index[:, None, :].expand(count, size, size))
        elif m <= size:
            # Whole rows then columns: two cheap kernels (the rows are few and short).
            rows = self.Q.index_select(0, index.view(-1)).view(count, size, 2 * m)
            block = rows.gather(2, index[:, None, :].expand(count, size, size))
        else:
            # Long rows: pick the entries directly rather than materialise count * size rows.
            block = self.Q[index[:, :, None], index[:, None, :]]
        factor, _ = torch.linalg.cholesky_ex(block)
        right = self.rhs.gather(1, index[:, :, None].expand(count, size, self.rhs.shape[-1]))
        values, nu = _combine(_cholesky_solve(factor, right), simplex)
        return values.new_zeros(count, 2 * m).scatter_(1, index, values)[:, :m], nu


def _cholesky_solve(factor: Tensor, rhs: Tensor) -> Tensor:
    """``(L L^T)^{-1} rhs`` by two triangular solves (cheaper than ``torch.cholesky_solve``, which
    copies and re-triangularises the factor)."""
    return torch.linalg.solve_triangular(factor.mT, torch.linalg.solve_triangular(factor, rhs, upper=False), upper=True)


def _combine(solution: Tensor, simplex: bool) -> tuple[Tensor, Tensor | None]:
    """``x`` from the solves (``(B, k, 1)``, or ``(B, k, 2)`` with ``Q y = 1, Q z = -c`` on the simplex,
    where ``x = z + nu y`` and ``nu`` makes ``sum(x) = 1``) and the multiplier ``nu``."""
    if not simplex:
        return solution[:, :, 0], None
    y, z = solution.unbind(-1)
    nu = (1 - z.sum(dim=-1, keepdim=True)) / y.sum(dim=-1, keepdim=True)
    return z + nu * y, nu


def _interior_point(Q: Tensor, c: Tensor, simplex: bool, max_iterations: int) -> Tensor:
    """Mehrotra predictor-corrector; robust fallback for the active-set method."""
    batch, m = c.shape
    Qb = torch.broadcast_to(Q, (batch, m, m))
    x = torch.full_like(c, 1.0 / m if simplex else 1.0)
    z = torch.ones_like(c)
    y = torch.zeros(batch, dtype=c.dtype, device=c.device)
    ones = torch.ones_like(c)
    eye = torch.eye(m, dtype=c.dtype, device=c.device)
    done = torch.zeros(batch, dtype=torch.bool, device=c.device)

    def newton(rd: Tensor, rp: Tensor, rc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        H = Qb + torch.diag_embed(z / x) + _RIDGE * eye
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
        rd = _matvec(Q, x) + c - z - (y[:, None] if simplex else 0)
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
