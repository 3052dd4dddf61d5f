"""ConFIG: the conflict-free direction with equal cosines to every task gradient."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, check_preference
from ._registry import register
from ._utils import output_dtype


@register()
class ConFIG(WeightedAggregator):
    r"""Conflict-Free Inverse Gradients (Liu et al., "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025; arXiv:2408.11104, Eq. 2).

    With the unit gradients :math:`u_i = g_i / \lVert g_i\rVert` (rows of :math:`U`), the direction
    :math:`b = U^{+} p` has :math:`\langle u_i, b\rangle = p_i` (equal cosines for ``p = 1``);
    it is rescaled to the sum of the projections of the gradients on it:

    .. math:: \hat b = b / \lVert b\rVert, \qquad d = \Big(\sum_i \langle g_i, \hat b\rangle\Big) \hat b.

    :math:`b` lies in the span of the gradients, :math:`b = U^\top (UU^\top)^{+} p`, so the method
    is computed from the Gramian (:math:`UU^\top = N^{-1} G N^{-1}`, :math:`N = \mathrm{diag}
    \lVert g_i\rVert`; pseudo-inverse through ``eigh`` in float64, eigenvalues below
    ``T * eps(G.dtype)`` times the largest treated as 0) and is a weighted aggregator:
    :math:`w = \frac{\mathbf 1^\top G c}{c^\top G c}\, c` with :math:`c = N^{-1}(UU^\top)^{+} p`.
    Zero gradients get weight 0; if :math:`b = 0` (``p`` orthogonal, to round-off, to the span of the
    unit gradients, e.g. :math:`u` and :math:`-u` with ``p = 1``: no direction has the requested
    cosines) the direction is 0.

    Scale convention: the sum of the projections (``p = 1`` by default, as the official code and
    TorchJD). Linear under scaling; not non-conflicting in general (it is when ``U`` has full row
    rank: then :math:`\langle g_i, d\rangle \propto p_i \lVert g_i\rVert \ge 0`).

    Args:
        pref_vector: the target cosines ``p`` (non-negative; default ``1`` each).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        self.pref_vector = check_preference(pref_vector)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        G = gramian.to(torch.float64)
        G = (G + G.T) / 2
        T = G.shape[0]
        if self.pref_vector is None:
            pref = torch.ones(T, dtype=torch.float64, device=G.device)
        else:
            if self.pref_vector.shape[0] != T:
                raise ValueError(f"pref_vector has {self.pref_vector.shape[0]} entries but there are {T} tasks")
            pref = self.pref_vector.to(G.device)
        norms = G.diagonal().clamp_min(0).sqrt()
        inverse_norms = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1), 0.0)
        cosines = G * inverse_norms[:, None] * inverse_norms[None, :]
        values, vectors = torch.linalg.eigh(cosines)
        cutoff = values.max().clamp_min(0) * T * torch.finfo(output_dtype(gramian)).eps
        inverse = torch.where(values > cutoff, 1 / torch.where(values > cutoff, values, 1), 0.0)
        coordinates = vectors.T @ pref
        kept = (values > cutoff).to(coordinates.dtype)
        # b = 0 when p is orthogonal to the span of the unit gradients (to round-off): no direction
        # has the requested cosines (e.g. u and -u with p = 1); the direction is then 0.
        if not bool((coordinates * kept).norm() > 1e-9 * pref.norm()):
            return torch.zeros(T, dtype=output_dtype(gramian), device=gramian.device)
        c = inverse_norms * (vectors @ (inverse * coordinates))
        Gc = G @ c
        squared = c @ Gc
        weights = (Gc.sum() / squared) * c
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        return "" if self.pref_vector is None else f"pref_vector={self.pref_vector.tolist()}"
