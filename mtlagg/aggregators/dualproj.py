"""DualProj: the mean gradient projected onto the dual cone (the GEM projection)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlagg.solvers import project_weights

from ._base import AggregatorInput, Needs, WeightedAggregator, check_preference, preference_for
from ._registry import register
from ._utils import output_dtype


@register()
class DualProj(WeightedAggregator):
    r"""Projection of the (preference-weighted) mean gradient onto the dual cone of the task
    gradients: the projection step of Gradient Episodic Memory (Lopez-Paz & Ranzato, "Gradient
    Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11-13).

    .. math::
        d = \arg\min_{x:\, Jx \ge 0} \lVert x - J^\top p \rVert^2 = J^\top v, \qquad
        v = \arg\min_{v \ge p} v^\top G v,

    one exact non-negative QP (float64, KKT-checked; no ridge). Scale convention: **mean** with
    the default preference ``p = 1/T``. Non-conflicting; not linear under scaling of the rows
    (unlike :class:`UPGrad`, which projects each gradient separately).

    Args:
        pref_vector: the non-negative weights of the combination that is projected (default ``1/T``).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True
    non_conflicting: ClassVar[bool] = True

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        self.pref_vector = check_preference(pref_vector)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        if self.pref_vector is None:
            pref = torch.full((T,), 1.0 / T, dtype=torch.float64, device=gramian.device)
        else:
            pref = preference_for(self.pref_vector, T).to(device=gramian.device, dtype=torch.float64)
        # v = argmin_{v >= p} v^T G v
        return project_weights(gramian, pref).to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return "" if self.pref_vector is None else f"pref_vector={self.pref_vector.tolist()}"
