"""The QM9 network of the MTL papers in pure torch: NNConv (edge network) + GRU, Set2Set readout, 11 heads.

Gilmer et al. (ICML 2017) MPNN as in the PyG ``qm9_nn_conv`` example that Nash-MTL, FAMO, FairGrad and
LibMTL use (reference mtllib.md §3):

* ``lin0``: Linear(11, dim) + ReLU;
* 3 rounds of ``m = ReLU(NNConv(h))`` then ``h = GRU(m, h)``, one NNConv and one GRU shared by the rounds.
  NNConv: ``out_i = W_root x_i + mean_{j -> i} x_j Θ(e_ji) + b`` with the edge network
  ``Θ = Linear(5, 128) -> ReLU -> Linear(128, dim * dim)`` (reshaped to ``dim x dim``);
* Set2Set readout with 3 processing steps (Vinyals et al. 2016): an LSTM query, attention
  ``a_i = softmax_i(<x_i, q>)`` within each graph, readout ``r = sum_i a_i x_i``, output ``[q, r]``;
* ``lin1``: Linear(2 dim, dim) + ReLU: the shared representation;
* one Linear(dim, 1) head per target.

``dim=64, edge_hidden=128`` is the paper's model; the ``quick`` preset uses ``dim=16, edge_hidden=32``
(the edge network dominates the cost: ``E x edge_hidden x dim^2`` multiply-adds per layer call).
``encoder`` holds the shared parameters, ``heads`` the task-specific ones;
``forward`` returns ``{task: (B,) prediction}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmarks.datasets.graphs import GraphBatch, scatter_mean, scatter_sum, segment_softmax

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")


class NNConv(nn.Module):
    """Edge-conditioned convolution with mean aggregation over incoming edges (``edge_index = [source, target]``)."""

    def __init__(self, in_dim: int, out_dim: int, edge_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.edge_net = nn.Sequential(nn.Linear(edge_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_dim * out_dim))
        self.root = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def edge_weights(self, edge_attr: torch.Tensor) -> torch.Tensor:
        """``Θ(e)`` for every edge: ``(E, in_dim, out_dim)``."""
        return self.edge_net(edge_attr).view(-1, self.in_dim, self.out_dim)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``weight`` (from :meth:`edge_weights`) may be passed to reuse it across message-passing rounds."""
        src, tgt = edge_index[0], edge_index[1]
        if weight is None:
            weight = self.edge_weights(edge_attr)
        messages = torch.bmm(x.index_select(0, src).unsqueeze(1), weight).squeeze(1)
        return scatter_mean(messages, tgt, x.shape[0]) + self.root(x) + self.bias


class Set2Set(nn.Module):
    """Order-invariant graph readout; output size ``2 * dim``."""

    def __init__(self, dim: int, steps: int = 3) -> None:
        super().__init__()
        self.dim = dim
        self.steps = steps
        self.lstm = nn.LSTM(2 * dim, dim, num_layers=1)

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        h = (x.new_zeros(1, num_graphs, self.dim), x.new_zeros(1, num_graphs, self.dim))
        q_star = x.new_zeros(num_graphs, 2 * self.dim)
        for _ in range(self.steps):
            q, h = self.lstm(q_star.unsqueeze(0), h)
            q = q.view(num_graphs, self.dim)
            e = (x * q.index_select(0, batch)).sum(dim=-1, keepdim=True)
            a = segment_softmax(e, batch, num_graphs)
            r = scatter_sum(a * x, batch, num_graphs)
            q_star = torch.cat([q, r], dim=-1)
        return q_star


class QM9Encoder(nn.Module):
    """The shared trunk: node embedding, 3 NNConv+GRU rounds, Set2Set, ``lin1``."""

    def __init__(
        self,
        num_node_features: int = 11,
        num_edge_features: int = 5,
        dim: int = 64,
        edge_hidden: int = 128,
        rounds: int = 3,
    ) -> None:
        super().__init__()
        self.rounds = rounds
        self.lin0 = nn.Linear(num_node_features, dim)
        self.conv = NNConv(dim, dim, num_edge_features, hidden=edge_hidden)
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, g: GraphBatch) -> torch.Tensor:
        out = torch.relu(self.lin0(g.x))
        h = out.unsqueeze(0)
        # the edge network depends on the edge attributes only: compute it once for the 3 rounds (PyG recomputes
        # it in every round; the values and gradients are the same, the cost is a third)
        weight = self.conv.edge_weights(g.edge_attr)
        for _ in range(self.rounds):
            m = torch.relu(self.conv(out, g.edge_index, g.edge_attr, weight))
            out, h = self.gru(m.unsqueeze(0), h)
            out = out.squeeze(0)
        return torch.relu(self.lin1(self.set2set(out, g.batch, g.num_graphs)))


class QM9Net(nn.Module):
    """Shared :class:`QM9Encoder` and one linear head per target; ``forward(g) -> {task: (B,)}``."""

    def __init__(
        self, tasks: Sequence[str] = TARGETS, dim: int = 64, edge_hidden: int = 128, num_node_features: int = 11
    ) -> None:
        super().__init__()
        self.encoder = QM9Encoder(num_node_features=num_node_features, dim=dim, edge_hidden=edge_hidden)
        self.heads = nn.ModuleDict({t: nn.Linear(dim, 1) for t in tasks})

    def forward(self, g: GraphBatch) -> dict[str, torch.Tensor]:
        z = self.encoder(g)
        return {t: head(z).squeeze(-1) for t, head in self.heads.items()}
