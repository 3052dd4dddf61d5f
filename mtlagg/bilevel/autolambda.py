"""Auto-Lambda: task weights learned by a one-step look-ahead on the outer objective."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mtlagg.aggregators._registry import register
from mtlagg.aggregators._stateful import softmax_vjp

from ._common import BilevelMethod, BilevelResult, FunctionalModel, LossFn, Outer, gradients_or_zeros, loss_vector


@register("auto_lambda")
class AutoLambda(BilevelMethod):
    r"""Auto-Lambda (Liu, James, Davison & Johns, "Auto-Lambda: Disentangling Dynamic Task
    Relationships", TMLR 2022).

    Task weights :math:`w = \mathrm{softmax}(\alpha)` minimise the outer (validation) loss after one
    virtual SGD step of the model on the weighted training loss:

    .. math:: \theta'(\alpha) = \theta - \eta\,\nabla_\theta \sum_i w_i(\alpha) L_i^{\text{in}}(\theta),\qquad
        \min_\alpha\ L^{\text{out}}(\theta'(\alpha)) = \sum_{t \in \text{outer tasks}} L_t^{\text{out}}(\theta').

    The hypergradient is :math:`-\eta\,\nabla_\alpha\big(\nabla_\theta \sum_i w_i L_i^{\text{in}}(\theta)
    \cdot d\big)` with :math:`d = \nabla_{\theta'} L^{\text{out}}(\theta')`: computed exactly by
    differentiating through the virtual step (``hypergradient="exact"``, default; one
    double-backward) or, as the official code, by central finite differences of
    :math:`\nabla_\alpha L^{\text{in}}` at :math:`\theta \pm \epsilon d`, :math:`\epsilon = 0.01/\lVert d\rVert`
    (``"finite_difference"``; two extra forward passes, and since
    :math:`\nabla_\alpha \sum_i w_i L_i = J_{\text{softmax}}^\top L` no backward). The logits take one
    step of their own Adam; then the model receives :math:`\nabla_\theta \sum_i w_i L_i` of the
    training batch with the new weights (heads weighted too), in ``.grad``.

    ``outer_tasks`` selects the tasks of the outer objective: all of them for multi-task learning,
    the primary ones for auxiliary learning (the paper's two settings).

    **Call** ``autol.step(model, loss_fn, batch, outer_batch)``, then ``optimizer.step()``
    (see :meth:`BilevelMethod.step`). State: the logits, Adam moments, step counter.

    Defaults: softmax weights and Adam at ``1e-3`` (LibMTL's; the official code learns raw weights
    initialised at 0.1 with lr ``1e-4``), outer data = validation (the paper; LibMTL uses a second
    training half-batch: ``outer="split"``). ``inner_lr`` :math:`\eta` is the model's learning rate
    (the paper and LibMTL): pass it at construction or per step (for schedules).

    Args:
        inner_lr: :math:`\eta` of the virtual step.
        weight_lr: learning rate of the logits' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
        outer: ``"validation"`` (default) or ``"split"``.
        outer_tasks: task indices of the outer objective (default: all).
        hypergradient: ``"exact"`` or ``"finite_difference"``.
    """

    def __init__(
        self,
        inner_lr: float | None = None,
        weight_lr: float = 1e-3,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        outer: Outer = "validation",
        outer_tasks: Sequence[int] | None = None,
        hypergradient: Literal["exact", "finite_difference"] = "exact",
    ) -> None:
        if inner_lr is not None and not inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr!r}")
        if hypergradient not in ("exact", "finite_difference"):
            raise ValueError(f"hypergradient must be 'exact' or 'finite_difference', got {hypergradient!r}")
        self.inner_lr = inner_lr
        self.hypergradient = hypergradient
        super().__init__(weight_lr, weight_optimizer, outer, outer_tasks)

    def step(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, outer_batch: Any = None, *, inner_lr: float | None = None
    ) -> BilevelResult:
        """See :meth:`BilevelMethod.step`; ``inner_lr`` overrides the constructor's for this step."""
        lr = inner_lr if inner_lr is not None else self.inner_lr
        if lr is None:
            raise ValueError(
                "AutoLambda's virtual step uses the model's learning rate: pass inner_lr= (e.g. "
                "optimizer.param_groups[0]['lr']) to AutoLambda(...) or to step()"
            )
        if not lr > 0:
            raise ValueError(f"inner_lr must be positive, got {lr!r}")
        self._lr = float(lr)
        return super().step(model, loss_fn, batch, outer_batch)

    def _step(
        self, model: nn.Module, loss_fn: LossFn, inner_batch: Any, outer_batch: Any, update_batch: Any
    ) -> BilevelResult:
        lr = self._lr
        fmodel = FunctionalModel(model)
        params = fmodel.params
        inner = loss_vector(loss_fn, fmodel.at(params), inner_batch, self._state["num_tasks"])
        T = inner.shape[0]
        logits = self._logits(T, inner)
        outer_tasks = self._outer_indices(T)
        exact = self.hypergradient == "exact"
        alpha = logits.detach().clone().requires_grad_(exact)
        weights = torch.softmax(alpha, dim=0).to(inner)
        grads = torch.autograd.grad((weights * inner).sum(), params, create_graph=exact, allow_unused=True)
        grads = gradients_or_zeros(grads, params)
        virtual = [(p - lr * g).detach().requires_grad_() for p, g in zip(params, grads)]
        outer = loss_vector(loss_fn, fmodel.at(virtual), outer_batch, T)
        direction = torch.autograd.grad(outer[outer_tasks].sum(), virtual, allow_unused=True)
        direction = gradients_or_zeros(direction, virtual)
        if exact:
            pairs = [(g, d) for g, d in zip(grads, direction) if g.requires_grad]
            if pairs:
                (mixed,) = torch.autograd.grad(
                    [g for g, _ in pairs], alpha, grad_outputs=[d for _, d in pairs], allow_unused=True
                )
            else:
                mixed = None
            hyper = -lr * (torch.zeros_like(alpha) if mixed is None else mixed.detach())
        else:
            norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction))
            if bool(norm > 0):
                eps = 0.01 / norm.item()
                with torch.no_grad():
                    plus_params = [p + eps * d for p, d in zip(params, direction)]
                    minus_params = [p - eps * d for p, d in zip(params, direction)]
                    plus = loss_vector(loss_fn, fmodel.at(plus_params), inner_batch, T)
                    minus = loss_vector(loss_fn, fmodel.at(minus_params), inner_batch, T)
                hyper = -lr * softmax_vjp(logits, (plus - minus).to(logits) / (2 * eps))
            else:
                hyper = torch.zeros_like(logits)
        self._update_logits(hyper)
        losses = self._real_update(model, loss_fn, update_batch)
        return BilevelResult(losses, self.weights.to(losses.dtype), outer.detach())

    def extra_repr(self) -> str:
        return f"inner_lr={self.inner_lr}, weight_optimizer={self.optimizer!r}, outer={self.outer!r}"
