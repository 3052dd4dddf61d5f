"""Krum and Multi-Krum: the gradient(s) closest to their neighbours."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._utils import check_int, output_dtype


@register()
class Krum(WeightedAggregator):
    r"""Krum / Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017).

    With ``f = n_byzantine``, each gradient is scored by the sum of its **squared** distances to
    its :math:`T - f - 2` nearest other gradients,
    :math:`s(i) = \sum_{i \to j} \lVert g_i - g_j \rVert^2` (distances from the Gramian:
    :math:`G_{ii} + G_{jj} - 2 G_{ij}`, in float64), and the ``n_selected`` gradients with the
    lowest scores are averaged (``n_selected = 1`` is Krum, more is Multi-Krum). Ties go to the
    lower task index. The guarantee of the paper needs :math:`T > 2f + 2`, which is checked.
    (TorchJD sums distances, not squared distances, and only requires :math:`T \ge f + 3`.)

    Scale convention: **mean** of the selected gradients (weights ``1/n_selected``).

    Args:
        n_byzantine: ``f >= 0``, the number of gradients that may be adversarial.
        n_selected: how many gradients are averaged (``1 <= n_selected <= T``).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, n_byzantine: int = 1, n_selected: int = 1) -> None:
        self.n_byzantine = check_int(n_byzantine, "n_byzantine", minimum=0)
        self.n_selected = check_int(n_selected, "n_selected", minimum=1)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        T, f = inputs.num_tasks, self.n_byzantine
        num_tasks = T
        if num_tasks <= 2 * f + 2:
            raise ValueError(
                f"Krum with n_byzantine={f} needs more than 2 * n_byzantine + 2 = {2 * f + 2} tasks, got {T}"
            )
        if self.n_selected > T:
            raise ValueError(f"Krum cannot select n_selected={self.n_selected} of {T} tasks")
        gramian = inputs.gramian
        G = gramian.to(torch.float64)
        squares = G.diagonal()
        distances = (squares[:, None] + squares[None, :] - 2 * G).clamp_min(0)
        distances.fill_diagonal_(float("inf"))
        nearest = torch.sort(distances, dim=1).values[:, : T - f - 2]
        scores = nearest.sum(dim=1)
        # Stable sort: equal scores keep the task order.
        selected = torch.sort(scores, stable=True).indices[: self.n_selected]
        weights = torch.zeros(T, dtype=torch.float64, device=G.device)
        weights[selected] = 1.0 / self.n_selected
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return f"n_byzantine={self.n_byzantine}, n_selected={self.n_selected}"
