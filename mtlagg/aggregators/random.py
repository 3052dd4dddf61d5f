"""Random weighting: RLW (random loss weighting) and RGW (random gradient weighting)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, weights_like
from ._registry import register
from ._utils import check_generator


@register("rlw")
class Random(WeightedAggregator):
    r"""Random weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022).

    At every step draws :math:`z \sim \mathcal N(0, I_T)` and uses :math:`w = \mathrm{softmax}(z)`:
    :math:`d = \sum_i w_i g_i`. Scale convention: weights sum to 1 (a random convex combination,
    like :class:`Mean` on average; LibMTL's EW sums). Needs only the number of tasks (one ordinary
    backward).

    ``kind`` names the two variants of the paper; they agree on the shared parameters
    (:math:`\sum_i w_i \nabla L_i` is the gradient of :math:`\sum_i w_i L_i`) and differ on the
    task-specific ones:

    * ``"loss"`` (RLW, default): the loss :math:`\sum_i w_i L_i` is back-propagated, so task
      ``i``'s own parameters get :math:`w_i \nabla L_i`;
    * ``"gradient"`` (RGW, LibMTL v1.1.6 ``RGW``): the weights recombine the per-task gradients of
      the shared parameters only; task parameters get the unweighted :math:`\nabla L_i`.

    With :func:`mtlagg.backward` the task-parameter side is what ``weight_task_params=`` says
    (default ``False``: unweighted, RGW's behaviour); the attribute :attr:`weights_task_params`
    holds the value the chosen variant means (``True`` for ``"loss"``), so pass
    ``weight_task_params=agg.weights_task_params`` to get exactly RLW.

    Args:
        kind: ``"loss"`` (RLW) or ``"gradient"`` (RGW).
        generator: the ``torch.Generator`` the draws come from (on the device the weights are
            drawn on); ``None`` uses torch's global generator.
    """

    needs: ClassVar[Needs] = Needs.LOSSES

    def __init__(self, kind: Literal["loss", "gradient"] = "loss", *, generator: torch.Generator | None = None) -> None:
        if isinstance(kind, torch.Generator):
            raise TypeError("pass the generator by keyword: Random(generator=...)")
        if kind not in ("loss", "gradient"):
            raise ValueError(f"kind must be 'loss' (RLW) or 'gradient' (RGW), got {kind!r}")
        self.kind = kind
        self.generator = check_generator(generator)
        #: whether the method weights the task-specific parameters' gradients too (RLW) or not (RGW).
        self.weights_task_params = kind == "loss"

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        reference = weights_like([], inputs)
        device = self.generator.device if self.generator is not None else reference.device
        logits = torch.randn(inputs.num_tasks, generator=self.generator, device=device, dtype=reference.dtype)
        return torch.softmax(logits, dim=0).to(reference.device)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        device = self.generator.device if self.generator is not None else jacobian.device
        dtype = jacobian.dtype if jacobian.dtype in (torch.float32, torch.float64) else torch.float32
        logits = torch.randn(inputs.num_tasks, generator=self.generator, device=device, dtype=dtype)
        return torch.softmax(logits, dim=0).to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
