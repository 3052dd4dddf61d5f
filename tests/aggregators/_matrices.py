"""Seeded test matrices for the aggregator suites: generic, degenerate and structured."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Sampler = Callable[[torch.Generator], Tensor]


def _normal(T: int, n: int, g: torch.Generator) -> Tensor:
    return torch.randn(T, n, generator=g, dtype=torch.float64)


def of_rank(T: int, n: int, rank: int, g: torch.Generator) -> Tensor:
    """A ``T x n`` matrix of the given rank (product of Gaussian factors)."""
    return _normal(T, rank, g) @ _normal(rank, n, g)


def strongly_stationary(T: int, n: int, g: torch.Generator) -> Tensor:
    """Rows orthogonal to a positive vector ``v`` (``v^T J = 0``): every non-conflicting direction is 0."""
    A = _normal(T, n, g)
    v = torch.rand(T, generator=g, dtype=torch.float64) + 0.5
    return A - torch.outer(v, v @ A) / (v @ v)


def conflicting(T: int, n: int, g: torch.Generator) -> Tensor:
    """Rows with a shared component of mixed sign (a third of the pairs conflict), varied norms."""
    common = _normal(1, n, g)[0]
    common = common / common.norm()
    coefficient = torch.linspace(-0.5, 1.0, T, dtype=torch.float64)[torch.randperm(T, generator=g)]
    noise = _normal(T, n, g)
    noise = noise / noise.norm(dim=1, keepdim=True)
    rows = coefficient[:, None] * common + (1 - coefficient**2).sqrt()[:, None] * noise
    return torch.exp(0.5 * _normal(T, 1, g)) * rows


def duplicated(T: int, n: int, g: torch.Generator) -> Tensor:
    J = _normal(T, n, g)
    J[T // 2 :] = J[: T - T // 2]
    return J


def zero_row(T: int, n: int, g: torch.Generator) -> Tensor:
    J = _normal(T, n, g)
    J[T // 2] = 0
    return J


#: name -> sampler; every matrix float64 (cast by the tests where needed).
CASES: dict[str, Sampler] = {
    "normal-1x5": lambda g: _normal(1, 5, g),
    "normal-2x7": lambda g: _normal(2, 7, g),
    "normal-5x20": lambda g: _normal(5, 20, g),
    "normal-9x11": lambda g: _normal(9, 11, g),
    "wide-12x4": lambda g: _normal(12, 4, g),
    "conflicting-8x30": lambda g: conflicting(8, 30, g),
    "conflicting-20x60": lambda g: conflicting(20, 60, g),
    "rank2-6x25": lambda g: of_rank(6, 25, 2, g),
    "rank1-4x10": lambda g: of_rank(4, 10, 1, g),
    "zero-4x6": lambda g: torch.zeros(4, 6, dtype=torch.float64),
    "zero-1x3": lambda g: torch.zeros(1, 3, dtype=torch.float64),
    "zero-row-5x12": lambda g: zero_row(5, 12, g),
    "duplicated-6x15": lambda g: duplicated(6, 15, g),
    "stationary-5x12": lambda g: strongly_stationary(5, 12, g),
    "tiny-1e-8": lambda g: 1e-8 * _normal(5, 12, g),
    "huge-1e8": lambda g: 1e8 * _normal(5, 12, g),
}


def sample(name: str, seed: int = 0) -> Tensor:
    return CASES[name](torch.Generator().manual_seed(seed))


def positive_losses(T: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.rand(T, generator=g, dtype=torch.float64) * 2 + 0.1
