"""What :func:`mtlagg.backward` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BackwardResult:
    """The outcome of one :func:`mtlagg.backward` call.

    Attributes:
        losses: the detached loss values, shape ``(T,)``.
        weights: the aggregation weights (weighted aggregators), shape ``(T,)``, else ``None``.
        gramian: the ``T x T`` Gramian ``J J^T`` of the shared parameters (or of the features on the
            ``features=`` path) when one was computed, else ``None``. Pass ``compute_gramian=True``
            to get it with aggregators that do not need it.
        skipped: ``True`` when the step was skipped (``on_nonfinite="skip"``): no ``.grad`` changed.
        nonfinite_tasks: the tasks whose loss or gradient was NaN or Inf.
    """

    losses: Tensor
    weights: Tensor | None = None
    gramian: Tensor | None = None
    skipped: bool = False
    nonfinite_tasks: tuple[int, ...] = ()

    def _require_gramian(self) -> Tensor:
        if self.gramian is None:
            raise ValueError("no Gramian was computed; call mtlagg.backward(..., compute_gramian=True)")
        return self.gramian

    def task_norms(self) -> Tensor:
        """The norm of each task gradient, ``sqrt(diag(G))``."""
        return self._require_gramian().diagonal().clamp_min(0).sqrt()

    def cosine_similarities(self) -> Tensor:
        """The ``T x T`` matrix of pairwise cosines between task gradients (0 for zero gradients)."""
        gramian = self._require_gramian()
        norms = self.task_norms()
        outer = norms[:, None] * norms[None, :]
        return torch.where(outer > 0, gramian / torch.where(outer > 0, outer, 1), torch.zeros_like(gramian))
