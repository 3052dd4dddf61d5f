"""GO4Align: group optimization for multi-task alignment."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, state_dtype


def kmeans_1d(values: Tensor, num_groups: int) -> Tensor:
    """Exact 1-D k-means: the group index of every value (groups numbered by increasing centre).

    The optimal partition of points on a line into ``num_groups`` clusters is made of contiguous
    runs of the sorted values; dynamic programming over the sorted values (vectorised over the
    split points, O(k n^2) with n the number of tasks) finds the partition with the least
    within-group sum of squares exactly, where Lloyd's algorithm can stop at a local optimum. Ties
    go to the earliest split, so the result is deterministic.
    """
    x = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    n = x.shape[0]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    prefix_sq = np.concatenate([[0.0], np.cumsum(xs * xs)])
    i = np.arange(n + 1)[:, None]
    j = np.arange(n + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        sums = prefix[None, :] - prefix[:, None]
        cost = prefix_sq[None, :] - prefix_sq[:, None] - sums * sums / (j - i)
    cost = np.where(j > i, np.maximum(cost, 0.0), np.inf)  # cost[i, j]: one group holding xs[i:j]
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    splits = []
    for _ in range(num_groups):
        candidates = best[:, None] + cost
        splits.append(np.argmin(candidates, axis=0))
        best = candidates[splits[-1], np.arange(n + 1)]
    labels_sorted = np.empty(n, dtype=np.int64)
    stop = n
    for group in range(num_groups - 1, -1, -1):
        start = int(splits[group][stop])
        labels_sorted[start:stop] = group
        stop = start
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return torch.from_numpy(labels).to(values.device)


@register()
class GO4Align(Stateful, WeightedAggregator):
    r"""GO4Align (Shen et al., "GO4Align: Group Optimization for Multi-Task Alignment", NeurIPS 2024).

    Adaptive group risk minimisation. Per step, with detached losses :math:`L`:

    1. risk-guided indicators: :math:`p \leftarrow p \odot e^{-\eta L}`, normalised to sum 1
       (:math:`p = 1/T` at start);
    2. scales :math:`r_i = \sum_j L_j / L_i` and per-task weights :math:`\gamma_i = r_i p_i`;
    3. dynamical group assignment: the :math:`\gamma_i` are clustered into ``num_groups`` groups by
       1-D k-means; every task takes its group's mean :math:`\gamma` as its weight.

    The model receives :math:`d = \sum_i w_i g_i` (one ordinary backward).

    Clustering: exact 1-D k-means (:func:`kmeans_1d`, deterministic). The official code runs
    ``kmeans_pytorch`` (MTLlib: sklearn ``KMeans(random_state=42)``), Lloyd's algorithm, which gives
    the same groups whenever it finds the optimum. ``num_groups = 1`` gives every task
    :math:`\operatorname{mean}(\gamma)`.

    Needs: the loss values only, positive. State: :math:`p`.

    Defaults: :math:`\eta = 10^{-4}` (``robust_step_size`` of both peers). ``num_groups = 2``: the
    official trainer defaults to 1 (all tasks in one group) and MTLlib to 5 (more groups than tasks
    on NYUv2 and Cityscapes, which crashes); ``num_groups`` larger than the number of tasks raises.

    Args:
        num_groups: number of task groups.
        robust_step_size: :math:`\eta`.
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(self, num_groups: int = 2, robust_step_size: float = 1e-4) -> None:
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if not robust_step_size >= 0:
            raise ValueError(f"robust_step_size must be non-negative, got {robust_step_size!r}")
        self.num_groups = num_groups
        self.robust_step_size = float(robust_step_size)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "probs": None}

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("GO4Align needs the loss values")
        T = inputs.num_tasks
        if self.num_groups > T:
            raise ValueError(f"GO4Align(num_groups={self.num_groups}) needs at least {self.num_groups} tasks, got {T}")
        values = losses.detach().to(state_dtype(losses))
        if bool((values <= 0).any()):
            raise ValueError(f"GO4Align divides by the losses and needs them positive, got {values.tolist()}")
        if self._check_num_tasks(T):
            self._state["probs"] = torch.full((T,), 1.0 / T, dtype=values.dtype, device=values.device)
        probs = self._state["probs"] * torch.exp(-self.robust_step_size * values)
        probs = probs / probs.sum()
        self._state["probs"] = probs
        gamma = values.sum() / values * probs
        if self.num_groups == 1:
            return gamma.mean().expand(T).clone()
        labels = kmeans_1d(gamma, self.num_groups)
        sums = torch.zeros(self.num_groups, dtype=gamma.dtype, device=gamma.device).index_add_(0, labels, gamma)
        counts = torch.bincount(labels, minlength=self.num_groups).to(gamma)
        return (sums / counts)[labels]

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, robust_step_size={self.robust_step_size:g}"
