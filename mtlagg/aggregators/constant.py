"""Fixed, user-given task weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, weights_like
from ._registry import register


@register()
class Constant(WeightedAggregator):
    r"""Fixed weights: :math:`d = \sum_i w_i g_i`.

    Args:
        weights: one finite weight per task (a sequence or a 1-D tensor). Their scale is the
            user's: ``Constant([1, 1])`` sums, ``Constant([0.5, 0.5])`` averages.
    """

    needs: ClassVar[Needs] = Needs.LOSSES

    def __init__(self, weights: Sequence[float] | Tensor) -> None:
        tensor = torch.as_tensor(weights, dtype=torch.float64).detach().clone()
        if tensor.dim() != 1 or tensor.numel() == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"weights must be finite, got {tensor.tolist()}")
        self._weights = tensor

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        if inputs.num_tasks != self._weights.shape[0]:
            raise ValueError(
                f"Constant was given {self._weights.shape[0]} weights but there are {inputs.num_tasks} tasks"
            )
        return weights_like(self._weights, inputs)

    def extra_repr(self) -> str:
        return f"weights={self._weights.tolist()}"
