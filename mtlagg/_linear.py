r"""Per-task gradients of linear layers kept in factored form.

For a linear layer :math:`y = x W^\top + b` applied to ``N`` rows, the gradient of task ``t`` is
:math:`\nabla_W L_t = \delta_t^\top x` and :math:`\nabla_b L_t = \delta_t^\top \mathbf 1`, where
:math:`\delta_t = \partial L_t / \partial y` (``N x out``). So the engine back-propagates only the
:math:`\delta_t` through the trunk and never forms the ``T x out x in`` block:

* Gramian: :math:`\langle \nabla_W L_s, \nabla_W L_t\rangle = \langle \delta_s, K \delta_t\rangle` with
  :math:`K = x x^\top` (``N x N``), which costs :math:`T N^2 \cdot out` instead of
  :math:`T N \cdot in \cdot out`; the cheaper of the two forms is used per layer;
* weighted direction: :math:`\sum_t w_t \nabla_W L_t = (\sum_t w_t \delta_t)^\top x`, one matrix product.

The layer is recognised in the autograd graph (``AddmmBackward0`` / ``MmBackward0`` whose weight
comes through ``TBackward0`` from a parameter used nowhere else); anything else takes the generic
path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.graph import Node

from ._graph import TaskGraph


@dataclass
class LinearLayer:
    node: Node
    weight: Tensor
    bias: Tensor | None
    inputs: Tensor  # (N, in), the layer's saved input

    @property
    def edge(self) -> tuple[Node, int]:
        return self.node, 0


def _leaf(node: Node | None) -> Tensor | None:
    return getattr(node, "variable", None) if node is not None else None


def matmul_slots(node: Node) -> tuple[int, int] | None:
    """For a node of ``y = x A`` or ``y = b + x A`` (``MmBackward0``, or ``AddmmBackward0`` with
    ``alpha = beta = 1``: what ``nn.Linear`` records on 2-d inputs), the positions of ``x`` and ``A``
    in ``node.next_functions``; ``None`` for any other node."""
    name = type(node).__name__
    if name == "MmBackward0":
        return 0, 1
    plain = getattr(node, "_saved_alpha", None) == 1 and getattr(node, "_saved_beta", None) == 1
    if name == "AddmmBackward0" and plain:
        return 1, 2
    return None


def find_linear_layers(
    graph: TaskGraph, wanted_ids: set[int], excluded_edges: set[tuple[Node, int]]
) -> list[LinearLayer]:
    """Linear layers of the common region whose weight (and bias) can be factored."""
    layers = []
    for node in graph.common_nodes:
        slots = matmul_slots(node)
        if slots is None:
            continue
        name = type(node).__name__
        bias_fn = node.next_functions[0][0] if name == "AddmmBackward0" else None
        transpose_fn = node.next_functions[slots[1]][0]
        if (node, 0) in excluded_edges or transpose_fn is None or type(transpose_fn).__name__ != "TBackward0":
            continue
        weight_fn = transpose_fn.next_functions[0][0]
        weight = _leaf(weight_fn)
        if weight is None or id(weight) not in wanted_ids or weight.dim() != 2:
            continue
        if graph.uses.get(transpose_fn) != 1 or graph.uses.get(weight_fn) != 1:
            continue
        bias = _leaf(bias_fn)
        if bias is not None and (id(bias) not in wanted_ids or graph.uses.get(bias_fn) != 1 or bias.dim() != 1):
            bias = None
        inputs = node._saved_mat1 if name == "AddmmBackward0" else node._saved_self
        if inputs is None or inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
            continue
        layers.append(LinearLayer(node, weight, bias, inputs.detach()))
    return layers


@dataclass
class FactoredLinear:
    """The per-task gradients of one linear layer: ``deltas`` (``T x N x out``) and ``inputs``.

    The Gramian takes the cheaper of two routes, counting the weighted direction that follows:

    * explicit: form the ``T x out x in`` rows (``T N in out``), then their Gramian; the direction is
      a weighted sum of the rows (kept until then);
    * kernel: ``K = x x^T`` and ``<delta_s, K delta_t>`` (``N^2 in + T N^2 out``), never holding the
      rows; the direction costs one more product (``N in out``).
    """

    weight: Tensor
    bias: Tensor | None
    inputs: Tensor
    deltas: Tensor
    _rows: Tensor | None = None
    _weighted: tuple[Tensor, Tensor, Tensor] | None = None

    def weight_rows(self) -> Tensor:
        if self._rows is not None:
            return self._rows
        return torch.matmul(self.deltas.transpose(1, 2), self.inputs)

    def bias_rows(self) -> Tensor:
        return self.deltas.sum(dim=1)

    def use_kernel(self) -> bool:
        T, N, out = self.deltas.shape
        fan_in = self.inputs.shape[1]
        return N * N * (fan_in + T * out) + N * fan_in * out < T * N * fan_in * out

    def gramian(self, dtype: torch.dtype) -> Tensor:
        """The Gramian of the weight and bias gradients together."""
        gram = self.weight_gramian(dtype)
        return gram + self.bias_gramian(dtype) if self.bias is not None else gram

    def bias_gramian(self, dtype: torch.dtype) -> Tensor:
        sums = self.deltas.to(dtype).sum(dim=1)
        return sums @ sums.T

    def weight_gramian(self, dtype: torch.dtype) -> Tensor:
        T, N, _ = self.deltas.shape
        if not self.use_kernel():
            self._rows = torch.matmul(self.deltas.transpose(1, 2), self.inputs)
            rows = self._rows.reshape(T, -1).to(dtype)
            return rows @ rows.T
        deltas = self.deltas.to(dtype)
        kernel = self.inputs.to(dtype) @ self.inputs.to(dtype).T
        flat = deltas.reshape(T, -1)
        gram = flat.new_empty(T, T)
        step = 8  # K delta_t for a few tasks at a time: a small temporary
        for start in range(0, T, step):
            chunk = deltas[start : start + step]
            mixed = torch.bmm(kernel.expand(chunk.shape[0], N, N), chunk).reshape(chunk.shape[0], -1)
            gram[start : start + step] = mixed @ flat.T
        return 0.5 * (gram + gram.T)

    def weighted(self, coefficients: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum_t c_t grad_W L_t, sum_t c_t grad_b L_t)``, computed once per coefficient vector."""
        if self._weighted is not None and self._weighted[0] is coefficients:
            return self._weighted[1], self._weighted[2]
        key = coefficients  # held, so that the identity test cannot match a recycled object
        coefficients = coefficients.to(self.deltas.dtype)
        combined = torch.tensordot(coefficients, self.deltas, dims=1)
        if self._rows is not None:
            weight = torch.tensordot(coefficients, self._rows, dims=1)
        else:
            weight = combined.T @ self.inputs
        self._weighted = (key, weight, combined.sum(dim=0))
        return weight, self._weighted[2]

    def forget_tasks(self, tasks: list[int]) -> None:
        """Zero the rows of ``tasks`` and drop what was derived from them."""
        self.deltas = self.deltas.clone()
        self.deltas[tasks] = 0
        self._rows = None
        self._weighted = None
