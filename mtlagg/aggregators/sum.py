"""Sum of the task gradients."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, weights_like
from ._registry import register


@register("ls")
class Sum(WeightedAggregator):
    r"""Linear scalarization with unit weights: :math:`d = \sum_i g_i`.

    The gradient of :math:`\sum_i L_i` (LibMTL's EW, MTLlib's LS). Scale convention: **sum**.
    Needs only the number of tasks (one ordinary backward).
    """

    needs: ClassVar[Needs] = Needs.LOSSES

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        reference = weights_like([], inputs)
        return torch.ones(inputs.num_tasks, dtype=reference.dtype, device=reference.device)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        assert inputs.jacobian is not None
        return inputs.jacobian.sum(dim=0)
