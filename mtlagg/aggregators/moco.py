"""MoCo: multi-objective gradient correction with tracking variables."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from mtlagg.solvers import project_onto_simplex

from ._base import Aggregator, AggregatorInput, Needs
from ._registry import register
from ._stateful import Stateful, column_chunks


@register()
class MoCo(Stateful, Aggregator):
    r"""MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach", ICLR 2023).

    Tracking variables :math:`Y` (``T x n``, one per task gradient) remove the bias of stochastic
    MGDA. At step :math:`k` (from 1), with :math:`\beta_k = \beta/k^{\sigma_\beta}`,
    :math:`\gamma_k = \gamma/k^{\sigma_\gamma}`:

    .. math::
        \hat g_i = \frac{g_i}{\lVert g_i\rVert + 10^{-8}}\,L_i,\qquad
        Y \leftarrow Y - \beta_k (Y - \hat G),\qquad
        \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma_k (Y Y^\top + \rho I)\lambda\big),\qquad
        d = Y^\top \lambda .

    :math:`Y = 0` and :math:`\lambda = 1/T` at start. The normalisation :math:`\hat g_i` is the one of
    the authors' deep-MTL code (shared through LibMTL; ``normalize=False`` uses :math:`g_i`, the
    paper's algorithm). :math:`\Pi_\Delta` is the Euclidean projection on the simplex (the paper;
    LibMTL uses a softmax instead: ``projection="softmax"``).

    Needs: the Jacobian and the losses. State: :math:`Y` (``T x n``: Jacobian-sized memory),
    :math:`\lambda`, the step counter.

    Defaults: LibMTL's :math:`\beta = 0.5, \sigma_\beta = 0.5, \gamma = 0.1, \sigma_\gamma = 0.5,
    \rho = 0` (the authors' NYUv2 run used :math:`\beta = 0.99, \sigma = 0`).

    Args:
        beta, beta_sigma: tracking rate and its decay exponent.
        gamma, gamma_sigma: weight step size and its decay exponent.
        rho: :math:`\ell_2` regularisation of the weight update.
        normalize: use :math:`\hat g_i` (default) or the raw gradients.
        projection: ``"simplex"`` (default) or ``"softmax"``.
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN
    uses_losses: ClassVar[bool] = True

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = True,
        projection: Literal["simplex", "softmax"] = "simplex",
    ) -> None:
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        if not rho >= 0:
            raise ValueError(f"rho must be non-negative, got {rho!r}")
        if projection not in ("simplex", "softmax"):
            raise ValueError(f"projection must be 'simplex' or 'softmax', got {projection!r}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.normalize = normalize
        self.projection = projection
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "step": 0, "tracking": None, "weights": None}

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        T = jacobian.shape[0]
        state = self._state
        if self._check_num_tasks(T, "task gradients"):
            state["tracking"] = torch.zeros_like(jacobian)
            state["weights"] = torch.full((T,), 1.0 / T, dtype=torch.float64, device=jacobian.device)
        tracking = state["tracking"]
        if tracking.shape != jacobian.shape:
            raise ValueError(
                f"MoCo's tracking variables are {tuple(tracking.shape)} but the Jacobian is {tuple(jacobian.shape)}; "
                "call reset() when the shared parameters change"
            )
        state["step"] += 1
        k = state["step"]
        beta_k = self.beta / k**self.beta_sigma
        gamma_k = self.gamma / k**self.gamma_sigma
        if self.normalize:
            if inputs.losses is None:
                raise ValueError("MoCo(normalize=True) needs the loss values")
            norms = inputs.gramian.diagonal().clamp_min(0).sqrt().to(torch.float64)
            scale = inputs.losses.to(torch.float64) / (norms + 1e-8)
        else:
            scale = torch.ones(T, dtype=torch.float64, device=jacobian.device)
        lam = state["weights"]
        # One streaming pass: Y <- (1 - beta_k) Y + beta_k diag(scale) J in place, and Y (Y^T lam), so that
        # (Y Y^T + rho I) lam costs two matrix-vector products instead of a T x T x n Gram matrix.
        coefficients = (beta_k * scale).to(tracking)[:, None]
        lam_t = lam.to(tracking)
        product = torch.zeros(T, dtype=tracking.dtype, device=tracking.device)
        for columns in column_chunks(tracking.shape[1], T):
            block = tracking[:, columns]
            block.mul_(1 - beta_k).addcmul_(jacobian[:, columns], coefficients)
            product += block @ (lam_t @ block)
        moved = lam - gamma_k * (product.to(torch.float64) + self.rho * lam)
        lam = project_onto_simplex(moved) if self.projection == "simplex" else torch.softmax(moved, dim=0)
        state["weights"] = lam
        return lam.to(tracking) @ tracking

    @property
    def current_weights(self) -> Tensor | None:
        """:math:`\\lambda` after the last step."""
        value = self._state["weights"]
        return None if value is None else value.clone()

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, gamma={self.gamma:g}, rho={self.rho:g}, projection={self.projection!r}"
