"""Customized gate control (Tang et al., RecSys 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, mix
from ._gates import ExpertGroup, GateInput, SoftmaxGate, check_gate_input


def per_task_counts(
    value: int | Mapping[str, int] | Sequence[int], tasks: tuple[str, ...], what: str
) -> dict[str, int]:
    if isinstance(value, Mapping):
        missing = [t for t in tasks if t not in value]
        extra = [k for k in value if k not in tasks]
        if missing or extra:
            raise ValueError(f"{what} must name every task exactly: missing {missing}, unknown {extra}")
        counts = {t: value[t] for t in tasks}
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(tasks):
            raise ValueError(f"{what} has {len(value)} entries but there are {len(tasks)} tasks")
        counts = dict(zip(tasks, value))
    else:
        counts = dict.fromkeys(tasks, value)
    for t, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{what} for task {t!r} must be an int >= 0, got {n!r}")
    return counts


class CGC(MultiTaskModel):
    r"""Customized gate control: shared experts and task-specific experts, one gate per task.

    Task ``t`` mixes its own experts and the shared ones:
    :math:`\hat y_t = h_t\big(\sum_{e \in E_t \cup E_s} g_t(x)_e f_e(x)\big)`. Tang et al.,
    "Progressive layered extraction (PLE): a novel multi-task learning (MTL) model for
    personalized recommendations", RecSys 2020 (CGC is PLE's single-level building block).

    Args:
        expert: the expert network (module, deep-copied, or zero-argument factory).
        num_shared_experts: how many shared experts (at least 1).
        num_task_experts: how many experts each task owns: an int, or one per task (a sequence in
            task order or a mapping task -> count).
        heads, gate_input, gate_in_features, multi_input: as in :class:`MMoE`.

    Split: shared = the shared experts; task ``t`` = its experts, its gate and its head.
    Representation: the stacked shared-expert outputs.
    """

    def __init__(
        self,
        expert: ModuleSpec,
        heads: Mapping[str, nn.Module],
        *,
        num_shared_experts: int = 1,
        num_task_experts: int | Mapping[str, int] | Sequence[int] = 1,
        gate_input: GateInput = "input",
        gate_in_features: int | None = None,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        if not isinstance(num_shared_experts, int) or isinstance(num_shared_experts, bool) or num_shared_experts < 1:
            raise ValueError(f"num_shared_experts must be an int >= 1, got {num_shared_experts!r}")
        counts = per_task_counts(num_task_experts, self.task_names, "num_task_experts")
        check_gate_input(gate_input, gate_in_features)
        assert gate_in_features is not None
        self.shared.experts = ExpertGroup(expert, num_shared_experts)
        for t in self.task_names:
            self.tasks[t].experts = ExpertGroup(expert, counts[t]) if counts[t] else None
            self.tasks[t].gate = SoftmaxGate(num_shared_experts + counts[t], gate_input, gate_in_features)
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> CGC:
        options.setdefault("gate_input", "experts")
        options.setdefault("gate_in_features", backbone.out_channels)
        return cls(backbone.encoder, heads, multi_input=multi_input, **options)

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        shared = cut.tap(self.shared.experts(x))
        outputs = {}
        for t in tasks:
            own = self.tasks[t].experts
            candidates = shared if own is None else torch.cat([shared, own(x)], dim=1)
            weights = self.tasks[t].gate(x, candidates)
            outputs[t] = self.tasks[t].head(mix(weights, candidates))
        return outputs
