"""PCGrad: projecting conflicting gradients."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._utils import check_generator, output_dtype


@register()
class PCGrad(WeightedAggregator):
    r"""Projecting Conflicting Gradients (Yu et al., "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020).

    For each task ``i``, starting from :math:`g_i^{PC} = g_i`, for every other task ``j`` in a random
    order: if :math:`\langle g_i^{PC}, g_j\rangle < 0`, remove the component along :math:`g_j`:
    :math:`g_i^{PC} \leftarrow g_i^{PC} - \frac{\langle g_i^{PC}, g_j\rangle}{\lVert g_j\rVert^2} g_j`.
    Then :math:`d = \sum_i g_i^{PC}` (``reduction="sum"``, as in the paper and its code, LibMTL
    and MTLlib; ``"mean"`` divides by ``T``).

    Every :math:`g_i^{PC}` stays a combination of the task gradients, so the method runs in weight
    space on the Gramian (all ``T`` projections at once, one vectorised step per position in the
    order), and takes the ``features=`` shortcut too. Zero gradients are never projected onto.
    Each task has its own random order of the others (as in the paper's code). Not
    permutation-invariant (the orders are random); reproducible through ``generator``.

    Args:
        reduction: ``"sum"`` (default) or ``"mean"``.
        generator: ``torch.Generator`` for the random orders (global RNG if ``None``).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, reduction: Literal["sum", "mean"] = "sum", *, generator: torch.Generator | None = None) -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.generator = check_generator(generator)

    def random_orders(self, num_tasks: int) -> Tensor:
        """Row ``i``: the other tasks in the random order task ``i`` is projected against."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        keys = torch.rand(num_tasks, num_tasks, generator=self.generator, device=device)
        keys.fill_diagonal_(2.0)  # task i itself goes last, then is dropped
        return keys.argsort(dim=1)[:, : num_tasks - 1]

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian.to(torch.float64)
        T = inputs.num_tasks
        orders = self.random_orders(T).to(gramian.device)
        coefficients = torch.eye(T, dtype=torch.float64, device=gramian.device)
        rows = torch.arange(T, device=gramian.device)
        squared_norms = gramian.diagonal()
        inverse_norms = torch.where(squared_norms > 0, 1 / torch.where(squared_norms > 0, squared_norms, 1), 0.0)
        for step in range(T - 1):
            j = orders[:, step]
            dots = (coefficients * gramian[j]).sum(dim=1)  # <g_i^PC, g_j(i)> for every i
            coefficients[rows, j] -= dots.clamp(max=0) * inverse_norms[j]
        weights = coefficients.sum(dim=0)
        if self.reduction == "mean":
            weights = weights / T
        return weights.to(output_dtype(inputs.gramian))

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
