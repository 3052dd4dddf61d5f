"""Euclidean projection onto the probability simplex."""

from __future__ import annotations

import torch
from torch import Tensor


def project_onto_simplex(v: Tensor) -> Tensor:
    r"""Project each row of ``v`` (``(..., m)``) onto :math:`\{w \ge 0, \sum_i w_i = 1\}`.

    The sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with ``u`` sorted decreasing,
    :math:`\rho = \max\{j : u_j - (\sum_{k\le j} u_k - 1)/j > 0\}`, :math:`\theta =
    (\sum_{k \le \rho} u_k - 1)/\rho` and :math:`w = \max(v - \theta, 0)`. Exact, no iterations.
    """
    if v.shape[-1] == 0:
        raise ValueError("cannot project an empty vector onto the simplex")
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = torch.cumsum(u, dim=-1) - 1
    index = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    positive = (u - cumulative / index) > 0
    rho = positive.to(v.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    theta = cumulative.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0)
