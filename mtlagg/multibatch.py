"""``mtlagg.multibatch_backward``: methods that need several independent batches per step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ._backward import backward
from ._functional import jacobian
from ._inputs import as_losses, as_named_tensors
from ._result import BackwardResult
from .aggregators._base import AggregatorInput, Needs, WeightedAggregator
from .aggregators._multibatch import MultiBatchAggregator


class _FixedWeights(WeightedAggregator):
    """Internal: weights decided beforehand (one ordinary weighted backward)."""

    needs: ClassVar[Needs] = Needs.LOSSES

    def __init__(self, weights: Tensor) -> None:
        self.fixed = weights

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        return self.fixed


def multibatch_backward(
    losses_per_batch: Sequence[Sequence[Tensor] | Tensor],
    shared_params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
    aggregator: MultiBatchAggregator,
    *,
    task_params: Sequence[Iterable[Tensor]] | None = None,
    weight_task_params: bool = False,
    chunk_size: int | None = None,
    on_nonfinite: str = "raise",
) -> BackwardResult:
    r"""One step of a multi-batch method (:class:`~mtlagg.aggregators.SDMGrad`, :class:`~mtlagg.aggregators.MoDo`).

    ``losses_per_batch`` holds ``aggregator.num_batches`` loss vectors, each computed by its own
    forward pass on an independent batch: ``[losses_1, losses_2, losses_3]``. Batches 1 and 2 give
    the cross-batch matrix :math:`A = J_1 J_2^\top` (Jacobians with respect to the shared
    parameters) from which the aggregator computes the weights :math:`w`; then the weighted loss
    :math:`\sum_i w_i L_i` of batch 3 is back-propagated once (with two batches: of the mean of the
    two batches' weighted losses). ``.grad`` receives, as with :func:`mtlagg.backward`, the
    direction for the shared parameters and, for the task-specific ones, the unweighted gradients
    of the update batch (``weight_task_params=True`` weights them).

    Returns the :class:`~mtlagg.BackwardResult` of the update batch (its ``weights`` are :math:`w`).
    """
    if isinstance(aggregator, type) or not isinstance(aggregator, MultiBatchAggregator):
        raise TypeError(
            f"multibatch_backward needs a multi-batch aggregator instance (SDMGrad(), MoDo()), got {aggregator!r}"
        )
    if isinstance(losses_per_batch, Tensor) and losses_per_batch.dim() == 2:
        losses_per_batch = list(losses_per_batch)
    if isinstance(losses_per_batch, (str, bytes)) or not isinstance(losses_per_batch, Sequence):
        raise TypeError("losses_per_batch must be a sequence with one loss vector per batch")
    needed = aggregator.num_batches
    name = type(aggregator).__name__
    if len(losses_per_batch) != needed:
        raise ValueError(
            f"{name} needs {needed} independent batches per step (one forward pass each), got "
            f"{len(losses_per_batch)} loss vectors in losses_per_batch"
        )
    batches = [as_losses(losses) for losses in losses_per_batch]
    T = len(batches[0])
    for b, losses in enumerate(batches):
        if len(losses) != T:
            raise ValueError(f"batch {b} has {len(losses)} losses but batch 0 has {T}: every batch needs all tasks")
    if len({id(loss) for losses in batches for loss in losses}) != T * needed:
        raise ValueError(
            "the same loss tensor appears in two batches: each batch needs its own forward pass on its own data"
        )
    shared = as_named_tensors(shared_params, "shared_params", require_leaf=True)
    tensors = [p.tensor for p in shared]
    jacobian_1 = jacobian(batches[0], tensors, chunk_size=chunk_size, retain_graph=needed == 2)
    jacobian_2 = jacobian(batches[1], tensors, chunk_size=chunk_size, retain_graph=needed == 2)
    for b, J in enumerate((jacobian_1, jacobian_2)):
        if not bool(torch.isfinite(J).all()):
            raise ValueError(f"the Jacobian of batch {b} holds NaN or Inf")
    cross = jacobian_1 @ jacobian_2.T
    weights = aggregator.cross_weights(cross)
    fixed = _FixedWeights(weights.detach())
    if needed == 3:
        update_losses: list[Tensor] = batches[2]
    else:
        update_losses = [(a + b) / 2 for a, b in zip(batches[0], batches[1])]
    return backward(
        update_losses,
        [(p.name, p.tensor) for p in shared],
        fixed,
        task_params=task_params,
        weight_task_params=weight_task_params,
        chunk_size=chunk_size,
        on_nonfinite=on_nonfinite,  # type: ignore[arg-type]
    )
