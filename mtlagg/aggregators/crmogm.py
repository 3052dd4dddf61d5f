"""CR-MOGM: weights smoothed by a moving average across steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import AggregatorInput, WeightedAggregator
from ._registry import register
from ._stateful import Stateful


@register("cr_mogm")
class CRMOGM(Stateful, WeightedAggregator):
    r"""CR-MOGM (Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond", NeurIPS 2022), as TorchJD's ``CRMOGMWeighting``.

    Wraps a weighted aggregator and smooths its weights across steps:

    .. math:: \lambda_k = \alpha\,\lambda_{k-1} + (1-\alpha)\,\hat\lambda_k,\qquad d = \sum_i \lambda_{k,i} g_i,

    where :math:`\hat\lambda_k` are the wrapped aggregator's weights at step :math:`k` and
    :math:`\lambda_0 = \hat\lambda_1` (or ``initial_weights``). The moving average reduces the bias
    of stochastic gradient manipulation (Corollary 1 of the paper lets :math:`\alpha` grow towards 1
    as the learning rate decays: set ``crmogm.alpha`` between steps).

    Needs: what the wrapped aggregator needs. State: :math:`\lambda` and the wrapped aggregator's
    own state (nested under ``"inner"``).

    Args:
        aggregator: the weighted aggregator to smooth (default :class:`~mtlagg.aggregators.MGDA`, the
            method the paper analyses first).
        alpha: weight of the past, in [0, 1] (default 0.9, TorchJD's).
        initial_weights: :math:`\lambda_0`; ``None``: the first step's weights.
    """

    def __init__(
        self, aggregator: WeightedAggregator | None = None, alpha: float = 0.9, initial_weights: Tensor | None = None
    ) -> None:
        if aggregator is None:
            from .mgda import MGDA

            aggregator = MGDA()
        if isinstance(aggregator, type) or not isinstance(aggregator, WeightedAggregator):
            raise TypeError(f"CRMOGM wraps a weighted aggregator instance, got {aggregator!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.aggregator = aggregator
        self.alpha = float(alpha)
        self.initial_weights = None if initial_weights is None else torch.as_tensor(initial_weights).detach()
        # What the engine must compute is what the wrapped aggregator needs.
        self.needs = aggregator.needs  # type: ignore[misc]
        self.uses_losses = aggregator.uses_losses  # type: ignore[misc]
        self.uses_input_values = aggregator.uses_input_values  # type: ignore[misc]
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "weights": None, "inner": None}

    def state_dict(self) -> dict[str, Any]:
        self._state["inner"] = self.aggregator.state_dict()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.aggregator.load_state_dict(self._state["inner"] or {})

    def reset(self) -> None:
        super().reset()
        self.aggregator.reset()

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        current = self.aggregator.compute_weights(inputs)
        T = inputs.num_tasks
        state = self._state
        if self._check_num_tasks(T) or state["weights"] is None:
            if self.initial_weights is not None:
                if self.initial_weights.shape != (T,):
                    raise ValueError(f"initial_weights has shape {tuple(self.initial_weights.shape)}, expected ({T},)")
                state["weights"] = self.initial_weights.to(current)
            else:
                state["weights"] = current.detach().clone()
        smoothed = self.alpha * state["weights"].to(current) + (1 - self.alpha) * current
        state["weights"] = smoothed.detach().clone()
        return smoothed

    def extra_repr(self) -> str:
        return f"aggregator={self.aggregator!r}, alpha={self.alpha:g}"
