"""PCD: priority-constrained descent."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlagg.solvers import solve_nonneg_qp

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._standard_qp import solve_standard_qp
from ._stateful import Stateful


@register()
class PCD(Stateful, WeightedAggregator):
    r"""Priority-Constrained Descent (Varam et al., "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026), as in
    TorchJD.

    Task 0 is the primary objective; the others are secondary. With normalised gradients
    :math:`\tilde g_i = s_i g_i`, :math:`s_i = 1/\sqrt{\hat v_i + \epsilon}` and :math:`\hat v_i` the
    bias-corrected moving average (rate :math:`\beta`) of :math:`\lVert g_i\rVert^2` over the steps,

    .. math:: \tilde d = \arg\min_d \tfrac12\lVert d - \tilde g_0\rVert^2 \quad\text{s.t.}\quad
        \tilde g_j^\top d \ge \tau \lVert\tilde g_j\rVert^2\quad (j \ge 1),

    i.e. follow the primary gradient as closely as possible while every secondary task keeps a
    fraction :math:`\tau` of the progress its own normalised step would give. The output is
    :math:`\tilde d` rescaled to the norm of :math:`g_0`.

    Solved in weight space: :math:`\tilde d = \tilde g_0 + \sum_j \mu_j \tilde g_j` with the KKT
    multipliers :math:`\mu \ge 0` of the dual :math:`\min_{\mu\ge 0} \tfrac12\mu^\top \tilde G_{ss}\mu -
    b^\top\mu`, :math:`b_j = \tau \tilde G_{jj} - \tilde G_{j0}` (exact QP solver, KKT-checked). When
    the constraints cannot hold together (a non-negative combination of the secondary gradients,
    involving one with :math:`\tau_j > 0`, vanishes: Farkas' lemma, checked with a second small QP), they
    are dropped and :math:`d = g_0`, with a ``RuntimeWarning``. :math:`g_0 = 0`
    gives :math:`d = 0`.

    Needs: the Gramian. State: the moving average of the squared norms and the step counter.
    Defaults (TorchJD): :math:`\tau = 0.02`, :math:`\beta = 0.999`, :math:`\epsilon = 10^{-8}`.

    Args:
        tau: fraction in [0, 1], one for all secondary tasks or one per secondary task.
        beta: moving-average rate in [0, 1).
        eps: :math:`\epsilon`.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, tau: float | Sequence[float] | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        tau_tensor = torch.as_tensor(tau, dtype=torch.float64).detach()
        if tau_tensor.dim() > 1 or not bool(((tau_tensor >= 0) & (tau_tensor <= 1)).all()):
            raise ValueError(f"tau must be a number or a 1-D tensor in [0, 1], got {tau!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.tau = tau_tensor
        self.beta = float(beta)
        self.eps = float(eps)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "step": 0, "squared_norms": None}

    def _taus(self, T: int) -> Tensor:
        if self.tau.dim() == 0:
            return self.tau.expand(T - 1)
        if self.tau.shape[0] != T - 1:
            raise ValueError(f"tau has {self.tau.shape[0]} entries but there are {T - 1} secondary tasks")
        return self.tau

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        # (the T x T work, a short sequence of tiny steps, and its memory stay on the CPU in float64;
        # the weights are returned on the Gramian's device)
        G = inputs.gramian.to(torch.float64).cpu()
        T = inputs.num_tasks
        taus = self._taus(T)
        state = self._state
        if self._check_num_tasks(T, "task gradients"):
            state["squared_norms"] = torch.zeros(T, dtype=torch.float64)
        squared = G.diagonal().clamp_min(0)
        state["step"] += 1
        state["squared_norms"] = self.beta * state["squared_norms"] + (1 - self.beta) * squared
        average = state["squared_norms"] / (1 - self.beta ** state["step"])
        root = (average + self.eps).sqrt()
        scales = torch.where(root > 0, 1 / torch.where(root > 0, root, 1.0), 0.0)
        weights = torch.zeros(T, dtype=torch.float64)
        if not bool(squared[0] > 0):
            return weights.to(inputs.gramian)
        Gn = G * scales[:, None] * scales[None, :]
        local = torch.zeros(T, dtype=torch.float64)
        local[0] = 1.0
        if T > 1:
            secondary = Gn[1:, 1:]
            b = taus * secondary.diagonal() - Gn[1:, 0]
            if self._infeasible(secondary, taus):
                warnings.warn(
                    "PCD's constraints cannot all hold (a non-negative combination of the secondary gradients "
                    "vanishes): they are dropped for this step and the direction is the primary gradient",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                local[1:] = solve_nonneg_qp(secondary, -b).clamp_min(0)
        direction_sq = local @ Gn @ local
        magnitude = (local.abs() @ Gn.diagonal().clamp_min(0).sqrt()) ** 2
        if bool(direction_sq > 1e3 * torch.finfo(inputs.gramian.dtype).eps * magnitude):
            weights = local * scales * (squared[0] / direction_sq).sqrt()
        return weights.to(device=inputs.gramian.device, dtype=inputs.gramian.dtype)

    @staticmethod
    def _infeasible(secondary: Tensor, taus: Tensor) -> bool:
        """Farkas: the constraints are infeasible iff some :math:`\\mu \\ge 0` with
        :math:`\\sum_j \\mu_j \\tau_j \\lVert\\tilde g_j\\rVert^2 = 1` has :math:`\\sum_j \\mu_j \\tilde g_j = 0`."""
        c = taus * secondary.diagonal()
        if not bool((c > 0).any()):
            return False
        eigenvalues = torch.linalg.eigvalsh(secondary)
        if bool(eigenvalues[0] > 1e-9 * eigenvalues[-1]):
            return False  # independent gradients: no vanishing combination (the usual case, no QP)
        mu, _ = solve_standard_qp(secondary, torch.zeros_like(c), c[None], torch.ones(1, dtype=c.dtype))
        value = mu @ secondary @ mu
        magnitude = (mu @ secondary.diagonal().clamp_min(0).sqrt()) ** 2
        return bool(value <= 1e-10 * magnitude)

    def extra_repr(self) -> str:
        tau = self.tau.item() if self.tau.dim() == 0 else self.tau.tolist()
        return f"tau={tau}, beta={self.beta:g}"
