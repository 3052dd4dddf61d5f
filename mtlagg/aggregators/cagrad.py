"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from mtlagg.solvers.cagrad import solve_cagrad_dual

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register


@register()
class CAGrad(WeightedAggregator):
    r"""Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task improvement in a ball around the mean gradient :math:`g_0`:
    :math:`\max_d \min_i \langle g_i, d\rangle` s.t. :math:`\lVert d - g_0\rVert \le c\lVert g_0\rVert`.
    Through the dual,

    .. math::
        w = \arg\min_{w\in\Delta} \langle g_w, g_0\rangle + c\lVert g_0\rVert\,\lVert g_w\rVert,
        \qquad d = g_0 + \frac{c\lVert g_0\rVert}{\lVert g_w\rVert} g_w,

    with :math:`g_w = \sum_i w_i g_i`. Then, as in the official code, ``rescale=1`` divides ``d``
    by :math:`1 + c^2`, ``rescale=2`` by :math:`1 + c`, ``rescale=0`` leaves it. The dual is solved
    exactly (active-set method on its KKT conditions, float64; the official code uses SLSQP and adds
    ``1e-4`` to :math:`\lVert g_w\rVert`). If :math:`g_w = 0` the update is :math:`g_0`.

    Scale convention: **mean** (:math:`g_0` is the mean gradient; MTLlib multiplies by ``T``).
    Non-conflicting for ``c >= 1``. Defaults: ``c=0.4`` (the official code's NYUv2 / Cityscapes
    setting; LibMTL uses 0.5), ``rescale=1``.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, c: float = 0.4, rescale: Literal[0, 1, 2] = 1) -> None:
        c = float(c)
        if not c >= 0 or c != c or c == float("inf"):
            raise ValueError(f"c must be a finite number >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = c
        self.rescale = rescale

    @property
    def non_conflicting(self) -> bool:  # type: ignore[override]
        return self.c >= 1

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        w, ratio = solve_cagrad_dual(gramian, self.c)
        weights = torch.full_like(w, 1.0 / T) + ratio * w
        if self.rescale == 1:
            weights = weights / (1 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1 + self.c)
        return weights.to(gramian.dtype)

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}"
