"""The alpha-fair weights shared by FairGrad and NashMTL, with their failure policy."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from mtlagg.errors import SolverError
from mtlagg.solvers import solve_alpha_fair

OnFailure = Literal["raise", "warn"]
ON_FAILURE = ("raise", "warn")


def fair_weights(
    gramian: Tensor,
    alpha: float,
    *,
    method: str,
    on_failure: OnFailure,
    initial: Tensor | None = None,
    tol: float,
    max_iterations: int,
) -> Tensor:
    """Float64 weights solving ``(G w)_i = w_i^(-1/alpha)``, with the documented degenerate cases.

    Tasks with a (numerically) zero gradient cannot satisfy their equation; they get weight 0 and
    the others are solved among themselves. If the remaining equations have no solution (the
    origin is in the convex hull of the gradients, e.g. two opposite gradients) or the solver does
    not converge, the weights are 0 (no direction improves every task). Both cases raise a
    :class:`~mtlagg.errors.SolverError` with ``on_failure="raise"`` and warn with ``"warn"``.
    """
    G = gramian.to(torch.float64)
    T = G.shape[0]
    diagonal = G.diagonal()
    eps = torch.finfo(gramian.dtype if gramian.dtype in (torch.float32, torch.float64) else torch.float32).eps
    alive = diagonal > T * eps * diagonal.max().clamp_min(0)
    weights = torch.zeros(T, dtype=torch.float64, device=G.device)
    dead = torch.nonzero(~alive).flatten().tolist()
    if len(dead) == T:
        _fail(f"{method}: every task gradient is zero; the weights are 0", on_failure)
        return weights
    if dead:
        _fail(
            f"{method}: the gradients of tasks {dead} are zero, so their equations (G w)_i = w_i^(-1/alpha) have "
            "no solution; they get weight 0 and the other tasks are balanced among themselves",
            on_failure,
        )
        keep = torch.nonzero(alive).flatten()
        sub_initial = initial[keep.to(initial.device)] if initial is not None else None
        sub_gramian = G[keep][:, keep]
        solution = solve_alpha_fair(sub_gramian, alpha, initial=sub_initial, tol=tol, max_iterations=max_iterations)
        if solution.converged:
            weights[keep] = solution.weights
            return weights
    else:
        solution = solve_alpha_fair(G, alpha, initial=initial, tol=tol, max_iterations=max_iterations)
        if solution.converged:
            return solution.weights
    _fail(
        f"{method}: the equations (G w)_i = w_i^(-1/alpha) were not solved (residual {solution.residual:.3g} after "
        f"{solution.iterations} Newton steps, tolerance {tol:g}); they have no solution when a non-negative "
        "combination of the task gradients vanishes (e.g. opposite gradients). The weights are 0",
        on_failure,
    )
    return weights


def _fail(message: str, on_failure: OnFailure) -> None:
    if on_failure == "raise":
        raise SolverError(message + " (pass on_failure='warn' to go on with them)")
    warnings.warn(message, RuntimeWarning, stacklevel=4)
