"""UPGrad: the mean of the task gradients projected onto the dual cone."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlagg.solvers import solve_dual_cone_diagonal

from ._base import AggregatorInput, Needs, WeightedAggregator, check_preference, preference_for
from ._registry import register
from ._utils import output_dtype


@register()
class UPGrad(WeightedAggregator):
    r"""Unconflicting Projection of Gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", arXiv:2406.16232, 2024).

    Each task gradient is projected onto the dual cone :math:`\{x : Jx \ge 0\}` and the projections
    are averaged with the preference weights :math:`p` (``1/T`` by default):
    :math:`d = \sum_k p_k\, \pi_{J}(g_k)`. In weight space (Prop. 1 of the paper),
    :math:`\pi_J(p_k g_k) = J^\top v_k` with

    .. math:: v_k = \arg\min_{v \ge p_k e_k} v^\top G v,

    so :math:`w = \sum_k v_k`. The ``T`` problems are solved together as one batched, exact
    (float64, KKT-checked) non-negative QP (:func:`~mtlagg.solvers.project_weights`), without the
    ``1e-4`` normalisation and ridge TorchJD and LibMTL add: the direction is exactly linear under
    scaling of the rows. Scale convention: **mean** (with the default preference). Non-conflicting,
    permutation-equivariant (with a permuted preference).

    ``warm_start=True`` (opt-in, stateful: ``state_dict`` / ``load_state_dict`` / ``reset``) starts
    the active-set solver from the free sets of the previous call: in training, consecutive
    Jacobians are close and the solve then takes one or two iterations instead of a handful. The
    answer is the same (exact, KKT-checked) either way.

    Args:
        pref_vector: non-negative weights of the projected gradients (default ``1/T`` each).
        warm_start: reuse the previous call's free sets as the solver's starting guess.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True
    non_conflicting: ClassVar[bool] = True

    def __init__(self, pref_vector: Tensor | None = None, *, warm_start: bool = False) -> None:
        self.pref_vector = check_preference(pref_vector)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {type(warm_start).__name__}")
        self.warm_start = warm_start
        self._free: Tensor | None = None

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        # Problem k: v_k = p_k e_k + x_k, x_k = argmin_{x >= 0} 1/2 x^T G x + p_k (G e_k)^T x.
        if self.pref_vector is None:
            pref = torch.full((T,), 1.0 / T, dtype=torch.float64, device=gramian.device)
        else:
            pref = preference_for(self.pref_vector, T).to(device=gramian.device, dtype=torch.float64)
        start = None
        if self.warm_start and self._free is not None and self._free.shape == (T, T):
            start = self._free.to(gramian.device)
        if not self.warm_start:
            return solve_dual_cone_diagonal(gramian, pref, summed=True).to(output_dtype(gramian))
        x = solve_dual_cone_diagonal(gramian, pref, initial_free=start)
        self._free = x > 0
        return (x.sum(dim=0) + pref).to(output_dtype(gramian))

    # -- state (only with warm_start=True) -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.warm_start:
            return {}
        return {"free": None if self._free is None else self._free.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.warm_start:
            super().load_state_dict(state_dict)
            return
        if set(state_dict) != {"free"}:
            raise ValueError(f"UPGrad state must have the key ['free'], got {sorted(state_dict)}")
        free = state_dict["free"]
        if free is not None and (not isinstance(free, Tensor) or free.dim() != 2 or free.dtype != torch.bool):
            raise ValueError("state_dict['free'] must be None or a square boolean tensor")
        self._free = None if free is None else free.clone()

    def reset(self) -> None:
        self._free = None

    def extra_repr(self) -> str:
        parts = [] if self.pref_vector is None else [f"pref_vector={self.pref_vector.tolist()}"]
        if self.warm_start:
            parts.append("warm_start=True")
        return ", ".join(parts)
