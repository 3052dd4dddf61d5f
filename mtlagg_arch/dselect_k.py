"""DSelect-k mixture of experts (Hazimeh et al., NeurIPS 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, mix
from ._gates import DSelectKGate, ExpertGroup, GateInput


class DSelectK(MultiTaskModel):
    r"""Shared experts with one DSelect-k gate per task: a differentiable top-``k`` expert choice.

    :math:`\hat y_t = h_t\big(\sum_e a_t(x)_e f_e(x)\big)` where :math:`a_t` is the DSelect-k gate
    (see :class:`~mtlagg_arch._gates.DSelectKGate`): at most ``k`` nonzero weights once the
    selectors have converged. Hazimeh et al., "DSelect-k: differentiable selection in the mixture
    of experts with applications to multi-task learning", NeurIPS 2021.

    **The regulariser is applied**: after a forward pass in training mode,
    :meth:`regularization_losses` holds each task's entropy regulariser (plus the unreachable-code
    term when ``num_experts`` is not a power of two); add it to the task losses, e.g.
    ``losses = model.add_regularization(losses)``, before :func:`mtlagg.backward`. It depends on the
    task's gate only (and on the expert outputs with ``gate_input="experts"``).

    Args:
        expert: the expert network (module, deep-copied, or zero-argument factory).
        num_experts: how many shared experts (at least 2).
        heads: one module per task.
        num_nonzeros: ``k``, the number of experts each task may select (default 2).
        gamma: the width of the smooth-step's cubic region (default 1).
        entropy_reg: the weight of the entropy regulariser (default ``1e-6``, the authors' default).
        gate_input: ``"input"``, ``"experts"``, an embedding factory (as in :class:`MMoE`), or
            ``"static"`` for per-task gates that do not depend on the example.
        gate_in_features: the size of the routing vector (not needed for ``"static"``).
        multi_input: each task has its own input batch.

    Split: shared = the experts; task ``t`` = gate ``t`` and head ``t``. Representation: the
    stacked expert outputs.
    """

    def __init__(
        self,
        expert: ModuleSpec,
        num_experts: int,
        heads: Mapping[str, nn.Module],
        *,
        num_nonzeros: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
        gate_input: GateInput = "input",
        gate_in_features: int | None = None,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        if not isinstance(num_experts, int) or isinstance(num_experts, bool) or num_experts < 2:
            raise ValueError(f"num_experts must be an int >= 2, got {num_experts!r}")
        self.shared.experts = ExpertGroup(expert, num_experts)
        for t in self.task_names:
            self.tasks[t].gate = DSelectKGate(
                num_experts, num_nonzeros, gate_input, gate_in_features, gamma=gamma, entropy_reg=entropy_reg
            )
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> DSelectK:
        options.setdefault("num_experts", 4)
        options.setdefault("gate_input", "experts")
        if options["gate_input"] != "static":
            options.setdefault("gate_in_features", backbone.out_channels)
        return cls(backbone.encoder, heads=heads, multi_input=multi_input, **options)

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        experts = cut.tap(self.shared.experts(x))
        outputs = {}
        for t in tasks:
            gate = self.tasks[t].gate
            weights, selectors = gate(x, experts)
            outputs[t] = self.tasks[t].head(mix(weights, experts))
            if self.training:
                regularization = gate.regularization(selectors)
                if t in cut.regularization:  # multi-input: one term per task anyway
                    regularization = regularization + cut.regularization[t]
                cut.regularization[t] = regularization
        return outputs
