"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from mtlagg.solvers import project_weights, solve_cagrad_dual

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._utils import check_float, output_dtype


@register()
class CAGrad(WeightedAggregator):
    r"""Conflict-Averse Gradient descent (Liu et al., "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021).

    Maximises the worst task improvement in a ball around the mean gradient :math:`g_0`:
    :math:`\max_d \min_i \langle g_i, d\rangle` s.t. :math:`\lVert d - g_0\rVert \le c\lVert g_0\rVert`.
    Through the dual,

    .. math::
        w = \arg\min_{w\in\Delta} \langle g_w, g_0\rangle + c\lVert g_0\rVert\,\lVert g_w\rVert,
        \qquad d = g_0 + \frac{c\lVert g_0\rVert}{\lVert g_w\rVert} g_w,

    with :math:`g_w = \sum_i w_i g_i`. Then, as in the official code, ``rescale=1`` divides ``d``
    by :math:`1 + c^2`, ``rescale=2`` by :math:`1 + c`, ``rescale=0`` leaves it. The dual is solved
    exactly (:func:`~mtlagg.solvers.solve_cagrad_dual`: active set on its KKT conditions, with a
    safeguarded Newton search as fallback, float64, KKT-checked), where the official code runs
    SLSQP and adds ``1e-4`` to :math:`\lVert g_w\rVert`.

    Edge cases: if :math:`c\lVert g_0\rVert = 0` the update is :math:`g_0`. If the dual optimum
    is :math:`g_w = 0` (the origin is in the convex hull of the gradients and ``c >= 1``, or a
    zero gradient), every ``d`` of the ball with :math:`Jd \ge 0` is optimal, and the one nearest
    to :math:`g_0` is returned: the projection of :math:`g_0` onto the dual cone (as
    :class:`DualProj`), which lies in the ball.

    Scale convention: **mean** (:math:`g_0` is the mean gradient), divided by the rescale factor;
    MTLlib multiplies by ``T``. Non-conflicting for ``c >= 1``. Defaults: ``c=0.4`` (the official
    code's NYUv2 / Cityscapes setting and MTLlib's; LibMTL uses 0.5), ``rescale=1``.

    Args:
        c: radius of the ball, relative to :math:`\lVert g_0\rVert` (``>= 0``).
        rescale: 0, 1 or 2, as above.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True

    def __init__(self, c: float = 0.4, rescale: Literal[0, 1, 2] = 1) -> None:
        c = check_float(c, "c", minimum=0.0)
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = c
        self.rescale = rescale

    @property
    def non_conflicting(self) -> bool:  # type: ignore[override]
        return self.c >= 1

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        T = inputs.num_tasks
        solution = solve_cagrad_dual(gramian, self.c)
        mean = torch.full_like(solution.weights, 1.0 / T)
        if solution.degenerate:
            weights = project_weights(gramian, mean)
        else:
            weights = mean + solution.ratio * solution.weights
        if self.rescale == 1:
            weights = weights / (1 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1 + self.c)
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}"
