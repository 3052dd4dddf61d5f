"""Which tasks reach which part of the autograd graph.

One pass over the graph below the losses labels every node with the set of tasks (a bitmask)
whose loss reaches it, in topological order. From the labels:

* the **exclusive region** of task ``i`` is the set of nodes only task ``i`` reaches (its head);
* the **common region** is what two or more tasks reach (the trunk);
* the **boundary** of task ``i`` is the set of edges from its exclusive region into the common
  region: where the task's gradient enters the trunk;
* **leaves** (parameters) are attributed to the tasks that reach them.

The engine back-propagates each task through its own head once (to its boundary), then
differentiates the trunk for all tasks at once from the boundary. The ``T x T`` wasted work of
back-propagating every task through every head is never done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from torch import Tensor
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge

Edge = tuple[Node, int]


def edge_of(tensor: Tensor) -> Edge:
    gradient_edge = get_gradient_edge(tensor)
    return gradient_edge.node, gradient_edge.output_nr


def as_gradient_edge(edge: Edge) -> GradientEdge:
    return GradientEdge(edge[0], edge[1])


def popcount(mask: int) -> int:
    return bin(mask).count("1")


@dataclass
class TaskGraph:
    """The labelled graph below ``T`` losses."""

    num_tasks: int
    #: id(leaf tensor) -> (tensor, bitmask of the tasks that reach it)
    leaves: dict[int, tuple[Tensor, int]] = field(default_factory=dict)
    #: per task, the edges through which its gradient enters the common region
    boundary: list[list[Edge]] = field(default_factory=list)
    #: per task, the leaves reached from its exclusive region (directly, not through the trunk)
    direct_leaves: list[list[Tensor]] = field(default_factory=list)
    #: leaves reached from the common region
    common_leaves: list[Tensor] = field(default_factory=list)
    #: per cut edge (``features=``), the bitmask of tasks that reach it
    cut_masks: dict[Edge, int] = field(default_factory=dict)
    #: per cut edge, the nodes that consume it with their task masks (once per use)
    cut_consumers: dict[Edge, list[tuple[Node, int]]] = field(default_factory=dict)
    #: number of edges into each node from the rest of the graph
    uses: dict[Node, int] = field(default_factory=dict)
    #: the nodes two or more tasks reach, in topological order (losses first)
    common_nodes: list[Node] = field(default_factory=list)
    #: node -> its child edges (not crossing cut edges)
    children: dict[Node, list[Edge]] = field(default_factory=dict)

    def separable(self, task: int) -> bool:
        """Whether task ``task`` can be back-propagated to its boundary without entering the trunk.

        ``autograd.grad`` runs every node on a path from the loss to any of its inputs. If one
        boundary node of the task (or a leaf it reaches directly) lies below another of its boundary
        nodes, capturing both in one call would run part of the trunk and count it twice; such a
        task is instead differentiated from its loss in phase 2.
        """
        boundary = self.boundary[task]
        common_ids = {id(t) for t in self.common_leaves}
        shared_direct = {id(t) for t in self.direct_leaves[task] if id(t) in common_ids}
        if len(boundary) <= 1 and not shared_direct:
            return True
        targets = {node for node, _ in boundary}
        stack = [child for node, _ in boundary for child, _ in self.children.get(node, ())]
        seen: set[Node] = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in targets:
                return False
            variable = getattr(node, "variable", None)
            if variable is not None and id(variable) in shared_direct:
                return False
            stack.extend(child for child, _ in self.children.get(node, ()))
        return True

    def leaf_mask(self, tensor: Tensor) -> int:
        entry = self.leaves.get(id(tensor))
        return 0 if entry is None else entry[1]


def analyse(roots: list[Edge | None], cut_edges: set[Edge] | None = None, *, classify: bool = True) -> TaskGraph:
    """Label the graph below ``roots`` (one edge per task, ``None`` for a constant loss).

    Traversal stops at ``cut_edges`` (the ``features=`` tensors), recording which tasks reach them.
    ``classify=False`` only labels the leaves (what the loss-only path needs), skipping the
    boundaries and regions the two-phase engine uses.
    """
    cuts = cut_edges or set()
    T = len(roots)
    children: dict[Node, list[Edge]] = {}
    indegree: dict[Node, int] = {}
    stack: list[Node] = []
    for root in roots:
        if root is not None and root[0] not in children:
            children[root[0]] = []
            indegree[root[0]] = 0
            stack.append(root[0])
    cut_parents: dict[Node, list[Edge]] = {}
    variables: dict[Node, Tensor] = {}  # AccumulateGrad node -> its leaf tensor
    while stack:
        node = stack.pop()
        if type(node).__name__ == "AccumulateGrad":
            variables[node] = node.variable
            children[node] = []
            continue
        kept = []
        for child, nr in node.next_functions:
            if child is None:
                continue
            if (child, nr) in cuts:
                cut_parents.setdefault(node, []).append((child, nr))
                continue
            kept.append((child, nr))
            if child not in children:
                children[child] = []
                indegree[child] = 0
                stack.append(child)
            indegree[child] += 1
        children[node] = kept

    masks: dict[Node, int] = dict.fromkeys(children, 0)
    graph = TaskGraph(T, boundary=[[] for _ in range(T)], direct_leaves=[[] for _ in range(T)])
    root_cuts: list[tuple[int, Edge]] = []
    for i, root in enumerate(roots):
        if root is None:
            continue
        if root in cuts:
            root_cuts.append((i, root))
            continue
        masks[root[0]] |= 1 << i
    graph.uses = dict(indegree)
    graph.children = children
    queue = deque(node for node, degree in indegree.items() if degree == 0)
    order: list[Node] = []
    while queue:
        node = queue.popleft()
        order.append(node)
        mask = masks[node]
        for child, _ in children[node]:
            masks[child] |= mask
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)

    for node, variable in variables.items():
        if masks[node]:
            graph.leaves[id(variable)] = (variable, masks[node])
    if not classify:
        return graph
    for i, edge in root_cuts:
        graph.cut_masks[edge] = graph.cut_masks.get(edge, 0) | (1 << i)
    boundary_sets: list[set[Edge]] = [set() for _ in range(T)]
    common_leaf_ids: set[int] = set()
    direct_leaf_ids: list[set[int]] = [set() for _ in range(T)]

    def attribute(child: Node, nr: int, task: int, exclusive: bool) -> None:
        """Record ``child`` as a leaf of ``task`` (exclusive parent) or of the common region,
        or the edge into it as a boundary of ``task``."""
        variable = variables.get(child)
        if variable is not None:
            ids, leaves = (
                (direct_leaf_ids[task], graph.direct_leaves[task])
                if exclusive
                else (common_leaf_ids, graph.common_leaves)
            )
            if id(variable) not in ids:
                ids.add(id(variable))
                leaves.append(variable)
        elif exclusive and masks[child] != 1 << task and (child, nr) not in boundary_sets[task]:
            boundary_sets[task].add((child, nr))
            graph.boundary[task].append((child, nr))

    for node in order:
        mask = masks[node]
        if mask == 0:
            continue
        for edge in cut_parents.get(node, ()):
            graph.cut_masks[edge] = graph.cut_masks.get(edge, 0) | mask
            graph.cut_consumers.setdefault(edge, []).append((node, mask))
        if node in variables:  # AccumulateGrad: a leaf, labelled above
            continue
        exclusive = mask & (mask - 1) == 0
        if not exclusive:
            graph.common_nodes.append(node)
        for child, nr in children[node]:
            attribute(child, nr, mask.bit_length() - 1, exclusive)
    # A root that the losses share (e.g. the entries of one loss vector) is itself the boundary.
    for i, root in enumerate(roots):
        if root is not None and root not in cuts:
            attribute(root[0], root[1], i, exclusive=popcount(masks[root[0]]) == 1 or variables.get(root[0]) is None)
    return graph


def find_nested(edges: list[Edge]) -> tuple[int, int] | None:
    """``(k, j)`` when the tensor of ``edges[k]`` is computed from the tensor of ``edges[j]``, else None."""
    index = {edge: n for n, edge in enumerate(edges)}
    for k, (node, _) in enumerate(edges):
        stack = list(node.next_functions)
        seen: set[Node] = set()
        while stack:
            child, nr = stack.pop()
            if child is None:
                continue
            if (child, nr) in index and index[(child, nr)] != k:
                return k, index[(child, nr)]
            if child in seen:
                continue
            seen.add(child)
            stack.extend(child.next_functions)
    return None
