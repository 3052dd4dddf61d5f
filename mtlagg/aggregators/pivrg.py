"""PIVRG: performance-informed variance reduction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful
from ._weighted_fairgrad import solve_weighted_fairgrad


def clip_weights(weights: Tensor, gramian: Tensor, max_norm: float | None) -> Tensor:
    """Scale ``weights`` so that ``||sum_i w_i g_i|| <= max_norm`` (the norm read from the Gramian)."""
    if max_norm is None:
        return weights
    norm = float((weights @ gramian.to(weights) @ weights).clamp_min(0).sqrt())
    return weights * (max_norm / norm) if norm > max_norm else weights


@register()
class PIVRG(Stateful, WeightedAggregator):
    r"""PIVRG (Qin et al., "Revisiting Fairness in Multitask Learning: A Performance-Driven Approach for
    Variance Reduction", CVPR 2025), as in MTLlib (the authors' code).

    Priorities from the tasks' performance scores :math:`s` (their drop :math:`\Delta m_i\%` relative
    to single-task baselines: larger is worse), :math:`p = T\,\mathrm{softmax}(s/\tau)` with
    :math:`\tau = \max\big((\max s - \min s)/\ln(\text{bound}),\ \text{mintemp}\big)` (so
    :math:`p_{\max}/p_{\min} \le \text{bound}`), then the weighted FairGrad system with
    :math:`\alpha = 2`,

    .. math:: (G x)_i = \sqrt{p_i / x_i},\qquad d = T\, \sum_i x_i g_i,

    solved exactly (:func:`~mtlagg.aggregators._weighted_fairgrad.solve_weighted_fairgrad`). Worse tasks
    get more weight. As in MTLlib the shared direction is then clipped to norm ``max_norm`` (after
    the gradients exist, unlike the clip-before-backward bug of MTLlib's loss-weighting base
    class); the clip scales the weights, so task-specific parameters are untouched unless
    ``weight_task_params=True``. Without scores (or with equal scores) this is FairGrad with
    :math:`\alpha = 2`.

    **Scores** come from your own evaluation (MTLlib: per-task :math:`\Delta m_i` of the previous
    epoch, on validation data for QM9 / CelebA): call ``pivrg.set_scores(scores)`` whenever they
    change (e.g. after each validation). Before the first call the scores are zeros.

    Needs: the Gramian. State: the scores.
    Defaults (MTLlib, NYUv2 and CelebA): ``bound = 2``, ``mintemp = 10``, ``max_norm = 1``
    (Cityscapes: bound 1.8, mintemp 20; QM9: bound 1.8, mintemp 100).

    Args:
        bound: the largest ratio of two priorities (> 1).
        mintemp: the smallest temperature.
        max_norm: clip of the shared direction's norm (``None``: no clip).
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN

    def __init__(self, bound: float = 2.0, mintemp: float = 10.0, max_norm: float | None = 1.0) -> None:
        if not bound > 1:
            raise ValueError(f"bound must be > 1, got {bound!r}")
        if not mintemp > 0:
            raise ValueError(f"mintemp must be positive, got {mintemp!r}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm!r}")
        self.bound = float(bound)
        self.mintemp = float(mintemp)
        self.max_norm = max_norm
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"scores": None}

    def set_scores(self, scores: Sequence[float] | Tensor) -> None:
        """Set the per-task performance scores (e.g. :math:`\\Delta m_i\\%`, larger = worse)."""
        values = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError(f"scores must be a 1-D sequence with one score per task, got shape {tuple(values.shape)}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"scores must be finite, got {values.tolist()}")
        self._state["scores"] = values

    @property
    def scores(self) -> Tensor | None:
        value = self._state["scores"]
        return None if value is None else value.clone()

    def priorities(self, num_tasks: int) -> Tensor:
        """:math:`p = T\\,\\mathrm{softmax}(s/\\tau)` for the current scores."""
        scores = self._state["scores"]
        if scores is None:
            return torch.ones(num_tasks, dtype=torch.float64)
        if scores.shape[0] != num_tasks:
            raise ValueError(f"PIVRG has {scores.shape[0]} scores (set_scores) but this step has {num_tasks} tasks")
        temperature = max(float(scores.max() - scores.min()) / math.log(self.bound), self.mintemp)
        return num_tasks * torch.softmax(scores / temperature, dim=0)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        T = inputs.num_tasks
        gramian = inputs.gramian.to(torch.float64)
        x = solve_weighted_fairgrad(gramian, self.priorities(T).to(gramian.device))
        weights = clip_weights(T * x, gramian, self.max_norm)
        return weights.to(inputs.gramian.dtype)

    def extra_repr(self) -> str:
        return f"bound={self.bound:g}, mintemp={self.mintemp:g}, max_norm={self.max_norm}"
