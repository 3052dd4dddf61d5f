"""Exceptions raised by mtlagg.

Every failure mode raises one of these (or a plain ``ValueError``/``TypeError`` for bad
arguments): nothing in mtlagg silently turns into another method.
"""

from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A loss or a task gradient holds NaN or Inf (see ``mtlagg.backward(on_nonfinite=...)``)."""

    def __init__(self, message: str, tasks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.tasks = tasks


class SolverError(RuntimeError):
    """An aggregator's optimisation problem could not be solved to its documented tolerance."""


class VmapError(RuntimeError):
    """The vectorised (``torch.vmap``) backward failed; rerun with ``chunk_size=1``."""
