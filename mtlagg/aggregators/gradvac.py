"""GradVac: gradient vaccine."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ._base import Aggregator, AggregatorInput, Needs, compute_gramian
from ._registry import register
from ._stateful import Stateful, new_generator

GroupType = Literal["whole", "layer", "tensor"]


def parameter_groups(
    group_type: GroupType, block_sizes: list[int] | None, block_names: list[str] | None
) -> list[tuple[str, int, int]]:
    """``(name, start, stop)`` column ranges of the groups GradVac works on."""
    if group_type == "whole":
        return [("whole", 0, -1)]
    if block_sizes is None:
        raise ValueError(
            f"GradVac(group_type={group_type!r}) needs the per-tensor structure of the Jacobian columns: use it "
            "through mtlagg.backward, or pass group_type='whole'"
        )
    names = block_names or [f"tensor[{i}]" for i in range(len(block_sizes))]
    offsets = [0]
    for size in block_sizes:
        offsets.append(offsets[-1] + size)
    if group_type == "tensor":
        return [(name, offsets[i], offsets[i + 1]) for i, name in enumerate(names)]
    groups: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        if name.startswith("shared_params[") or name.startswith("features["):
            raise ValueError(
                "GradVac(group_type='layer') groups tensors by module, which needs their names: pass "
                "shared_params as model.named_parameters() (or a dict name -> tensor)"
            )
        layer = name.rsplit(".", 1)[0] if "." in name else name
        if groups and groups[-1][0] == layer and groups[-1][2] == offsets[i]:
            groups[-1] = (layer, groups[-1][1], offsets[i + 1])
        else:
            groups.append((layer, offsets[i], offsets[i + 1]))
    return groups


@register("gradient_vaccine")
class GradVac(Stateful, Aggregator):
    r"""Gradient Vaccine (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021).

    For every task :math:`i`, the other tasks :math:`j` in a random order, and every parameter group
    :math:`k`: with :math:`\phi = \cos(g_i^{\text{vac}}, g_j)` (on group :math:`k`) and the target
    :math:`\hat\phi_{ijk}`, if :math:`\phi < \hat\phi_{ijk}` then

    .. math:: g_i^{\text{vac}} \mathrel{+}= g_j\,\frac{\lVert g_i^{\text{vac}}\rVert\,
        (\hat\phi\sqrt{1-\phi^2} - \phi\sqrt{1-\hat\phi^2})}{\lVert g_j\rVert \sqrt{1-\hat\phi^2}},

    which raises the cosine to exactly :math:`\hat\phi`; then
    :math:`\hat\phi_{ijk} \leftarrow (1-\beta)\hat\phi_{ijk} + \beta\phi` (0 at start, so the first
    step is PCGrad's test). :math:`d = \sum_i g_i^{\text{vac}}` (a sum, as the paper and both peers).

    Runs in weight space: every :math:`g_i^{\text{vac}}` is a combination of the task gradients, so
    each group needs only its Gramian; the ``T`` rows are processed together, one vectorised step
    per position in the random orders (each row only changes its own coefficients).

    Groups (``group_type``): ``"whole"`` (one group, all shared parameters), ``"layer"`` (one group
    per module: the tensors whose names share the prefix before the last dot; pass
    ``named_parameters()``), ``"tensor"`` (one group per parameter tensor). Groups are built from the
    shared parameters actually passed to :func:`mtlagg.backward` (LibMTL enumerates
    ``encoder.modules()``, which need not match them). The targets :math:`\hat\phi` are per group: a
    step whose groups differ from the state's raises (call ``reset()``).

    Needs: the Jacobian (with its per-tensor structure for ``"layer"`` / ``"tensor"``).
    State: :math:`\hat\phi` (``T x T x K``), the group names and sizes, the random generator.

    Defaults: :math:`\beta = 0.5` and ``group_type="whole"``, as LibMTL and TorchJD. The paper uses a
    much smaller EMA rate for its translation models (per the reference notes): pass e.g.
    ``beta=0.01`` to follow it.

    Args:
        beta: EMA rate of the targets, in [0, 1].
        group_type: ``"whole"``, ``"layer"`` or ``"tensor"``.
        eps: added to the norms in the denominators.
        generator: ``torch.Generator`` for the random orders; ``None``: a private one seeded from
            torch's global RNG (its state is saved in ``state_dict()``).
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN
    uses_block_gramians: ClassVar[bool] = True

    def __init__(
        self,
        beta: float = 0.5,
        group_type: GroupType = "whole",
        eps: float = 1e-8,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        if group_type not in ("whole", "layer", "tensor"):
            raise ValueError(f"group_type must be 'whole', 'layer' or 'tensor', got {group_type!r}")
        self.beta = float(beta)
        self.group_type = group_type
        self.eps = float(eps)
        self.generator = new_generator(generator)
        self._initial_rng = self.generator.get_state()
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "groups": None, "targets": None, "rng": None}

    def state_dict(self) -> dict[str, Any]:
        self._state["rng"] = self.generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self._state["rng"] is not None:
            self.generator.set_state(self._state["rng"])

    def reset(self) -> None:
        super().reset()
        self.generator.set_state(self._initial_rng)

    def random_orders(self, num_tasks: int) -> Tensor:
        """Row ``i``: the other tasks in the order task ``i`` visits them (draws from the generator)."""
        keys = torch.rand(num_tasks, num_tasks, generator=self.generator, device=self.generator.device)
        keys.fill_diagonal_(2.0)
        return keys.argsort(dim=1)[:, : num_tasks - 1].cpu()

    def coefficients(self, gramians: Tensor, orders: Tensor) -> Tensor:
        r"""The ``K x T x T`` coefficients :math:`C_k` with :math:`g_i^{\text{vac}} = \sum_j C_{k,ij} g_j` on
        group ``k``, from the ``K x T x T`` group Gramians; updates the targets.

        The ``T x T`` work runs in float64 on the CPU with numpy (many tiny operations, whose dispatch
        cost would dominate in torch).
        """
        K, T, _ = gramians.shape
        G = gramians.detach().to(device="cpu", dtype=torch.float64).numpy()
        targets = self._state["targets"].numpy()  # float64 CPU tensor: updated in place
        C = np.broadcast_to(np.eye(T), (K, T, T)).copy()
        rows = np.arange(T)
        squared = np.maximum(np.diagonal(G, axis1=1, axis2=2), 0.0)  # K x T
        beta, eps = self.beta, self.eps
        order = orders.numpy()
        for step in range(T - 1):
            j = order[:, step]
            dots_all = C @ G  # rows: <g_i^vac, g_l>
            dot = dots_all[:, rows, j]
            norm_i = np.sqrt(np.maximum((dots_all * C).sum(-1), 0.0))
            norm_j = np.sqrt(squared[:, j])
            phi = dot / (norm_i * norm_j + eps)
            target = targets[:, rows, j]
            root_target = np.sqrt(np.maximum(1 - target * target, 0.0))
            weight = norm_i * (target * np.sqrt(np.maximum(1 - phi * phi, 0.0)) - phi * root_target)
            weight = weight / (norm_j * root_target + eps)
            C[:, rows, j] += np.where(phi < target, weight, 0.0)
            targets[:, rows, j] = (1 - beta) * target + beta * phi
        return torch.from_numpy(C)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        T, n = jacobian.shape
        groups = parameter_groups(self.group_type, inputs.block_sizes, inputs.block_names)
        groups = [(name, start, n if stop < 0 else stop) for name, start, stop in groups]
        signature = [(name, stop - start) for name, start, stop in groups]
        state = self._state
        if self._check_num_tasks(T, "task gradients") or state["groups"] is None:
            state["groups"] = signature
            state["targets"] = torch.zeros(len(groups), T, T, dtype=torch.float64)
        elif [tuple(g) for g in state["groups"]] != signature:
            raise ValueError(
                f"GradVac's targets are per parameter group, and this step's groups {signature} differ from the "
                f"state's {state['groups']}; call reset() when the shared parameters change"
            )
        gramians = self._group_gramians(inputs, groups)
        C = self.coefficients(gramians, self.random_orders(T))
        weights = C.sum(dim=1).to(dtype=jacobian.dtype, device=jacobian.device)  # K x T: each group's weights
        if len(groups) == 1:
            return weights[0] @ jacobian
        return torch.cat([weights[k] @ jacobian[:, start:stop] for k, (_, start, stop) in enumerate(groups)])

    @staticmethod
    def _group_gramians(inputs: AggregatorInput, groups: list[tuple[str, int, int]]) -> Tensor:
        """``K x T x T``: from the engine's Gramian / per-block Gramians when it gave them (no extra
        work), else from the Jacobian's columns."""
        if len(groups) == 1 and inputs.has_gramian:
            return inputs.gramian[None]
        jacobian = inputs.jacobian
        assert jacobian is not None
        parts, sizes = inputs.block_gramians, inputs.block_sizes
        if parts is None or sizes is None or len(parts) != len(sizes):
            return torch.stack([compute_gramian(jacobian[:, start:stop]) for _, start, stop in groups])
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + size)
        gramians = []
        for _, start, stop in groups:
            inside = [parts[b] for b in range(len(sizes)) if starts[b] >= start and starts[b + 1] <= stop]
            gramians.append(torch.stack(inside).sum(dim=0))
        return torch.stack(gramians)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, group_type={self.group_type!r}"
