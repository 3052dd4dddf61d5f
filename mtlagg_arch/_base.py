"""The base class of every architecture: a task -> prediction mapping with a clean parameter split.

Every :class:`MultiTaskModel` keeps its modules in two containers:

* ``model.shared`` holds every parameter that **more than one task's loss depends on**;
* ``model.tasks[name]`` holds the parameters that **only that task's loss depends on** (its head
  and whatever task-specific modules sit between the shared part and the head).

Ownership follows the gradient, not the name of a module: a "task-specific" expert of a non-final
PLE level feeds the shared gate, so every task's loss depends on it and it is shared.

After each forward pass with gradients enabled, :attr:`MultiTaskModel.representation` holds a
*cut* of the autograd graph: the tensors through which the shared parameters reach the losses,
and below which no task parameter lies. That is what ``mtlagg.backward(..., features=...)`` needs::

    out = model(x)
    losses = [criterion[t](out[t], y[t]) for t in model.task_names]
    mtlagg.backward(losses, model.shared_parameters(), aggregator, features=model.representation)
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

ModuleSpec = nn.Module | Callable[[], nn.Module]

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Container(nn.Module):
    """A plain holder of submodules and parameters (no ``forward``)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a Container only holds modules; it has no forward")


def instantiate(spec: ModuleSpec, copies: int, what: str) -> list[nn.Module]:
    """``copies`` independent modules from a module (deep-copied) or a zero-argument factory."""
    if isinstance(spec, nn.Module):
        return [spec] + [copy.deepcopy(spec) for _ in range(copies - 1)]
    if callable(spec):
        modules = [spec() for _ in range(copies)]
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(f"{what} factory must return an nn.Module, got {type(module).__name__}")
        if len({id(m) for m in modules}) != len(modules):
            raise ValueError(f"{what} factory returned the same module twice; it must build a new one per call")
        return modules
    raise TypeError(f"{what} must be an nn.Module or a zero-argument factory of one, got {type(spec).__name__}")


def check_stages(stages: Sequence[ModuleSpec], what: str = "stages") -> list[ModuleSpec]:
    if isinstance(stages, (nn.Module, str, bytes)) or not isinstance(stages, Sequence):
        raise TypeError(f"{what} must be a sequence of modules or module factories, got {type(stages).__name__}")
    if len(stages) == 0:
        raise ValueError(f"{what} is empty: give at least one stage")
    return list(stages)


class _Cut:
    """Collects the representation tensors during one forward pass."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []
        self.versions: list[int] = []
        self._aliases: dict[int, tuple[Tensor, Tensor]] = {}
        self.regularization: dict[str, Tensor] = {}

    def tap(self, tensor: Tensor) -> Tensor:
        """Record ``tensor`` in the representation; returns what the task-specific part must read.

        A parameter is recorded as is. An activation is recorded through an alias (a view), so
        that the consumers above the cut read the alias while the shared computation below keeps
        reading the original: the gradient with respect to the alias is then exactly the part
        that flows through the task-specific modules.
        """
        if not isinstance(tensor, Tensor) or not tensor.requires_grad:
            return tensor
        known = self._aliases.get(id(tensor))
        if known is not None:
            return known[1]
        alias = tensor if tensor.is_leaf else tensor.view_as(tensor)
        self._aliases[id(tensor)] = (tensor, alias)
        self.tensors.append(alias)
        self.versions.append(alias._version)
        return alias

    def tap_all(self, value: Any) -> Any:
        """:meth:`tap` every tensor in a tensor / tuple / list / dict structure."""
        if isinstance(value, Tensor):
            return self.tap(value)
        if isinstance(value, tuple):
            return tuple(self.tap_all(v) for v in value)
        if isinstance(value, list):
            return [self.tap_all(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.tap_all(v) for k, v in value.items()}
        return value


class MultiTaskModel(nn.Module):
    """Base class: ``forward`` returns a mapping task name -> prediction.

    Args:
        heads: one module per task, keyed by task name (the order of the keys is the task order,
            the order of the losses given to ``mtlagg.backward``). Task names must be Python
            identifiers.
        multi_input: each task has its own input batch (e.g. Office-31, PAWS-X): ``forward``
            then takes a mapping task name -> input, and runs the network once per task.

    Subclasses build their modules into ``self.shared`` and ``self.tasks[name]``, implement
    :meth:`_forward`, and call :meth:`_finalize` at the end of ``__init__``.
    """

    def __init__(self, heads: Mapping[str, nn.Module], *, multi_input: bool = False) -> None:
        super().__init__()
        if not isinstance(heads, Mapping):
            raise TypeError(f"heads must be a mapping task name -> nn.Module, got {type(heads).__name__}")
        if len(heads) == 0:
            raise ValueError("heads is empty: give one head module per task")
        for name, head in heads.items():
            if not isinstance(name, str) or not _TASK_NAME.match(name):
                raise ValueError(f"task name {name!r} must be a Python identifier (letters, digits, underscores)")
            if not isinstance(head, nn.Module):
                raise TypeError(f"heads[{name!r}] must be an nn.Module, got {type(head).__name__}")
        self.task_names: tuple[str, ...] = tuple(heads)
        self.multi_input = bool(multi_input)
        self.shared = Container()
        self.tasks = nn.ModuleDict({name: Container() for name in self.task_names})
        for name in self.task_names:
            self.tasks[name].head = heads[name]
        self._representation: list[Tensor] | None = None
        self._representation_versions: list[int] = []
        self._regularization: dict[str, Tensor] = {}

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, inputs: Any, task: str | None = None) -> dict[str, Tensor]:
        """Predictions, as a dict task name -> tensor (in task order).

        Single input: ``model(x)`` computes every task, ``model(x, task="seg")`` only that one.
        Multi-input: ``model({"a": xa, "b": xb})`` computes the tasks present in the mapping, each
        from its own input; ``model(xa, task="a")`` computes task ``"a"`` from ``xa``.
        """
        if task is not None:
            self._check_task(task)
        # drop the previous step's representation first: it keeps its activations alive
        self._representation, self._representation_versions, self._regularization = None, [], {}
        cut = _Cut()
        if self.multi_input:
            if task is not None:
                per_task = {task: inputs}
            else:
                if not isinstance(inputs, Mapping):
                    raise TypeError(
                        "this model has multi_input=True: pass a mapping task name -> input batch, "
                        f"or one batch with task=...; got {type(inputs).__name__}"
                    )
                unknown = [k for k in inputs if k not in self.task_names]
                if unknown:
                    raise ValueError(f"unknown task(s) {unknown} in the inputs; the tasks are {list(self.task_names)}")
                if not inputs:
                    raise ValueError("the inputs mapping is empty: give at least one task's batch")
                per_task = {t: inputs[t] for t in self.task_names if t in inputs}
            outputs: dict[str, Tensor] = {}
            for name, x in per_task.items():
                outputs.update(self._forward(x, [name], cut))
        else:
            outputs = self._forward(inputs, [task] if task is not None else list(self.task_names), cut)
        self._representation = cut.tensors
        self._representation_versions = cut.versions
        self._regularization = cut.regularization
        return outputs

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        """Predictions of ``tasks`` from one input batch; record the representation in ``cut``."""
        raise NotImplementedError

    # -- representation -------------------------------------------------------------------------
    @property
    def representation(self) -> list[Tensor]:
        """The tensors of the last forward pass that separate the shared parameters from the rest.

        Every path from a shared parameter to a loss passes through one of them, and no task
        parameter lies below them: pass them as ``features=`` to :func:`mtlagg.backward`. They
        are live autograd tensors (usually activations; a shared module applied to task-specific
        features, like MTAN's shared attention blocks, contributes its parameters), held until
        the next forward pass, which releases them first.
        """
        if self._representation is None:
            raise RuntimeError("no representation yet: run a forward pass first")
        if not self._representation:
            raise RuntimeError(
                "the last forward pass recorded no representation: it ran without gradients "
                "(torch.no_grad / inference_mode) or no shared parameter requires grad"
            )
        for tensor, version in zip(self._representation, self._representation_versions):
            if tensor._version != version:
                raise RuntimeError(
                    "a representation tensor was modified in place after the forward pass (for instance by "
                    "a head starting with ReLU(inplace=True)); heads must not modify their inputs in place"
                )
        return list(self._representation)

    # -- regularisation -------------------------------------------------------------------------
    def regularization_losses(self) -> dict[str, Tensor]:
        """Per-task regularisation terms of the last forward pass in training mode (may be empty).

        Add them to the task losses before :func:`mtlagg.backward` (see
        :meth:`add_regularization`); each depends only on its task's parameters and on the shared
        computation below the representation, so it is aggregated like the task loss itself.
        """
        return dict(self._regularization)

    def add_regularization(self, losses: Mapping[str, Tensor] | Sequence[Tensor]) -> Any:
        """``losses`` with the regularisation terms of the last forward pass added.

        A mapping is matched by task name; a sequence must list the losses of the tasks of the
        last forward pass in task order. Returns the same kind of container.
        """
        if isinstance(losses, Mapping):
            unknown = [k for k in losses if k not in self.task_names]
            if unknown:
                raise ValueError(f"unknown task(s) {unknown} in losses; the tasks are {list(self.task_names)}")
            return {k: v + self._regularization[k] if k in self._regularization else v for k, v in losses.items()}
        items = list(losses)
        if not self._regularization:
            return items
        names = [t for t in self.task_names if t in self._regularization]
        if len(items) != len(names):
            raise ValueError(
                f"losses has {len(items)} entries but the last forward pass computed {len(names)} tasks {names}; "
                "pass a mapping task name -> loss instead"
            )
        return [loss + self._regularization[name] for loss, name in zip(items, names)]

    # -- parameters -----------------------------------------------------------------------------
    def named_shared_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` for every trainable parameter more than one task depends on."""
        for name, p in self.shared.named_parameters(prefix="shared"):
            if p.requires_grad:
                yield name, p

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every trainable parameter more than one task's loss depends on."""
        for _, p in self.named_shared_parameters():
            yield p

    def named_task_parameters(self, task: str) -> Iterator[tuple[str, nn.Parameter]]:
        self._check_task(task)
        for name, p in self.tasks[task].named_parameters(prefix=f"tasks.{task}"):
            if p.requires_grad:
                yield name, p

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """The trainable parameters only ``task``'s loss depends on (its head included)."""
        for _, p in self.named_task_parameters(task):
            yield p

    def task_parameters_list(self) -> list[list[nn.Parameter]]:
        """One list of task parameters per task, in task order (``task_params=`` of ``backward``)."""
        return [list(self.task_parameters(t)) for t in self.task_names]

    def check_parameter_split(self) -> None:
        """Raise if the shared and task parameter sets overlap or miss a trainable parameter."""
        owner: dict[int, str] = {}
        for name, p in self.shared.named_parameters(prefix="shared"):
            owner[id(p)] = name
        for task in self.task_names:
            seen_here: set[int] = set()
            for name, p in self.tasks[task].named_parameters(prefix=f"tasks.{task}"):
                if id(p) in owner and id(p) not in seen_here:
                    raise ValueError(
                        f"parameter {name} is also {owner[id(p)]}: a module was given to two places "
                        "(pass factories or distinct modules; one head per task)"
                    )
                owner[id(p)] = name
                seen_here.add(id(p))
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) not in owner:
                raise ValueError(f"parameter {name} is neither shared nor task-specific")

    def _finalize(self) -> None:
        self.check_parameter_split()

    def _check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise ValueError(f"unknown task {task!r}; the tasks are {list(self.task_names)}")

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, multi_input={self.multi_input}"


def pool(tensor: Tensor) -> Tensor:
    """``(B, C)`` from ``(B, C, ...)``: the mean over the dimensions after the channel one."""
    if tensor.dim() < 2:
        raise ValueError(f"expected a batch of features (B, C, ...), got shape {tuple(tensor.shape)}")
    return tensor if tensor.dim() == 2 else tensor.flatten(2).mean(-1)


def mix(weights: Tensor, stack: Tensor) -> Tensor:
    """``sum_e weights[:, e] * stack[:, e]`` for weights ``(B, E)`` and a stack ``(B, E, ...)``."""
    shape = weights.shape + (1,) * (stack.dim() - 2)
    return (weights.reshape(shape).to(stack.dtype) * stack).sum(dim=1)


def stacked(outputs: Sequence[Tensor], what: str) -> Tensor:
    """Stack module outputs along a new dimension 1, with a clear error if their shapes differ."""
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"the {what} must all return the same shape to be mixed, got {sorted(shapes)}")
    return torch.stack(list(outputs), dim=1)
