"""Lower-level functions for users who aggregate themselves."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ._graph import analyse, edge_of
from ._inputs import as_losses, as_named_tensors, check_chunk_size
from ._jacobian import TaskGradients, feature_gradients, task_gradients


def _task_gradients(
    losses: Sequence[Tensor] | Tensor, inputs: Iterable[Tensor], chunk_size: int | None, retain_graph: bool
) -> tuple[TaskGradients, list[Tensor], int]:
    check_chunk_size(chunk_size)
    loss_list = as_losses(losses)
    tensors = [n.tensor for n in as_named_tensors(inputs, "inputs", require_leaf=False)]
    if not tensors:
        raise ValueError("inputs is empty")
    roots = [edge_of(loss) if loss.requires_grad else None for loss in loss_list]
    if all(t.is_leaf for t in tensors):
        graph = analyse(roots)
        gradients = task_gradients(loss_list, graph, tensors, chunk_size=chunk_size, retain_graph=retain_graph)
    else:
        graph = analyse(roots, {edge_of(t) for t in tensors})
        gradients = feature_gradients(loss_list, graph, tensors, [], retain_graph=retain_graph)
    return gradients, tensors, len(loss_list)


def jacobian(
    losses: Sequence[Tensor] | Tensor,
    inputs: Iterable[Tensor],
    *,
    chunk_size: int | None = None,
    retain_graph: bool = False,
) -> Tensor:
    """The ``T x n`` Jacobian of ``T`` scalar losses with respect to ``inputs``.

    Row ``i`` is the gradient of ``losses[i]``, flattened and concatenated over ``inputs`` in order
    (zeros where a loss does not reach a tensor). ``inputs`` may be parameters (leaves: the
    two-phase vectorised engine) or intermediate tensors (one backward per task).
    """
    gradients, tensors, T = _task_gradients(losses, inputs, chunk_size, retain_graph)
    return torch.cat([gradients.block(t).reshape(T, -1) for t in tensors], dim=1)


def gramian(
    losses: Sequence[Tensor] | Tensor,
    inputs: Iterable[Tensor],
    *,
    chunk_size: int | None = None,
    retain_graph: bool = False,
) -> Tensor:
    """The ``T x T`` Gramian ``J J^T`` (accumulated tensor by tensor, without forming ``J``)."""
    gradients, tensors, T = _task_gradients(losses, inputs, chunk_size, retain_graph)
    total: Tensor | None = None
    for t in tensors:
        block = gradients.block(t).reshape(T, -1)
        block = block if block.dtype in (torch.float32, torch.float64) else block.float()
        part = block @ block.T
        total = part if total is None else total + part
    assert total is not None
    return total
