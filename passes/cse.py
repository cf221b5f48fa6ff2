"""Common-subexpression elimination: nodes that compute the same thing become one.

Two nodes are the same when they apply the same op to the same input values (in any
order for a commutative op) with equal attributes — value names play no part. Two
constant nodes are the same when their arrays are equal (dtype, shape and bytes),
whatever their table entries are called. The first node in graph order survives;
the later one's users move to it, and it dies (its weight too, if nothing else
reads it). Fused nodes (with a body) are left alone.
"""
from __future__ import annotations

import hashlib

import numpy as np
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable

from ..ir import Graph, Node, get_op
from ..ir.graph import attr_key
from ..ir.registry import COMMUTATIVE, HAS_BODY
from .dce import eliminate_dead_code
from .manager import Pass, PassReport, register_pass


def node_key(graph: Graph, node: Node, digests: dict[int, tuple[Any, str]]) -> Hashable | None:
    """What `node` computes, independent of its output names; None if it is never merged.
    `digests` caches constant arrays' hashes by array identity."""
    if node.op == "constant":
        array = graph.constant_array(node)
        if id(array) not in digests:   # holding the array keeps its id from being reused
            digests[id(array)] = (array, _sample_digest(array))
        return ("constant", str(array.dtype), array.shape, digests[id(array)][1])
    traits = get_op(node.op).traits
    if HAS_BODY in traits:
        return None
    inputs: tuple[Any, ...] = tuple(id(v) for v in node.inputs)
    if COMMUTATIVE in traits:
        inputs = tuple(sorted(inputs))
    attrs = tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, inputs, attrs)


SAMPLE = 4096   # elements of a constant that its CSE key hashes


def _sample_digest(array: np.ndarray) -> str:
    """A hash of up to SAMPLE evenly spaced elements: equal arrays have equal digests,
    and arrays whose digests are equal are compared in full before they merge (hashing
    every byte of every weight cost seconds on BERT-base)."""
    flat = array.reshape(-1)
    sample = np.ascontiguousarray(flat[::max(1, flat.size // SAMPLE)])
    return hashlib.blake2b(sample.view(np.uint8).data, digest_size=16).hexdigest()


def _same_constant(graph: Graph, a: Node, b: Node) -> bool:
    x, y = graph.constant_array(a), graph.constant_array(b)
    return x is y or (x.dtype == y.dtype and x.shape == y.shape and np.array_equal(
        x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)))


def eliminate_common_subexpressions(graph: Graph,
                                    digests: dict[int, tuple[Any, str]] | None = None) -> int:
    """Merge equal nodes in place (one sweep in graph order suffices: users are
    rewritten before they are keyed). Returns how many nodes were merged away.
    Pass the same `digests` dict to repeated calls on one graph to hash each weight once
    (constant arrays are never changed in place)."""
    digests = {} if digests is None else digests
    seen: dict[Hashable, list[Node]] = {}
    merged = 0
    for node in list(graph.nodes):
        key = node_key(graph, node, digests)
        if key is None:
            continue
        candidates = seen.setdefault(key, [])
        first = next((n for n in candidates if node.op != "constant"
                      or _same_constant(graph, n, node)), None)
        if first is None:
            candidates.append(node)
            continue
        if any(a.type != b.type for a, b in zip(first.outputs, node.outputs)):
            continue
        for old, new in zip(node.outputs, first.outputs):
            graph.replace_all_uses_with(old, new)
        merged += 1
    return merged


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes that apply the same op to the same inputs with the same attributes.

    Value-name invariant; equal constants merge too. Removes the merged nodes."""
    name: ClassVar[str] = "cse"

    def run(self, graph: Graph) -> PassReport:
        merged = eliminate_common_subexpressions(graph)
        if merged:
            eliminate_dead_code(graph)
        return PassReport(changed=merged > 0, counts={"nodes_merged": merged})
