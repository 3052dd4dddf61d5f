r"""Per-task gradients of a shared representation consumed by linear heads, kept factored.

With ``features=z`` (``N x d``), a task whose head starts with a linear layer ``y_t = z A_t (+ b_t)``
(``A_t = W_t^T``, ``d x o_t``) has the representation gradient :math:`\nabla_z L_t = \delta_t A_t^\top`
with :math:`\delta_t = \partial L_t / \partial y_t` (``N x o_t``). Stacking the columns of every task,
:math:`D = [\delta_1 \dots \delta_T]` (``N x O``) and :math:`A = [A_1 \dots A_T]` (``d x O``):

* Gramian: :math:`G_{st} = \langle \delta_s A_s^\top, \delta_t A_t^\top \rangle
  = \sum_{(i, j) \in s \times t} (D^\top D)_{ij} (A^\top A)_{ij}`, i.e. ``O x O`` products summed per
  block, ``O^2 (N + d)`` instead of ``T N d`` for the explicit ``T x N x d`` rows;
* weighted direction: :math:`\sum_t w_t \nabla_z L_t = (D \operatorname{diag}(w_{owner})) A^\top`.

The heads are recognised in the autograd graph: the only consumer of ``z`` in the task's own region is
an ``AddmmBackward0`` (``alpha = beta = 1``) or ``MmBackward0`` node taking ``z`` as its first matrix.
Anything else takes the explicit path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import Node

from ._graph import Edge, TaskGraph
from ._linear import matmul_slots


def linear_consumer(graph: TaskGraph, edge: Edge, task: int) -> tuple[Node, Tensor] | None:
    """The linear node through which task ``task`` alone consumes the feature ``edge``, and the
    ``d x o`` matrix it multiplies the feature by; ``None`` if the task's use is anything else."""
    bit = 1 << task
    uses = [(node, mask) for node, mask in graph.cut_consumers.get(edge, ()) if mask & bit]
    if len(uses) != 1 or uses[0][1] != bit:
        return None
    node = uses[0][0]
    slots = matmul_slots(node)
    if slots is None or [i for i, child in enumerate(node.next_functions) if child == edge] != [slots[0]]:
        return None
    matrix = getattr(node, "_saved_mat2", None)
    if matrix is None or matrix.dim() != 2:
        return None
    return node, matrix.detach()


def factored_is_cheaper(num_tasks: int, rows: int, width: int, columns: int) -> bool:
    """``O^2 (N + d) + N O d`` (Gramian, then the direction) against ``T N d (O/T + T + 1)``
    (rows, their Gramian, their weighted sum)."""
    factored = columns * columns * (rows + width) + rows * columns * width
    explicit = rows * width * (columns + num_tasks * num_tasks + num_tasks)
    return factored < explicit


@dataclass
class FactoredFeature:
    """The per-task gradients of one feature tensor (``N x d``) as ``deltas`` (``N x O``) and
    ``matrices`` (``d x O``); column ``j`` belongs to task ``owners[j]``."""

    num_tasks: int
    deltas: Tensor
    matrices: Tensor
    owners: Tensor  # (O,) long
    _weighted: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_tasks(cls, num_tasks: int, parts: dict[int, tuple[Tensor, Tensor]]) -> FactoredFeature:
        """``parts``: task -> (delta ``N x o_t``, matrix ``d x o_t``)."""
        tasks = sorted(parts)
        deltas = torch.cat([parts[t][0].reshape(parts[t][0].shape[0], -1) for t in tasks], dim=1)
        matrices = torch.cat([parts[t][1] for t in tasks], dim=1).to(deltas.dtype)
        owners = torch.cat(
            [torch.full((parts[t][1].shape[1],), t, dtype=torch.long, device=deltas.device) for t in tasks]
        )
        return cls(num_tasks, deltas, matrices, owners)

    def rows(self, shape: tuple[int, ...]) -> Tensor:
        """The explicit ``(T, *shape)`` per-task gradients."""
        rows = self.deltas.new_zeros((self.num_tasks, self.deltas.shape[0], self.matrices.shape[0]))
        for task in self.owners.unique().tolist():
            columns = (self.owners == task).nonzero().squeeze(1)
            rows[task] = self.deltas[:, columns] @ self.matrices[:, columns].T
        return rows.reshape(self.num_tasks, *shape)

    def gramian(self, dtype: torch.dtype) -> Tensor:
        deltas = self.deltas.to(dtype)
        matrices = self.matrices.to(dtype)
        products = (deltas.T @ deltas) * (matrices.T @ matrices)  # (O, O)
        # Block sums by scatter, not by a product with a 0/1 matrix: a task's NaN stays in its own
        # rows and columns (0 * NaN would spread it to every task).
        T, O = self.num_tasks, products.shape[0]
        by_row = products.new_zeros(T, O).index_add_(0, self.owners, products)
        gram = products.new_zeros(T, T).index_add_(1, self.owners, by_row)
        return 0.5 * (gram + gram.T)

    def weighted(self, coefficients: Tensor) -> Tensor:
        """``sum_t c_t grad_z L_t`` (``N x d``), computed once per coefficient vector."""
        if self._weighted is not None and self._weighted[0] is coefficients:
            return self._weighted[1]
        key = coefficients
        per_column = coefficients.to(self.deltas.dtype).index_select(0, self.owners)
        # (columns with coefficient 0 are not read: the tasks left out may hold NaN)
        scaled = torch.where(per_column != 0, self.deltas * per_column, torch.zeros((), dtype=self.deltas.dtype))
        direction = scaled @ self.matrices.T
        self._weighted = (key, direction)
        return direction

    def forget_tasks(self, tasks: list[int]) -> None:
        keep = ~torch.isin(self.owners, torch.tensor(tasks, device=self.owners.device))
        self.deltas = torch.where(keep, self.deltas, torch.zeros((), dtype=self.deltas.dtype))
        self._weighted = None
