"""Random loss weighting (RLW)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, weights_like
from ._registry import register


@register("rlw")
class Random(WeightedAggregator):
    r"""Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022).

    At every step draws :math:`z \sim \mathcal N(0, I_T)` and uses :math:`w = \mathrm{softmax}(z)`:
    :math:`d = \sum_i w_i g_i`. Scale convention: weights sum to 1 (a random convex combination,
    like :class:`Mean` on average). Needs only the number of tasks (one ordinary backward).

    Args:
        generator: the ``torch.Generator`` the draws come from (on the device of the losses);
            ``None`` uses torch's global generator.
    """

    needs: ClassVar[Needs] = Needs.LOSSES

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        reference = weights_like([], inputs)
        device = self.generator.device if self.generator is not None else reference.device
        logits = torch.randn(inputs.num_tasks, generator=self.generator, device=device, dtype=reference.dtype)
        return torch.softmax(logits, dim=0).to(reference.device)
