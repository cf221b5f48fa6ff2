"""Algebraic simplification: rewrite rules that remove work without changing results.

Each rule is one small function commented `# before -> after`; a rule fires only
when the replacement has exactly the type the node had (same dtype, same shape after
broadcasting). Groups: identities (no-op layout ops and casts, x*1, x+0, x-0, x/1,
x**1), chains (view of a view, transpose of a transpose, cast of a lossless cast),
and matmul layouts (a transposed or constant right operand becomes `linear`, whose
weight is [out, in]; a following bias add folds into the `linear`, and a reshape
after it that keeps the features moves before it).

x + 0 -> x turns a -0.0 element of x into itself where the original gave +0.0; the
two compare equal, and kiln (like XLA and TVM) accepts that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import KilnError
from ..ir import Graph, Node, Value, get_op, symbolic, tensor
from ..ir.dtypes import DType
from .manager import Pass, PassReport, register_pass
from .rewrite import INSPECT_BYTES, Rewriter, RuleSet, rewrite

rules = RuleSet()

VIEWS = ("reshape", "squeeze", "unsqueeze")


def _single_user(graph: Graph, value: Value) -> bool:
    """`value` is read by exactly one node and is not a graph output."""
    return len(value.users) == 1 and not any(value is o for o in graph.outputs)


# --- identities -----------------------------------------------------------------------------
@rules.rule(*VIEWS, "expand", "cast", "tile")
def identity_layout(rw: Rewriter, node: Node) -> Value | None:
    # reshape/squeeze/unsqueeze/expand/tile(x) of x's own type -> x ; cast(x) {dtype=x's} -> x
    x = node.inputs[0]
    return x if x.type == node.outputs[0].type and not x.type.dtype.packed else None


@rules.rule("slice")
def identity_slice(rw: Rewriter, node: Node) -> Value | None:
    # slice(x) {whole axis, step=1} -> x
    x = node.inputs[0]
    return x if node.attrs["step"] == 1 and x.type == node.outputs[0].type else None


@rules.rule("concat")
def identity_concat(rw: Rewriter, node: Node) -> Value | None:
    # concat(x) -> x
    return node.inputs[0] if len(node.inputs) == 1 else None


@rules.rule("pad")
def identity_pad(rw: Rewriter, node: Node) -> Value | None:
    # pad(x) {pads=[0, ...]} -> x
    return node.inputs[0] if not any(node.attrs["pads"]) else None


@rules.rule("transpose")
def identity_transpose(rw: Rewriter, node: Node) -> Value | None:
    # transpose(x) {perm=[0, 1, ..., n-1]} -> x
    return node.inputs[0] if list(node.attrs["perm"]) == list(range(len(node.attrs["perm"]))) \
        else None


def _neutral(rw: Rewriter, node: Node, x: Value, other: Value, element: float) -> Value | None:
    """x, if `other` is a known constant whose every element is `element` and the
    node's result has x's type (so broadcasting adds nothing)."""
    if node.outputs[0].type != x.type:
        return None
    array = rw.constant(other)
    if array is None or array.nbytes > INSPECT_BYTES or not np.all(array == element):
        return None
    return x


@rules.rule("mul")
def mul_one(rw: Rewriter, node: Node) -> Value | None:
    # x * 1 -> x ; 1 * x -> x
    a, b = node.inputs
    return _neutral(rw, node, a, b, 1) or _neutral(rw, node, b, a, 1)


@rules.rule("add")
def add_zero(rw: Rewriter, node: Node) -> Value | None:
    # x + 0 -> x ; 0 + x -> x
    a, b = node.inputs
    return _neutral(rw, node, a, b, 0) or _neutral(rw, node, b, a, 0)


@rules.rule("sub")
def sub_zero(rw: Rewriter, node: Node) -> Value | None:
    # x - 0 -> x
    return _neutral(rw, node, node.inputs[0], node.inputs[1], 0)


@rules.rule("div")
def div_one(rw: Rewriter, node: Node) -> Value | None:
    # x / 1 -> x
    return _neutral(rw, node, node.inputs[0], node.inputs[1], 1)


@rules.rule("pow")
def pow_one(rw: Rewriter, node: Node) -> Value | None:
    # x ** 1 -> x
    return _neutral(rw, node, node.inputs[0], node.inputs[1], 1)


# --- chains ---------------------------------------------------------------------------------
@rules.rule(*VIEWS)
def view_of_view(rw: Rewriter, node: Node) -> Value | None:
    # reshape(unsqueeze(reshape(x))) -> reshape(x)   (any chain of reshape/squeeze/unsqueeze)
    inner = node.inputs[0].producer
    if inner is None or inner.op not in VIEWS or node.inputs[0].type.dtype.packed:
        return None
    return rw.add("reshape", [inner.inputs[0]], {"shape": node.outputs[0].type.shape})


@rules.rule("transpose")
def transpose_of_transpose(rw: Rewriter, node: Node) -> Value | None:
    # transpose(transpose(x) {perm=p}) {perm=q} -> transpose(x) {perm=p[q]}, or x if identity
    inner = node.inputs[0].producer
    if inner is None or inner.op != "transpose":
        return None
    p, q = inner.attrs["perm"], node.attrs["perm"]
    perm = [p[i] for i in q]
    x = inner.inputs[0]
    return x if perm == list(range(len(perm))) else rw.add("transpose", [x], {"perm": perm})


# significand bits (with the implicit one) and largest exponent of each float dtype
_FLOAT_FORMAT = {"f16": (11, 15), "bf16": (8, 127), "f32": (24, 127), "f64": (53, 1023)}


def lossless(src: DType, dst: DType) -> bool:
    """Every value of `src` is exactly a value of `dst` (so a cast src -> dst -> t
    equals src -> t)."""
    if src == dst or src.is_bool:
        return True
    if src.packed or dst.packed or dst.is_bool:
        return False
    if src.is_integer:
        lo, hi = int(np.iinfo(src.numpy).min), int(np.iinfo(src.numpy).max)
        if dst.is_integer:
            info = np.iinfo(dst.numpy)
            return int(info.min) <= lo and hi <= int(info.max)
        return max(hi, -lo).bit_length() <= _FLOAT_FORMAT[dst.name][0]
    if dst.is_integer:
        return False
    (src_bits, src_exp), (dst_bits, dst_exp) = _FLOAT_FORMAT[src.name], _FLOAT_FORMAT[dst.name]
    return src_bits <= dst_bits and src_exp <= dst_exp


@rules.rule("cast")
def cast_of_lossless_cast(rw: Rewriter, node: Node) -> Value | None:
    # cast(cast(x) {dtype=wide}) {dtype=t} -> cast(x) {dtype=t}, or x if t is x's dtype
    inner = node.inputs[0].producer
    if inner is None or inner.op != "cast":
        return None
    x = inner.inputs[0]
    if not lossless(x.type.dtype, inner.outputs[0].type.dtype):
        return None
    dtype = node.attrs["dtype"]
    return x if dtype == x.type.dtype else rw.add("cast", [x], {"dtype": dtype})


# --- matmul layouts -------------------------------------------------------------------------
def _linear(rw: Rewriter, node: Node, x: Value, weight: Value, bias: Value | None = None
            ) -> Value | None:
    """`linear(x, weight[, bias])` in place of `node`, if it has the node's type."""
    inputs = [x, weight] + ([bias] if bias is not None else [])
    try:
        types = get_op("linear").infer_types([v.type for v in inputs], {})
    except KilnError:
        return None
    return rw.add("linear", inputs) if types == (node.outputs[0].type,) else None


@rules.rule("matmul")
def matmul_transposed_weight(rw: Rewriter, node: Node) -> Value | None:
    # matmul(x, transpose(w) {perm=[1, 0]}) -> linear(x, w)
    x, wt = node.inputs
    producer = wt.producer
    if producer is None or producer.op != "transpose" or wt.type.rank != 2:
        return None
    return _linear(rw, node, x, producer.inputs[0])


@rules.rule("matmul")
def matmul_constant_weight(rw: Rewriter, node: Node) -> Value | None:
    # matmul(x, W) with W a 2-D constant -> linear(x, W')   where W' = W.T, a new constant
    x, w = node.inputs
    if w.type.rank != 2 or w.producer is None or w.producer.op != "constant":
        return None
    array = rw.constant(w)
    if not _single_user(rw.graph, w) and array.nbytes > INSPECT_BYTES:
        return None   # W stays for its other readers: a copy must be small
    if _linear_type(x, w.type.shape[::-1], w.type.dtype) != node.outputs[0].type:
        return None
    return _linear(rw, node, x, rw.add_constant(np.ascontiguousarray(array.T), f"{w.name}.T"))


def _linear_type(x: Value, weight_shape: tuple, dtype: DType):
    """The type of `linear(x, w)` for a weight of this shape and dtype (None if invalid)."""
    try:
        return get_op("linear").infer_types([x.type, tensor(dtype, *weight_shape)], {})[0]
    except KilnError:
        return None


@rules.rule("add")
def linear_bias(rw: Rewriter, node: Node) -> Value | None:
    # add(linear(x, w), b) with b: [out] -> linear(x, w, b)    (b + linear too)
    for lin, bias in (node.inputs, node.inputs[::-1]):
        producer = lin.producer
        if producer is None or producer.op != "linear" or len(producer.inputs) != 2 \
                or not _single_user(rw.graph, lin) or bias.type.rank != 1:
            continue
        result = _linear(rw, node, *producer.inputs, bias)
        if result is not None:
            return result
    return None


@rules.rule("reshape")
def reshape_before_linear(rw: Rewriter, node: Node) -> Value | None:
    # reshape(linear(y, w, b)) {shape=[*s, n]} -> linear(reshape(y) {shape=[*s, k]}, w, b)
    #   (linear works row by row, so regrouping the rows commutes with it; the new reshape
    #   usually cancels the flattening reshape before y: `view_of_view`, `identity_layout`)
    lin = node.inputs[0].producer
    out = node.outputs[0].type
    if lin is None or lin.op != "linear" or not _single_user(rw.graph, node.inputs[0]) \
            or out.rank < 1 or not symbolic.equal(out.shape[-1], lin.outputs[0].type.shape[-1]):
        return None
    y = lin.inputs[0]
    if y.type.rank < 1 or y.type.dtype.packed:
        return None
    rows = rw.add("reshape", [y], {"shape": out.shape[:-1] + (y.type.shape[-1],)})
    return _linear(rw, node, rows, *lin.inputs[1:])


@register_pass
@dataclass(frozen=True)
class Simplify(Pass):
    """Algebraic simplification: no-op layout ops and casts, x*1, x+0, reshape and
    transpose chains, lossless cast chains, transposed/constant matmul weights -> linear.

    Every rewrite keeps each value's type; runs to a fixed point."""
    name: ClassVar[str] = "simplify"

    def run(self, graph: Graph) -> PassReport:
        counts = rewrite(graph, rules)
        return PassReport(changed=bool(counts), counts=dict(counts))
