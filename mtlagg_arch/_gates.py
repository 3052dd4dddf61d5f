"""Experts and gates of the mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-k).

A gate turns a *routing vector* into weights over its candidate experts. Where the routing vector
comes from is the ``gate_input`` option:

* ``"input"``: the input of the gate's level, flattened to ``(B, n)`` (the papers' choice, for
  vector inputs; ``gate_in_features`` is then ``n``);
* ``"experts"``: the mean of the candidate experts' outputs, averaged over the dimensions after
  the channel one (``(B, C)``, ``gate_in_features = C``): a learned embedding of the input that
  works for any input size (images, sequences);
* a zero-argument factory of a module mapping the raw input to ``(B, gate_in_features)``: a
  learned, task-specific embedding (each gate builds its own).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._base import ModuleSpec, instantiate, pool, stacked

GateInput = str | Callable[[], nn.Module]

_MODES = ("input", "experts")


def check_gate_input(gate_input: GateInput, gate_in_features: int | None, what: str = "gate_in_features") -> None:
    if isinstance(gate_input, str):
        if gate_input not in _MODES:
            raise ValueError(f"gate_input must be 'input', 'experts' or a module factory, got {gate_input!r}")
    elif not callable(gate_input):
        raise TypeError(f"gate_input must be 'input', 'experts' or a module factory, got {type(gate_input).__name__}")
    if gate_in_features is None:
        raise ValueError(
            f"{what} is required: the size of the gate's routing vector (the flattened input size for "
            "gate_input='input', the experts' output channels for gate_input='experts')"
        )
    if not isinstance(gate_in_features, int) or isinstance(gate_in_features, bool) or gate_in_features < 1:
        raise ValueError(f"{what} must be a positive int, got {gate_in_features!r}")


class ExpertGroup(nn.Module):
    """``n`` experts applied to the same input; returns their outputs stacked, ``(B, n, ...)``.

    ``expert`` is a zero-argument factory (called ``n`` times: independent initialisations) or a
    module used as a template (deep-copied ``n`` times, so every expert starts from its weights).
    """

    def __init__(self, expert: ModuleSpec, num: int, what: str = "expert") -> None:
        super().__init__()
        if isinstance(expert, nn.Module):
            template = expert
            expert = lambda: copy.deepcopy(template)  # noqa: E731 - the template itself stays unused
        self.experts = nn.ModuleList(instantiate(expert, num, what))

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: Any) -> Tensor:
        return stacked([expert(x) for expert in self.experts], "experts")


class _Router(nn.Module):
    """The routing vector of a gate, from its level input and its candidates."""

    def __init__(self, gate_input: GateInput, in_features: int) -> None:
        super().__init__()
        self.mode = gate_input if isinstance(gate_input, str) else "embedding"
        self.in_features = in_features
        self.embedding = gate_input() if callable(gate_input) and not isinstance(gate_input, str) else None
        if self.mode == "embedding" and not isinstance(self.embedding, nn.Module):
            raise TypeError(f"the gate_input factory must return an nn.Module, got {type(self.embedding).__name__}")

    def forward(self, level_input: Any, candidates: Tensor) -> Tensor:
        if self.mode == "input":
            if not isinstance(level_input, Tensor):
                raise TypeError(
                    f"gate_input='input' needs a tensor input, got {type(level_input).__name__}; "
                    "use gate_input='experts' or an embedding factory"
                )
            vector = level_input.flatten(1)
        elif self.mode == "experts":
            vector = pool(candidates.mean(dim=1))
        else:
            assert self.embedding is not None
            vector = self.embedding(level_input)
        if vector.dim() != 2 or vector.shape[1] != self.in_features:
            raise ValueError(
                f"the gate's routing vector has shape {tuple(vector.shape)} but gate_in_features is "
                f"{self.in_features} (gate_input={self.mode!r})"
            )
        return vector


class SoftmaxGate(nn.Module):
    """``softmax(W r + b)`` over ``num_choices`` candidates, ``r`` the routing vector (MMoE, CGC, PLE)."""

    def __init__(self, num_choices: int, gate_input: GateInput, in_features: int) -> None:
        super().__init__()
        self.router = _Router(gate_input, in_features)
        self.linear = nn.Linear(in_features, num_choices)

    def forward(self, level_input: Any, candidates: Tensor) -> Tensor:
        return torch.softmax(self.linear(self.router(level_input, candidates)), dim=-1)


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    r"""The cubic smooth-step of Hazimeh et al.: 0 below :math:`-\gamma/2`, 1 above :math:`\gamma/2`,
    :math:`-\frac{2}{\gamma^3} t^3 + \frac{3}{2\gamma} t + \frac12` in between."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    r"""DSelect-k gate (Hazimeh et al., NeurIPS 2021): a differentiable choice of ``k`` of ``n`` experts.

    ``k`` single-expert selectors; selector ``i`` has ``m = ceil(log2 n)`` logits :math:`z_i`, and
    gives expert ``j`` the weight :math:`r_i(j) = \prod_b S(z_{ib})^{[bit_b(j)]}
    (1 - S(z_{ib}))^{1 - [bit_b(j)]}` (``S`` the smooth-step, ``bit_b(j)`` the ``b``-th binary digit of
    ``j``, most significant first). The expert weights are :math:`\sum_i \mathrm{softmax}(w)_i\, r_i`.
    Once every :math:`|z_{ib}| \ge \gamma/2` each selector picks exactly one expert, so at most ``k``
    experts get a nonzero weight. ``z`` and ``w`` are linear functions of the routing vector
    (per-example gating), or free parameters with ``gate_input="static"`` (task-only gating).

    :meth:`regularization` is the paper's entropy regulariser ``entropy_reg * sum H(r_i)`` (summed
    over the selectors and the batch, as the authors' code does), plus, when ``n`` is not a power of
    two, ``sum (1 / sum_j r_i(j) - 1)``, which keeps the selectors off the ``2^m - n`` codes that
    name no expert (the authors' term without its constant: zero once every selector's weights
    sum to 1, so that the task loss values are not shifted).
    """

    def __init__(
        self,
        num_experts: int,
        k: int,
        gate_input: GateInput,
        in_features: int | None,
        *,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
    ) -> None:
        super().__init__()
        if not isinstance(num_experts, int) or num_experts < 2:
            raise ValueError(f"DSelect-k needs num_experts >= 2, got {num_experts!r}")
        if not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"num_nonzeros (k) must be an int in [1, num_experts={num_experts}], got {k!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        if not entropy_reg >= 0:
            raise ValueError(f"entropy_reg must be >= 0, got {entropy_reg!r}")
        self.num_experts = num_experts
        self.k = k
        self.gamma = float(gamma)
        self.entropy_reg = float(entropy_reg)
        self.num_binary = math.ceil(math.log2(num_experts))
        codes = [[(j >> (self.num_binary - 1 - b)) & 1 for b in range(self.num_binary)] for j in range(num_experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool), persistent=False)
        self.static = gate_input == "static"
        bound = self.gamma / 100
        if self.static:
            self.router = None
            self.z_logits = nn.Parameter(torch.empty(k, self.num_binary).uniform_(-bound, bound))
            self.w_logits = nn.Parameter(torch.empty(k).uniform_(-0.05, 0.05))
        else:
            check_gate_input(gate_input, in_features)
            assert in_features is not None
            self.router = _Router(gate_input, in_features)
            self.z_linear = nn.Linear(in_features, k * self.num_binary)
            self.w_linear = nn.Linear(in_features, k)
            for layer, low, high in ((self.z_linear, -bound, bound), (self.w_linear, -0.05, 0.05)):
                nn.init.uniform_(layer.weight, low, high)
                nn.init.uniform_(layer.bias, low, high)

    def selectors(self, z: Tensor) -> Tensor:
        """Selector outputs ``(..., k, n)`` from logits ``(..., k, m)``."""
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # (..., k, 1, m)
        factors = torch.where(self.codes, s, 1 - s)  # (..., k, n, m)
        return factors.prod(dim=-1)

    def forward(self, level_input: Any, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """``(expert weights (B, n), selector outputs (B, k, n))``."""
        batch = candidates.shape[0]
        if self.static:
            z = self.z_logits.expand(batch, -1, -1)
            w = self.w_logits.expand(batch, -1)
        else:
            assert self.router is not None
            vector = self.router(level_input, candidates)
            z = self.z_linear(vector).reshape(batch, self.k, self.num_binary)
            w = self.w_linear(vector)
        selectors = self.selectors(z)
        weights = (torch.softmax(w, dim=-1).unsqueeze(-1) * selectors).sum(dim=-2)
        return weights, selectors

    def regularization(self, selectors: Tensor) -> Tensor:
        """The regulariser of the last selector outputs (a scalar; see the class docstring)."""
        total = selectors.new_zeros(())
        if self.entropy_reg > 0:
            total = total - self.entropy_reg * (selectors * torch.log(selectors + 1e-6)).sum()
        if self.num_experts != 2**self.num_binary:
            total = total + (1 / selectors.sum(dim=-1) - 1).sum()
        return total
