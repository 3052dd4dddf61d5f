"""Mean (equal weighting, EW)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, weights_like
from ._registry import register


@register("ew")
class Mean(WeightedAggregator):
    r"""Equal weighting: :math:`d = \frac{1}{T}\sum_i g_i`.

    The baseline of every MTL paper (called EW in LibMTL, LS in the Nash-MTL line of work).
    Scale convention: **mean** of the task gradients (LibMTL's EW and MTLlib's LS *sum* them;
    use :class:`Sum` for that). Needs only the number of tasks, so :func:`mtlagg.backward` runs
    one ordinary backward of :math:`\frac{1}{T}\sum_i L_i`. Linear under scaling, permutation
    invariant, not non-conflicting.
    """

    needs: ClassVar[Needs] = Needs.LOSSES

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        reference = weights_like([], inputs)
        return torch.full((inputs.num_tasks,), 1.0 / inputs.num_tasks, dtype=reference.dtype, device=reference.device)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        assert inputs.jacobian is not None
        return inputs.jacobian.mean(dim=0)


EW = Mean
