"""ConsMTL: consistent multi-task learning through the task-specific parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._weighted_fairgrad import solve_weighted_fairgrad
from .pivrg import clip_weights


class _UpperLevel(WeightedAggregator):
    """FairGrad (alpha = 2) on the shared parameters, keeping the raw solution for the lower level."""

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, max_norm: float | None) -> None:
        self.max_norm = max_norm
        self.solution: Tensor | None = None

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        T = inputs.num_tasks
        gramian = inputs.gramian.to(torch.float64)
        x = solve_weighted_fairgrad(gramian, torch.ones(T, dtype=torch.float64, device=gramian.device))
        self.solution = x
        return clip_weights(T * x, gramian, self.max_norm).to(inputs.gramian.dtype)


@register()
class ConsMTL(WeightedAggregator):
    r"""ConsMTL (Qin, Wang & Yan, "Towards Consistent Multi-Task Learning: Unlocking the Potential of
    Task-Specific Parameters", CVPR 2025), as in MTLlib (the authors' code).

    A bilevel view: the task-specific parameters also shape the shared gradients, so they are
    trained to make them agree.

    * **Upper level (shared parameters):** FairGrad with :math:`\alpha = 2`: :math:`x > 0` with
      :math:`(Gx)_i = x_i^{-1/2}`, :math:`d = T\,G^\top x`, clipped to norm ``max_norm``.
    * **Lower level (task heads):** with :math:`\delta_i = \partial L_i/\partial z_i` the gradient of
      task :math:`i` at its representation (differentiable in the head's parameters
      :math:`\theta_i`) and the joint target :math:`\bar\delta = \sum_i x_i \delta_i` (held constant),
      the extra loss :math:`E_i = -\lambda \langle \delta_i, \bar\delta\rangle` pulls every task's
      representation gradient towards the joint one. The head receives

      .. math:: \nabla_{\theta_i} L_i + \operatorname{clip}\big(\nabla_{\theta_i} E_i,\
          c\,\lVert\nabla_{\theta_i} L_i\rVert\big),

      second order through the head (clip: rescaled to at most that norm).

    **Call** ``consmtl.backward(losses, shared_params, representations, task_params)`` instead of
    :func:`mtlagg.backward` (it needs the representations and the heads); it writes the ``.grad`` of
    the shared parameters and of every head, and returns the :class:`~mtlagg.BackwardResult` of the
    upper level. Passing a ``ConsMTL`` to :func:`mtlagg.backward` raises a ``TypeError`` that says so.

    ``representations``: one tensor per task (:math:`z_i`, e.g. MTAN's per-task attention outputs) or
    one tensor shared by all heads (QM9 / CelebA style; MTLlib needs a code change there).
    ``task_params``: one iterable of parameters per task (MTLlib splits a flat list into equal
    chunks, which assumes equal heads).

    Needs: per-task shared gradients (the engine), the representations and the heads. Stateless.
    Defaults: :math:`\lambda = 1` (MTLlib, NYUv2; 50 for Cityscapes and CelebA, 1e-3 for QM9),
    clip factor :math:`c = 0.1` (the code; the paper's README mentions per-task factors for
    Cityscapes), ``max_norm = 1``.

    Args:
        lambda_: :math:`\lambda`, the strength of the consistency loss.
        clip: :math:`c`.
        max_norm: clip of the shared direction (``None``: no clip).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, lambda_: float = 1.0, clip: float | None = 0.1, max_norm: float | None = 1.0) -> None:
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be non-negative, got {lambda_!r}")
        if clip is not None and not clip >= 0:
            raise ValueError(f"clip must be non-negative or None, got {clip!r}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm!r}")
        self.lambda_ = float(lambda_)
        self.clip = clip
        self.max_norm = max_norm

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        raise TypeError(
            "ConsMTL also trains the task-specific parameters from the per-task representations, which "
            "mtlagg.backward does not see: call consmtl.backward(losses, shared_params, representations, task_params)"
        )

    def backward(
        self,
        losses: Sequence[Tensor] | Tensor,
        shared_params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
        representations: Tensor | Sequence[Tensor],
        task_params: Sequence[Iterable[Tensor]],
        *,
        retain_graph: bool = False,
        chunk_size: int | None = None,
    ):
        """One ConsMTL step: fills ``.grad`` of the shared parameters and of every task's parameters."""
        from mtlagg._backward import backward as engine_backward
        from mtlagg._inputs import as_losses, as_task_params

        loss_list = as_losses(losses)
        T = len(loss_list)
        heads = [[p.tensor for p in params] for params in as_task_params(task_params, T)]
        if isinstance(representations, Tensor):
            reps = [representations] * T
        else:
            reps = list(representations)
            if len(reps) != T:
                raise ValueError(f"representations has {len(reps)} tensors but there are {T} losses")
        for i, z in enumerate(reps):
            if not isinstance(z, Tensor) or not z.requires_grad:
                raise ValueError(f"representations[{i}] must be a tensor in the graph of loss {i} (requires_grad)")
        for i, params in enumerate(heads):
            if not params:
                raise ValueError(f"task_params[{i}] is empty: ConsMTL trains every task's head")
        # Gradients at the representations, differentiable in the heads' parameters.
        deltas = []
        for i, (loss, z) in enumerate(zip(loss_list, reps)):
            (delta,) = torch.autograd.grad(loss, z, create_graph=True, retain_graph=True, allow_unused=True)
            if delta is None:
                raise ValueError(f"loss {i} does not depend on representations[{i}]")
            deltas.append(delta)
        upper = _UpperLevel(self.max_norm)
        result = engine_backward(
            loss_list,
            shared_params,
            upper,
            task_params=[[] for _ in range(T)],
            retain_graph=True,
            chunk_size=chunk_size,
        )
        if result.skipped or upper.solution is None:
            return result
        x = upper.solution
        target = sum(x[i].to(d) * d.detach() for i, d in enumerate(deltas))
        for i, (loss, delta, params) in enumerate(zip(loss_list, deltas, heads)):
            last = i == T - 1 and not retain_graph
            main = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            extra_loss = -self.lambda_ * (delta * target).sum()
            extra = torch.autograd.grad(extra_loss, params, retain_graph=not last, allow_unused=True)
            main = [torch.zeros_like(p) if g is None else g for p, g in zip(params, main)]
            extra = [torch.zeros_like(p) if g is None else g for p, g in zip(params, extra)]
            if self.clip is not None:
                main_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in main))
                extra_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in extra))
                limit = self.clip * main_norm
                if bool(extra_norm > limit):
                    factor = (limit / extra_norm).item() if bool(extra_norm > 0) else 0.0
                    extra = [g * factor for g in extra]
            for p, g1, g2 in zip(params, main, extra):
                gradient = (g1 + g2).detach()
                p.grad = gradient.clone() if p.grad is None else p.grad + gradient
        return result

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_:g}, clip={self.clip}, max_norm={self.max_norm}"
