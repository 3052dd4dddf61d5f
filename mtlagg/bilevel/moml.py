"""MOML: multi-objective meta learning of the task weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mtlagg._functional import jacobian
from mtlagg.aggregators._registry import register
from mtlagg.solvers import solve_nonneg_qp

from ._common import BilevelMethod, BilevelResult, FunctionalModel, LossFn, Outer, loss_list, softmax_jacobian


@register()
class MOML(BilevelMethod):
    r"""Multi-Objective Meta Learning (Ye et al., "Multi-Objective Meta Learning", NeurIPS 2021), in
    the fast single-inner-step form of LibMTL (whose authors wrote MOML).

    Task weights :math:`w = \mathrm{softmax}(\alpha)`. One virtual SGD step on the weighted
    training loss, :math:`\theta' = \theta - \eta\, G_f^\top w` (:math:`G_f`: the per-task gradients of
    the inner losses, all parameters); the outer problem is itself multi-objective: each outer task
    :math:`t` has the hypergradient

    .. math:: h_t = \nabla_\alpha L_t^{\text{out}}(\theta'(\alpha))
        = -\eta\, J_{\text{softmax}}^\top\, G_f\, g^{\text{out}}_t,

    with :math:`g^{\text{out}}_t = \nabla_{\theta'} L_t^{\text{out}}(\theta')`. The :math:`h_t` are
    normalised to unit norm and combined by MGDA (the min-norm point of their convex hull, exact QP);
    the logits take one step of their own Adam along it. Then the model receives
    :math:`\nabla_\theta \sum_i w_i L_i` of the training batch with the new weights, in ``.grad``.

    **Call** ``moml.step(model, loss_fn, batch, outer_batch)``, then ``optimizer.step()``.
    State: logits, Adam moments, step counter.

    Defaults (LibMTL): :math:`\eta` = ``inner_lr`` = 0.1, Adam at ``1e-3``; outer data = validation (the
    paper; LibMTL uses a second training half-batch: ``outer="split"``).

    Args:
        inner_lr: :math:`\eta`.
        weight_lr: learning rate of the logits' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
        outer: ``"validation"`` (default) or ``"split"``.
        outer_tasks: task indices of the outer objectives (default: all).
        chunk_size: passed to :func:`mtlagg.jacobian` (``1`` for models ``vmap`` cannot handle).
    """

    def __init__(
        self,
        inner_lr: float = 0.1,
        weight_lr: float = 1e-3,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        outer: Outer = "validation",
        outer_tasks: Sequence[int] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {inner_lr!r}")
        self.inner_lr = float(inner_lr)
        self.chunk_size = chunk_size
        super().__init__(weight_lr, weight_optimizer, outer, outer_tasks)

    def _step(
        self, model: nn.Module, loss_fn: LossFn, inner_batch: Any, outer_batch: Any, update_batch: Any
    ) -> BilevelResult:
        fmodel = FunctionalModel(model)
        params = fmodel.params
        inner = loss_list(loss_fn, fmodel.at(params), inner_batch, self._state["num_tasks"])
        T = len(inner)
        logits = self._logits(T, inner[0])
        outer_tasks = self._outer_indices(T)
        inner_jacobian = jacobian(inner, params, chunk_size=self.chunk_size)  # T x n
        weights = torch.softmax(logits, dim=0).to(inner_jacobian)
        step = weights @ inner_jacobian
        virtual, offset = [], 0
        for p in params:
            size = p.numel()
            virtual.append((p - self.inner_lr * step[offset : offset + size].view_as(p)).detach().requires_grad_())
            offset += size
        outer = loss_list(loss_fn, fmodel.at(virtual), outer_batch, T)
        outer_jacobian = jacobian([outer[t] for t in outer_tasks], virtual, chunk_size=self.chunk_size)
        cross = (outer_jacobian @ inner_jacobian.T).to(torch.float64)  # T_out x T: <g_out_t, g_in_i>
        hyper = -self.inner_lr * cross @ softmax_jacobian(logits)  # T_out x T
        norms = torch.linalg.vector_norm(hyper, dim=1)
        unit = hyper / torch.where(norms > 0, norms, 1.0)[:, None]
        if len(outer_tasks) == 1:
            combined = unit[0]
        else:
            zeros = torch.zeros(len(outer_tasks), dtype=torch.float64, device=unit.device)
            mix = solve_nonneg_qp(unit @ unit.T, zeros, simplex=True)
            combined = mix.to(unit) @ unit
        self._update_logits(combined)
        losses = self._real_update(model, loss_fn, update_batch)
        return BilevelResult(losses, self.weights.to(losses.dtype), torch.stack(outer).detach())

    def extra_repr(self) -> str:
        return f"inner_lr={self.inner_lr:g}, weight_optimizer={self.optimizer!r}, outer={self.outer!r}"
