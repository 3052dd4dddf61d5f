"""The per-task gradients of the losses with respect to given tensors.

Two phases (see :mod:`mtlagg._graph`):

1. each task is back-propagated through its own exclusive region, once, to its boundary edges
   and to the leaves it reaches directly (``T`` small backward passes);
2. the common region is differentiated for all tasks at once from the boundary: one vectorised
   backward (``torch.vmap`` through ``is_grads_batched``) over the ``T`` rows, in chunks of
   ``chunk_size`` rows, or one plain backward per task when ``chunk_size=1`` (the fallback for
   models ``vmap`` cannot handle).

Nothing is materialised as one ``T x n`` matrix here: the result holds, per tensor, a ``T``-row
block and/or the rows that came directly from phase 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlagg.errors import VmapError

from ._graph import Edge, TaskGraph, as_gradient_edge, edge_of


@dataclass
class TaskGradients:
    """Per-task gradients of the losses, tensor by tensor."""

    num_tasks: int
    #: id(tensor) -> ``(T, *shape)`` rows from the common region
    blocks: dict[int, Tensor] = field(default_factory=dict)
    #: id(tensor) -> {task: gradient} from the task's exclusive region
    direct: dict[int, dict[int, Tensor]] = field(default_factory=dict)

    def has(self, tensor: Tensor) -> bool:
        return id(tensor) in self.blocks or id(tensor) in self.direct

    def block(self, tensor: Tensor) -> Tensor:
        """The ``(T, *shape)`` per-task gradients of ``tensor`` (zeros where a task does not reach it)."""
        full = self.blocks.get(id(tensor))
        rows = self.direct.get(id(tensor), {})
        if full is None:
            full = tensor.new_zeros((self.num_tasks, *tensor.shape))
        elif rows:
            full = full.clone()
        for task, gradient in rows.items():
            full[task] += gradient
        return full

    def weighted_sum(self, tensor: Tensor, coefficients: Tensor, tasks: int) -> Tensor | None:
        """``sum_i coefficients[i] * (gradient of task i)`` over the tasks in the bitmask ``tasks``.

        Rows of other tasks are never read (they may hold NaN). ``None`` if no included task
        reaches ``tensor``.
        """
        coefficients = coefficients.to(dtype=tensor.dtype, device=tensor.device)
        total: Tensor | None = None
        full = self.blocks.get(id(tensor))
        if full is not None:
            if tasks == (1 << self.num_tasks) - 1:
                total = torch.tensordot(coefficients, full, dims=1)
            else:
                rows = [i for i in range(self.num_tasks) if tasks >> i & 1]
                index = torch.tensor(rows, device=full.device)
                total = torch.tensordot(coefficients[index], full.index_select(0, index), dims=1)
        for task, gradient in self.direct.get(id(tensor), {}).items():
            if tasks >> task & 1:
                total = coefficients[task] * gradient if total is None else total + coefficients[task] * gradient
        return total

    def add_direct(self, tensor: Tensor, task: int, gradient: Tensor) -> None:
        rows = self.direct.setdefault(id(tensor), {})
        rows[task] = rows[task] + gradient if task in rows else gradient


def _is_vmap_failure(error: BaseException) -> bool:
    message = str(error).lower()
    return "vmap" in message or "batching rule" in message or "batched" in message


def task_gradients(
    losses: list[Tensor],
    graph: TaskGraph,
    wanted: list[Tensor],
    *,
    chunk_size: int | None,
    retain_graph: bool,
) -> TaskGradients:
    """Per-task gradients of ``losses`` with respect to the leaves ``wanted`` (exact path)."""
    T = len(losses)
    result = TaskGradients(T)
    wanted_ids = {id(t) for t in wanted}
    roots = [edge_of(loss) if loss.requires_grad else None for loss in losses]

    # Phase 1: each task through its own head.
    edge_grads: dict[Edge, dict[int, Tensor]] = {}
    for i, loss in enumerate(losses):
        if roots[i] is None:
            continue
        edges = [e for e in graph.boundary[i] if e != roots[i]]
        if roots[i] in graph.boundary[i]:
            edge_grads.setdefault(roots[i], {})[i] = torch.ones_like(loss)
        leaves = [t for t in graph.direct_leaves[i] if id(t) in wanted_ids]
        inputs = [as_gradient_edge(e) for e in edges] + leaves
        if not inputs:
            continue
        grads = torch.autograd.grad(loss, inputs, retain_graph=retain_graph, allow_unused=True)
        for edge, gradient in zip(edges, grads[: len(edges)]):
            if gradient is not None:
                edge_grads.setdefault(edge, {})[i] = gradient
        for leaf, gradient in zip(leaves, grads[len(edges) :]):
            if gradient is not None:
                result.add_direct(leaf, i, gradient)

    # Phase 2: the common region, all tasks at once.
    targets = [t for t in graph.common_leaves if id(t) in wanted_ids]
    if not edge_grads or not targets:
        return result
    edges = list(edge_grads)
    if chunk_size == 1:
        _sequential(edges, edge_grads, targets, result, retain_graph)
    else:
        _vectorised(edges, edge_grads, targets, result, chunk_size, retain_graph)
    return result


def _stack_rows(rows: dict[int, Tensor], num_tasks: int) -> Tensor:
    example = next(iter(rows.values()))
    stacked = example.new_zeros((num_tasks, *example.shape))
    for task, gradient in rows.items():
        stacked[task] = gradient
    return stacked


def _vectorised(
    edges: list[Edge],
    edge_grads: dict[Edge, dict[int, Tensor]],
    targets: list[Tensor],
    result: TaskGradients,
    chunk_size: int | None,
    retain_graph: bool,
) -> None:
    T = result.num_tasks
    tasks = sorted({task for rows in edge_grads.values() for task in rows})
    stacks = [_stack_rows(edge_grads[e], T)[tasks] for e in edges]
    outputs = [as_gradient_edge(e) for e in edges]
    step = len(tasks) if chunk_size is None else chunk_size
    chunks: list[list[Tensor]] = [[] for _ in targets]
    for start in range(0, len(tasks), step):
        rows = len(tasks[start : start + step])
        last = start + step >= len(tasks)
        try:
            grads = torch.autograd.grad(
                outputs,
                targets,
                [s[start : start + step] for s in stacks],
                retain_graph=retain_graph or not last,
                allow_unused=True,
                is_grads_batched=True,
            )
        except RuntimeError as error:
            if _is_vmap_failure(error):
                raise VmapError(
                    "the vectorised backward failed on this model (an operation without a vmap rule); "
                    "pass chunk_size=1 to differentiate one task at a time"
                ) from error
            raise
        for k, (target, gradient) in enumerate(zip(targets, grads)):
            chunks[k].append(gradient if gradient is not None else target.new_zeros((rows, *target.shape)))
    index = torch.tensor(tasks, device=targets[0].device)
    for target, parts in zip(targets, chunks):
        rows_tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        if len(tasks) == T:
            result.blocks[id(target)] = rows_tensor
        else:
            full = target.new_zeros((T, *target.shape))
            full.index_copy_(0, index, rows_tensor)
            result.blocks[id(target)] = full


def _sequential(
    edges: list[Edge],
    edge_grads: dict[Edge, dict[int, Tensor]],
    targets: list[Tensor],
    result: TaskGradients,
    retain_graph: bool,
) -> None:
    T = result.num_tasks
    per_task: dict[int, list[Edge]] = {}
    for edge in edges:
        for task in edge_grads[edge]:
            per_task.setdefault(task, []).append(edge)
    blocks = [target.new_zeros((T, *target.shape)) for target in targets]
    order = sorted(per_task)
    for n, task in enumerate(order):
        task_edges = per_task[task]
        grads = torch.autograd.grad(
            [as_gradient_edge(e) for e in task_edges],
            targets,
            [edge_grads[e][task] for e in task_edges],
            retain_graph=retain_graph or n < len(order) - 1,
            allow_unused=True,
        )
        for block, gradient in zip(blocks, grads):
            if gradient is not None:
                block[task] = gradient
    for target, block in zip(targets, blocks):
        result.blocks[id(target)] = block


def feature_gradients(
    losses: list[Tensor],
    graph: TaskGraph,
    features: list[Tensor],
    wanted_leaves: list[Tensor],
    *,
    retain_graph: bool,
) -> TaskGradients:
    """Per-task gradients with respect to the ``features`` and to the leaves above them.

    One backward per task, through its head only (the graph below the features is untouched).
    """
    T = len(losses)
    result = TaskGradients(T)
    feature_edges = [edge_of(f) for f in features]
    heads_overlap = any(graph.boundary[i] for i in range(T)) or bool(graph.common_leaves)
    for i, loss in enumerate(losses):
        if not loss.requires_grad:
            continue
        reached = [f for f, e in zip(features, feature_edges) if graph.cut_masks.get(e, 0) >> i & 1]
        leaves = [t for t in wanted_leaves if graph.leaf_mask(t) >> i & 1]
        inputs = reached + leaves
        if not inputs:
            continue
        grads = torch.autograd.grad(loss, inputs, retain_graph=retain_graph or heads_overlap, allow_unused=True)
        for tensor, gradient in zip(inputs, grads):
            if gradient is not None:
                result.add_direct(tensor, i, gradient)
    return result
