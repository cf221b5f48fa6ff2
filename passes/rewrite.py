"""Local rewrite rules and the driver that applies them to a fixed point.

A rule looks at one node and returns the values that replace its outputs (building
any new nodes through the `Rewriter`, which inserts them just before that node), or
None to leave it alone:

    rules = RuleSet()

    @rules.rule("reshape")
    def reshape_identity(rw: Rewriter, node: Node) -> Value | None:
        # reshape(x) {shape=x.shape} -> x
        x = node.inputs[0]
        return x if x.type == node.output.type else None

`rewrite(graph, rules)` sweeps the graph in order, applies the first rule that fires
to each live node, redirects the node's users to the replacement, removes what died
(dead-code elimination) and repeats until a sweep changes nothing. Rules never erase
nodes or touch use-lists themselves; only `Graph` methods do.

This module also answers "is this value a known constant, and what is it?"
(`Rewriter.constant`), which folding and simplification share.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import PipelineError
from ..ir import Graph, Node, Value, get_op
from ..ir.registry import CREATION, HAS_BODY
from .dce import eliminate_dead_code

# Known-constant arrays above this many bytes are not materialized just to look at
# them (x*1 checks, evaluating a `full` of a big static shape).
INSPECT_BYTES = 1 << 22

RuleFn = Callable[["Rewriter", Node], "Value | Sequence[Value] | None"]


@dataclass(frozen=True)
class Rule:
    name: str                # the count's name in the pass report
    ops: frozenset[str]      # the ops it looks at
    fn: RuleFn


@dataclass
class RuleSet:
    """Rules in the order they are tried; `@rules.rule("op", ...)` adds one."""
    rules: list[Rule] = field(default_factory=list)

    def rule(self, *ops: str) -> Callable[[RuleFn], RuleFn]:
        def add(fn: RuleFn) -> RuleFn:
            self.rules.append(Rule(fn.__name__, frozenset(ops), fn))
            return fn
        return add

    def __add__(self, other: "RuleSet") -> "RuleSet":
        return RuleSet(self.rules + other.rules)


class Rewriter:
    """What a rule may do: read known constants, and add nodes before the node it is
    rewriting (named after that node's first output, with its source)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.node: Node | None = None
        self._cache: dict[int, np.ndarray | None] = {}

    def _index(self) -> int:
        return self.graph.nodes.index(self.node)

    def add(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None
            ) -> Value:
        """A new single-output node before the current one; returns its output."""
        node = self.graph.add_node(op, inputs, attrs, name=self.node.outputs[0].name,
                                   source=self.node.source, index=self._index())
        return node.outputs[0]

    def add_constant(self, array: np.ndarray, hint: str) -> Value:
        """A new weight (in `graph.constants`) and its constant node before the current one."""
        index = self._index()
        ref = hint
        i = 0
        while ref in self.graph.constants:
            i += 1
            ref = f"{hint}_{i}"
        value = self.graph.add_constant(ref, array, source=self.node.source)
        self.graph.nodes.insert(index, self.graph.nodes.pop())   # add_constant appends
        self._cache[id(value)] = self.graph.constants[ref]
        return value

    def constant(self, value: Value) -> np.ndarray | None:
        """The array of `value` when it is known at compile time: the output of a
        `constant` node, or of a creation op (`full`, `arange`) whose attributes are
        static and whose result is at most INSPECT_BYTES. None otherwise."""
        key = id(value)
        if key not in self._cache:
            self._cache[key] = self._evaluate_creation(value)
        return self._cache[key]

    def _evaluate_creation(self, value: Value) -> np.ndarray | None:
        node = value.producer
        if node is None:
            return None
        if node.op == "constant":
            return self.graph.constant_array(node)
        opdef = get_op(node.op)
        if CREATION not in opdef.traits or node.inputs or not static_and_small(node):
            return None
        return evaluate(node, [])[0]

    def is_constant(self, value: Value) -> bool:
        node = value.producer
        return node is not None and (node.op == "constant" or self.constant(value) is not None)


def static_and_small(node: Node, limit: int = INSPECT_BYTES) -> bool:
    """Every output has a static shape and at most `limit` bytes."""
    return all(v.type.is_static and nbytes(v) <= limit for v in node.outputs)


def nbytes(value: Value) -> int:
    """Bytes of a statically shaped value."""
    size = int(np.prod(value.type.shape, dtype=np.int64)) if value.type.shape else 1
    return size * value.type.dtype.numpy.itemsize


def evaluate(node: Node, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Run `node`'s reference on `arrays` (all attributes static)."""
    opdef = get_op(node.op)
    return opdef.run_reference(list(arrays), opdef.bind_attrs(node.attrs, {}))


def is_live(graph: Graph, node: Node) -> bool:
    return any(v.users or any(v is o for o in graph.outputs) for v in node.outputs)


def rewrite(graph: Graph, rules: RuleSet, *, max_rounds: int = 100,
            after_sweep: Callable[[Graph, Counter], None] | None = None) -> Counter:
    """Apply `rules` until a sweep changes nothing; returns how often each rule fired
    (and `dce`: nodes erased because nothing read them any more). `after_sweep` runs
    whole-graph rewrites (CSE) after each sweep; it adds its own counts."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules.rules:
        for op in r.ops:
            by_op.setdefault(op, []).append(r)
    counts: Counter = Counter()
    for _ in range(max_rounds):
        before = sum(counts.values())
        rw = Rewriter(graph)
        for node in list(graph.nodes):
            candidates = by_op.get(node.op, ())
            if not candidates or HAS_BODY in get_op(node.op).traits or not is_live(graph, node):
                continue
            for r in candidates:
                rw.node = node
                result = r.fn(rw, node)
                if result is None:
                    continue
                replace_outputs(graph, node, result, r.name)
                counts[r.name] += 1
                break
        if after_sweep is not None:
            after_sweep(graph, counts)
        counts["dce"] += eliminate_dead_code(graph)
        if sum(counts.values()) == before:
            return +counts
    raise PipelineError(f"rewrite rules {[r.name for r in rules.rules]} did not reach a fixed "
                        f"point on graph {graph.name} in {max_rounds} sweeps (counts so far: "
                        f"{dict(+counts)}); two rules undo each other")


def replace_outputs(graph: Graph, node: Node, result: Value | Sequence[Value], rule: str) -> None:
    """Point every user of `node`'s outputs at `result` (same types, checked)."""
    new = (result,) if isinstance(result, Value) else tuple(result)
    if len(new) != len(node.outputs) or any(a.type != b.type for a, b in zip(node.outputs, new)):
        raise PipelineError(f"rewrite rule {rule} replaced {node.format()} by values of types "
                            f"{[str(v.type) for v in new]}; the types must stay the same")
    for old, value in zip(node.outputs, new):
        graph.replace_all_uses_with(old, value)
