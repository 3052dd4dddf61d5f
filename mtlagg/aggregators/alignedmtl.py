"""Aligned-MTL: the task gradients made orthogonal and of equal norm."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator, check_preference, preference_for
from ._registry import register
from ._utils import output_dtype

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = ("min", "median", "rmse")


@register("aligned_mtl")
class AlignedMTL(WeightedAggregator):
    r"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023, Algorithm 1).

    Aligns the principal components of the gradients: with :math:`J = U \Sigma V^\top` (rank
    ``r``), the aligned gradients :math:`\hat J = \sigma\, U V^\top` have the condition number 1
    and :math:`d = \hat J^\top p`. In weight space, from the eigendecomposition
    :math:`G = JJ^\top = U \Lambda U^\top` (``torch.linalg.eigh``, truncated to the numerical rank:
    eigenvalues above ``T * eps(G.dtype)`` times the largest),

    .. math:: w = \sigma\, U_r \Lambda_r^{-1/2} U_r^\top p, \qquad d = J^\top w,

    with the scale :math:`\sigma` of ``scale_mode``: ``"min"`` the smallest retained singular value
    :math:`\sqrt{\lambda_r}` (the paper), ``"median"`` the median one, ``"rmse"`` the root mean
    square :math:`\sqrt{\operatorname{mean}\lambda}` (the official code's options). The zero matrix
    gives zero weights.

    Scale convention: ``p = 1/T`` by default (**mean**; TorchJD's default too); LibMTL's
    ``Aligned_MTL`` uses ``p = 1`` (sum): pass ``pref_vector=torch.ones(T)`` for that. Not
    non-conflicting.

    Args:
        pref_vector: the preference ``p`` (default ``1/T`` each).
        scale_mode: ``"min"`` (default), ``"median"`` or ``"rmse"``.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: ScaleMode = "min") -> None:
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {_SCALE_MODES}, got {scale_mode!r}")
        self.pref_vector = check_preference(pref_vector)
        self.scale_mode = scale_mode

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian
        G = gramian.to(torch.float64)
        G = (G + G.T) / 2
        T = G.shape[0]
        pref = preference_for(self.pref_vector, T).to(G.device)
        values, vectors = torch.linalg.eigh(G)  # ascending
        cutoff = values.max().clamp_min(0) * T * torch.finfo(output_dtype(gramian)).eps
        kept = values > cutoff
        if not bool(kept.any()):
            return torch.zeros(T, dtype=output_dtype(gramian), device=gramian.device)
        retained = values[kept]
        if self.scale_mode == "min":
            scale = retained.min()
        elif self.scale_mode == "median":
            scale = retained.median()
        else:
            scale = retained.mean()
        inverse_root = torch.where(kept, torch.where(kept, values, 1).rsqrt(), 0.0)
        weights = scale.sqrt() * (vectors @ (inverse_root * (vectors.T @ pref)))
        return weights.to(output_dtype(gramian))

    def extra_repr(self) -> str:
        pref = "" if self.pref_vector is None else f"pref_vector={self.pref_vector.tolist()}, "
        return f"{pref}scale_mode={self.scale_mode!r}"
