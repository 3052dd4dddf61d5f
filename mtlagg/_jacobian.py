"""The per-task gradients of the losses with respect to given tensors.

Two phases (see :mod:`mtlagg._graph`):

1. each task is back-propagated through its own exclusive region, once, to its boundary edges
   and to the leaves it reaches directly (``T`` small backward passes);
2. the common region is differentiated for all tasks at once from the boundary: one vectorised
   backward (``torch.vmap`` through ``is_grads_batched``) over the ``T`` rows, in chunks of
   ``chunk_size`` rows, or one plain backward per task when ``chunk_size=1`` (the fallback for
   models ``vmap`` cannot handle, and the default on the CPU: see :func:`default_chunk_size`).

Nothing is materialised as one ``T x n`` matrix here: the result holds, per tensor, a ``T``-row
block and/or the rows that came directly from phase 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

from mtlagg.errors import VmapError

from ._factored_features import FactoredFeature, factored_is_cheaper, linear_consumer
from ._graph import Edge, TaskGraph, as_gradient_edge, edge_of
from ._linear import FactoredLinear, find_linear_layers


@dataclass
class TaskGradients:
    """Per-task gradients of the losses, tensor by tensor."""

    num_tasks: int
    #: id(tensor) -> ``(T, *shape)`` rows from the common region
    blocks: dict[int, Tensor] = field(default_factory=dict)
    #: id(tensor) -> {task: gradient} from the task's exclusive region
    direct: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    #: id(weight or bias) -> the linear layer whose per-task gradients are kept factored
    factored: dict[int, FactoredLinear] = field(default_factory=dict)
    #: id(feature) -> its per-task gradients through linear heads, kept factored (``features=``)
    features: dict[int, FactoredFeature] = field(default_factory=dict)

    def has(self, tensor: Tensor) -> bool:
        key = id(tensor)
        return key in self.blocks or key in self.direct or key in self.factored or key in self.features

    def block(self, tensor: Tensor) -> Tensor:
        """The ``(T, *shape)`` per-task gradients of ``tensor`` (zeros where a task does not reach it)."""
        layer = self.factored.get(id(tensor))
        if layer is not None:
            return layer.weight_rows() if tensor is layer.weight else layer.bias_rows()
        feature = self.features.get(id(tensor))
        if feature is not None:
            return feature.rows(tuple(tensor.shape))
        full = self.blocks.get(id(tensor))
        rows = self.direct.get(id(tensor), {})
        if full is None:
            full = tensor.new_zeros((self.num_tasks, *tensor.shape))
        elif rows:
            full = full.clone()
        for task, gradient in rows.items():
            full[task] += gradient
        return full

    def gramian(self, tensors: list[Tensor], parts: list[Tensor] | None = None) -> Tensor:
        """``J J^T`` over ``tensors`` (at least float32), one tensor or layer at a time.

        If ``parts`` is a list, it receives the Gramian of each tensor, in order (this separates the
        weight and the bias of a factored layer, which otherwise share one computation).
        """
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        device = tensors[0].device if tensors else None
        total = torch.zeros(self.num_tasks, self.num_tasks, dtype=dtype, device=device)
        done: set[int] = set()
        for tensor in tensors:
            layer = self.factored.get(id(tensor))
            feature = self.features.get(id(tensor))
            if feature is not None:
                part = feature.gramian(dtype)
            elif layer is not None and parts is not None:
                part = layer.weight_gramian(dtype) if tensor is layer.weight else layer.bias_gramian(dtype)
            elif layer is not None:
                if id(layer) not in done:
                    done.add(id(layer))
                    total += layer.gramian(dtype)
                continue
            elif self.has(tensor):
                rows = self.block(tensor).reshape(self.num_tasks, -1).to(dtype)
                part = rows @ rows.T
            else:
                part = torch.zeros_like(total)
            if parts is not None:
                parts.append(part)
            total += part
        return total

    def weighted_sum(self, tensor: Tensor, coefficients: Tensor, tasks: int | None = None) -> Tensor | None:
        """``sum_i coefficients[i] * (gradient of task i)`` over the tasks in the bitmask ``tasks``.

        Rows of other tasks are never read (they may hold NaN). ``None`` if no included task
        reaches ``tensor``.
        """
        everyone = (1 << self.num_tasks) - 1
        tasks = everyone if tasks is None else tasks
        coefficients = coefficients.to(dtype=tensor.dtype, device=tensor.device)
        layer = self.factored.get(id(tensor))
        if layer is not None:
            if tasks != everyone:
                coefficients = coefficients * _mask_vector(tasks, self.num_tasks).to(coefficients)
            weight, bias = layer.weighted(coefficients)
            return weight if tensor is layer.weight else bias
        feature = self.features.get(id(tensor))
        if feature is not None:
            if tasks != everyone:
                coefficients = coefficients * _mask_vector(tasks, self.num_tasks).to(coefficients)
            return feature.weighted(coefficients).reshape(tensor.shape)
        total: Tensor | None = None
        full = self.blocks.get(id(tensor))
        if full is not None:
            if tasks == everyone:
                total = torch.tensordot(coefficients, full, dims=1)
            else:
                index = torch.tensor([i for i in range(self.num_tasks) if tasks >> i & 1], device=full.device)
                total = torch.tensordot(coefficients[index], full.index_select(0, index), dims=1)
        for task, gradient in self.direct.get(id(tensor), {}).items():
            if tasks >> task & 1:
                total = coefficients[task] * gradient if total is None else total + coefficients[task] * gradient
        return total

    def zero_tasks(self, tasks: tuple[int, ...]) -> None:
        """Forget the gradients of ``tasks`` (they become zero rows)."""
        if not tasks:
            return
        index = list(tasks)
        for key, full in self.blocks.items():
            self.blocks[key] = full.clone()
            self.blocks[key][index] = 0
        for rows in self.direct.values():
            for task in tasks:
                rows.pop(task, None)
        for layer in {id(layer): layer for layer in self.factored.values()}.values():
            layer.forget_tasks(index)
        for feature in self.features.values():
            feature.forget_tasks(index)

    def add_direct(self, tensor: Tensor, task: int, gradient: Tensor) -> None:
        rows = self.direct.setdefault(id(tensor), {})
        rows[task] = rows[task] + gradient if task in rows else gradient


def _mask_vector(mask: int, num_tasks: int) -> Tensor:
    return torch.tensor([float(mask >> i & 1) for i in range(num_tasks)])


def default_chunk_size(device: torch.device) -> int | None:
    """``chunk_size=None``: one task at a time on the CPU, every task in one vectorised pass elsewhere.

    On the CPU a ``vmap``-ed backward does the same arithmetic as the per-task loop in bigger
    matrix products, and measured no faster (MLP trunk, T = 40) to several times slower (QM9's
    message-passing network, T = 11), with more memory; on a GPU the batched kernels are the point.
    """
    return 1 if device.type == "cpu" else None


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
    from_root: list[Tensor] = []  # leaves of the tasks differentiated from their loss in phase 2
    for i, loss in enumerate(losses):
        if roots[i] is None:
            continue
        if not graph.separable(i):
            edge_grads.setdefault(roots[i], {})[i] = torch.ones_like(loss)
            from_root += [t for t in graph.direct_leaves[i] if id(t) in wanted_ids]
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

    # Phase 2: the common region, all tasks at once. Linear layers give their output gradients
    # (factored form, see _linear.py); other tensors their gradients.
    if not edge_grads:
        return result
    layers = find_linear_layers(graph, wanted_ids, excluded_edges=set(edge_grads))
    factored_ids = {id(layer.weight) for layer in layers} | {
        id(layer.bias) for layer in layers if layer.bias is not None
    }
    targets = [t for t in graph.common_leaves if id(t) in wanted_ids and id(t) not in factored_ids]
    target_ids = {id(t) for t in targets}
    targets += [t for t in dict.fromkeys(from_root) if id(t) not in target_ids and id(t) not in factored_ids]
    inputs: list[Tensor | GradientEdge] = [*targets, *(as_gradient_edge(layer.edge) for layer in layers)]
    templates = [(tuple(t.shape), t) for t in targets]
    templates += [((layer.inputs.shape[0], layer.weight.shape[0]), layer.weight) for layer in layers]
    if not inputs:
        return result
    edges = list(edge_grads)
    if chunk_size is None:
        chunk_size = default_chunk_size(templates[0][1].device)
    if chunk_size == 1:
        rows = _sequential(edges, edge_grads, inputs, templates, T, retain_graph)
    else:
        rows = _vectorised(edges, edge_grads, inputs, templates, T, chunk_size, retain_graph)
    for target, block in zip(targets, rows[: len(targets)]):
        result.blocks[id(target)] = block
    for layer, deltas in zip(layers, rows[len(targets) :]):
        factored = FactoredLinear(layer.weight, layer.bias, layer.inputs, deltas)
        result.factored[id(layer.weight)] = factored
        if layer.bias is not None:
            result.factored[id(layer.bias)] = factored
    return result


Template = tuple[tuple[int, ...], Tensor]


def _zeros(template: Template, rows: int) -> Tensor:
    shape, like = template
    return like.new_zeros((rows, *shape))


def _stack_rows(rows: dict[int, Tensor], tasks: list[int]) -> Tensor:
    example = next(iter(rows.values()))
    if len(rows) == len(tasks):
        return torch.stack([rows[task] for task in tasks])
    stacked = example.new_zeros((len(tasks), *example.shape))
    for n, task in enumerate(tasks):
        if task in rows:
            stacked[n] = rows[task]
    return stacked


def _vectorised(
    edges: list[Edge],
    edge_grads: dict[Edge, dict[int, Tensor]],
    inputs: list[Tensor | GradientEdge],
    templates: list[Template],
    num_tasks: int,
    chunk_size: int | None,
    retain_graph: bool,
) -> list[Tensor]:
    tasks = sorted({task for rows in edge_grads.values() for task in rows})
    stacks = []
    for edge in edges:  # stack, releasing the per-task rows as we go
        stacks.append(_stack_rows(edge_grads[edge], tasks))
        edge_grads[edge].clear()
    outputs = [as_gradient_edge(e) for e in edges]
    step = len(tasks) if chunk_size is None else chunk_size
    whole = len(tasks) == num_tasks and step >= len(tasks)
    results: list[Tensor] = [] if whole else [_zeros(template, num_tasks) for template in templates]
    for start in range(0, len(tasks), step):
        chunk = tasks[start : start + step]
        last = start + step >= len(tasks)
        try:
            grads = torch.autograd.grad(
                outputs,
                inputs,
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
        if whole:
            return [g if g is not None else _zeros(t, num_tasks) for g, t in zip(grads, templates)]
        index = torch.tensor(chunk, device=templates[0][1].device)
        for rows, gradient in zip(results, grads):
            if gradient is not None:
                rows.index_copy_(0, index, gradient)
        del grads
    return results


def _sequential(
    edges: list[Edge],
    edge_grads: dict[Edge, dict[int, Tensor]],
    inputs: list[Tensor | GradientEdge],
    templates: list[Template],
    num_tasks: int,
    retain_graph: bool,
) -> list[Tensor]:
    per_task: dict[int, list[Edge]] = {}
    for edge in edges:
        for task in edge_grads[edge]:
            per_task.setdefault(task, []).append(edge)
    blocks = [_zeros(template, num_tasks) for template in templates]
    order = sorted(per_task)
    for n, task in enumerate(order):
        task_edges = per_task[task]
        grads = torch.autograd.grad(
            [as_gradient_edge(e) for e in task_edges],
            inputs,
            [edge_grads[e].pop(task) for e in task_edges],  # released once used
            retain_graph=retain_graph or n < len(order) - 1,
            allow_unused=True,
        )
        for block, gradient in zip(blocks, grads):
            if gradient is not None:
                block[task] = gradient
    return blocks


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
    leaves_of: list[list[Tensor]] = [[] for _ in range(T)]
    for leaf in wanted_leaves:
        mask = graph.leaf_mask(leaf)
        for i in range(T):
            if mask >> i & 1:
                leaves_of[i].append(leaf)
    heads = _linear_heads(graph, features, feature_edges)
    factors: dict[int, dict[int, tuple[Tensor, Tensor]]] = {id(features[k]): {} for k in heads}
    # Each feature's T-row block is filled row by row; rows of tasks that do not reach it stay 0.
    written: dict[int, list[bool]] = {}
    for i, loss in enumerate(losses):
        if not loss.requires_grad:
            continue
        reached = [k for k, e in enumerate(feature_edges) if graph.cut_masks.get(e, 0) >> i & 1]
        # (through a linear head: the gradient of the head's first output, delta_i, instead of the rows)
        targets = [as_gradient_edge((heads[k][i][0], 0)) if k in heads else features[k] for k in reached]
        inputs = targets + leaves_of[i]
        if not inputs:
            continue
        grads = torch.autograd.grad(loss, inputs, retain_graph=retain_graph or heads_overlap, allow_unused=True)
        for k, gradient in zip(reached, grads):
            tensor = features[k]
            if gradient is not None and k in heads:
                factors[id(tensor)][i] = (gradient, heads[k][i][1])
            elif gradient is not None:
                if id(tensor) not in result.blocks:
                    result.blocks[id(tensor)] = tensor.new_empty((T, *tensor.shape))
                    written[id(tensor)] = [False] * T
                result.blocks[id(tensor)][i] = gradient
                written[id(tensor)][i] = True
        for tensor, gradient in zip(leaves_of[i], grads[len(reached) :]):
            if gradient is not None:
                result.add_direct(tensor, i, gradient)
    for key, rows in written.items():
        missing = [i for i, done in enumerate(rows) if not done]
        if missing:
            result.blocks[key][missing] = 0
    for key, parts in factors.items():
        if parts:
            result.features[key] = FactoredFeature.from_tasks(T, parts)
    return result


def _linear_heads(
    graph: TaskGraph, features: list[Tensor], edges: list[Edge]
) -> dict[int, dict[int, tuple[Node, Tensor]]]:
    """Feature index -> (task -> its linear head node and matrix), for the ``N x d`` features that
    every task reaching them consumes through a linear layer alone, where the factored form is cheaper."""
    heads: dict[int, dict[int, tuple[Node, Tensor]]] = {}
    for k, (feature, edge) in enumerate(zip(features, edges)):
        mask = graph.cut_masks.get(edge, 0)
        if feature.dim() != 2 or mask == 0:
            continue
        found = {}
        for task in range(graph.num_tasks):
            if mask >> task & 1:
                consumer = linear_consumer(graph, edge, task)
                if consumer is None:
                    break
                found[task] = consumer
        else:
            columns = sum(matrix.shape[1] for _, matrix in found.values())
            rows, width = feature.shape
            if factored_is_cheaper(graph.num_tasks, rows, width, columns):
                heads[k] = found
    return heads
