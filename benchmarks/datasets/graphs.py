"""Molecular graphs in pure torch: one-graph records, a batching collate and index-based scatter helpers.

No torch_geometric: a batch is a :class:`GraphBatch` with the PyG field names (``x``, ``edge_index``,
``edge_attr``, ``batch``, ``pos``) so that the models read like their PyG originals.

The QM9 protocol of the MTL papers (nash-mtl, FAMO, FairGrad, LibMTL) turns every molecule into a
**complete** directed graph without self-loops: edge ``j -> i`` for every ordered pair ``i != j``, with
attributes = the 4 bond-type one-hots (single, double, triple, aromatic; all zero for non-bonded pairs)
followed by the Euclidean distance ``|pos_i - pos_j|`` in Angstrom (PyG ``Complete`` + ``Distance(norm=False)``).
:func:`collate_graphs` builds that graph per batch from the bonds, so the cache stores bonds only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

NUM_BOND_TYPES = 4


@dataclass
class Graph:
    """One molecule: node features ``x (n, F)``, positions ``pos (n, 3)``, bonds ``(2, b)`` and their types ``(b,)``.

    Bonds are stored once per unordered pair; ``bond_type`` is 0..3 (single, double, triple, aromatic).
    """

    x: torch.Tensor
    pos: torch.Tensor
    bond_index: torch.Tensor
    bond_type: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


@dataclass
class GraphBatch:
    """Disjoint union of graphs; ``batch[i]`` is the graph of node ``i``."""

    x: torch.Tensor
    pos: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(
            self.x.to(device),
            self.pos.to(device),
            self.edge_index.to(device),
            self.edge_attr.to(device),
            self.batch.to(device),
            self.num_graphs,
        )

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


@lru_cache(maxsize=64)
def _complete_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) of the n(n-1) ordered pairs i != j, target-major."""
    tgt, src = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = tgt != src
    return src[keep], tgt[keep]


def complete_graph_batch(graphs: list[Graph]) -> GraphBatch:
    """Concatenate ``graphs`` into one complete-graph batch with bond one-hots and distances as edge attributes."""
    if not graphs:
        raise ValueError("complete_graph_batch: empty list of graphs")
    sizes = [g.num_nodes for g in graphs]
    node_offsets = [0]
    pair_offsets = [0]
    for n in sizes:
        node_offsets.append(node_offsets[-1] + n)
        pair_offsets.append(pair_offsets[-1] + n * n)
    src_parts, tgt_parts, cell_parts, bond_cells, bond_types = [], [], [], [], []
    for g, n, no, po in zip(graphs, sizes, node_offsets, pair_offsets):
        src, tgt = _complete_pairs(n)
        src_parts.append(src + no)
        tgt_parts.append(tgt + no)
        cell_parts.append(po + tgt * n + src)  # cell of the (target, source) pair in the flat n*n blocks
        if g.bond_index.numel():
            a, b = g.bond_index[0], g.bond_index[1]
            bond_cells.append(torch.cat([po + a * n + b, po + b * n + a]))
            bond_types.append(torch.cat([g.bond_type, g.bond_type]))
    # bond type per cell: 0 = no bond, 1..4 = bond type + 1
    cell_type = torch.zeros(pair_offsets[-1], dtype=torch.long)
    if bond_cells:
        cell_type[torch.cat(bond_cells)] = torch.cat(bond_types).long() + 1
    edge_type = cell_type[torch.cat(cell_parts)]
    one_hot = torch.nn.functional.one_hot(edge_type, NUM_BOND_TYPES + 1)[:, 1:].float()
    src = torch.cat(src_parts)
    tgt = torch.cat(tgt_parts)
    pos = torch.cat([g.pos for g in graphs]).float()
    dist = (pos[tgt] - pos[src]).norm(dim=1, keepdim=True)
    batch = torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes))
    return GraphBatch(
        x=torch.cat([g.x for g in graphs]).float(),
        pos=pos,
        edge_index=torch.stack([src, tgt]),
        edge_attr=torch.cat([one_hot, dist], dim=1),
        batch=batch,
        num_graphs=len(graphs),
    )


def collate_graphs(items: list[tuple[Graph, dict[str, torch.Tensor]]]) -> tuple[GraphBatch, dict[str, torch.Tensor]]:
    """DataLoader collate for ``(Graph, {task: target})`` items."""
    graphs = [g for g, _ in items]
    tasks = items[0][1].keys()
    targets = {t: torch.stack([y[t] for _, y in items]) for t in tasks}
    return complete_graph_batch(graphs), targets


# ---------------------------------------------------------------------------------------------
# index-based message passing helpers


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[i] = sum of src[e] over e with index[e] == i`` along dim 0."""
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of ``src`` rows per index (0 for an index that receives nothing)."""
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp_(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Max of ``src`` rows per index (``-inf`` for an index that receives nothing)."""
    out = src.new_full((dim_size, *src.shape[1:]), float("-inf"))
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    return out.scatter_reduce(0, idx, src, reduce="amax", include_self=True)


def segment_softmax(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Softmax of ``src`` within each group of equal ``index`` (numerically stabilised by the group max)."""
    shifted = src - scatter_max(src.detach(), index, dim_size).index_select(0, index)
    e = shifted.exp()
    return e / scatter_sum(e, index, dim_size).index_select(0, index).clamp_min(1e-16)
