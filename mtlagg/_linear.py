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


def find_linear_layers(
    graph: TaskGraph, wanted_ids: set[int], excluded_edges: set[tuple[Node, int]]
) -> list[LinearLayer]:
    """Linear layers of the common region whose weight (and bias) can be factored."""
    layers = []
    for node in graph.common_nodes:
        name = type(node).__name__
        if name == "AddmmBackward0":
            if getattr(node, "_saved_alpha", None) != 1 or getattr(node, "_saved_beta", None) != 1:
                continue
            bias_fn, _ = node.next_functions[0]
            transpose_fn, _ = node.next_functions[2]
        elif name == "MmBackward0":
            bias_fn, transpose_fn = None, node.next_functions[1][0]
        else:
            continue
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
    """The per-task gradients of one linear layer: ``deltas`` (``T x N x out``) and ``inputs``."""

    weight: Tensor
    bias: Tensor | None
    inputs: Tensor
    deltas: Tensor

    def weight_rows(self) -> Tensor:
        return torch.matmul(self.deltas.transpose(1, 2), self.inputs)

    def bias_rows(self) -> Tensor:
        return self.deltas.sum(dim=1)

    def gramian(self, dtype: torch.dtype) -> Tensor:
        """The Gramian of the weight and bias gradients together."""
        gram = self.weight_gramian(dtype)
        return gram + self.bias_gramian(dtype) if self.bias is not None else gram

    def bias_gramian(self, dtype: torch.dtype) -> Tensor:
        sums = self.deltas.to(dtype).sum(dim=1)
        return sums @ sums.T

    def weight_gramian(self, dtype: torch.dtype) -> Tensor:
        T, N, out = self.deltas.shape
        deltas = self.deltas.to(dtype)
        inputs = self.inputs.to(dtype)
        flat = deltas.reshape(T, -1)
        if N * N * (inputs.shape[1] + T * out) < T * N * inputs.shape[1] * out:
            kernel = inputs @ inputs.T
            mixed = torch.bmm(kernel.expand(T, N, N), deltas).reshape(T, -1)
            gram = flat @ mixed.T
        else:
            rows = torch.matmul(deltas.transpose(1, 2), inputs).reshape(T, -1)
            gram = rows @ rows.T
        return gram

    def weighted(self, coefficients: Tensor) -> tuple[Tensor, Tensor]:
        combined = torch.tensordot(coefficients.to(self.deltas.dtype), self.deltas, dims=1)
        return combined.T @ self.inputs, combined.sum(dim=0)
