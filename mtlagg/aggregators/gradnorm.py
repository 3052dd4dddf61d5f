"""GradNorm: gradient normalisation for adaptive loss balancing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, WeightOptimizer


@register()
class GradNorm(Stateful, WeightedAggregator):
    r"""GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks", ICML 2018).

    Learnable weights :math:`w` (1 at start) make the weighted task gradient norms
    :math:`G_i = w_i \lVert g_i\rVert` follow a common norm scaled by each task's relative training
    rate:

    .. math:: \mathcal L_{\text{grad}} = \sum_i \big|G_i - \bar G\, r_i^{\alpha}\big|,\qquad
        r_i = \frac{\tilde L_i}{\operatorname{mean}_j \tilde L_j},\quad \tilde L_i = L_i / L_i(0),

    with the target :math:`\bar G r_i^\alpha` held constant (as in the paper), so
    :math:`\partial \mathcal L_{\text{grad}}/\partial w_i = \operatorname{sign}(G_i - \bar G r_i^\alpha)\,
    \lVert g_i\rVert`. Per step: the model receives :math:`d = \sum_i w_i g_i` with the current
    :math:`w`; then :math:`w` takes one step of its own optimizer (library convention), is clamped at 0
    and renormalised to :math:`\sum_i w_i = T` (the paper's renormalisation).

    Needs: the Gramian (the norms :math:`\lVert g_i\rVert` are :math:`\sqrt{G_{ii}}`) and the losses.
    State: :math:`w`, :math:`L(0)`, optimizer moments.

    Choices: the norms are over all shared parameters passed (LibMTL; the paper uses the last
    shared layer to save the per-task backward, which here is computed anyway); :math:`L(0)` is the
    first step's losses (the paper; LibMTL uses the epoch-0 mean after an epoch of equal weights),
    or ``initial_losses``. Raw weights with renormalisation, as the paper (LibMTL uses
    :math:`T\,\mathrm{softmax}`). Defaults: :math:`\alpha = 1.5`, Adam at ``0.025``.

    Args:
        alpha: the restoring-force strength :math:`\alpha`.
        weight_lr: learning rate of the weights' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
        initial_losses: :math:`L(0)`; ``None``: the first step's losses.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    uses_losses: ClassVar[bool] = True

    def __init__(
        self,
        alpha: float = 1.5,
        weight_lr: float = 0.025,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        initial_losses: Sequence[float] | Tensor | None = None,
    ) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha!r}")
        self.alpha = float(alpha)
        self.optimizer = WeightOptimizer(weight_lr, weight_optimizer)
        if initial_losses is not None:
            initial_losses = torch.as_tensor(initial_losses, dtype=torch.float64).detach()
            if initial_losses.dim() != 1 or not bool((initial_losses > 0).all()):
                raise ValueError(f"initial_losses must be a 1-D tensor of positive numbers, got {initial_losses}")
        self.initial_losses = initial_losses
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "weights": None, "initial_losses": None, "optimizer": None}

    @property
    def current_weights(self) -> Tensor | None:
        """The weights the next step will use (``None`` before the first step)."""
        value = self._state["weights"]
        return None if value is None else value.clone()

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("GradNorm needs the loss values")
        T = inputs.num_tasks
        gramian = inputs.gramian.to(torch.float64)
        values = losses.detach().to(gramian)
        state = self._state
        if self._check_num_tasks(T):
            weights = torch.ones(T, dtype=torch.float64, device=gramian.device)
            state["weights"] = weights
            state["optimizer"] = self.optimizer.fresh(weights)
            if self.initial_losses is not None:
                if self.initial_losses.shape[0] != T:
                    raise ValueError(f"initial_losses has {self.initial_losses.shape[0]} entries, there are {T} tasks")
                state["initial_losses"] = self.initial_losses.to(gramian)
            else:
                if not bool((values > 0).all()):
                    raise ValueError(f"GradNorm divides by the first losses and needs them positive, got {values}")
                state["initial_losses"] = values.clone()
        weights = state["weights"]
        norms = gramian.diagonal().clamp_min(0).sqrt()
        weighted_norms = weights * norms
        relative = values / state["initial_losses"]
        rates = relative / relative.mean()
        target = weighted_norms.mean() * rates.clamp_min(0) ** self.alpha
        gradient = torch.sign(weighted_norms - target) * norms
        new = self.optimizer.step(weights, gradient, state["optimizer"]).clamp_min(0)
        total = new.sum()
        state["weights"] = new * (T / total) if bool(total > 0) else torch.ones_like(new)
        return weights.to(inputs.gramian.dtype)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, weight_optimizer={self.optimizer!r}"
