"""ExcessMTL: robust multi-task learning with excess risks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, column_chunks


@register("excess_mtl")
class ExcessMTL(Stateful, WeightedAggregator):
    r"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024).

    Weights tasks by an estimate of their *excess* risk (distance to their own optimum), not their
    loss, so that noisy tasks do not take over. With AdaGrad-like accumulators
    :math:`A_i \leftarrow A_i + g_i^2` (elementwise) as a diagonal Hessian estimate, the excess risk
    of task :math:`i` is estimated by

    .. math:: e_i = g_i^\top \mathrm{diag}\big(1/\sqrt{A_i + 10^{-7}}\big)\, g_i .

    The first step's :math:`e` is kept as the baseline :math:`e^0`; from the second step on, the
    weights take an exponentiated-gradient step
    :math:`w \leftarrow w \odot \exp(\eta\, e / e^0)`, renormalised to the simplex
    (:math:`w = 1/T` at start, as the paper; LibMTL starts from ones and renormalises to
    :math:`\sum w = T`, the same direction up to the factor :math:`T`). The step's direction is
    :math:`d = \sum_i w_i g_i` with the updated weights. The update is done in log space (no
    overflow when a baseline is tiny; a task whose first gradient was zero has no baseline and its
    ratio counts as 0).

    Needs: the Jacobian. State: :math:`A` (``T x n``: Jacobian-sized memory), :math:`e^0`,
    :math:`w`. Defaults: :math:`\eta = 10^{-2}` (LibMTL's ``robust_step_size``; TorchJD uses 1).

    Args:
        robust_step_size: :math:`\eta`.
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN

    def __init__(self, robust_step_size: float = 1e-2) -> None:
        if not robust_step_size > 0:
            raise ValueError(f"robust_step_size must be positive, got {robust_step_size!r}")
        self.robust_step_size = float(robust_step_size)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "squared_sum": None, "baseline": None, "weights": None}

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        if jacobian is None:
            raise ValueError("ExcessMTL needs the Jacobian (its accumulators are per parameter)")
        T = jacobian.shape[0]
        state = self._state
        if self._check_num_tasks(T, "task gradients"):
            state["squared_sum"] = torch.zeros_like(jacobian)
            state["weights"] = torch.full((T,), 1.0 / T, dtype=torch.float64, device=jacobian.device)
        accumulator = state["squared_sum"]
        if accumulator.shape != jacobian.shape:
            raise ValueError(
                f"ExcessMTL's accumulators are {tuple(accumulator.shape)} but the Jacobian is "
                f"{tuple(jacobian.shape)}; call reset() when the shared parameters change"
            )
        excess = torch.zeros(T, dtype=torch.float64, device=jacobian.device)
        for columns in column_chunks(jacobian.shape[1], T):  # one streaming pass
            block, gradient = accumulator[:, columns], jacobian[:, columns]
            block.addcmul_(gradient, gradient)
            scaled = block.add(1e-7).pow_(-0.5).mul_(gradient)
            excess += torch.linalg.vecdot(scaled, gradient).to(torch.float64)
        if state["baseline"] is None:
            state["baseline"] = excess
            return state["weights"].clone()
        baseline = state["baseline"]
        # A task with no gradient at the first step has no baseline: its ratio is taken as 0.
        ratio = torch.where(baseline > 0, excess / torch.where(baseline > 0, baseline, 1.0), 0.0)
        weights = torch.softmax(torch.log(state["weights"]) + self.robust_step_size * ratio, dim=0)
        state["weights"] = weights
        return weights.clone()

    def extra_repr(self) -> str:
        return f"robust_step_size={self.robust_step_size:g}"
