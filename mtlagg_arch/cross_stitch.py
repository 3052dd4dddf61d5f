"""Cross-stitch networks (Misra et al., CVPR 2016)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, check_stages, instantiate, stacked


def stitch_init(num_tasks: int, self_weight: float) -> Tensor:
    """``T x T`` mixing matrix: ``self_weight`` on the diagonal, the rest spread evenly (rows sum to 1)."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - self_weight) / (num_tasks - 1)
    return torch.full((num_tasks, num_tasks), other).fill_diagonal_(self_weight)


class CrossStitch(MultiTaskModel):
    r"""Cross-stitch network: one column per task, learned linear mixing after each stage.

    Column ``t`` is a copy of the staged backbone. After a stitched stage ``s``, task ``t``'s
    column continues from :math:`\tilde h^s_t = \sum_j \alpha^s_{tj} h^s_j`, a learned combination of
    every column's features. Misra et al., "Cross-stitch networks for multi-task learning", CVPR
    2016. As in the paper, :math:`\alpha` starts close to the identity (``self_weight`` 0.9 on the
    diagonal, the rest spread evenly so that rows sum to 1; the paper's 0.9 / 0.1 for two
    tasks). The paper also trains :math:`\alpha` with a larger learning rate:
    :meth:`stitch_parameters` gives them for their own optimizer parameter group.

    Args:
        stages: the backbone's stages (modules, deep-copied into each column, or zero-argument
            factories, called once per column). Every column's stage ``s`` must return the same
            shape.
        heads: one module per task; head ``t`` reads column ``t``'s last features.
        stitch_after: indices of the stages followed by a cross-stitch unit (default: every stage).
        self_weight: the initial diagonal of the mixing matrices (default 0.9).
        multi_input: each task has its own input batch (all columns run on it; the task's column
            gives its prediction).

    Split: with ``k`` the last stitched stage, task ``t`` owns row ``t`` of :math:`\alpha^k`, its
    column's stages after ``k`` and its head; every other parameter (all columns up to ``k``,
    the other mixing matrices) is shared. Representation: the columns' stage-``k`` outputs.
    """

    def __init__(
        self,
        stages: Sequence[ModuleSpec],
        heads: Mapping[str, nn.Module],
        *,
        stitch_after: Sequence[int] | None = None,
        self_weight: float = 0.9,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        stage_list = check_stages(stages)
        S, T = len(stage_list), self.num_tasks
        after = sorted(set(range(S) if stitch_after is None else stitch_after))
        if not after:
            raise ValueError("stitch_after is empty: a cross-stitch network needs at least one cross-stitch unit")
        bad = [s for s in after if not isinstance(s, int) or not 0 <= s < S]
        if bad:
            raise ValueError(f"stitch_after holds {bad}, not stage indices in [0, {S})")
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"self_weight must be in [0, 1], got {self_weight!r}")
        self.num_stages = S
        self.stitch_after = tuple(after)
        self.last_stitch = after[-1]
        columns = [instantiate(stage, T, f"stages[{s}]") for s, stage in enumerate(stage_list)]
        init = stitch_init(T, self_weight)
        self.shared.columns = nn.ModuleList(nn.ModuleList(columns[s]) for s in range(self.last_stitch + 1))
        self.shared.stitch = nn.ParameterDict(
            {str(s): nn.Parameter(init.clone()) for s in after if s != self.last_stitch}
        )
        for i, t in enumerate(self.task_names):
            branch = self.tasks[t]
            branch.stitch = nn.Parameter(init[i].clone())
            branch.stages = nn.ModuleList(columns[s][i] for s in range(self.last_stitch + 1, S))
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> CrossStitch:
        return cls(backbone.stage_factories, heads, multi_input=multi_input, **options)

    def stitch_parameters(self) -> Iterator[nn.Parameter]:
        """The mixing matrices (the shared ones, then each task's row of the last unit)."""
        yield from self.shared.stitch.values()
        for t in self.task_names:
            yield self.tasks[t].stitch

    def stitch_matrix(self, stage: int) -> Tensor:
        """The current ``T x T`` mixing matrix after ``stage`` (detached)."""
        if stage not in self.stitch_after:
            raise ValueError(f"stage {stage} has no cross-stitch unit; the units follow stages {self.stitch_after}")
        if stage == self.last_stitch:
            return torch.stack([self.tasks[t].stitch.detach() for t in self.task_names])
        return self.shared.stitch[str(stage)].detach().clone()

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        h: list[Any] = [x] * self.num_tasks
        for s in range(self.last_stitch + 1):
            features = [self.shared.columns[s][j](h[j]) for j in range(self.num_tasks)]
            if s == self.last_stitch:
                stack = stacked([cut.tap(f) for f in features], f"columns' stage {s} outputs")
                columns = stack.transpose(0, 1)
                # one product per task, so that a task's row reaches that task's loss only
                out = {t: torch.tensordot(self.tasks[t].stitch.to(stack.dtype), columns, dims=1) for t in tasks}
            elif s in self.stitch_after:
                stack = stacked(features, f"columns' stage {s} outputs")
                alpha = self.shared.stitch[str(s)].to(stack.dtype)
                h = list(torch.tensordot(alpha, stack.transpose(0, 1), dims=1).unbind(0))
            else:
                h = features
        for t in tasks:
            for stage in self.tasks[t].stages:
                out[t] = stage(out[t])
        return {t: self.tasks[t].head(out[t]) for t in tasks}
