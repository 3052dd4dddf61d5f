r"""Projections onto the dual cone of the task gradients, in weight space.

For a Gramian :math:`G = J J^\top` and a vector :math:`u \ge 0` of weights, the projection of
:math:`J^\top u` onto the dual cone :math:`\{x : J x \ge 0\}` is :math:`J^\top v` with

.. math:: v = \arg\min_{v \ge u} v^\top G v

(Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", Prop. 1). Writing
:math:`v = u + x` this is the non-negative QP :math:`\min_{x \ge 0} \tfrac12 x^\top G x + (G u)^\top x`,
solved for many ``u`` at once by :func:`~mtlagg.solvers.solve_nonneg_qp` (exact, KKT-checked).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .qp import solve_nonneg_qp


def project_weights(gramian: Tensor, weights: Tensor) -> Tensor:
    """``v`` for every row ``u`` of ``weights`` (``(T,)`` or ``(B, T)``); float64 on the Gramian's device."""
    G = gramian.to(torch.float64)
    u = weights.to(device=G.device, dtype=torch.float64)
    x = solve_nonneg_qp(G, u @ G)
    return u + x
