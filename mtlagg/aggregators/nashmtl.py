"""Nash-MTL: the Nash bargaining solution among the tasks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlagg.solvers import FAIR_TOLERANCE

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._fair import ON_FAILURE, OnFailure, fair_weights
from ._registry import register
from ._utils import check_float, check_int, output_dtype


@register("nash_mtl")
class NashMTL(WeightedAggregator):
    r"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    The update :math:`d = J^\top \alpha` is the Nash bargaining solution: it maximises
    :math:`\sum_i \log \langle g_i, d\rangle` in a ball, and its weights solve

    .. math:: \alpha_i (G \alpha)_i = 1, \quad \alpha > 0

    (Eq. 4-5 of the paper). The paper and its code approximate the solution with up to 20
    sequential convex (CCP) solves of cvxpy/ECOS, silently keeping the previous weights when the
    solver fails; here the equations are solved directly by Newton's method on the convex
    potential :math:`\tfrac12\alpha^\top G\alpha - \sum_i \log\alpha_i` (float64, residual checked
    to ``tol``; :func:`~mtlagg.solvers.solve_alpha_fair` with :math:`\alpha = 1`). The official
    code normalises ``G`` by its Frobenius norm inside the solver and returns weights for the raw
    equation; so does this one. Then :math:`\lVert d\rVert = \sqrt T`, and every task improves:
    :math:`\langle g_i, d\rangle = 1/\alpha_i > 0` (non-conflicting).

    ``max_norm`` reproduces the official gradient clipping, which happens on the shared gradient
    after the backward pass: the weights are scaled so that :math:`\lVert d\rVert \le` ``max_norm``
    (with the default 1.0 and ``T >= 2`` it always fires). On the ``features=`` path ``d`` is the
    feature-space direction.

    Degenerate cases (documented, never silent): zero task gradients get weight 0 and the others
    are balanced among themselves; if the equations have no solution (the origin is in the convex
    hull of the gradients, e.g. opposite gradients) the weights are 0. Both raise
    :class:`~mtlagg.errors.SolverError` with ``on_failure="raise"`` and warn with ``"warn"``
    (default). The official code would silently reuse stale weights (or, without ECOS, never
    leave the initial all-ones weights).

    Opt-in state (``state_dict`` / ``load_state_dict`` / ``reset``): ``update_weights_every=k``
    solves every ``k``-th call and reuses the last (unclipped) weights in between, as the paper's
    speed-up (the clipping is recomputed every call); ``warm_start=True`` starts Newton from the
    previous solution. With neither, the aggregator is stateless.

    Scale convention: the raw Nash weights (:math:`\lVert d\rVert = \sqrt T`), then clipped to
    ``max_norm``.

    Args:
        max_norm: clip :math:`\lVert d\rVert` to this (``> 0``), or ``None`` for no clipping.
        update_weights_every: solve every ``k``-th call (``>= 1``).
        warm_start: start each solve from the previous solution.
        on_failure: ``"warn"`` (default) or ``"raise"``, see above.
        tol: tolerance on :math:`\max_i |\alpha_i (G\alpha)_i - 1|`.
        max_iterations: Newton steps before the failure policy applies.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True
    non_conflicting: ClassVar[bool] = True

    def __init__(
        self,
        max_norm: float | None = 1.0,
        *,
        update_weights_every: int = 1,
        warm_start: bool = False,
        on_failure: OnFailure = "warn",
        tol: float = FAIR_TOLERANCE,
        max_iterations: int = 100,
    ) -> None:
        self.max_norm = None if max_norm is None else check_float(max_norm, "max_norm", minimum=0.0, strict=True)
        self.update_weights_every = check_int(update_weights_every, "update_weights_every", minimum=1)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
        self.warm_start = warm_start
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        self.on_failure = on_failure
        self.tol = check_float(tol, "tol", minimum=0.0, strict=True)
        self.max_iterations = check_int(max_iterations, "max_iterations", minimum=1)
        self._step = 0
        self._weights: Tensor | None = None

    @property
    def stateful(self) -> bool:
        """Whether calls depend on earlier ones (``update_weights_every > 1`` or ``warm_start``)."""
        return self.update_weights_every > 1 or self.warm_start

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        previous = self._weights if self._weights is not None and self._weights.shape == (T,) else None
        if previous is not None and self.update_weights_every > 1 and self._step % self.update_weights_every != 0:
            weights = previous.to(gramian.device)
        else:
            weights = fair_weights(
                gramian,
                1.0,
                method="NashMTL",
                on_failure=self.on_failure,
                initial=previous if self.warm_start and previous is not None and bool((previous > 0).all()) else None,
                tol=self.tol,
                max_iterations=self.max_iterations,
            )
        if self.stateful:
            self._weights = weights.detach().clone()
            self._step += 1
        if self.max_norm is not None:
            G = gramian.to(torch.float64)
            norm = (weights @ G @ weights).clamp_min(0).sqrt()
            weights = weights * torch.where(norm > self.max_norm, self.max_norm / norm, 1.0)
        return weights.to(output_dtype(gramian))

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.stateful:
            return {}
        weights = None if self._weights is None else self._weights.clone()
        return {"step": self._step, "weights": weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.stateful:
            super().load_state_dict(state_dict)
            return
        if set(state_dict) != {"step", "weights"}:
            raise ValueError(f"NashMTL state must have the keys ['step', 'weights'], got {sorted(state_dict)}")
        step, weights = state_dict["step"], state_dict["weights"]
        self._step = check_int(step, "state_dict['step']", minimum=0)
        if weights is not None and (not isinstance(weights, Tensor) or weights.dim() != 1):
            raise ValueError("state_dict['weights'] must be None or a 1-D tensor")
        self._weights = None if weights is None else weights.detach().to(torch.float64).clone()

    def reset(self) -> None:
        self._step = 0
        self._weights = None

    def extra_repr(self) -> str:
        parts = [f"max_norm={self.max_norm}"]
        if self.update_weights_every != 1:
            parts.append(f"update_weights_every={self.update_weights_every}")
        if self.warm_start:
            parts.append("warm_start=True")
        return ", ".join(parts)
