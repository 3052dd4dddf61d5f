"""Coordinate-wise trimmed mean."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import Aggregator, AggregatorInput, Needs
from ._registry import register
from ._utils import check_int


@register("trimmed_mean")
class TrimmedMean(Aggregator):
    r"""Coordinate-wise trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018).

    For every coordinate, the ``trim_number`` largest and ``trim_number`` smallest task values are
    dropped and the remaining :math:`T - 2b` are averaged. Needs :math:`T > 2b` (checked).
    Coordinate-wise, so it needs the whole Jacobian and is not a weighted aggregator.
    Permutation-invariant. Scale convention: **mean** (``trim_number=0`` is :class:`Mean`).

    Args:
        trim_number: ``b >= 0``, how many values are dropped at each end of every coordinate.
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN

    def __init__(self, trim_number: int = 1) -> None:
        self.trim_number = check_int(trim_number, "trim_number", minimum=0)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        T, b = inputs.num_tasks, self.trim_number
        num_tasks = T
        if num_tasks <= 2 * b:
            raise ValueError(
                f"TrimmedMean with trim_number={b} needs more than 2 * trim_number = {2 * b} tasks, got {T}"
            )
        kept = torch.sort(jacobian, dim=0).values[b : T - b]
        return kept.mean(dim=0, dtype=torch.float32 if jacobian.dtype in (torch.float16, torch.bfloat16) else None).to(
            jacobian.dtype
        )

    def extra_repr(self) -> str:
        return f"trim_number={self.trim_number}"
