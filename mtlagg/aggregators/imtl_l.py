"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, WeightOptimizer, state_dtype


class LossScales(Stateful):
    r"""Learnable loss scales :math:`e^{s_i}` trained on :math:`\sum_i (e^{s_i} L_i - s_i)` (IMTL-L).

    :math:`\partial/\partial s_i = e^{s_i} L_i - 1`: at the fixed point every scaled loss
    :math:`e^{s_i}L_i` equals 1. Shared by :class:`IMTLL` and :class:`IMTL`.
    """

    def __init__(self, weight_lr: float, weight_optimizer: Literal["adam", "sgd"]) -> None:
        self.optimizer = WeightOptimizer(weight_lr, weight_optimizer)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "log_scale": None, "optimizer": None}

    @property
    def log_scale(self) -> Tensor | None:
        """The current :math:`s` (``None`` before the first step)."""
        value = self._state["log_scale"]
        return None if value is None else value.clone()

    def scales_then_step(self, losses: Tensor | None, num_tasks: int) -> Tensor:
        """:math:`e^{s}` for this step, then one optimizer step on :math:`s`."""
        if losses is None:
            raise ValueError(f"{type(self).__name__} needs the loss values")
        if self._check_num_tasks(num_tasks):
            s0 = torch.zeros(num_tasks, dtype=state_dtype(losses), device=losses.device)
            self._state["log_scale"] = s0
            self._state["optimizer"] = self.optimizer.fresh(s0)
        s = self._state["log_scale"]
        scales = torch.exp(s)
        gradient = scales * losses.to(s) - 1
        self._state["log_scale"] = self.optimizer.step(s, gradient, self._state["optimizer"])
        return scales


@register("imtl_l")
class IMTLL(LossScales, WeightedAggregator):
    r"""IMTL-L, the loss balance of Impartial Multi-Task Learning (Liu et al., "Towards Impartial
    Multi-task Learning", ICLR 2021).

    Each task has a learnable scale :math:`e^{s_i}`; the objective is
    :math:`\sum_i (e^{s_i} L_i - s_i)`, so the model receives :math:`d = \sum_i e^{s_i} g_i` and
    :math:`s_i` moves along :math:`e^{s_i}L_i - 1`: the scaled losses are driven to 1 (every task's
    loss counts the same, whatever its unit). The weights of the current :math:`s` are returned, then
    :math:`s` takes one step of its own optimizer (library convention).

    Needs: the loss values only. State: :math:`s` (``log_scale``, 0 at start) and optimizer moments.

    Defaults: Adam at ``0.025`` (the MTLlib convention for learnable loss weights; LibMTL trains
    :math:`s` with the main optimizer). Scale: weights start at 1 (a sum, like the paper).

    Args:
        weight_lr: learning rate of the scales' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(self, weight_lr: float = 0.025, weight_optimizer: Literal["adam", "sgd"] = "adam") -> None:
        super().__init__(weight_lr, weight_optimizer)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        return self.scales_then_step(inputs.losses, inputs.num_tasks)

    def extra_repr(self) -> str:
        return f"weight_optimizer={self.optimizer!r}"
