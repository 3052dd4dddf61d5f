"""Aggregators that need several batches per step (SDMGrad, MoDo)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._stateful import Stateful


class MultiBatchAggregator(Stateful, WeightedAggregator):
    r"""Weights from the cross-batch matrix :math:`A = J_1 J_2^\top` of two independent batches.

    ``num_batches`` loss vectors per step: the first two give :math:`J_1, J_2` (the Jacobians of
    the losses of batches 1 and 2 with respect to the shared parameters), from which
    :meth:`cross_weights` computes the weights; the update direction is :math:`\sum_i w_i g_i` on the
    last batch (three batches), or on the mean of the two losses (two batches). Driven by
    :func:`mtlagg.multibatch_backward`; :func:`mtlagg.backward` (one batch) raises a ``TypeError``.
    """

    needs: ClassVar[Needs] = Needs.GRAMIAN
    num_batches: int = 3

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        raise TypeError(
            f"{type(self).__name__} needs {self.num_batches} independent batches per step (their cross-batch "
            "Jacobian products): call mtlagg.multibatch_backward(losses_per_batch, shared_params, aggregator), "
            "not mtlagg.backward"
        )

    def cross_weights(self, cross: Tensor) -> Tensor:
        """The step's weights from :math:`A = J_1 J_2^\\top` (``T x T``); updates the state."""
        raise NotImplementedError
