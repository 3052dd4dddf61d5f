"""DB-MTL: dual-balancing multi-task learning."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import Aggregator, AggregatorInput, Needs
from ._registry import register
from ._stateful import Stateful, column_chunks


@register("db_mtl")
class DBMTL(Stateful, Aggregator):
    r"""Dual-Balancing Multi-Task Learning (Lin et al., "Dual-Balancing for Multi-Task Learning",
    arXiv:2308.12029, 2023).

    *Loss-scale balancing*: the gradients of :math:`\log(L_i + \epsilon)`,
    :math:`\tilde g_i = g_i / (L_i + \epsilon)`. *Gradient-magnitude balancing*: an exponential
    moving average :math:`B_i \leftarrow \beta_k B_i + (1-\beta_k)\tilde g_i` (:math:`\beta_k =
    \beta/k^{\sigma}`, :math:`B = 0` at start, no bias correction, as LibMTL), every buffer is
    rescaled to the largest norm and the results are summed:

    .. math:: d = \sum_i \frac{\max_j \lVert B_j\rVert}{\lVert B_i\rVert + \epsilon}\, B_i .

    Task-specific parameters: :func:`mtlagg.backward` gives them :math:`\nabla L_i` (LibMTL gives
    :math:`\nabla\log L_i`). To reproduce that too, pass the log-losses
    (``[torch.log(l + 1e-8) for l in losses]``) with ``DBMTL(log_losses=False)``.

    Needs: the Jacobian and the losses. State: :math:`B` (``T x n``: Jacobian-sized memory) and the
    step counter. Defaults: :math:`\beta = 0.9`, :math:`\sigma = 0`, :math:`\epsilon = 10^{-8}` (LibMTL).

    Args:
        beta: EMA rate.
        beta_sigma: decay exponent of the rate.
        log_losses: take the gradients of the log-losses (default); ``False`` uses the gradients as given.
        eps: :math:`\epsilon`.
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN
    uses_losses: ClassVar[bool] = True

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, log_losses: bool = True, eps: float = 1e-8) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.log_losses = log_losses
        self.eps = float(eps)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "step": 0, "buffer": None}

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        T = jacobian.shape[0]
        state = self._state
        if self._check_num_tasks(T, "task gradients"):
            state["buffer"] = torch.zeros_like(jacobian)
        buffer = state["buffer"]
        if buffer.shape != jacobian.shape:
            raise ValueError(
                f"DBMTL's buffer is {tuple(buffer.shape)} but the Jacobian is {tuple(jacobian.shape)}; call reset() "
                "when the shared parameters change"
            )
        state["step"] += 1
        beta_k = self.beta / state["step"] ** self.beta_sigma
        if self.log_losses:
            if inputs.losses is None:
                raise ValueError("DBMTL(log_losses=True) needs the loss values")
            scale = 1.0 / (inputs.losses.to(torch.float64) + self.eps)
        else:
            scale = torch.ones(T, dtype=torch.float64, device=jacobian.device)
        coefficients = ((1 - beta_k) * scale).to(buffer)[:, None]
        squared = torch.zeros(T, dtype=torch.float64, device=buffer.device)
        for columns in column_chunks(buffer.shape[1], T):  # one streaming pass: update and norms
            block = buffer[:, columns]
            block.mul_(beta_k).addcmul_(jacobian[:, columns], coefficients)
            squared += torch.linalg.vector_norm(block, dim=1).to(torch.float64).square()
        norms = squared.sqrt()
        alpha = norms.max() / (norms + self.eps)
        return alpha.to(buffer) @ buffer

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, beta_sigma={self.beta_sigma:g}, log_losses={self.log_losses}"
