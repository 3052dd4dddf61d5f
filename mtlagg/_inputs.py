"""Validation of what users pass to :func:`mtlagg.backward` and the engine functions.

Every check raises a ``ValueError`` / ``TypeError`` that names the task or the tensor at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NamedTensor:
    """A tensor with the name error messages use for it."""

    name: str
    tensor: Tensor


def as_losses(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """The losses as a list of scalar tensors (a 1-D tensor is split into its entries)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses given as one tensor must be 1-D (one entry per task), got shape {tuple(losses.shape)}"
            )
        items: list[Tensor] = list(losses.unbind()) if losses.numel() else []
    else:
        if isinstance(losses, (str, bytes)) or not isinstance(losses, Iterable):
            raise TypeError(f"losses must be a sequence of scalar tensors, got {type(losses).__name__}")
        items = list(losses)
    if not items:
        raise ValueError("losses is empty: pass one scalar loss per task")
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(f"losses[{i}] (task {i}) is a {type(loss).__name__}, not a torch.Tensor")
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{i}] (task {i}) must be a scalar, got shape {tuple(loss.shape)}; "
                "reduce it (e.g. with .mean()) first"
            )
        if not loss.is_floating_point():
            raise TypeError(f"losses[{i}] (task {i}) must be floating point, got {loss.dtype}")
    return items


def as_named_tensors(tensors: object, what: str, *, require_leaf: bool) -> list[NamedTensor]:
    """Parameters given as an iterable of tensors, of ``(name, tensor)`` pairs, or a mapping."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    if isinstance(tensors, Mapping):
        pairs: list[tuple[str, object]] = [(str(k), v) for k, v in tensors.items()]
    else:
        if not isinstance(tensors, Iterable):
            raise TypeError(f"{what} must be an iterable of tensors, got {type(tensors).__name__}")
        pairs = []
        for i, item in enumerate(tensors):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                pairs.append(item)
            else:
                pairs.append((f"{what}[{i}]", item))
    result: list[NamedTensor] = []
    seen: dict[int, str] = {}
    for name, tensor in pairs:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} is a {type(tensor).__name__}, not a torch.Tensor")
        label = f"{name} (shape {tuple(tensor.shape)})"
        if not tensor.requires_grad:
            raise ValueError(
                f"{label} does not require grad; leave frozen parameters out "
                "(e.g. [p for p in model.parameters() if p.requires_grad])"
            )
        if require_leaf and not tensor.is_leaf:
            raise ValueError(
                f"{label} is not a leaf tensor, so it cannot receive a .grad; pass parameters, "
                "or pass intermediate tensors as features="
            )
        if id(tensor) in seen:
            raise ValueError(f"{label} is listed twice in {what} (also as {seen[id(tensor)]})")
        seen[id(tensor)] = name
        result.append(NamedTensor(name, tensor))
    return result


def as_features(features: Tensor | Sequence[Tensor]) -> list[NamedTensor]:
    if isinstance(features, Tensor):
        features = [features]
    items = as_named_tensors(features, "features", require_leaf=False)
    if not items:
        raise ValueError("features is empty: pass the shared representation(s) or None")
    return items


def as_task_params(task_params: Sequence[Iterable[Tensor]], num_tasks: int) -> list[list[NamedTensor]]:
    if isinstance(task_params, Tensor) or not isinstance(task_params, Sequence):
        raise TypeError("task_params must be a sequence with one iterable of parameters per task")
    if len(task_params) != num_tasks:
        raise ValueError(f"task_params has {len(task_params)} entries but there are {num_tasks} losses")
    return [as_named_tensors(params, f"task_params[{i}]", require_leaf=True) for i, params in enumerate(task_params)]


def check_disjoint(shared: list[NamedTensor], tasks: list[list[NamedTensor]]) -> None:
    shared_ids = {id(p.tensor): p.name for p in shared}
    for params in tasks:
        for p in params:
            if id(p.tensor) in shared_ids:
                raise ValueError(
                    f"{p.name} (shape {tuple(p.tensor.shape)}) is also listed in shared_params "
                    f"(as {shared_ids[id(p.tensor)]})"
                )


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def stacked_loss_values(losses: list[Tensor]) -> Tensor:
    """The detached loss values as one 1-D tensor (promoted to a common floating dtype)."""
    dtype = losses[0].dtype
    same = True
    for loss in losses[1:]:
        if loss.dtype != dtype or loss.shape != losses[0].shape:
            same = False
            dtype = torch.promote_types(dtype, loss.dtype)
    with torch.no_grad():
        if same:
            return torch.stack(losses).reshape(len(losses))
        return torch.stack([loss.reshape(()).to(dtype) for loss in losses])
