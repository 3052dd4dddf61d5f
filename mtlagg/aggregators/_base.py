"""The ``Aggregator`` contract.

An aggregator maps the ``T x n`` Jacobian ``J`` (one row per task: the gradient of that task's
loss) to one update direction ``d`` of ``n`` entries. It declares, through :attr:`Aggregator.needs`,
the cheapest input it can work from, so that :func:`mtlagg.backward` computes no more than that:

* :attr:`Needs.LOSSES`   - the weights depend on the loss values alone (or on nothing): the engine
  runs one ordinary backward of ``sum_i w_i L_i``;
* :attr:`Needs.GRAMIAN`  - the weights depend on the ``T x T`` Gramian ``G = J J^T`` (and possibly
  on the losses); ``d = w^T J``;
* :attr:`Needs.JACOBIAN` - the direction needs the whole matrix (coordinate-wise methods, or
  methods with Jacobian-sized memory).

A :class:`WeightedAggregator` returns ``d = w^T J`` and exposes ``w`` through :meth:`weights`.

Conventions:

* Stateless aggregators are pure: same input, same output. Randomness only comes from the
  ``torch.Generator`` given at construction.
* Aggregators with memory implement :meth:`state_dict`, :meth:`load_state_dict` and :meth:`reset`,
  as ``torch.optim`` optimizers do; saving after ``k`` steps, loading into a fresh object and going
  on reproduces the uninterrupted run.
* The direction has the dtype and device of ``J``. Small ``T x T`` problems are solved in float64
  whatever the input dtype; the Gramian of a float16/bfloat16 Jacobian is formed in float32.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor


class Needs(enum.IntEnum):
    """What an aggregator must see, from cheapest to most expensive."""

    LOSSES = 0
    GRAMIAN = 1
    JACOBIAN = 2


def compute_gramian(jacobian: Tensor) -> Tensor:
    """``J J^T``, formed in at least float32 (float16 Gramians overflow at moderate scales)."""
    matrix = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
    return matrix @ matrix.T


class AggregatorInput:
    """What an aggregator may look at for one step.

    The engine fills in what the aggregator declared it needs; :attr:`gramian` is derived from
    :attr:`jacobian` on first access when only the Jacobian was given. Fields: ``num_tasks``,
    ``losses`` (``(T,)`` detached values), ``gramian`` (``T x T``), ``jacobian`` (``T x n``),
    ``input_values`` (``(n,)`` values of what was differentiated, for aggregators that declare
    ``uses_input_values``), ``block_sizes`` / ``block_names`` / ``block_shapes`` (the per-tensor
    split of the columns, and the shapes of those tensors: on the ``features=`` path the first
    dimension is usually the batch).
    """

    __slots__ = (
        "_gramian",
        "_unchecked_jacobian",
        "block_gramians",
        "block_names",
        "block_shapes",
        "block_sizes",
        "input_values",
        "jacobian",
        "losses",
        "num_tasks",
    )

    def __init__(
        self,
        num_tasks: int,
        *,
        losses: Tensor | None = None,
        gramian: Tensor | None = None,
        jacobian: Tensor | None = None,
        input_values: Tensor | None = None,
        block_sizes: list[int] | None = None,
        block_names: list[str] | None = None,
        block_shapes: list[tuple[int, ...]] | None = None,
        block_gramians: list[Tensor] | None = None,
    ) -> None:
        self.num_tasks = num_tasks
        self.losses = losses
        self._gramian = gramian
        #: the Jacobian's finiteness is still to be checked (through the Gramian's diagonal when
        #: it is formed: a NaN or Inf entry makes its row's diagonal entry NaN or Inf).
        self._unchecked_jacobian = False
        self.jacobian = jacobian
        self.input_values = input_values
        #: how the ``n`` columns split into tensors (parameters or features), in order, and their
        #: names (``named_parameters`` names when the user gave them); ``None`` for a plain matrix.
        self.block_sizes = block_sizes
        self.block_names = block_names
        self.block_shapes = block_shapes
        #: the ``T x T`` Gramian of each block (their sum is :attr:`gramian`), filled by the engine for
        #: aggregators that set ``uses_block_gramians = True``; ``None`` otherwise.
        self.block_gramians = block_gramians

    @property
    def gramian(self) -> Tensor:
        if self._gramian is None:
            if self.jacobian is None:
                raise ValueError(
                    "this aggregator needs the Gramian, and neither the Gramian nor the Jacobian was given"
                )
            self._gramian = compute_gramian(self.jacobian)
            if self._unchecked_jacobian:
                self._unchecked_jacobian = False
                if not bool(torch.isfinite(self._gramian.diagonal().sum())):
                    _check_finite(self.jacobian, "the Jacobian")
        return self._gramian

    @property
    def has_gramian(self) -> bool:
        return self._gramian is not None or self.jacobian is not None

    def reference(self) -> Tensor | None:
        """A tensor whose dtype and device the weights should follow."""
        for candidate in (self._gramian, self.jacobian, self.losses):
            if candidate is not None:
                return candidate
        return None


def _check_finite(tensor: Tensor, what: str) -> None:
    # Fast path: a finite sum proves every entry finite (an overflowing sum of finite entries
    # just takes the slow path); isfinite over a large matrix costs several times more on CPU.
    wide = tensor.dtype in (torch.float16, torch.bfloat16)
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32) if wide else tensor.sum())):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        if tensor.dim() >= 1:
            rows = torch.nonzero(~finite.reshape(tensor.shape[0], -1).all(dim=1)).flatten().tolist()
            raise ValueError(f"{what} holds NaN or Inf in the rows of tasks {rows}")
        raise ValueError(f"{what} holds NaN or Inf")


class Aggregator(ABC):
    """Maps a ``T x n`` Jacobian to an update direction of ``n`` entries."""

    needs: ClassVar[Needs] = Needs.JACOBIAN
    #: also reads the loss values (``losses=`` must be given).
    uses_losses: ClassVar[bool] = False
    #: also reads the values of the tensors the Jacobian was taken with respect to.
    uses_input_values: ClassVar[bool] = False
    #: the direction never conflicts with a task gradient (``J d >= 0``).
    non_conflicting: ClassVar[bool] = False
    #: the paper scales the task-specific parameters' gradients by the weights too (it minimises a
    #: weighted sum of the losses): the default of ``mtlagg.backward(weight_task_params=None)``.
    weights_task_params: bool = False
    #: also reads the per-block Gramians (``AggregatorInput.block_gramians``), which the engine then
    #: keeps while summing them into the Gramian (same cost).
    uses_block_gramians: ClassVar[bool] = False

    def __call__(
        self,
        jacobian: Tensor,
        *,
        losses: Tensor | None = None,
        input_values: Tensor | None = None,
    ) -> Tensor:
        """Aggregate ``jacobian`` (``T x n``) into a direction of ``n`` entries."""
        if not isinstance(jacobian, Tensor):
            raise TypeError(f"the Jacobian must be a torch.Tensor, got {type(jacobian).__name__}")
        if jacobian.dim() != 2:
            raise ValueError(f"the Jacobian must be a T x n matrix, got shape {tuple(jacobian.shape)}")
        if not jacobian.is_floating_point():
            raise TypeError(f"the Jacobian must be floating point, got {jacobian.dtype}")
        if jacobian.shape[0] == 0:
            raise ValueError("the Jacobian has no rows: aggregation needs at least one task")
        # Aggregators of the Gramian check the Jacobian through it (a T-entry diagonal instead of the
        # whole matrix); the others, and any that end up not forming it, check the Jacobian itself.
        deferred = self._checks_through_gramian()
        if not deferred:
            _check_finite(jacobian, "the Jacobian")
        losses = self._checked_losses(losses, jacobian.shape[0])
        if self.uses_input_values:
            if input_values is None:
                raise ValueError(f"{type(self).__name__} needs input_values= (the values the Jacobian was taken at)")
            if input_values.shape != (jacobian.shape[1],):
                raise ValueError(
                    f"input_values must have shape ({jacobian.shape[1]},), got {tuple(input_values.shape)}"
                )
        inputs = AggregatorInput(jacobian.shape[0], losses=losses, jacobian=jacobian, input_values=input_values)
        inputs._unchecked_jacobian = deferred
        return self.compute_direction(inputs)

    def _checks_through_gramian(self) -> bool:
        """Whether the Jacobian reaches this aggregator only through its Gramian and the final
        ``w^T J`` of :meth:`WeightedAggregator.compute_direction`."""
        return (
            isinstance(self, WeightedAggregator)
            and self.needs == Needs.GRAMIAN
            and type(self).compute_direction is WeightedAggregator.compute_direction
        )

    def _checked_losses(self, losses: Tensor | None, num_tasks: int) -> Tensor | None:
        if losses is None:
            if self.uses_losses:
                raise ValueError(f"{type(self).__name__} needs the loss values: pass losses=")
            return None
        if not isinstance(losses, Tensor):
            losses = torch.as_tensor(losses)
        losses = losses.detach()
        if losses.shape != (num_tasks,):
            raise ValueError(f"losses must have shape ({num_tasks},), one per task, got {tuple(losses.shape)}")
        _check_finite(losses, "losses")
        return losses

    @abstractmethod
    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        """The direction, from inputs already validated (``inputs.jacobian`` is set)."""

    # -- state, with the conventions of torch.optim ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The aggregator's memory; empty for stateless aggregators."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError(f"{type(self).__name__} is stateless; cannot load state {sorted(state_dict)}")

    def reset(self) -> None:  # noqa: B027 - stateless aggregators have nothing to reset
        """Forget all memory (no-op for stateless aggregators)."""

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


_SOLVER_DEVICES = ("cpu", "input")
_solver_device = "cpu"


def set_solver_device(where: str) -> None:
    """Where the small ``T x T`` computations of the solver-based aggregators run (those with
    ``host_solve = True``: MGDA, CAGrad, Nash-MTL, FairGrad, UPGrad, DualProj, IMTL-G, Aligned-MTL)
    when their inputs live on an accelerator.

    ``"cpu"`` (default): the ``T x T`` Gramian (and the losses) are copied to the CPU, the weights
    computed there and copied back: two copies of ``T^2`` numbers, while the solvers' many tiny
    operations are bound by kernel-launch latency on a GPU (measured 2-3 x faster end to end on an
    H100; see ``docs/aggregators.md``). ``"input"``: everything stays on the inputs' device, with no
    host transfer. The Gramian itself is always formed on the inputs' device.
    """
    global _solver_device
    if where not in _SOLVER_DEVICES:
        raise ValueError(f"the solver device must be one of {_SOLVER_DEVICES}, got {where!r}")
    _solver_device = where


def get_solver_device() -> str:
    """The current setting of :func:`set_solver_device`."""
    return _solver_device


class WeightedAggregator(Aggregator):
    """An aggregator of the form ``d = w^T J``; :meth:`weights` exposes ``w``."""

    needs: ClassVar[Needs] = Needs.GRAMIAN
    #: the weights come from a small ``T x T`` computation (a solver, a factorisation) of the
    #: Gramian and the losses alone, with no state tied to a device: it runs where
    #: :func:`set_solver_device` says.
    host_solve: ClassVar[bool] = False

    def placed_weights(self, inputs: AggregatorInput) -> Tensor:
        """:meth:`compute_weights`, run on the CPU for ``host_solve`` aggregators whose inputs live
        on an accelerator (see :func:`set_solver_device`); the weights on the inputs' device."""
        reference = inputs.reference()
        if not self.host_solve or _solver_device != "cpu" or reference is None or reference.device.type == "cpu":
            return self.compute_weights(inputs)
        gramian, losses = inputs.gramian, None
        if self.uses_losses and inputs.losses is not None:
            # (one device-to-host copy, one synchronisation: both in float64, exact both ways)
            T = inputs.num_tasks
            packed = torch.cat([gramian.reshape(-1).double(), inputs.losses.reshape(-1).double()]).cpu()
            losses = packed[T * T :].to(inputs.losses.dtype)
            gramian = packed[: T * T].view(T, T).to(gramian.dtype)
        else:
            gramian = gramian.cpu()
        host = AggregatorInput(inputs.num_tasks, losses=losses, gramian=gramian)
        return self.compute_weights(host).to(reference.device)

    def weights(
        self,
        gramian: Tensor | None = None,
        *,
        losses: Tensor | None = None,
        num_tasks: int | None = None,
    ) -> Tensor:
        """The ``T`` weights, from the Gramian (or from the losses / ``num_tasks`` alone for
        aggregators that need neither)."""
        if self.needs >= Needs.JACOBIAN:
            raise ValueError(f"{type(self).__name__} needs the whole Jacobian: use weights_from_jacobian")
        if gramian is not None:
            if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
                raise ValueError(f"the Gramian must be a square T x T matrix, got shape {tuple(gramian.shape)}")
            if gramian.shape[0] == 0:
                raise ValueError("the Gramian is empty: aggregation needs at least one task")
            _check_finite(gramian, "the Gramian")
            num_tasks = self._agree(num_tasks, gramian.shape[0], "the Gramian")
        elif self.needs >= Needs.GRAMIAN:
            raise ValueError(f"{type(self).__name__} computes its weights from the Gramian: pass it")
        if losses is not None:
            num_tasks = self._agree(num_tasks, torch.as_tensor(losses).shape[0], "losses")
        if num_tasks is None:
            raise ValueError("pass the Gramian, the losses or num_tasks so that the number of tasks is known")
        if num_tasks < 1:
            raise ValueError(f"aggregation needs at least one task, got num_tasks={num_tasks}")
        losses = self._checked_losses(losses, num_tasks)
        return self.placed_weights(AggregatorInput(num_tasks, losses=losses, gramian=gramian))

    def weights_from_jacobian(self, jacobian: Tensor, *, losses: Tensor | None = None) -> Tensor:
        """The ``T`` weights computed from the whole Jacobian."""
        if jacobian.dim() != 2 or jacobian.shape[0] == 0:
            raise ValueError(f"the Jacobian must be a non-empty T x n matrix, got shape {tuple(jacobian.shape)}")
        _check_finite(jacobian, "the Jacobian")
        losses = self._checked_losses(losses, jacobian.shape[0])
        return self.placed_weights(AggregatorInput(jacobian.shape[0], losses=losses, jacobian=jacobian))

    @staticmethod
    def _agree(current: int | None, found: int, where: str) -> int:
        if current is not None and current != found:
            raise ValueError(f"{where} describes {found} tasks, but {current} were expected")
        return found

    @abstractmethod
    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        """The weights, from inputs already validated."""

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        weights = self.placed_weights(inputs)
        if inputs._unchecked_jacobian:  # (the weights did not need the Gramian)
            _check_finite(jacobian, "the Jacobian")
        return weights.to(dtype=jacobian.dtype, device=jacobian.device) @ jacobian


def weights_like(values: Tensor | list[float], inputs: AggregatorInput) -> Tensor:
    """``values`` as a tensor with the dtype and device the weights should have."""
    reference = inputs.reference()
    if reference is None:
        return torch.as_tensor(values, dtype=torch.get_default_dtype())
    dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return torch.as_tensor(values, dtype=dtype, device=reference.device)


def check_preference(pref_vector: Tensor | None, name: str = "pref_vector") -> Tensor | None:
    """Validate a preference vector given at construction (1-D, finite, non-negative)."""
    if pref_vector is None:
        return None
    pref = torch.as_tensor(pref_vector, dtype=torch.float64).detach()
    if pref.dim() != 1 or pref.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(pref.shape)}")
    if not bool(torch.isfinite(pref).all()) or bool((pref < 0).any()):
        raise ValueError(f"{name} must hold finite non-negative numbers, got {pref.tolist()}")
    return pref


def preference_for(pref: Tensor | None, num_tasks: int, name: str = "pref_vector") -> Tensor:
    """The preference vector for ``num_tasks`` tasks, float64 on CPU (``1/T`` each by default)."""
    if pref is None:
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
    if pref.shape[0] != num_tasks:
        raise ValueError(f"{name} has {pref.shape[0]} entries but there are {num_tasks} tasks")
    return pref
