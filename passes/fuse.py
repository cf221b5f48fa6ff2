"""Operator fusion: groups of nodes become `fused` nodes, each one kernel.

    fuse(max_group=16)
      -> attention: `softmax(q @ k^T * scale + mask) @ v`, written out op by op, becomes
         one `scaled_dot_product_attention` node (the fused attention kernel)
      -> grouping, seeds in graph order; a seed is an ungrouped node that can lead a
         group: a contraction (matmul, linear, conv, attention), a reduction
         (softmax, norms, sum, mean) or an elementwise node
           grow: users of the group's values join while they are elementwise (or, in
                 a group without an anchor yet, a reduction, which becomes its
                 anchor), the group stays under `max_group` nodes, and joining makes
                 no cycle (no input from outside the group depends on the group)
           cut:  keep the largest prefix of the grown set that ends in ONE value
                 every other member's value feeds only members (so no member is
                 computed twice and no intermediate is written out)
      -> each group of two or more nodes becomes a `fused` node whose body holds the
         members, whose inputs are the values the members read from outside and
         whose output is the group's one value; nodes are reordered topologically
         and the quotient graph is checked acyclic (networkx)

Kinds (the `kind` attribute): "contraction" (a GEMM/conv epilogue: bias,
activation, residual add; its elementwise nodes have the anchor's output shape),
"attention", "reduction" (e.g. rms-norm written as pow -> mean -> add -> rsqrt ->
mul: one kernel), "elementwise". A group never holds two anchors, so expensive work
is never duplicated: only elementwise values are recomputed where inlined.

Views (reshape, squeeze, unsqueeze), layout ops, gathers and creation ops stay
ordinary nodes, and so do integer divisions (`MAY_RAISE`: their kernel checks the
divisor, which must be a kernel input). Imports kiln.ir, networkx (on first use) and the pass API.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import KilnError
from ..ir import Graph, Node, Value
from ..ir.registry import CONTRACTION, ELEMENTWISE, HAS_BODY, MAY_RAISE, REDUCTION
from ..lazy_import import lazy_import
from .manager import Pass, PassReport, register_pass

nx = lazy_import("networkx")   # ~0.2 s to import; a graph-cache hit never fuses


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Fuse elementwise chains, GEMM/conv epilogues, reductions and attention into groups.

    Needs a verified graph; keeps every value the graph returns and every result (the
    fused graph interprets to the same outputs). Fused nodes already there are left
    alone (never grown, never nested), so a second run changes nothing."""
    name: ClassVar[str] = "fuse"
    max_group: int = 16
    attention: bool = True

    def run(self, graph: Graph) -> PassReport:
        before = kernel_count(graph)
        rewritten = rewrite_attention(graph) if self.attention else 0
        groups = find_groups(graph, self.max_group)
        for group in groups:
            make_fused_node(graph, group)
        reorder(graph)
        kinds: dict[str, int] = {}
        for node in graph.nodes:
            if node.body is not None:
                kinds[node.attrs["kind"]] = kinds.get(node.attrs["kind"], 0) + 1
        counts = {"groups": len(groups), "nodes_fused": sum(len(g.members) for g in groups),
                  "attention_rewritten": rewritten, "kernels_before": before,
                  "kernels_after": kernel_count(graph)}
        counts |= {f"kind_{k}": v for k, v in sorted(kinds.items())}
        return PassReport(changed=bool(groups or rewritten), counts=counts)


def kernel_count(graph: Graph) -> int:
    """Nodes that run a kernel: not constants, not views."""
    return sum(1 for n in graph.nodes if n.op != "constant" and not _is_view(n))


def _is_view(node: Node) -> bool:
    return "view" in node.opdef.traits


# --- which nodes may join ------------------------------------------------------------
def _traits(node: Node) -> frozenset[str]:
    return node.opdef.traits


def _is_anchor(node: Node) -> bool:
    return bool(_traits(node) & {CONTRACTION, REDUCTION})


def _checks_inputs(node: Node) -> bool:
    """An op that raises on some integer inputs (division by zero): it stays a kernel of
    its own, which checks its inputs before computing; inside a group a divisor may be
    an intermediate no check can see."""
    return MAY_RAISE in _traits(node) and not all(v.type.dtype.is_float for v in node.inputs)


def _can_seed(node: Node) -> bool:
    return node.op != "constant" and HAS_BODY not in _traits(node) and not _checks_inputs(
        node) and (_is_anchor(node) or ELEMENTWISE in _traits(node))


@dataclass
class Group:
    """A set of nodes that becomes one fused node; `anchor` is its expensive node."""
    members: list[Node]        # in graph order
    anchor: Node | None
    output: Value

    @property
    def kind(self) -> str:
        if self.anchor is None:
            return "elementwise"
        if self.anchor.op == "scaled_dot_product_attention":
            return "attention"
        return "contraction" if CONTRACTION in _traits(self.anchor) else "reduction"


class _Grouper:
    """Greedy grouping over the graph in order (see the module docstring)."""

    def __init__(self, graph: Graph, max_group: int):
        self.graph, self.max_group = graph, max_group
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.grouped: set[int] = set()
        self.outputs = {id(v) for v in graph.outputs}

    def run(self) -> list[Group]:
        groups = []
        for node in self.graph.nodes:
            if id(node) in self.grouped or not _can_seed(node):
                continue
            group = self.grow(node)
            if group is not None:
                groups.append(group)
                self.grouped.update(id(n) for n in group.members)
        return groups

    def grow(self, seed: Node) -> Group | None:
        members = [seed]
        inside = {id(seed)}
        anchor = seed if _is_anchor(seed) else None
        frontier = self._users(seed, inside)
        while frontier and len(members) < self.max_group:
            frontier.sort(key=lambda n: self.index[id(n)])
            node = frontier.pop(0)
            if id(node) in inside or not self._may_join(node, anchor, inside):
                continue
            if _is_anchor(node):
                anchor = node
            members.append(node)
            inside.add(id(node))
            frontier += [u for u in self._users(node, inside) if u not in frontier]
        return self._cut(members, anchor)

    def _users(self, node: Node, inside: set[int]) -> list[Node]:
        return [u for v in node.outputs for u in v.users
                if id(u) not in inside and id(u) not in self.grouped]

    def _may_join(self, node: Node, anchor: Node | None, inside: set[int]) -> bool:
        traits = _traits(node)
        if len(node.outputs) != 1 or HAS_BODY in traits or _checks_inputs(node):
            return False
        if ELEMENTWISE in traits:
            if anchor is not None and CONTRACTION in _traits(anchor) \
                    and node.output.type.shape != anchor.outputs[0].type.shape:
                return False    # a GEMM epilogue runs over the GEMM's own output tile
        elif not (REDUCTION in traits and anchor is None):
            return False
        return not self._depends_on_group(node, inside)

    def _depends_on_group(self, node: Node, inside: set[int]) -> bool:
        """Whether an input of `node` from outside the group is computed from the group
        (then fusing `node` in would make a cycle)."""
        first = min(self.index[i] for i in inside)
        stack = [v.producer for v in node.inputs
                 if v.producer is not None and id(v.producer) not in inside]
        seen: set[int] = set()
        while stack:
            n = stack.pop()
            if id(n) in seen or self.index[id(n)] < first:
                continue
            seen.add(id(n))
            if id(n) in inside:
                return True
            stack += [v.producer for v in n.inputs if v.producer is not None]
        return False

    def _cut(self, members: list[Node], anchor: Node | None) -> Group | None:
        """The largest group ending in one value: for each candidate last node (latest
        first), the members it depends on must feed only each other and it."""
        position = {id(n): i for i, n in enumerate(members)}
        for tip in reversed(members[1:]):
            part = self._ancestors(tip, position)
            if anchor is not None and id(anchor) not in part:
                continue
            if not all(self._stays_inside(n, part, tip) for n in members if id(n) in part):
                continue
            chosen = [n for n in members if id(n) in part]
            if len(chosen) >= 2:
                group_anchor = anchor if anchor is not None and id(anchor) in part else None
                return Group(chosen, group_anchor, tip.output)
        return None

    @staticmethod
    def _ancestors(tip: Node, position: dict[int, int]) -> set[int]:
        part, stack = set(), [tip]
        while stack:
            n = stack.pop()
            if id(n) in part:
                continue
            part.add(id(n))
            stack += [v.producer for v in n.inputs
                      if v.producer is not None and id(v.producer) in position]
        return part

    def _stays_inside(self, node: Node, part: set[int], tip: Node) -> bool:
        if node is tip:
            return True
        v = node.output
        return id(v) not in self.outputs and all(id(u) in part for u in v.users)


def find_groups(graph: Graph, max_group: int = 16) -> list[Group]:
    """The groups `fuse` makes, without changing the graph."""
    if max_group < 2:
        return []
    return _Grouper(graph, max_group).run()


# --- building fused nodes -------------------------------------------------------------
def make_fused_node(graph: Graph, group: Group) -> Node:
    """Replace the group's members by one `fused` node computing `group.output`."""
    inside = {id(n) for n in group.members}
    external: list[Value] = []
    for node in group.members:
        for v in node.inputs:
            if (v.producer is None or id(v.producer) not in inside) and v not in external:
                external.append(v)
    # a `full` of static shape is copied into the body: the kernel reads an immediate
    # (pow(x, 2.0) stays x*x) instead of a buffer
    fills = [v for v in external if _is_static_full(v)]
    external = [v for v in external if v not in fills]
    name = (group.anchor or group.members[0]).op + "_group"
    body = Graph(name)
    mapping: dict[int, Value] = {id(v): body.add_input(v.name, v.type) for v in external}
    for v in fills:
        mapping[id(v)] = body.add_node("full", [], v.producer.attrs, output_names=[v.name]).output
    for node in group.members:
        copy = body.add_node(node.op, [mapping[id(v)] for v in node.inputs], node.attrs,
                             output_types=[v.type for v in node.outputs],
                             output_names=[v.name for v in node.outputs], source=node.source)
        mapping.update((id(v), c) for v, c in zip(node.outputs, copy.outputs))
    body.set_outputs([mapping[id(group.output)]])
    out = group.output
    final_name = out.name
    graph.rename(out, graph.unique_name(f"{final_name}_unfused"))
    fused = graph.add_node("fused", external, {"kind": group.kind}, body=body,
                           output_names=[final_name], source=group.output.producer.source,
                           index=graph.nodes.index(group.members[-1]) + 1)
    graph.replace_all_uses_with(out, fused.output)
    for node in reversed(group.members):
        graph.erase_node(node)
    for v in fills:
        if not v.users and all(v is not o for o in graph.outputs):
            graph.erase_node(v.producer)
    return fused


def _is_static_full(v: Value) -> bool:
    return v.producer is not None and v.producer.op == "full" and all(
        isinstance(d, int) for d in v.type.shape)


def reorder(graph: Graph) -> None:
    """Sort the nodes topologically, keeping the present order where it is free; a
    cycle (a fusion bug) raises naming the nodes on it."""
    dg = dependency_graph(graph)
    if not nx.is_directed_acyclic_graph(dg):
        cycle = nx.find_cycle(dg)
        raise KilnError(f"fusion made a cycle through {[graph.nodes[i].op for i, _ in cycle]}")
    order = list(nx.lexicographical_topological_sort(dg))
    graph.nodes = [graph.nodes[i] for i in order]


def dependency_graph(graph: Graph) -> nx.DiGraph:
    """Node index -> node index for every value a node reads from another node."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    dg = nx.DiGraph()
    dg.add_nodes_from(range(len(graph.nodes)))
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v.producer is not None:
                dg.add_edge(index[id(v.producer)], i)
    return dg


# --- attention ------------------------------------------------------------------------
def rewrite_attention(graph: Graph) -> int:
    """`matmul(softmax(matmul(q, kT) * s [+ mask], -1), v)` -> one
    `scaled_dot_product_attention(q, k, v[, mask]) {scale=s}`; returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "matmul" and node in graph.nodes:
            count += _rewrite_one_attention(graph, node)
    return count


def _single_use(v: Value, graph: Graph) -> bool:
    return len(v.users) == 1 and all(v is not o for o in graph.outputs)


def _scalar_constant(graph: Graph, v: Value) -> float | None:
    node = v.producer
    if node is None or node.op != "constant":
        return None
    array = graph.constants[node.attrs["ref"]]
    return float(array.reshape(())) if array.size == 1 else None


def _rewrite_one_attention(graph: Graph, pv: Node) -> int:
    """One match at `pv` (the probabilities @ v matmul), or 0."""
    probs, v = pv.inputs
    softmax = probs.producer
    if softmax is None or softmax.op != "softmax" or not _single_use(probs, graph):
        return 0
    rank = probs.type.rank
    if rank < 2 or softmax.attrs["axis"] not in (-1, rank - 1):
        return 0
    scores, dead = softmax.inputs[0], [softmax]
    mask = None
    node = scores.producer
    if node is not None and node.op == "add" and _single_use(scores, graph):
        # scores + mask: the mask must broadcast to the scores, not widen them
        a, b = node.inputs
        if a.producer is not None and a.producer.op in ("mul", "div", "matmul") \
                and node.output.type == a.type:
            scores, mask, dead = a, b, dead + [node]
    scale = 1.0
    node = scores.producer
    if node is not None and node.op in ("mul", "div") and _single_use(scores, graph):
        factor = _scalar_constant(graph, node.inputs[1])
        if factor is not None and factor != 0 and node.output.type == node.inputs[0].type:
            scale = factor if node.op == "mul" else 1.0 / factor
            scores, dead = node.inputs[0], dead + [node]
    qk = scores.producer
    if qk is None or qk.op != "matmul" or not _single_use(scores, graph):
        return 0
    q, kt = qk.inputs
    dtypes = {t.type.dtype for t in (q, kt, v)} | ({mask.type.dtype} if mask is not None else set())
    if len(dtypes | {pv.output.type.dtype}) != 1 or not q.type.dtype.is_float:
        return 0
    if not (q.type.rank == kt.type.rank == v.type.rank == rank >= 3):
        return 0
    if mask is not None and mask.type.rank > rank:
        return 0
    k = _untranspose(graph, kt, pv)
    if k is None:
        return 0
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    try:
        sdpa = graph.add_node("scaled_dot_product_attention", inputs, {"scale": scale},
                              name="attention", source=pv.source,
                              index=graph.nodes.index(pv))
    except KilnError:
        return 0    # shapes the attention op does not take (e.g. q and k batch dims differ)
    if sdpa.output.type != pv.output.type:
        graph.erase_node(sdpa)
        return 0
    graph.replace_all_uses_with(pv.output, sdpa.output)
    for n in [pv, *dead, qk, kt.producer]:     # users before producers
        if n is not None and n.op != "constant" and not any(
                o.users or any(o is g for g in graph.outputs) for o in n.outputs):
            graph.erase_node(n)
    return 1


def _untranspose(graph: Graph, kt: Value, before: Node) -> Value | None:
    """k such that kt = k with its last two axes swapped: the input of a transpose
    that swaps them, or a new transpose of kt's source."""
    node = kt.producer
    rank = kt.type.rank
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    if node is not None and node.op == "transpose":
        perm = list(node.attrs["perm"])
        k_perm = [perm[i] for i in swap]     # transpose(x, perm) then swap = x permuted by k_perm
        if k_perm == list(range(rank)):
            return node.inputs[0]
        return graph.add_node("transpose", [node.inputs[0]], {"perm": tuple(k_perm)},
                              name="key", index=graph.nodes.index(before)).output
    return graph.add_node("transpose", [kt], {"perm": tuple(swap)}, name="key",
                          index=graph.nodes.index(before)).output

