"""UW: uncertainty weighting."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, WeightOptimizer, state_dtype


@register("uncertainty")
class UW(Stateful, WeightedAggregator):
    r"""Uncertainty Weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018).

    Each task has a learnable log-variance :math:`s_i` and the objective is

    .. math:: \mathcal L = \sum_i \tfrac12 \left(e^{-s_i} L_i + s_i\right),

    so the model receives :math:`d = \sum_i w_i g_i` with :math:`w_i = \tfrac12 e^{-s_i}`, and the
    log-variances follow :math:`\partial\mathcal L/\partial s_i = \tfrac12 (1 - e^{-s_i} L_i)`, whose
    fixed point is :math:`e^{s_i} = L_i`: a noisier task (larger loss) gets a smaller weight.

    Each call is one step: the weights of the current :math:`s` are returned (and used for the
    model's gradient), then :math:`s` takes one step of its own optimizer (the library convention
    for learnable task weights, see :mod:`mtlagg.aggregators._stateful`).

    Needs: the loss values only (one ordinary backward of :math:`\sum_i w_i L_i`).
    State: :math:`s` (``log_var``) and the optimizer moments.

    Defaults: :math:`s = 0` at start (the paper and MTLlib; LibMTL starts from ``-0.5``); Adam with
    learning rate ``0.025`` (MTLlib's ``--method-params-lr``; LibMTL trains :math:`s` with the main
    optimizer). The same form is used for regression and classification, as in both peers.

    Args:
        weight_lr: learning rate of the log-variances' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
        init_log_var: initial :math:`s_i`.
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(
        self,
        weight_lr: float = 0.025,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        init_log_var: float = 0.0,
    ) -> None:
        self.optimizer = WeightOptimizer(weight_lr, weight_optimizer)
        self.init_log_var = float(init_log_var)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "log_var": None, "optimizer": None}

    @property
    def log_var(self) -> Tensor | None:
        """The current log-variances :math:`s` (``None`` before the first step)."""
        value = self._state["log_var"]
        return None if value is None else value.clone()

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("UW needs the loss values")
        if self._check_num_tasks(inputs.num_tasks):
            s0 = torch.full((inputs.num_tasks,), self.init_log_var, dtype=state_dtype(losses), device=losses.device)
            self._state["log_var"] = s0
            self._state["optimizer"] = self.optimizer.fresh(s0)
        s = self._state["log_var"]
        values = losses.to(s)
        precision = torch.exp(-s)
        weights = 0.5 * precision
        gradient = 0.5 * (1 - precision * values)
        self._state["log_var"] = self.optimizer.step(s, gradient, self._state["optimizer"])
        return weights

    def extra_repr(self) -> str:
        return f"weight_optimizer={self.optimizer!r}, init_log_var={self.init_log_var:g}"
