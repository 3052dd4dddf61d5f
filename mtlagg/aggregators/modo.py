"""MoDo: multi-objective gradient with double sampling."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlagg.solvers import project_onto_simplex

from ._multibatch import MultiBatchAggregator
from ._registry import register


@register()
class MoDo(MultiBatchAggregator):
    r"""MoDo (Chen et al., "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance", NeurIPS 2023 / JMLR 2024).

    Stochastic MGDA without bias: the weights are updated with the product of the Jacobians of two
    independent batches,

    .. math:: \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma\,(J_1 J_2^\top \lambda + \rho\lambda)\big),

    (:math:`\lambda = 1/T` at start), and the model moves along :math:`J_3^\top\lambda` with a third
    batch (``num_batches=3``, the official code's ``three_grads`` and LibMTL), or along the gradient of
    the mean of the two batches' weighted losses (``num_batches=2``, the paper's basic algorithm).

    Needs: ``num_batches`` batches (:func:`mtlagg.multibatch_backward`). State: :math:`\lambda`.
    Defaults: :math:`\gamma = 10^{-3}`, :math:`\rho = 0.1` (LibMTL, from the official code; TorchJD uses
    :math:`\gamma = 0.1`). Task-specific parameters get the update batch's gradient (LibMTL divides the
    decoders' accumulated gradient of three batches by 3, but not the other task parameters).

    Args:
        gamma: step size of the weights (> 0).
        rho: :math:`\ell_2` regularisation (>= 0).
        num_batches: 3 (default) or 2.
    """

    def __init__(self, gamma: float = 1e-3, rho: float = 0.1, num_batches: int = 3) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        if not rho >= 0:
            raise ValueError(f"rho must be non-negative, got {rho!r}")
        if num_batches not in (2, 3):
            raise ValueError(f"num_batches must be 2 or 3, got {num_batches!r}")
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.num_batches = num_batches
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "weights": None}

    def cross_weights(self, cross: Tensor) -> Tensor:
        A = cross.detach().to(torch.float64)
        T = A.shape[0]
        state = self._state
        if self._check_num_tasks(T, "tasks"):
            state["weights"] = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
        lam = state["weights"]
        lam = project_onto_simplex(lam - self.gamma * (A @ lam + self.rho * lam))
        state["weights"] = lam
        return lam.clone()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, rho={self.rho:g}, num_batches={self.num_batches}"
