"""Shared machinery of the aggregators with memory.

Conventions (the same for every method with state):

* The memory lives in one dictionary, ``self._state``, whose entries are tensors, numbers,
  ``None`` or nested dicts / lists of those. :meth:`Stateful.state_dict` returns a deep copy,
  :meth:`Stateful.load_state_dict` checks the keys and loads a deep copy, :meth:`Stateful.reset`
  rebuilds the state of a fresh object. Saving after ``k`` steps, loading into a new object and
  going on therefore reproduces the uninterrupted run exactly (random methods keep their
  ``torch.Generator`` state in the dictionary too).
* State that depends on the number of tasks is created on the first step; a later step with
  another number of tasks raises a ``ValueError`` (call ``reset()`` first).
* **Learnable task weights** (UW, IMTL-L, IMTL, GradNorm, FAMO and the bilevel methods) are
  optimised by the aggregator itself, with its own optimizer: :class:`WeightOptimizer`, Adam by
  default (``weight_optimizer="adam"`` or ``"sgd"``), learning rate ``weight_lr``. The gradient of
  the method's own objective with respect to its parameters is computed in closed form from the
  detached loss values (or Gramian), so the user's optimizer never sees these parameters and
  nothing has to be added to it. The optimizer state is part of ``state_dict()``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor


def clone_state(value: Any) -> Any:
    """A deep copy of a state tree (tensors are detached and cloned)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        raise TypeError("store generator states (generator.get_state()) in the state, not generators")
    if isinstance(value, dict):
        return {key: clone_state(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone_state(item) for item in value]
    if isinstance(value, tuple):
        return tuple(clone_state(item) for item in value)
    return copy.deepcopy(value)


class Stateful:
    """Mixin for aggregators with memory: ``state_dict`` / ``load_state_dict`` / ``reset``.

    Subclasses implement :meth:`_fresh_state` (the state of a new object) and keep everything that
    changes from step to step in ``self._state``.
    """

    _state: dict[str, Any]

    def _fresh_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _init_state(self) -> None:
        self._state = self._fresh_state()

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the memory (tensors, numbers; ``torch.save``-able)."""
        return clone_state(self._state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a memory saved by :meth:`state_dict` of the same class (and hyper-parameters)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        expected = set(self._fresh_state())
        found = set(state_dict)
        if found != expected:
            missing = sorted(expected - found)
            unexpected = sorted(found - expected)
            raise ValueError(
                f"cannot load this state into {type(self).__name__}: missing keys {missing}, unexpected keys "
                f"{unexpected} (was it saved from another aggregator?)"
            )
        self._state = clone_state(state_dict)

    def reset(self) -> None:
        """Forget everything: the next step starts as the first one did."""
        self._init_state()

    # -- helpers ------------------------------------------------------------------------------
    def _check_num_tasks(self, num_tasks: int, what: str = "losses") -> bool:
        """Record the number of tasks on the first step; returns True on that first step."""
        known = self._state.get("num_tasks")
        if known is None:
            self._state["num_tasks"] = num_tasks
            return True
        if known != num_tasks:
            raise ValueError(
                f"{type(self).__name__} holds state for {known} tasks but this step has {num_tasks} {what}; "
                f"call reset() to start over with {num_tasks} tasks"
            )
        return False


def state_dtype(reference: Tensor) -> torch.dtype:
    """float64 state for float64 inputs, float32 otherwise."""
    return torch.float64 if reference.dtype == torch.float64 else torch.float32


class WeightOptimizer:
    """The optimizer of learnable task weights (one convention for every method).

    Adam (``kind="adam"``, the default, exactly the update of ``torch.optim.Adam`` with L2
    ``weight_decay``) or SGD with momentum (``kind="sgd"``, as ``torch.optim.SGD``). It is
    stateless itself: its moments live in a dictionary that the aggregator keeps in its state,
    so that ``state_dict()`` round-trips exactly.
    """

    def __init__(
        self,
        lr: float,
        kind: Literal["adam", "sgd"] = "adam",
        *,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
    ) -> None:
        if kind not in ("adam", "sgd"):
            raise ValueError(f"weight_optimizer must be 'adam' or 'sgd', got {kind!r}")
        if not lr >= 0:
            raise ValueError(f"weight_lr must be non-negative, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.lr = float(lr)
        self.kind = kind
        self.weight_decay = float(weight_decay)
        self.betas = betas
        self.eps = eps
        self.momentum = momentum

    def fresh(self, params: Tensor) -> dict[str, Any]:
        """The optimizer state for new parameters ``params``."""
        if self.kind == "adam":
            return {"step": 0, "exp_avg": torch.zeros_like(params), "exp_avg_sq": torch.zeros_like(params)}
        return {"step": 0, "momentum_buffer": None}

    def step(self, params: Tensor, grad: Tensor, state: dict[str, Any]) -> Tensor:
        """One descent step on ``params`` along ``grad``; returns the new parameters.

        ``state`` (from :meth:`fresh`) is updated in place.
        """
        grad = grad.to(params)
        if self.weight_decay:
            grad = grad + self.weight_decay * params
        state["step"] += 1
        if self.kind == "adam":
            beta1, beta2 = self.betas
            exp_avg = state["exp_avg"].mul(beta1).add(grad, alpha=1 - beta1)
            exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul(grad, grad, value=1 - beta2)
            state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
            bias1 = 1 - beta1 ** state["step"]
            bias2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
            denominator = (exp_avg_sq.sqrt() / bias2_sqrt).add(self.eps)
            return params.addcdiv(exp_avg, denominator, value=-self.lr / bias1)
        buffer = state["momentum_buffer"]
        if self.momentum:
            buffer = grad.clone() if buffer is None else buffer.mul(self.momentum).add(grad)
            state["momentum_buffer"] = buffer
            grad = buffer
        return params - self.lr * grad

    def __repr__(self) -> str:
        return f"{self.kind}(lr={self.lr:g}" + (f", weight_decay={self.weight_decay:g})" if self.weight_decay else ")")


def softmax_vjp(logits: Tensor, vector: Tensor) -> Tensor:
    r"""``J^T v`` for ``J`` the Jacobian of ``softmax(logits)``: :math:`z \odot (v - z^\top v)`."""
    z = torch.softmax(logits, dim=0)
    return z * (vector - (z * vector).sum())


def new_generator(generator: torch.Generator | None) -> torch.Generator:
    """The generator a random stateful method draws from.

    ``None``: a private CPU generator seeded from torch's global RNG (so ``torch.manual_seed``
    makes runs reproducible, and the generator's state can go into ``state_dict()``).
    """
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


def column_chunks(num_columns: int, num_rows: int, elements: int = 1 << 19) -> list[slice]:
    """Column slices of a ``num_rows x num_columns`` matrix holding about ``elements`` entries each.

    The methods with Jacobian-sized memory stream their elementwise updates chunk by chunk, so that
    each chunk stays in cache across the several operations on it (one pass over memory instead of
    one per operation).
    """
    width = max(1024, elements // max(num_rows, 1))
    return [slice(start, min(start + width, num_columns)) for start in range(0, num_columns, width)]
