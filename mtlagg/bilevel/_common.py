"""What the bilevel methods share: task-weight logits, functional virtual steps, batch handling."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtlagg._inputs import as_losses
from mtlagg.aggregators._stateful import Stateful, WeightOptimizer

#: ``loss_fn(forward, batch) -> T losses``; ``forward`` is called like the model.
LossFn = Callable[[Callable[..., Any], Any], Sequence[Tensor] | Tensor]
Outer = Literal["validation", "split"]


@dataclass(frozen=True)
class BilevelResult:
    """The outcome of one bilevel step.

    Attributes:
        losses: the detached training (inner) losses of the step, shape ``(T,)``.
        weights: the task weights after the step's update, shape ``(T,)``.
        outer_losses: the detached outer (validation) losses, at the virtual parameters where the
            method evaluates them, shape ``(T,)``.
    """

    losses: Tensor
    weights: Tensor
    outer_losses: Tensor


def split_batch(batch: Any) -> tuple[Any, Any]:
    """Split every tensor of a (nested) batch in two halves along dim 0: (first half, second half)."""
    sizes: set[int] = set()

    def collect(item: Any) -> None:
        if isinstance(item, Tensor):
            if item.dim() == 0:
                raise ValueError("outer='split' halves the batch along dim 0, but it holds a 0-d tensor")
            sizes.add(item.shape[0])
        elif isinstance(item, Mapping):
            for value in item.values():
                collect(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                collect(value)

    collect(batch)
    if not sizes:
        raise ValueError("outer='split' halves the batch along dim 0, but the batch holds no tensor")
    if len(sizes) > 1:
        raise ValueError(f"outer='split' needs every tensor of the batch to have the same length, got {sorted(sizes)}")
    size = sizes.pop()
    if size < 2:
        raise ValueError(f"outer='split' needs a batch of at least 2 samples to hold one out, got {size}")
    half = size // 2

    def take(item: Any, first: bool) -> Any:
        if isinstance(item, Tensor):
            return item[:half] if first else item[half:]
        if isinstance(item, Mapping):
            return type(item)({k: take(v, first) for k, v in item.items()})  # type: ignore[call-arg]
        if isinstance(item, tuple) and hasattr(item, "_fields"):
            return type(item)(*(take(v, first) for v in item))
        if isinstance(item, (list, tuple)):
            return type(item)(take(v, first) for v in item)
        return item

    return take(batch, True), take(batch, False)


def loss_list(loss_fn: LossFn, forward: Callable[..., Any], batch: Any, num_tasks: int | None) -> list[Tensor]:
    """Call ``loss_fn`` and return its ``T`` scalar losses (in the graph)."""
    losses = as_losses(loss_fn(forward, batch))
    if num_tasks is not None and len(losses) != num_tasks:
        raise ValueError(f"loss_fn returned {len(losses)} losses but the method holds state for {num_tasks} tasks")
    return [loss.reshape(()) for loss in losses]


def loss_vector(loss_fn: LossFn, forward: Callable[..., Any], batch: Any, num_tasks: int | None) -> Tensor:
    """Call ``loss_fn`` and return its losses as one ``(T,)`` tensor (in the graph)."""
    return torch.stack(loss_list(loss_fn, forward, batch, num_tasks))


class FunctionalModel:
    """Calls a model at other parameter values (``torch.func.functional_call``), without copying it.

    Buffers (BatchNorm statistics) are cloned once per step for the virtual passes, so that they do
    not touch the real model's running statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("the model has no parameter that requires grad")
        self.names = [name for name, _ in self.named]
        self.params = [p for _, p in self.named]
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def at(self, values: Sequence[Tensor]) -> Callable[..., Any]:
        """A callable that runs the model with the parameters ``values`` (in ``self.names`` order)."""
        state = {**self.buffers, **dict(zip(self.names, values))}

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(self.model, state, args, kwargs)

        return forward


def gradients_or_zeros(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def softmax_jacobian(logits: Tensor) -> Tensor:
    """``diag(z) - z z^T`` for ``z = softmax(logits)`` (symmetric)."""
    z = torch.softmax(logits, dim=0)
    return torch.diag(z) - z[:, None] * z[None, :]


class BilevelMethod(Stateful):
    r"""Task weights :math:`w = \mathrm{softmax}(\alpha)` learned on an outer objective.

    Subclasses implement :meth:`_step`. Common conventions:

    * the logits :math:`\alpha` (0 at start: equal weights) are optimised by the method's own
      optimizer (:class:`~mtlagg.aggregators.WeightOptimizer`, Adam, learning rate ``weight_lr``;
      LibMTL's ``--outer_lr``), whose state is in ``state_dict()``;
    * the outer batch is validation data (``outer="validation"``, the papers' setting: pass
      ``outer_batch=``) or the second half of the training batch (``outer="split"``, LibMTL's
      setting: the first half is then the inner batch);
    * virtual steps are functional (:func:`torch.func.functional_call` at new parameter tensors),
      never a deep copy of the model; virtual passes do not touch the model's buffers.
    """

    kind = "bilevel"

    def __init__(
        self,
        weight_lr: float = 1e-3,
        weight_optimizer: Literal["adam", "sgd"] = "adam",
        outer: Outer = "validation",
        outer_tasks: Sequence[int] | None = None,
    ) -> None:
        if outer not in ("validation", "split"):
            raise ValueError(f"outer must be 'validation' or 'split', got {outer!r}")
        self.optimizer = WeightOptimizer(weight_lr, weight_optimizer)
        self.outer = outer
        self.outer_tasks = None if outer_tasks is None else [int(t) for t in outer_tasks]
        if self.outer_tasks is not None and not self.outer_tasks:
            raise ValueError("outer_tasks is empty: the outer objective needs at least one task")
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "logits": None, "optimizer": None, "step": 0}

    @property
    def weights(self) -> Tensor | None:
        """The current task weights :math:`\\mathrm{softmax}(\\alpha)` (``None`` before the first step)."""
        logits = self._state["logits"]
        return None if logits is None else torch.softmax(logits, dim=0)

    def _logits(self, num_tasks: int, like: Tensor) -> Tensor:
        if self._check_num_tasks(num_tasks):
            logits = torch.zeros(num_tasks, dtype=torch.float64, device=like.device)
            self._state["logits"] = logits
            self._state["optimizer"] = self.optimizer.fresh(logits)
        return self._state["logits"]

    def _outer_indices(self, num_tasks: int) -> list[int]:
        if self.outer_tasks is None:
            return list(range(num_tasks))
        bad = [t for t in self.outer_tasks if not 0 <= t < num_tasks]
        if bad:
            raise ValueError(f"outer_tasks {bad} are not task indices (there are {num_tasks} tasks)")
        return self.outer_tasks

    def _update_logits(self, gradient: Tensor) -> None:
        logits = self._state["logits"]
        self._state["logits"] = self.optimizer.step(logits, gradient.to(logits), self._state["optimizer"])

    def step(self, model: nn.Module, loss_fn: LossFn, batch: Any, outer_batch: Any = None) -> BilevelResult:
        """One bilevel step: update the task weights, then write the model's gradient into ``.grad``.

        Args:
            model: the multi-task model (all parameters that require grad are trained).
            loss_fn: ``loss_fn(forward, batch)`` returns the ``T`` task losses of ``batch``, computing
                the predictions with ``forward(...)`` called like the model (it is the model itself for
                the real update, and a functional call at virtual parameters otherwise).
            batch: the training batch (with ``outer="split"``: halved into inner and outer batches).
            outer_batch: the validation batch for the outer objective (``outer="validation"``).

        Then call ``optimizer.step()`` on the model's optimizer.
        """
        name = type(self).__name__
        if self.outer == "validation":
            if outer_batch is None:
                raise ValueError(
                    f"{name} evaluates its outer objective on validation data: pass outer_batch=, or construct it "
                    "with outer='split' to hold out half of the training batch"
                )
            inner_batch, update_batch = batch, batch
        else:
            if outer_batch is not None:
                raise ValueError(f"{name}(outer='split') takes the outer half from batch; do not pass outer_batch")
            inner_batch, outer_batch = split_batch(batch)
            update_batch = batch
        result = self._step(model, loss_fn, inner_batch, outer_batch, update_batch)
        self._state["step"] += 1
        return result

    def _step(
        self, model: nn.Module, loss_fn: LossFn, inner_batch: Any, outer_batch: Any, update_batch: Any
    ) -> BilevelResult:
        raise NotImplementedError

    def _real_update(self, model: nn.Module, loss_fn: LossFn, batch: Any) -> Tensor:
        """Back-propagate :math:`\\sum_i w_i L_i` of ``batch`` through the real model; returns the losses."""
        logits = self._state["logits"]
        losses = loss_vector(loss_fn, model, batch, logits.shape[0])
        weights = torch.softmax(logits, dim=0).to(losses)
        (weights * losses).sum().backward()
        return losses.detach()
