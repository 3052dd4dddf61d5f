"""Multi-gate mixture-of-experts (Ma et al., KDD 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, mix
from ._gates import ExpertGroup, GateInput, SoftmaxGate, check_gate_input


class MMoE(MultiTaskModel):
    r"""Multi-gate mixture-of-experts: shared experts, one softmax gate per task.

    :math:`\hat y_t = h_t\big(\sum_e g_t(x)_e\, f_e(x)\big)`, :math:`g_t(x) = \mathrm{softmax}(W_t r + b_t)`
    with ``r`` the gate's routing vector. Ma et al., "Modeling task relationships in multi-task
    learning with multi-gate mixture-of-experts", KDD 2018.

    Args:
        expert: the expert network (a module, deep-copied, or a zero-argument factory); every
            expert must return the same shape ``(B, C, ...)``.
        num_experts: how many shared experts.
        heads: one module per task.
        gate_input: ``"input"`` (the flattened input, as in the paper), ``"experts"`` (the mean
            expert output, pooled over the dimensions after the channel one) or a factory of a
            task-specific embedding module (see :mod:`mtlagg_arch._gates`).
        gate_in_features: the size of the routing vector.
        multi_input: each task has its own input batch.

    Split: shared = the experts; task ``t`` = gate ``t`` and head ``t``. Representation: the
    stacked expert outputs ``(B, E, ...)``.
    """

    def __init__(
        self,
        expert: ModuleSpec,
        num_experts: int,
        heads: Mapping[str, nn.Module],
        *,
        gate_input: GateInput = "input",
        gate_in_features: int | None = None,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        if not isinstance(num_experts, int) or isinstance(num_experts, bool) or num_experts < 1:
            raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
        check_gate_input(gate_input, gate_in_features)
        assert gate_in_features is not None
        self.shared.experts = ExpertGroup(expert, num_experts)
        for t in self.task_names:
            self.tasks[t].gate = SoftmaxGate(num_experts, gate_input, gate_in_features)
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> MMoE:
        options.setdefault("num_experts", 2)
        options.setdefault("gate_input", "experts")
        options.setdefault("gate_in_features", backbone.out_channels)
        return cls(backbone.encoder, heads=heads, multi_input=multi_input, **options)

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        experts = cut.tap(self.shared.experts(x))
        outputs = {}
        for t in tasks:
            weights = self.tasks[t].gate(x, experts)
            outputs[t] = self.tasks[t].head(mix(weights, experts))
        return outputs
