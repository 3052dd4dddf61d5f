"""Learning to branch (Guo et al., ICML 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, check_stages, instantiate

BRANCHING_MODES = ("gumbel", "uniform", "argmax")


class LTB(MultiTaskModel):
    r"""Learning to branch: a tree of stage copies whose branching is learned.

    Stage ``s`` has ``widths[s]`` nodes (copies of stage ``s``); the last stage has one node per
    task, whose output feeds that task's head. Each node ``j`` of stage ``s >= 1`` picks its
    parent among the nodes of stage ``s - 1`` with learned logits :math:`\alpha^s_j`:

    * training, ``branching="gumbel"`` (default): a hard Gumbel-softmax sample with temperature
      :math:`\tau` (straight-through: the forward pass uses one parent, the gradient reaches
      :math:`\alpha` through the soft sample);
    * training, ``branching="uniform"``: the mean of all parents (a warm-up phase);
    * training with ``branching="argmax"``, and always in evaluation mode: the most likely
      parent, deterministically.

    Guo, Lee and Ulbricht, "Learning to branch for multi-task learning", ICML 2020. The schedule
    is explicit: call :meth:`set_temperature` and :meth:`set_branching` from the training loop
    (e.g. ``uniform`` for a warm-up, then ``gumbel`` with a decaying :math:`\tau`); nothing is read
    from attributes a trainer is expected to set. Both settings are saved in the ``state_dict``.

    Args:
        stages: the backbone's stages (modules, deep-copied, or zero-argument factories); at
            least two.
        heads: one module per task.
        widths: the number of nodes of each stage (default: 1 for the first stage, a shared root,
            then one per task); the last must equal the number of tasks.
        temperature: the initial Gumbel-softmax temperature (default 1).
        branching: the initial training-mode branching, one of ``"gumbel"``, ``"uniform"``,
            ``"argmax"``.
        multi_input: each task has its own input batch.

    Split: task ``t`` owns its last-stage node, that node's branching logits and its head;
    every other node and logit is shared (in training, every task's loss depends on every node
    of the earlier stages through the Gumbel-softmax). Representation: the outputs of the
    second-to-last stage's nodes.
    """

    def __init__(
        self,
        stages: Sequence[ModuleSpec],
        heads: Mapping[str, nn.Module],
        *,
        widths: Sequence[int] | None = None,
        temperature: float = 1.0,
        branching: str = "gumbel",
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        stage_list = check_stages(stages)
        S, T = len(stage_list), self.num_tasks
        if S < 2:
            raise ValueError(f"LTB needs at least 2 stages to branch, got {S}")
        width_list = [1] + [T] * (S - 1) if widths is None else list(widths)
        if len(width_list) != S:
            raise ValueError(f"widths has {len(width_list)} entries but there are {S} stages")
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in width_list):
            raise ValueError(f"widths must hold positive ints, got {width_list}")
        if width_list[-1] != T:
            raise ValueError(f"the last stage must have one node per task ({T}), got widths[-1]={width_list[-1]}")
        self.widths = tuple(width_list)
        self.num_stages = S
        self.set_temperature(temperature)
        self.set_branching(branching)
        nodes = [instantiate(stage, width_list[s], f"stages[{s}]") for s, stage in enumerate(stage_list)]
        self.shared.nodes = nn.ModuleList(nn.ModuleList(nodes[s]) for s in range(S - 1))
        self.shared.logits = nn.ParameterDict(
            {
                str(s): nn.Parameter(torch.zeros(width_list[s], width_list[s - 1]))
                for s in range(1, S - 1)
                if width_list[s - 1] > 1
            }
        )
        for i, t in enumerate(self.task_names):
            self.tasks[t].node = nodes[S - 1][i]
            # a single parent needs no choice (and no logits that nothing would train)
            self.tasks[t].logits = nn.Parameter(torch.zeros(width_list[S - 2])) if width_list[S - 2] > 1 else None
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> LTB:
        return cls(backbone.stage_factories, heads, multi_input=multi_input, **options)

    # -- explicit schedule ----------------------------------------------------------------------
    def set_temperature(self, temperature: float) -> None:
        """Set the Gumbel-softmax temperature :math:`\\tau > 0` used in training mode."""
        if not isinstance(temperature, (int, float)) or not temperature > 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
        self.temperature = float(temperature)

    def set_branching(self, mode: str) -> None:
        """Set the training-mode branching: ``"gumbel"``, ``"uniform"`` (warm-up) or ``"argmax"``."""
        if mode not in BRANCHING_MODES:
            raise ValueError(f"branching must be one of {BRANCHING_MODES}, got {mode!r}")
        self.branching = mode

    def get_extra_state(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "branching": self.branching}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_temperature(state["temperature"])
        self.set_branching(state["branching"])

    def branch_logits(self, stage: int) -> Tensor:
        """The ``widths[stage] x widths[stage - 1]`` branching logits of ``stage`` (detached)."""
        if not 1 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [1, {self.num_stages}), got {stage}")
        if self.widths[stage - 1] == 1:
            return torch.zeros(self.widths[stage], 1)
        if stage == self.num_stages - 1:
            return torch.stack([self.tasks[t].logits.detach() for t in self.task_names])
        return self.shared.logits[str(stage)].detach().clone()

    def parents(self) -> list[list[int]]:
        """The most likely parent of every node of stages ``1..S-1`` (the tree used in evaluation)."""
        return [self.branch_logits(s).argmax(dim=1).tolist() for s in range(1, self.num_stages)]

    # -- forward --------------------------------------------------------------------------------
    def _select(self, logits: Tensor | None, parents: list[Tensor]) -> Tensor:
        if logits is None or len(parents) == 1:
            return parents[0]
        mode = self.branching if self.training else "argmax"
        if mode == "argmax":
            return parents[int(logits.argmax())]
        stack = torch.stack(parents)
        if mode == "uniform":
            return stack.mean(dim=0)
        sample = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        return torch.tensordot(sample.to(stack.dtype), stack, dims=1)

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        S = self.num_stages
        outputs = [node(x) for node in self.shared.nodes[0]]
        for s in range(1, S - 1):
            logits = self.shared.logits.get(str(s), None)
            outputs = [
                node(self._select(None if logits is None else logits[j], outputs))
                for j, node in enumerate(self.shared.nodes[s])
            ]
        parents = [cut.tap(o) for o in outputs]
        predictions = {}
        for t in tasks:
            branch = self.tasks[t]
            predictions[t] = branch.head(branch.node(self._select(branch.logits, parents)))
        return predictions
