"""IMTL: the hybrid of IMTL-L (learned loss scales) and IMTL-G (equal projections), as in LibMTL."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from .imtl_l import LossScales


def imtl_g_weights(gramian: Tensor) -> Tensor:
    r"""IMTL-G weights from a Gramian (float64).

    :math:`\alpha` with :math:`\sum_i\alpha_i = 1` such that :math:`d = \sum_i \alpha_i g_i` has the
    same projection on every unit gradient :math:`u_i = g_i/\lVert g_i\rVert`:
    :math:`G\alpha = c\,n` with :math:`n_i = \lVert g_i \rVert`, i.e. :math:`\alpha \propto G^+ n`.
    This is the paper's closed form :math:`\alpha_{2..T} = g_1 U^\top (D U^\top)^{-1}` written on the
    Gramian (and defined, through the pseudo-inverse, for dependent gradients). Zero gradients get
    weight 0; if every gradient is zero the weights are uniform (the direction is 0 anyway).
    """
    G = gramian.to(torch.float64)
    T = G.shape[0]
    norms = G.diagonal().clamp_min(0).sqrt()
    alive = norms > 0
    alpha = torch.zeros(T, dtype=torch.float64, device=G.device)
    if not bool(alive.any()):
        return torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
    index = torch.nonzero(alive).flatten()
    sub = G[index][:, index]
    raw = torch.linalg.pinv(sub, hermitian=True) @ norms[index]
    total = raw.sum()
    if not bool(total.abs() > 1e-12 * raw.abs().sum()):
        raise ValueError("IMTL-G is undefined here: the equal-projection direction is orthogonal to the weights' sum")
    alpha[index] = raw / total
    return alpha


@register()
class IMTL(LossScales, WeightedAggregator):
    r"""IMTL, the hybrid of Impartial Multi-Task Learning (Liu et al., "Towards Impartial Multi-task
    Learning", ICLR 2021), as LibMTL runs it.

    IMTL-L scales each loss by a learnable :math:`e^{s_i}` (objective :math:`\sum_i e^{s_i}L_i - s_i`);
    IMTL-G then combines the gradients of the *scaled* losses :math:`\tilde g_i = e^{s_i} g_i` with
    weights :math:`\alpha` (:math:`\sum_i \alpha_i = 1`) that give the aggregated direction equal
    projections on every :math:`\tilde g_i/\lVert\tilde g_i\rVert`, computed from the Gramian
    :math:`\tilde G = \mathrm{diag}(e^s)\,G\,\mathrm{diag}(e^s)` (see :func:`imtl_g_weights`). The
    weights on the raw gradients are :math:`w_i = \alpha_i e^{s_i}`. Then :math:`s` takes one step
    of its own optimizer along :math:`e^{s_i}L_i - 1` (library convention).

    :math:`\alpha` is not constrained to be non-negative (as in the paper and both peers).

    Needs: the Gramian and the losses. State: :math:`s` and optimizer moments.
    Defaults: Adam at ``0.025`` for :math:`s` (LibMTL uses the main optimizer).

    Args:
        weight_lr: learning rate of the scales' optimizer.
        weight_optimizer: ``"adam"`` (default) or ``"sgd"``.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    uses_losses: ClassVar[bool] = True

    def __init__(self, weight_lr: float = 0.025, weight_optimizer: Literal["adam", "sgd"] = "adam") -> None:
        super().__init__(weight_lr, weight_optimizer)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        scales = self.scales_then_step(inputs.losses, inputs.num_tasks)
        gramian = inputs.gramian.to(torch.float64)
        scales64 = scales.to(gramian)
        alpha = imtl_g_weights(scales64[:, None] * gramian * scales64[None, :])
        return (alpha * scales64).to(inputs.gramian.dtype)

    def extra_repr(self) -> str:
        return f"weight_optimizer={self.optimizer!r}"
