"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from mtlagg.solvers import solve_nonneg_qp

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._utils import output_dtype

Normalization = Literal["none", "l2", "loss", "loss+"]
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register()
class MGDA(WeightedAggregator):
    r"""Multiple-gradient descent (Désidéri 2012; Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018).

    .. math::
        \alpha = \arg\min_{\alpha \in \Delta_T} \Big\lVert \sum_i \alpha_i \hat g_i \Big\rVert^2,
        \qquad d = \sum_i \alpha_i \hat g_i, \qquad \hat g_i = g_i / s_i,

    with the normalisations of Sener & Koltun's code (and LibMTL's ``mgda_gn``): ``"none"``
    (:math:`s_i = 1`), ``"l2"`` (:math:`s_i = \lVert g_i\rVert`), ``"loss"`` (:math:`s_i = L_i`)
    and ``"loss+"`` (:math:`s_i = L_i \lVert g_i\rVert`). A task with :math:`s_i = 0` (a zero
    gradient, or a zero loss) contributes a zero vector: then the minimum norm, and ``d``, is 0.
    Negative losses are refused with the loss normalisations. The weights returned apply to the
    raw gradients: :math:`w_i = \alpha_i / s_i`.

    The simplex QP is solved exactly (active-set method in float64, KKT-checked), not by a fixed
    number of Frank-Wolfe steps. Works from the Gramian, so it takes the MGDA-UB shortcut when
    given ``features=``. Scale convention: a convex combination (:math:`\sum_i \alpha_i = 1`);
    MTLlib multiplies by ``T``. Non-conflicting: :math:`\langle \hat g_i, d\rangle \ge \lVert
    d\rVert^2 \ge 0`.

    Args:
        normalization: ``"none"`` (default, as in the paper), ``"l2"``, ``"loss"`` or ``"loss+"``.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    host_solve: ClassVar[bool] = True
    non_conflicting: ClassVar[bool] = True

    def __init__(self, normalization: Normalization = "none") -> None:
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.uses_losses = normalization in ("loss", "loss+")  # type: ignore[misc]

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        gramian = inputs.gramian.to(torch.float64)
        if self.normalization == "none":
            alpha = solve_nonneg_qp(gramian, gramian.new_zeros(inputs.num_tasks), simplex=True)
            return alpha.to(output_dtype(inputs.gramian))
        scales = torch.ones(inputs.num_tasks, dtype=torch.float64, device=gramian.device)
        if self.normalization in ("l2", "loss+"):
            scales = scales * gramian.diagonal().clamp_min(0).sqrt()
        if self.normalization in ("loss", "loss+"):
            if inputs.losses is None:
                raise ValueError(f"MGDA(normalization={self.normalization!r}) needs the loss values: pass losses=")
            losses = inputs.losses.to(device=gramian.device, dtype=torch.float64)
            if bool((losses < 0).any()):
                raise ValueError(
                    f"MGDA(normalization={self.normalization!r}) divides by the losses, which must be >= 0; "
                    f"got {losses.tolist()}"
                )
            scales = scales * losses
        inverse = torch.where(scales > 0, 1 / torch.where(scales > 0, scales, 1), 0.0)
        normalized = gramian * inverse[:, None] * inverse[None, :]
        alpha = solve_nonneg_qp(normalized, torch.zeros_like(scales), simplex=True)
        return (alpha * inverse).to(output_dtype(inputs.gramian))

    def extra_repr(self) -> str:
        return f"normalization={self.normalization!r}"
