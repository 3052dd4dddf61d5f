"""UPGrad: the mean of the task gradients projected onto the dual cone."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlagg.solvers import project_weights, solve_nonneg_qp

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

    Args:
        pref_vector: non-negative weights of the projected gradients (default ``1/T`` each).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    non_conflicting: ClassVar[bool] = True

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        self.pref_vector = check_preference(pref_vector)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        if self.pref_vector is None:
            # p = 1/T: problem k is min_{x >= 0} 1/2 x^T G x + (G e_k / T)^T x, w = 1/T + sum_k x_k.
            G = gramian.to(torch.float64)
            weights = solve_nonneg_qp(G, G * (1.0 / T)).sum(dim=0) + 1.0 / T
        else:
            pref = preference_for(self.pref_vector, T).to(gramian.device)
            weights = project_weights(gramian, torch.diag(pref)).sum(dim=0)
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return "" if self.pref_vector is None else f"pref_vector={self.pref_vector.tolist()}"
