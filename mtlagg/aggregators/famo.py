"""FAMO: fast adaptive multitask optimization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, WeightOptimizer, softmax_vjp, state_dtype


@register()
class FAMO(Stateful, WeightedAggregator):
    r"""Fast Adaptive Multitask Optimization (Liu et al., "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023).

    Makes all losses fall at the same *relative* rate using the loss values only: O(1) in the
    number of tasks (no per-task gradients). With logits :math:`\xi`, :math:`z = \mathrm{softmax}(\xi)`
    and :math:`D_i = L_i - L_i^* + \epsilon`, the model receives the gradient of
    :math:`\sum_i z_i \log D_i / c` with :math:`c = \sum_j z_j / D_j` (a constant), i.e.

    .. math:: d = \sum_i w_i g_i,\qquad w_i = \frac{z_i / D_i}{\sum_j z_j / D_j}\quad(\textstyle\sum_i w_i = 1).

    After ``optimizer.step()``, the losses recomputed **on the same batch** tell how much each one
    fell, :math:`\delta_i = \log D_i^{\text{before}} - \log D_i^{\text{after}}`, and the logits take one
    Adam step along :math:`J_{\text{softmax}}(\xi)^\top \delta` (weight decay :math:`\gamma`): tasks
    that improved less gain weight. Usage::

        result = mtlagg.backward(losses, shared, aggregator=famo)
        optimizer.step()
        with torch.no_grad():
            famo.update(compute_losses(model, batch))   # same batch, after the step

    The post-step losses only drive the logits: they are not training losses (do not add them to
    your loss logs). ``backward`` twice without :meth:`update` in between, or :meth:`update` before
    any ``backward``, raises ``RuntimeError``; if ``mtlagg.backward`` skipped the step
    (``result.skipped``), skip the update too.

    Needs: the loss values only, and one extra forward pass (no backward) per step for :meth:`update`.
    State: logits, Adam moments, the pre-step losses, whether an update is pending.

    Defaults: ``weight_lr = 0.025`` and ``weight_decay`` :math:`\gamma = 10^{-3}` as in the paper (NYUv2,
    QM9, CelebA; the paper uses ``0.01`` for Cityscapes; the official class default ``1e-5`` and
    MTLlib's CLI default ``0.01`` differ). :math:`L^* = 0`, :math:`\epsilon = 10^{-8}`.

    Args:
        weight_lr: learning rate of the logits' Adam.
        weight_decay: :math:`\gamma`, Adam's L2 weight decay on the logits.
        min_losses: lower bounds :math:`L^*` (default zeros); every loss must stay above its bound.
        eps: :math:`\epsilon`.
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(
        self,
        weight_lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | Tensor | None = None,
        eps: float = 1e-8,
    ) -> None:
        self.optimizer = WeightOptimizer(weight_lr, "adam", weight_decay=weight_decay)
        if min_losses is not None:
            min_losses = torch.as_tensor(min_losses, dtype=torch.float64).detach()
            if min_losses.dim() != 1 or not bool(torch.isfinite(min_losses).all()):
                raise ValueError(f"min_losses must be a finite 1-D tensor, got {min_losses}")
        self.min_losses = min_losses
        self.eps = float(eps)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "logits": None, "optimizer": None, "prev_losses": None, "pending": False}

    @property
    def logits(self) -> Tensor | None:
        """The current logits :math:`\\xi` (``None`` before the first step)."""
        value = self._state["logits"]
        return None if value is None else value.clone()

    def _shifted(self, losses: Tensor, what: str) -> Tensor:
        T = losses.shape[0]
        bound = torch.zeros(T, dtype=losses.dtype, device=losses.device)
        if self.min_losses is not None:
            if self.min_losses.shape[0] != T:
                raise ValueError(f"min_losses has {self.min_losses.shape[0]} entries but there are {T} tasks")
            bound = self.min_losses.to(losses)
        shifted = losses - bound + self.eps
        if not bool((shifted > 0).all()):
            bad = torch.nonzero(shifted <= 0).flatten().tolist()
            raise ValueError(
                f"FAMO takes log(L - L*) and needs every loss above its lower bound; {what} of tasks {bad} are "
                f"{losses[bad].tolist()} (bounds {bound[bad].tolist()})"
            )
        return shifted

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("FAMO needs the loss values")
        state = self._state
        if state["pending"]:
            raise RuntimeError(
                "FAMO.update(new_losses) was not called after the last step: call it after optimizer.step(), with "
                "the losses recomputed on the same batch (under torch.no_grad())"
            )
        if self._check_num_tasks(inputs.num_tasks):
            logits = torch.zeros(inputs.num_tasks, dtype=state_dtype(losses), device=losses.device)
            state["logits"] = logits
            state["optimizer"] = self.optimizer.fresh(logits)
        logits = state["logits"]
        values = losses.detach().to(logits)
        shifted = self._shifted(values, "the losses")
        z = torch.softmax(logits, dim=0)
        ratio = z / shifted
        state["prev_losses"] = values.clone()
        state["pending"] = True
        return ratio / ratio.sum()

    def update(self, new_losses: Sequence[Tensor] | Tensor) -> None:
        """Update the logits from the losses recomputed on the same batch after ``optimizer.step()``."""
        state = self._state
        if not state["pending"]:
            raise RuntimeError(
                "FAMO.update() must follow an mtlagg.backward step with this FAMO instance (and optimizer.step()); "
                "none is pending"
            )
        if isinstance(new_losses, Tensor):
            values = new_losses.detach().reshape(-1)
        else:
            values = torch.stack([torch.as_tensor(v).detach().reshape(()) for v in new_losses])
        logits = state["logits"]
        if values.shape[0] != logits.shape[0]:
            raise ValueError(f"FAMO.update got {values.shape[0]} losses but the step had {logits.shape[0]} tasks")
        values = values.to(logits)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"FAMO.update got non-finite losses {values.tolist()}")
        before = self._shifted(state["prev_losses"], "the pre-step losses")
        after = self._shifted(values, "the post-step losses")
        delta = torch.log(before) - torch.log(after)
        state["logits"] = self.optimizer.step(logits, softmax_vjp(logits, delta), state["optimizer"])
        state["prev_losses"] = None
        state["pending"] = False

    def extra_repr(self) -> str:
        return f"weight_optimizer={self.optimizer!r}"
