"""Constant folding: a node whose inputs are all known at compile time becomes a constant.

The node runs once, now, through its registry reference (the same code the
interpreter runs). A result whose elements are all equal becomes a `full` node (no
weight); any other result becomes a new entry of `graph.constants` read by a
`constant` node.

Size cap: a result is folded only if it has a static shape and takes at most
`max(limit_bytes, bytes of the constant inputs it reads)` — default 1 MiB. Folding
then never grows the weights by more than 1 MiB per node beyond what its inputs
already hold (a transposed or rescaled weight replaces the weight it came from, which
dies), while an `expand` of a scalar to a large activation-sized tensor, or an
`arange` used as a gather index, stays a cheap op at run time instead of a weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import KilnError
from ..ir import Graph, Node, Value
from .manager import Pass, PassReport, register_pass
from .rewrite import Rewriter, RuleSet, evaluate, nbytes, rewrite

FOLD_LIMIT_BYTES = 1 << 20


def fold_rules(limit_bytes: int = FOLD_LIMIT_BYTES) -> RuleSet:
    """The folding rule for every op that has inputs (creation ops are constants already)."""
    from ..ir import all_ops
    from ..ir.registry import HAS_BODY
    rules = RuleSet()
    ops = [name for name, op in all_ops().items()
           if op.min_inputs > 0 and HAS_BODY not in op.traits]

    @rules.rule(*ops)
    def constants_folded(rw: Rewriter, node: Node) -> tuple[Value, ...] | None:
        # op(constant, constant, ...) -> constant
        if not node.inputs or not all(v.type.is_static for v in node.outputs):
            return None
        arrays = [rw.constant(v) for v in node.inputs]
        if any(a is None for a in arrays):
            return None
        budget = max(limit_bytes, sum(a.nbytes for a in arrays))
        if sum(nbytes(v) for v in node.outputs) > budget:
            return None
        results = evaluate(node, arrays)
        return tuple(materialize(rw, node, v, np.asarray(a)) for v, a in zip(node.outputs, results))

    return rules


def materialize(rw: Rewriter, node: Node, value: Value, array: np.ndarray) -> Value:
    """A node producing `array` in place of `value`: a `full` if it is uniform and its
    element is exactly a float, else a new constant."""
    expected = value.type.dtype.numpy
    if array.dtype != expected or array.shape != tuple(value.type.shape):
        raise KilnError(f"constant folding {node.format()}: the reference produced "
                        f"{array.dtype}{list(array.shape)}, declared {value.type}")
    first = array.reshape(-1)[:1]
    if value.type.dtype.packed or array.size == 0 or not np.all(array == first):
        return rw.add_constant(array, value.name)
    as_float = float(first[0])   # exact for every float dtype, -0.0 included
    if not value.type.dtype.is_float and int(first[0]) != as_float:   # a huge int64
        return rw.add_constant(array, value.name)
    return rw.add("full", [], {"shape": value.type.shape, "value": as_float,
                               "dtype": value.type.dtype})


@register_pass
@dataclass(frozen=True)
class ConstantFold(Pass):
    """Evaluate nodes whose inputs are all constants; replace them by constants.

    Results larger than max(limit_bytes, their constant inputs' bytes) stay ops."""
    name: ClassVar[str] = "constant_fold"
    limit_bytes: int = FOLD_LIMIT_BYTES

    def run(self, graph: Graph) -> PassReport:
        counts = rewrite(graph, fold_rules(self.limit_bytes))
        return PassReport(changed=bool(counts), counts=dict(counts))
