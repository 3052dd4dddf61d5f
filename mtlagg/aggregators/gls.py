"""GLS: the geometric mean of the losses."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register


@register("geometric_mean")
class GLS(WeightedAggregator):
    r"""Geometric Loss Strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
    Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

    The objective is the geometric mean :math:`\mathcal L = (\prod_i L_i)^{1/T}`, whose gradient is
    :math:`\sum_i w_i g_i` with the exact weights

    .. math:: w_i = \frac{\partial \mathcal L}{\partial L_i} = \frac{\mathcal L}{T\,L_i}.

    (LibMTL logs :math:`L_i/(T\prod_j L_j)` as "weights", which is not the effective weight; the
    gradient it back-propagates is the same as here.) Scale-invariant in each loss: multiplying
    :math:`L_i` by a constant multiplies the direction by a constant.

    Needs: the loss values only, all positive. Stateless. Defaults: none (no hyper-parameter).
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("GLS needs the loss values")
        values = losses.to(torch.float64)
        if bool((values <= 0).any()):
            bad = torch.nonzero(values <= 0).flatten().tolist()
            raise ValueError(
                f"GLS takes the geometric mean of the losses, which needs them positive; tasks {bad} have losses "
                f"{values[bad].tolist()}"
            )
        mean = torch.exp(torch.log(values).mean())
        dtype = losses.dtype if losses.dtype in (torch.float32, torch.float64) else torch.float32
        return (mean / (inputs.num_tasks * values)).to(dtype)
