"""IMTL-G: the combination with equal projections on every task's unit gradient."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._linalg import pinv_solve
from ._registry import register
from ._utils import output_dtype


@register("imtl_g")
class IMTLG(WeightedAggregator):
    r"""The gradient part of Impartial Multi-Task Learning (Liu et al., "Towards Impartial
    Multi-task Learning", ICLR 2021).

    Finds the combination :math:`d = \sum_i w_i g_i`, :math:`\sum_i w_i = 1`, whose projections on
    all the unit gradients :math:`u_i = g_i / \lVert g_i\rVert` are equal:
    :math:`\langle d, u_i\rangle = \lambda` for all ``i``. With :math:`G = JJ^\top` and
    :math:`n_i = \lVert g_i\rVert` this is :math:`G w = \lambda n`, so

    .. math:: w = \frac{G^{+} n}{\mathbf 1^\top G^{+} n}.

    The paper's closed form (:math:`\alpha_{2..T} = g_1 U^\top (D U^\top)^{-1}`) is the same
    solution for linearly independent gradients; the pseudo-inverse (in float64; eigenvalues below
    ``T * eps(G.dtype)`` times the largest treated as 0: a Cholesky solve when no eigenvalue is
    that small, the eigendecomposition otherwise) extends it to rank-deficient Jacobians, as
    TorchJD does, instead of inverting a singular matrix (MTLlib and LibMTL use ``torch.inverse``,
    which returns inf/NaN there).

    Documented edge cases: ``T = 1`` gives ``w = [1]``; zero gradients get weight 0; if
    :math:`\mathbf 1^\top G^+ n` vanishes (relative to :math:`\sum_i |(G^+ n)_i|`, e.g. the zero
    matrix, or gradients whose equal-projection combination is not affine) the weights are 0.

    Scale convention: the weights sum to 1 (an affine combination; they can be negative). Not
    non-conflicting.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        G = gramian.to(torch.float64)
        G = (G + G.T) / 2
        norms = G.diagonal().clamp_min(0).sqrt()
        v = pinv_solve(G, norms, torch.finfo(output_dtype(gramian)).eps)
        total = v.sum()
        weights = torch.where(total.abs() > 1e-10 * v.abs().sum(), v / total, torch.zeros_like(v))
        return weights.to(output_dtype(gramian))
