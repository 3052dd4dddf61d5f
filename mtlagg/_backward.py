"""``mtlagg.backward``: one call that fills ``.grad`` with the aggregated update direction."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ._graph import TaskGraph, analyse, edge_of, find_nested
from ._inputs import (
    NamedTensor,
    as_features,
    as_losses,
    as_named_tensors,
    as_task_params,
    check_chunk_size,
    check_disjoint,
    stacked_loss_values,
)
from ._jacobian import TaskGradients, feature_gradients, task_gradients
from ._result import BackwardResult
from .aggregators._base import Aggregator, AggregatorInput, Needs, WeightedAggregator
from .errors import NonFiniteError

OnNonFinite = Literal["raise", "skip", "zero", "ignore"]
_POLICIES = ("raise", "skip", "zero", "ignore")


def backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
    aggregator: Aggregator,
    *,
    features: Tensor | Sequence[Tensor] | None = None,
    task_params: Sequence[Iterable[Tensor]] | None = None,
    weight_task_params: bool | None = None,
    retain_graph: bool = False,
    chunk_size: int | None = None,
    compute_gramian: bool = False,
    on_nonfinite: OnNonFinite = "raise",
) -> BackwardResult:
    r"""Back-propagate ``T`` losses and write the aggregated direction into ``.grad``.

    After the call, every shared parameter's ``.grad`` holds (accumulated, as
    ``Tensor.backward`` does) its slice of ``aggregator(J)``, where ``J`` is the ``T x n``
    Jacobian of the losses with respect to the shared parameters. Then call ``optimizer.step()``.

    Args:
        losses: ``T >= 1`` scalar losses (a sequence, or a 1-D tensor; separate tensors are faster
            because each task's head is then back-propagated only once).
        shared_params: the parameters shared by the tasks: an iterable of tensors (e.g.
            ``encoder.parameters()``), of ``(name, tensor)`` pairs (``named_parameters()``, the
            names appear in error messages) or a mapping.
        aggregator: an :class:`~mtlagg.aggregators.Aggregator` instance.
        features: the **MGDA-UB shortcut**. The shared representation(s) the task heads consume
            (one tensor or several). The aggregator then acts on the Jacobian of the losses with
            respect to the features (one row per task, flattened over the batch), and the
            aggregated feature gradient is back-propagated once into ``shared_params``. Much
            cheaper for large encoders; works with every aggregator. Every shared parameter must
            be reached only through the features. When every task consumes a 2-d feature through
            a linear layer of its own (``nn.Linear`` heads), the rows are kept factored as
            ``delta_t A_t^T`` and never formed (unless the aggregator needs the Jacobian itself).
        task_params: one iterable of parameters per task. If given, exactly these parameters (and
            the shared ones) receive gradients, and the parameters of task ``i`` get the gradient
            of ``L_i`` only. If ``None`` (default), every other parameter that requires grad and
            that the losses reach gets the sum of the gradients of the losses that reach it (a
            task head gets the gradient of its own task's loss).
        weight_task_params: scale the task parameters' gradients by the aggregation weights
            (``sum_i w_i grad L_i``) instead of leaving them unweighted. Needs a weighted
            aggregator. ``None`` (default) follows the method's paper
            (``aggregator.weights_task_params``): ``True`` for the loss-weighting methods, which
            minimise ``sum_i w_i L_i`` (UW, DWA, GLS, IMTL-L, FAMO, STCH, GO4Align, SI, RLW),
            ``False`` for the gradient methods, which leave the heads their own gradients.
        retain_graph: keep the graph for another backward, as in ``Tensor.backward``.
        chunk_size: how many tasks are differentiated together through the shared trunk in one
            vectorised (``torch.vmap``) backward; ``1`` differentiates one task at a time without
            ``vmap`` (the fallback for models ``vmap`` cannot handle, e.g. cuDNN RNNs or custom
            autograd functions without a vmap rule). ``None`` (default): ``1`` on the CPU, where
            vectorising measured no faster and used more memory, and all tasks at once on a GPU.
        compute_gramian: also compute and return the Gramian when the aggregator does not need it
            (for monitoring conflicts; this costs the per-task gradients).
        on_nonfinite: what to do when a loss or a task gradient holds NaN or Inf: ``"raise"``
            (default, :class:`~mtlagg.errors.NonFiniteError` naming the tasks and the tensor),
            ``"skip"`` (leave every ``.grad`` unchanged, warn, and return ``skipped=True``),
            ``"zero"`` (drop the offending tasks for this step, with a warning) or ``"ignore"`` (no
            check; saves the one host synchronisation per step that the check costs). With
            loss-only aggregators the per-task gradients are never formed: a non-finite *gradient*
            is only seen in the aggregated sum, where ``"zero"`` cannot single out a task and
            skips the step instead.

    Returns:
        A :class:`~mtlagg.BackwardResult` with the loss values, the weights (weighted
        aggregators) and the Gramian (when computed).
    """
    if isinstance(aggregator, type):
        raise TypeError(f"aggregator must be an instance, e.g. {aggregator.__name__}(), not the class")
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator must be an mtlagg Aggregator, got {type(aggregator).__name__}")
    if on_nonfinite not in _POLICIES:
        raise ValueError(f"on_nonfinite must be one of {_POLICIES}, got {on_nonfinite!r}")
    check_chunk_size(chunk_size)
    loss_list = as_losses(losses)
    T = len(loss_list)
    shared = as_named_tensors(shared_params, "shared_params", require_leaf=True)
    if not shared:
        raise ValueError("shared_params is empty: pass the parameters shared by the tasks")
    explicit_tasks = as_task_params(task_params, T) if task_params is not None else None
    if explicit_tasks is not None:
        check_disjoint(shared, explicit_tasks)
    feature_list = as_features(features) if features is not None else None
    weighted = isinstance(aggregator, WeightedAggregator)
    if weight_task_params is None:
        weight_task_params = bool(getattr(aggregator, "weights_task_params", False)) and weighted
    elif weight_task_params and not weighted:
        raise ValueError(f"weight_task_params=True needs a weighted aggregator; {type(aggregator).__name__} is not one")
    values = stacked_loss_values(loss_list)

    step = _Step(loss_list, values, shared, explicit_tasks, aggregator, retain_graph, on_nonfinite)
    step.weight_task_params = weight_task_params
    needs = max(aggregator.needs, Needs.GRAMIAN if compute_gramian else Needs.LOSSES)
    if needs == Needs.LOSSES:
        return step.run_losses_only()
    if feature_list is not None:
        return step.run_features(feature_list, needs)
    return step.run_exact(needs, chunk_size)


class _Step:
    """The state of one ``backward`` call (kept out of the public function for readability)."""

    def __init__(
        self,
        losses: list[Tensor],
        values: Tensor,
        shared: list[NamedTensor],
        explicit_tasks: list[list[NamedTensor]] | None,
        aggregator: Aggregator,
        retain_graph: bool,
        on_nonfinite: OnNonFinite,
    ) -> None:
        self.losses = losses
        self.values = values
        self.shared = shared
        self.explicit_tasks = explicit_tasks
        self.aggregator = aggregator
        self.retain_graph = retain_graph
        self.on_nonfinite = on_nonfinite
        self.T = len(losses)
        self.weight_task_params = False
        self.roots = [edge_of(loss) if loss.requires_grad else None for loss in losses]

    # -- which tensors get what ---------------------------------------------------------------
    def task_leaves(self, graph: TaskGraph) -> list[tuple[Tensor, int]]:
        """``(tensor, mask of the tasks whose gradient it receives)`` for every task parameter."""
        shared_ids = {id(p.tensor) for p in self.shared}
        if self.explicit_tasks is None:
            return [(t, mask) for t, mask in graph.leaves.values() if id(t) not in shared_ids]
        declared: dict[int, tuple[Tensor, int]] = {}
        for i, params in enumerate(self.explicit_tasks):
            for p in params:
                tensor, mask = declared.get(id(p.tensor), (p.tensor, 0))
                declared[id(p.tensor)] = (tensor, mask | (1 << i))
        return [(t, mask & graph.leaf_mask(t)) for t, mask in declared.values() if mask & graph.leaf_mask(t)]

    def coefficients(self, weights: Tensor | None, good: Tensor) -> Tensor:
        ones = torch.ones(self.T, dtype=self.values.dtype, device=self.values.device)
        if self.weight_task_params and weights is not None:
            ones = weights.to(ones)
        return ones * good.to(ones)

    # -- non-finite policy ----------------------------------------------------------------------
    def bad_tasks(self, row_finite: Tensor | None) -> tuple[Tensor, tuple[int, ...]]:
        """Mask of tasks to keep and the offending ones; raises or warns as the policy says."""
        finite = torch.isfinite(self.values)
        if row_finite is not None:
            finite = finite & row_finite.to(finite.device)
        good = finite
        if self.on_nonfinite == "ignore" or bool(finite.all()):
            return torch.ones_like(finite), ()
        bad = tuple(int(i) for i in torch.nonzero(~finite).flatten().tolist())
        return good, bad

    def kept_mask(self, bad: tuple[int, ...]) -> int:
        """Bitmask of the tasks kept this step (host-side: no synchronisation)."""
        mask = (1 << self.T) - 1
        for task in bad:
            mask &= ~(1 << task)
        return mask

    def describe(self, bad: tuple[int, ...], gradients: TaskGradients | None, tensors: list[NamedTensor]) -> str:
        parts = []
        for task in bad:
            if not bool(torch.isfinite(self.values[task])):
                parts.append(f"task {task}: loss is {self.values[task].item()}")
                continue
            where = "its gradient"
            if gradients is not None:
                for named in tensors:
                    if gradients.has(named.tensor) and not bool(
                        torch.isfinite(gradients.block(named.tensor)[task]).all()
                    ):
                        where = f"its gradient with respect to {named.name} (shape {tuple(named.tensor.shape)})"
                        break
            parts.append(f"task {task}: {where} holds NaN or Inf")
        return "; ".join(parts)

    def handle_bad(self, bad: tuple[int, ...], message: str) -> BackwardResult | None:
        """Apply the policy; returns the result to return early (skip), else None (zero)."""
        if self.on_nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite values in mtlagg.backward ({message}); pass on_nonfinite='skip' or 'zero' "
                "to go on without these tasks",
                bad,
            )
        if self.on_nonfinite == "skip":
            warnings.warn(f"mtlagg.backward skipped the step: {message}", RuntimeWarning, stacklevel=4)
            return BackwardResult(self.values, skipped=True, nonfinite_tasks=bad)
        warnings.warn(
            f"mtlagg.backward dropped tasks {list(bad)} for this step: {message}", RuntimeWarning, stacklevel=4
        )
        return None

    # -- paths ----------------------------------------------------------------------------------
    def run_losses_only(self) -> BackwardResult:
        """Weights from the losses alone: ordinary backward passes, no per-task gradients."""
        graph = analyse(self.roots, classify=False)
        good, bad = self.bad_tasks(None)
        if bad:
            early = self.handle_bad(bad, self.describe(bad, None, self.shared))
            if early is not None:
                return early
        values = torch.where(good, self.values, torch.zeros_like(self.values))
        weights = self._weights(AggregatorInput(self.T, losses=values))
        weights = weights * good.to(weights)
        shared = [p.tensor for p in self.shared if graph.leaf_mask(p.tensor)]
        everyone = self.kept_mask(bad)
        coefficients = self.coefficients(weights, good)
        # One backward of sum_i w_i L_i serves the shared parameters and the task parameters that
        # want w-weighted gradients, and also, rescaled by 1 / w_i, every parameter only task i
        # reaches (a head): scaling by w_i and back is exact up to rounding. The rest (parameters of
        # several tasks wanting unweighted gradients, zero weights, explicit task_params narrower
        # than what reaches them) get their own calls, grouped by task mask.
        host_weights = weights.tolist()
        main: list[Tensor] = list(shared)
        rescale: dict[int, float] = {}
        groups: dict[int, list[Tensor]] = {}
        for tensor, mask in self.task_leaves(graph):
            reach = graph.leaf_mask(tensor)
            if not mask & everyone:
                continue
            if mask != reach:
                groups.setdefault(mask & everyone, []).append(tensor)
            elif self.weight_task_params:
                main.append(tensor)
            elif reach & (reach - 1) == 0 and abs(host_weights[reach.bit_length() - 1]) > 1e-20:
                main.append(tensor)
                rescale[id(tensor)] = 1.0 / host_weights[reach.bit_length() - 1]
            else:
                groups.setdefault(everyone, []).append(tensor)
        calls = [(tensors, coefficients, mask) for mask, tensors in groups.items()]
        calls.append((main, weights, everyone))
        targets = [t for tensors, _, _ in calls for t in tensors]
        # When no target holds a gradient yet (after zero_grad(set_to_none=True)), backward passes
        # write into .grad directly, and a failed check can put every .grad back to None.
        direct = all(t.grad is None for t in targets)
        gradients: dict[int, Tensor] = {}
        for n, (tensors, coef, mask) in enumerate(calls):
            tasks = [i for i in range(self.T) if mask >> i & 1 and self.losses[i].requires_grad]
            if not tensors or not tasks:
                continue
            outputs = [self.losses[i] for i in tasks]
            seeds = self._seeds(coef, tasks)
            retain = self.retain_graph or n < len(calls) - 1
            if direct:
                torch.autograd.backward(outputs, seeds, retain_graph=retain, inputs=tensors)
                continue
            grads = torch.autograd.grad(outputs, tensors, seeds, retain_graph=retain, allow_unused=True)
            for tensor, gradient in zip(tensors, grads):
                if gradient is not None:
                    gradients[id(tensor)] = gradient
        if direct:
            gradients = {id(t): t.grad for t in targets if t.grad is not None}
        scaled = [key for key in rescale if key in gradients]  # heads that rode along in the w-seeded pass
        if scaled:
            if direct:  # fresh .grad tensors: scale them in place, in one fused call
                torch._foreach_mul_([gradients[key] for key in scaled], [rescale[key] for key in scaled])
            else:
                for key in scaled:
                    gradients[key] = gradients[key] * rescale[key]
        if self.on_nonfinite != "ignore" and not _all_finite(list(gradients.values())):
            names = [
                p.name
                for p in self.shared
                if id(p.tensor) in gradients and not bool(torch.isfinite(gradients[id(p.tensor)]).all())
            ]
            if direct:
                for t in targets:
                    t.grad = None
            message = (
                "the aggregated gradient holds NaN or Inf"
                + (f" for {', '.join(names)}" if names else " for a task parameter")
                + " (loss-only aggregators do not form per-task gradients, so the task cannot be named)"
            )
            if self.on_nonfinite == "raise":
                raise NonFiniteError(f"non-finite values in mtlagg.backward ({message})")
            warnings.warn(f"mtlagg.backward skipped the step: {message}", RuntimeWarning, stacklevel=3)
            return BackwardResult(self.values, skipped=True)
        if not direct:
            tensors_by_id = {id(t): t for t in targets}
            for key, gradient in gradients.items():
                _accumulate(tensors_by_id[key], gradient)
        return BackwardResult(self.values, weights=weights.detach() if self._weighted else None, nonfinite_tasks=bad)

    def _seeds(self, coefficients: Tensor, tasks: list[int]) -> list[Tensor]:
        """The ``grad_outputs`` of the losses of ``tasks``: their coefficients, shaped like them."""
        losses = [self.losses[i] for i in tasks]
        if all(loss.dim() == 0 and loss.dtype == losses[0].dtype for loss in losses):
            picked = coefficients if len(tasks) == self.T else coefficients[tasks]
            return list(picked.to(losses[0].dtype).unbind())
        return [coefficients[i].to(loss.dtype).reshape(loss.shape) for i, loss in zip(tasks, losses)]

    @property
    def _weighted(self) -> bool:
        return isinstance(self.aggregator, WeightedAggregator)

    def _weights(self, inputs: AggregatorInput) -> Tensor:
        assert isinstance(self.aggregator, WeightedAggregator)
        return self.aggregator.placed_weights(inputs).detach().to(device=self.values.device)

    def run_exact(self, needs: Needs, chunk_size: int | None) -> BackwardResult:
        graph = analyse(self.roots)
        task_leaves = self.task_leaves(graph)
        shared = [p for p in self.shared if graph.leaf_mask(p.tensor)]
        wanted = [p.tensor for p in shared] + [t for t, _ in task_leaves]
        gradients = task_gradients(self.losses, graph, wanted, chunk_size=chunk_size, retain_graph=self.retain_graph)
        return self._aggregate(gradients, shared, task_leaves, needs, input_tensors=shared)

    def run_features(self, features: list[NamedTensor], needs: Needs) -> BackwardResult:
        edges = [edge_of(f.tensor) for f in features]
        if len(edges) > 1:
            nested = find_nested(edges)
            if nested is not None:
                k, j = nested
                raise ValueError(
                    f"{features[k].name} depends on {features[j].name}: features= must be tensors that do not "
                    "depend on each other (the representations the heads consume, not successive stages)"
                )
        cut = set(edges)
        graph = analyse(self.roots, cut)
        shared_ids = {id(p.tensor): p.name for p in self.shared}
        for tensor, mask in graph.leaves.values():
            if id(tensor) in shared_ids:
                tasks = [i for i in range(self.T) if mask >> i & 1]
                raise ValueError(
                    f"{shared_ids[id(tensor)]} is reached by the loss of task(s) {tasks} without passing through "
                    "features=; with features=, the shared parameters must feed the tasks only through the features"
                )
        task_leaves = self.task_leaves(graph)
        gradients = feature_gradients(
            self.losses,
            graph,
            [f.tensor for f in features],
            [t for t, _ in task_leaves],
            retain_graph=self.retain_graph,
        )
        return self._aggregate(
            gradients, features, task_leaves, needs, input_tensors=features, shared_via_features=True
        )

    def _aggregate(
        self,
        gradients: TaskGradients,
        inputs: list[NamedTensor],
        task_leaves: list[tuple[Tensor, int]],
        needs: Needs,
        *,
        input_tensors: list[NamedTensor],
        shared_via_features: bool = False,
    ) -> BackwardResult:
        tensors = [p.tensor for p in inputs]
        parts: list[Tensor] | None = [] if self.aggregator.uses_block_gramians else None
        gramian = gradients.gramian(tensors, parts)
        good, bad = self.bad_tasks(gramian.diagonal().isfinite())
        if bad:
            early = self.handle_bad(bad, self.describe(bad, gradients, inputs))
            if early is not None:
                return early
            gradients.zero_tasks(bad)
            parts = [] if parts is not None else None
            gramian = gradients.gramian(tensors, parts)
        values = torch.where(good, self.values, torch.zeros_like(self.values))
        aggregator = self.aggregator
        jacobian: Tensor | None = None
        sizes = [p.tensor.numel() for p in inputs]
        if aggregator.needs == Needs.JACOBIAN or not self._weighted:
            jacobian = torch.cat([gradients.block(t).reshape(self.T, -1) for t in tensors], dim=1)
        input_values = None
        if aggregator.uses_input_values:
            input_values = torch.cat([p.tensor.detach().reshape(-1) for p in input_tensors])
        agg_input = AggregatorInput(
            self.T,
            losses=values,
            gramian=gramian,
            jacobian=jacobian,
            input_values=input_values,
            block_sizes=sizes,
            block_names=[p.name for p in inputs],
            block_shapes=[tuple(p.tensor.shape) for p in inputs],
            block_gramians=parts,
        )
        weights: Tensor | None = None
        everyone = (1 << self.T) - 1
        if self._weighted:
            weights = self._weights(agg_input) * good.to(gramian.device)
            directions = [gradients.weighted_sum(t, weights, everyone) for t in tensors]
        else:
            assert jacobian is not None
            direction = aggregator.compute_direction(agg_input)
            directions = list(torch.split(direction, sizes))
        coefficients = self.coefficients(weights, good)
        kept = self.kept_mask(bad)
        for tensor, mask in task_leaves:
            if mask & kept:
                gradient = gradients.weighted_sum(tensor, coefficients, mask & kept)
                if gradient is not None:
                    _accumulate(tensor, gradient)
        pairs = [(t, d.reshape(t.shape)) for t, d in zip(tensors, directions) if d is not None]
        if shared_via_features:
            self._backward_through_features(pairs)
        else:
            for tensor, direction_part in pairs:
                _accumulate(tensor, direction_part)
        return BackwardResult(
            self.values,
            weights=weights.detach() if weights is not None else None,
            gramian=gramian.detach(),
            nonfinite_tasks=bad,
        )

    def _backward_through_features(self, features: list[tuple[Tensor, Tensor]]) -> None:
        shared = [p.tensor for p in self.shared]
        grads = torch.autograd.grad(
            [f for f, _ in features],
            shared,
            [d.to(f.dtype) for f, d in features],
            retain_graph=self.retain_graph,
            allow_unused=True,
        )
        for tensor, gradient in zip(shared, grads):
            if gradient is not None:
                _accumulate(tensor, gradient)


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of every tensor is finite, with one fused reduction and one sync."""
    if not tensors:
        return True
    # The 2-norms are the fastest fused reduction; NaN and Inf propagate through them. A norm can
    # also overflow on finite entries (> 1e19 in float32), so a failed check is confirmed exactly.
    norms = torch._foreach_norm(tensors, 2)
    if bool(torch.stack([n.to(torch.float32) for n in norms]).isfinite().all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _accumulate(tensor: Tensor, gradient: Tensor) -> None:
    """Add ``gradient`` into ``tensor.grad`` as ``Tensor.backward`` does."""
    gradient = gradient.detach().to(dtype=tensor.dtype)
    if tensor.grad is None:
        tensor.grad = gradient if gradient.is_contiguous() else gradient.contiguous()
    else:
        tensor.grad += gradient
