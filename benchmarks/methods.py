"""How each method is driven in a training loop: one :class:`Driver` per kind of method.

Most methods are one call per step::

    losses = task_losses(model, batch)
    mtlagg.backward(losses, model.shared_parameters(), aggregator, features=model.representation if features)
    optimizer.step()

Methods with memory need explicit extra calls, made here and nowhere else (``docs/stateful.md``):

* FAMO: after ``optimizer.step()``, ``famo.update(losses recomputed on the same batch under no_grad)``;
  these post-step losses only drive FAMO's logits and are never counted as training losses.
* DWA, STCH: ``end_epoch()`` once per epoch (they average the losses they saw).
* PIVRG: ``set_scores(per-task Δm% of the validation metrics)`` after each validation (the reference
  is the one model selection uses: the user's STL validation metrics, else the first epoch's).
* SDMGrad, MoDo: ``mtlagg.multibatch_backward`` on ``num_batches`` independent training batches per step.
* MOML, AutoLambda, FORUM (``kind == "bilevel"``): ``method.step(model, loss_fn, batch, outer_batch)``
  with an outer batch drawn from the validation split (a shuffled, cycled loader of its own).
* ConsMTL: ``consmtl.backward(losses, shared, representation, task_params)``.
* Single-task baselines (``method="stl"``): plain ``loss.backward()``.

A driver never looks at test data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

STL = "stl"


class MethodError(ValueError):
    """A method that cannot be built with the given arguments (the message lists its parameters)."""


# --------------------------------------------------------------------------------------------- names


def resolve(name: str) -> tuple[str, type | None]:
    """``(canonical name, class)`` of method ``name``; ``"stl"`` gives ``("stl", None)``.

    Unknown names raise ``KeyError`` with the closest registered names (from ``mtlagg.aggregators.lookup``).
    """
    if name.strip().lower() == STL:
        return STL, None
    from mtlagg.aggregators import lookup

    cls = lookup(name.strip())
    return cls.__name__.lower(), cls


def all_method_names() -> list[str]:
    """Every canonical method name of ``mtlagg.aggregators.REGISTRY`` (aliases dropped)."""
    from mtlagg.aggregators import ALIASES, REGISTRY

    return sorted(name for name in REGISTRY if name not in ALIASES)


def parameters_of(cls: type) -> str:
    """``name=default, ...`` of the constructor of ``cls`` (for error messages and ``list``)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return ""
    parts = []
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def instantiate(cls: type, kwargs: Mapping[str, Any]) -> Any:
    """``cls(**kwargs)`` with a clear error naming the accepted parameters.

    A method name given for a parameter called ``aggregator`` (CR-MOGM's wrapped method) is built too:
    ``--agg-arg aggregator=upgrad``.
    """
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("aggregator"), str):
        _, inner = resolve(kwargs["aggregator"])
        if inner is None:
            raise MethodError(f"{cls.__name__}: aggregator='stl' is not a method")
        kwargs["aggregator"] = inner()
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise MethodError(
            f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {error}. "
            f"Its parameters: {parameters_of(cls) or '(none)'}"
        ) from None
    except ValueError as error:
        raise MethodError(f"{cls.__name__}: {error}") from None


# --------------------------------------------------------------------------------------------- context


@dataclass
class StepContext:
    """What a driver may use: the model, its losses, the optimizer and a source of outer (validation) batches."""

    model: Any  # mtlagg_arch.MultiTaskModel
    task_losses: Callable[[Callable[..., Any], Any], list[Tensor]]  # (forward, batch) -> losses in task order
    optimizer: torch.optim.Optimizer
    features: bool = False
    on_nonfinite: str = "raise"
    outer_batches: Callable[[], Any] | None = None  # next validation batch (bilevel methods)
    validation_scores: Callable[[], Sequence[float] | None] | None = None

    def losses(self, batch: Any) -> list[Tensor]:
        return self.task_losses(self.model, batch)


@dataclass
class StepOutcome:
    """The detached pre-step training losses (task order), and whether the step was skipped."""

    losses: list[float]
    skipped: bool = False
    weights: list[float] | None = None


@dataclass
class Driver:
    """The standard driver: one ``mtlagg.backward`` per step, then ``optimizer.step()``.

    ``batches_per_step`` training batches are consumed by one step (several for SDMGrad / MoDo).
    """

    aggregator: Any
    name: str
    batches_per_step: int = 1
    needs_outer: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    def step(self, ctx: StepContext, batches: list[Any]) -> StepOutcome:
        import mtlagg

        ctx.optimizer.zero_grad(set_to_none=True)
        losses = ctx.losses(batches[0])
        features = ctx.model.representation if ctx.features else None
        result = mtlagg.backward(
            losses, ctx.model.shared_parameters(), self.aggregator, features=features, on_nonfinite=ctx.on_nonfinite
        )
        if not result.skipped:
            ctx.optimizer.step()
            self.after_step(ctx, batches, result)
        return _outcome(result)

    def after_step(self, ctx: StepContext, batches: list[Any], result: Any) -> None:
        """Hook after ``optimizer.step()`` (FAMO)."""

    def end_epoch(self, ctx: StepContext) -> None:
        """Hook at the end of each training epoch (DWA, STCH)."""

    def after_validation(self, ctx: StepContext, scores: Sequence[float] | None) -> None:
        """Hook after each validation pass, with the per-task Δm% of the validation metrics (PIVRG)."""

    def state_dict(self) -> dict[str, Any]:
        sd = getattr(self.aggregator, "state_dict", None)
        return {"aggregator": sd() if callable(sd) else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        load = getattr(self.aggregator, "load_state_dict", None)
        if callable(load):
            load(state["aggregator"])


def _outcome(result: Any) -> StepOutcome:
    weights = getattr(result, "weights", None)
    losses = result.losses.detach().double().cpu().tolist()
    return StepOutcome(
        losses=[float(v) for v in losses],
        skipped=bool(getattr(result, "skipped", False)),
        weights=None if weights is None else [float(w) for w in weights.detach().double().cpu().tolist()],
    )


class FamoDriver(Driver):
    """FAMO: the logits are updated from the losses recomputed on the same batch after the step."""

    def after_step(self, ctx: StepContext, batches: list[Any], result: Any) -> None:
        with torch.no_grad():
            new_losses = ctx.losses(batches[0])
        self.aggregator.update(new_losses)


class EpochDriver(Driver):
    """DWA, STCH: ``end_epoch()`` after each training epoch."""

    def end_epoch(self, ctx: StepContext) -> None:
        self.aggregator.end_epoch()


class ScoresDriver(Driver):
    """PIVRG: per-task performance scores from validation."""

    def after_validation(self, ctx: StepContext, scores: Sequence[float] | None) -> None:
        if scores is not None:
            self.aggregator.set_scores(list(scores))


class MultiBatchDriver(Driver):
    """SDMGrad, MoDo: ``num_batches`` independent batches per step through ``mtlagg.multibatch_backward``."""

    def step(self, ctx: StepContext, batches: list[Any]) -> StepOutcome:
        import mtlagg

        ctx.optimizer.zero_grad(set_to_none=True)
        per_batch = [ctx.losses(b) for b in batches]
        result = mtlagg.multibatch_backward(
            per_batch, ctx.model.shared_parameters(), self.aggregator, on_nonfinite=ctx.on_nonfinite
        )
        if not result.skipped:
            ctx.optimizer.step()
        return _outcome(result)


class BilevelDriver(Driver):
    """MOML, AutoLambda, FORUM: weights learned on an outer batch of validation data."""

    def step(self, ctx: StepContext, batches: list[Any]) -> StepOutcome:
        ctx.optimizer.zero_grad(set_to_none=True)
        outer = None
        if getattr(self.aggregator, "outer", "validation") == "validation":
            if ctx.outer_batches is None:
                raise RuntimeError(f"{self.name} needs validation batches for its outer objective")
            outer = ctx.outer_batches()
        kwargs: dict[str, Any] = {}
        if hasattr(self.aggregator, "inner_lr") and self.aggregator.inner_lr is None:
            # AutoLambda's virtual step uses the model's learning rate unless the user gave inner_lr
            kwargs["inner_lr"] = float(ctx.optimizer.param_groups[0]["lr"])
        result = self.aggregator.step(ctx.model, ctx.task_losses, batches[0], outer, **kwargs)
        losses = result.losses.detach().double().cpu()
        if not bool(torch.isfinite(losses).all()):
            if ctx.on_nonfinite == "raise":
                raise FloatingPointError(f"{self.name}: non-finite training losses {losses.tolist()}")
            if ctx.on_nonfinite in ("skip", "zero"):
                ctx.optimizer.zero_grad(set_to_none=True)
                return StepOutcome([float(v) for v in losses.tolist()], skipped=True)
        ctx.optimizer.step()
        weights = result.weights.detach().double().cpu().tolist()
        return StepOutcome([float(v) for v in losses.tolist()], weights=[float(w) for w in weights])


class ConsMTLDriver(Driver):
    """ConsMTL: its own backward over the shared parameters, the representation and the heads."""

    def step(self, ctx: StepContext, batches: list[Any]) -> StepOutcome:
        ctx.optimizer.zero_grad(set_to_none=True)
        losses = ctx.losses(batches[0])
        reps = ctx.model.representation
        if len(reps) != 1:
            raise MethodError(
                f"ConsMTL needs the one representation tensor that every head reads (HPS, or an expert "
                f"architecture); this architecture's representation has {len(reps)} tensors"
            )
        result = self.aggregator.backward(
            losses, ctx.model.shared_parameters(), reps[0], ctx.model.task_parameters_list()
        )
        if not getattr(result, "skipped", False):
            ctx.optimizer.step()
        return _outcome(result)


class SingleTaskDriver(Driver):
    """Single-task baselines: ``loss.backward()`` (one task, nothing to aggregate)."""

    def step(self, ctx: StepContext, batches: list[Any]) -> StepOutcome:
        ctx.optimizer.zero_grad(set_to_none=True)
        losses = ctx.losses(batches[0])
        total = torch.stack([loss.reshape(()) for loss in losses]).sum()
        if not bool(torch.isfinite(total)):
            values = [float(v) for v in torch.stack(losses).detach().double().tolist()]
            if ctx.on_nonfinite == "raise":
                raise FloatingPointError(f"non-finite training loss {values}")
            if ctx.on_nonfinite in ("skip", "zero"):
                return StepOutcome(values, skipped=True)
        total.backward()
        ctx.optimizer.step()
        return StepOutcome([float(loss.detach()) for loss in losses])


def make_driver(method: str, kwargs: Mapping[str, Any] | None = None) -> Driver:
    """The driver of ``method`` (a registry name or ``"stl"``) with the method's hyper-parameters ``kwargs``."""
    name, cls = resolve(method)
    kwargs = dict(kwargs or {})
    if cls is None:
        if kwargs:
            raise MethodError(f"single-task training takes no method arguments, got {sorted(kwargs)}")
        return SingleTaskDriver(aggregator=None, name=STL)
    aggregator = instantiate(cls, kwargs)
    if getattr(aggregator, "kind", None) == "bilevel":
        outer = getattr(aggregator, "outer", "validation") == "validation"
        return BilevelDriver(aggregator, name, needs_outer=outer)
    if hasattr(aggregator, "num_batches") and _is_multibatch(aggregator):
        return MultiBatchDriver(aggregator, name, batches_per_step=int(aggregator.num_batches))
    if name == "consmtl":
        return ConsMTLDriver(aggregator, name)
    if name == "famo":
        return FamoDriver(aggregator, name)
    if callable(getattr(aggregator, "set_scores", None)):
        return ScoresDriver(aggregator, name)
    if callable(getattr(aggregator, "end_epoch", None)) and getattr(aggregator, "window", None) is None:
        return EpochDriver(aggregator, name)
    return Driver(aggregator, name)


def _is_multibatch(aggregator: Any) -> bool:
    try:
        from mtlagg.aggregators._multibatch import MultiBatchAggregator
    except ImportError:  # pragma: no cover - before the stateful methods are merged
        return False
    return isinstance(aggregator, MultiBatchAggregator)
