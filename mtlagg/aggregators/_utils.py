"""Small helpers shared by the aggregators: argument checks and output dtypes."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def output_dtype(reference: Tensor) -> torch.dtype:
    """The dtype of the weights computed from ``reference`` (a Gramian: float32 or float64)."""
    return reference.dtype if reference.dtype in (torch.float32, torch.float64) else torch.float32


def check_int(value: object, name: str, *, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(value: object, name: str, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite float (``> minimum`` if ``strict``, else ``>= minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result}")
    if minimum is not None and (result <= minimum if strict else result < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {result}")
    return result


def check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator
