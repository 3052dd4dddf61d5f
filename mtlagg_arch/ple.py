"""Progressive layered extraction (Tang et al., RecSys 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._base import Container, ModuleSpec, MultiTaskModel, _Cut, check_stages, mix
from ._gates import ExpertGroup, GateInput, SoftmaxGate, check_gate_input


def _per_level(value: int | Sequence[int] | None, levels: int, what: str, minimum: int) -> list[int]:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * levels
    if len(values) != levels:
        raise ValueError(f"{what} has {len(values)} entries but there are {levels} levels")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ValueError(f"{what} must hold ints >= {minimum}, got {v!r}")
    return values


class PLE(MultiTaskModel):
    r"""Progressive layered extraction: stacked CGC extraction levels with a shared gate per level.

    Level ``k`` (``k = 1..L``, stage ``k`` of ``stages``) has shared experts :math:`S^k` and task
    experts :math:`E^k_t`. With :math:`q^0_t = q^0_s = x`:

    * task branch: :math:`q^k_t = \sum_{e \in E^k_t \cup S^k} g^k_t(q^{k-1}_t)_e\, e(\cdot)`, where the
      task experts read :math:`q^{k-1}_t` and the shared experts read :math:`q^{k-1}_s`;
    * shared branch (levels ``k < L`` only): :math:`q^k_s = \sum_{e \in S^k \cup \bigcup_t E^k_t}
      g^k_s(q^{k-1}_s)_e\, e(\cdot)`, a gate over **all** experts of the level;
    * :math:`\hat y_t = h_t(q^L_t)`.

    Tang et al., "Progressive layered extraction (PLE): a novel multi-task learning (MTL) model for
    personalized recommendations", RecSys 2020. With one level, PLE is :class:`CGC`.

    Args:
        stages: one expert network per level (modules, deep-copied, or zero-argument factories);
            level ``k``'s experts read level ``k-1``'s outputs.
        heads: one module per task.
        num_shared_experts: shared experts per level (int or one per level, each >= 1).
        num_task_experts: experts per task per level (int or one per level, each >= 1).
        gate_input: ``"input"`` (the level's input, flattened) or ``"experts"`` (the mean of the
            gate's candidates, pooled), or an embedding factory (level 1 only reads the raw input,
            so a factory applies to every level's input: use it only when they have one shape).
        gate_in_features: the size of the routing vector, an int or one per level.
        multi_input: each task has its own input batch (the network runs once per task).

    Split (ownership follows the gradient): task ``t`` owns its head, its final-level experts
    and gate, and its gate of level ``L-1``; everything else is shared, including the task
    experts of levels ``< L`` (they feed the shared gate, so every task depends on them).
    Representation: the level-``L-1`` expert outputs and task-gate inputs as the task gates read
    them, and the final level's shared-expert outputs.
    """

    def __init__(
        self,
        stages: Sequence[ModuleSpec],
        heads: Mapping[str, nn.Module],
        *,
        num_shared_experts: int | Sequence[int] = 1,
        num_task_experts: int | Sequence[int] = 1,
        gate_input: GateInput = "input",
        gate_in_features: int | Sequence[int] | None = None,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        stage_list = check_stages(stages)
        L = len(stage_list)
        n_shared = _per_level(num_shared_experts, L, "num_shared_experts", 1)
        n_task = _per_level(num_task_experts, L, "num_task_experts", 1)
        if gate_in_features is None:
            check_gate_input(gate_input, None)
        features = _per_level(gate_in_features, L, "gate_in_features", 1)
        for f in features:
            check_gate_input(gate_input, f)
        self.num_levels = L
        shared_levels = nn.ModuleList()
        task_levels: dict[str, dict[int, Container]] = {t: {} for t in self.task_names}
        for k, stage in enumerate(stage_list):
            level = Container()
            level.experts = ExpertGroup(stage, n_shared[k], f"stages[{k}]")
            task_experts = {t: ExpertGroup(stage, n_task[k], f"stages[{k}]") for t in self.task_names}
            task_gates = {t: SoftmaxGate(n_shared[k] + n_task[k], gate_input, features[k]) for t in self.task_names}
            if k < L - 1:
                level.gate = SoftmaxGate(n_shared[k] + n_task[k] * self.num_tasks, gate_input, features[k])
                level.task_experts = nn.ModuleDict(task_experts)
            for t in self.task_names:
                owned = Container()
                if k == L - 1:
                    owned.experts = task_experts[t]
                if k >= L - 2:
                    owned.gate = task_gates[t]
                if len(owned._modules):
                    task_levels[t][k] = owned
            if k < L - 2:
                level.task_gates = nn.ModuleDict(task_gates)
            shared_levels.append(level)
        self.shared.levels = shared_levels
        for t in self.task_names:
            self.tasks[t].levels = nn.ModuleDict({str(k): m for k, m in task_levels[t].items()})
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> PLE:
        options.setdefault("gate_input", "experts")
        if options["gate_input"] == "experts":
            options.setdefault("gate_in_features", list(backbone.stage_out_channels))
        return cls(backbone.stage_factories, heads, multi_input=multi_input, **options)

    def _task_experts(self, k: int, t: str) -> ExpertGroup:
        if k < self.num_levels - 1:
            return self.shared.levels[k].task_experts[t]
        return self.tasks[t].levels[str(k)].experts

    def _task_gate(self, k: int, t: str) -> SoftmaxGate:
        if k < self.num_levels - 2:
            return self.shared.levels[k].task_gates[t]
        return self.tasks[t].levels[str(k)].gate

    def _routes(self, k: int, q_task: dict[str, Any], cut: _Cut) -> dict[str, Any]:
        """The task gates' level inputs at level ``L-2``, read through one shared alias (if at all)."""
        if self._task_gate(k, self.task_names[0]).router.mode == "experts" or not isinstance(
            next(iter(q_task.values())), Tensor
        ):
            return q_task
        if not any(isinstance(q, Tensor) and q.requires_grad for q in q_task.values()):
            return q_task  # the raw input: nothing to cut
        read = cut.tap(torch.stack([q_task[t] for t in self.task_names], dim=1))
        return {t: read[:, i] for i, t in enumerate(self.task_names)}

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        L = self.num_levels
        everyone = list(self.task_names)
        q_shared: Any = x
        q_task: dict[str, Any] = dict.fromkeys(everyone, x)
        for k in range(L):
            level = self.shared.levels[k]
            shared = level.experts(q_shared)
            if k == L - 1:  # the final level's task experts and gates belong to the tasks
                shared_read = cut.tap(shared)
                next_task = {}
                for t in tasks:
                    candidates = torch.cat([self._task_experts(k, t)(q_task[t]), shared_read], dim=1)
                    next_task[t] = mix(self._task_gate(k, t)(q_task[t], candidates), candidates)
                q_task = next_task
                break
            own = [self._task_experts(k, t)(q_task[t]) for t in everyone]
            level_all = torch.cat([shared, *own], dim=1)  # the shared gate's candidates
            if k == L - 2:
                # The task gates of this level belong to the tasks. They read the level's experts
                # through one alias that every task shares, so that each task's own region stops
                # at the same tensor (the shared path also depends on these experts).
                read, routes, gated = cut.tap(level_all), self._routes(k, q_task, cut), tasks
            else:
                read, routes, gated = level_all, q_task, everyone
            n_shared, n_own = shared.shape[1], own[0].shape[1]
            next_task = {}
            for t in gated:
                start = n_shared + everyone.index(t) * n_own
                candidates = torch.cat([read[:, start : start + n_own], read[:, :n_shared]], dim=1)
                next_task[t] = mix(self._task_gate(k, t)(routes[t], candidates), candidates)
            q_shared = mix(level.gate(q_shared, level_all), level_all)
            q_task = next_task
        return {t: self.tasks[t].head(q_task[t]) for t in tasks}
