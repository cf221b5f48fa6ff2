"""What every TVM lowering module shares: `LowerContext` (one node's dims as TIR
expressions), kiln dtype -> TVM dtype, and TE expression helpers that give NumPy's
semantics where TIR's differ:

- `nan_max` / `nan_min`: NaN-propagating (TIR's Max/Min lower to a compare-select
  that drops a NaN in one operand);
- `widen` / `narrow`: half types (f16, bf16) are computed in float32 and rounded
  back once, as the references do (bfloat16 by hand: see their docstrings);
- `const`: a Python float rounded to a dtype exactly as NumPy rounds it;
- `load_broadcast`: NumPy broadcasting of an input against the output index;
- `let`: a value computed once (TVM expressions are trees: a reused operand is copied).

Imports only TVM and `kiln.ir`; the op lowerings (`lower_*.py`) import this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np
import sympy
from tvm import te, tirx

from ...errors import CodegenError
from ...ir import symbolic
from ...ir.dtypes import DType
from ...ir.graph import Node
from ...ir.types import TensorType

INDEX = "int64"   # the dtype of every shape, loop and index expression

_TVM_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
               "i8": "int8", "u8": "uint8", "i16": "int16", "i32": "int32", "i64": "int64",
               "bool": "bool"}
HALF = ("float16", "bfloat16")


def tvm_dtype(dt: DType) -> str:
    """TVM's name of a kiln dtype; packed int4 has none (no op computes on it yet)."""
    if dt.name not in _TVM_DTYPES:
        raise CodegenError(f"dtype {dt!r} has no TVM lowering (packed types need the "
                           "quantization kernels)")
    return _TVM_DTYPES[dt.name]


def dtype_of(e: Any) -> str:
    """The dtype of a TIR expression, a tensor element or a te.Tensor, as a string."""
    ty = getattr(e, "ty", None)
    if ty is not None and hasattr(ty, "dtype"):
        return str(ty.dtype)
    return str(e.dtype)


def is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def is_signed(dtype: str) -> bool:
    return dtype.startswith("int")


def static(e) -> int | None:
    """The value of a static extent (an int or an IntImm), else None."""
    if isinstance(e, int):
        return e
    return e.value if isinstance(e, tirx.IntImm) else None


def index(value: int) -> tirx.IntImm:
    return tirx.IntImm(INDEX, value)


class LowerContext:
    """What a lowering may ask about the node it lowers.

    `dim(d)` turns a kiln dim (an int or a symbol expression) into a TIR expression;
    every symbol becomes one int64 `tirx.Var`, shared by name within the node, so
    `"batch"` in an input shape and in an output shape is the same variable.

    A kernel binds its variables from its buffers' shapes, so an expression dim whose
    symbols are not all dims of their own in the node's shapes (`linear` on
    `[batch*seq, 768]`) becomes one variable named after the whole expression, bound
    by the buffer that has it. A symbol bound neither way (`past` in
    `arange(past, past + seq)`) becomes a scalar parameter (see `lower_node`).
    """

    def __init__(self, node: Node, kernel: "LowerContext | None" = None):
        """`kernel`: the context of the whole kernel when `node` is one member of a
        fused group; the members then share its variables and checks, and dims are
        bound (or opaque) by the group's buffers, not by the member's own types."""
        self.node = node
        self.in_types: tuple[TensorType, ...] = tuple(v.type for v in node.inputs)
        self.out_types: tuple[TensorType, ...] = tuple(v.type for v in node.outputs)
        if kernel is not None:
            self.vars, self.checks = kernel.vars, kernel.checks
            self._bound, self._opaque = kernel._bound, kernel._opaque
            return
        self.vars: dict[str, tirx.Var] = {}
        self.checks: list[Check] = []
        dims = {d for t in self.in_types + self.out_types for d in t.shape if isinstance(d, str)}
        self._bound = {d for d in dims if symbolic.SYMBOL_NAME.match(d)}
        self._opaque = {d for d in dims if not symbolic.symbols(d) <= self._bound}

    def var(self, name: str) -> tirx.Var:
        if name not in self.vars:
            self.vars[name] = tirx.Var(name, INDEX)
        return self.vars[name]

    def dim(self, d: symbolic.Dim) -> tirx.Expr:
        if isinstance(d, int):
            return index(d)
        if d in self._opaque:
            return self.var(d)
        return _to_prim(symbolic.to_expr(d), self.var)

    def shape(self, shape: Sequence[symbolic.Dim]) -> list[tirx.Expr]:
        return [self.dim(d) for d in shape]

    def out_shape(self, i: int = 0) -> list[tirx.Expr]:
        return self.shape(self.out_types[i].shape)

    def out_dtype(self, i: int = 0) -> str:
        return tvm_dtype(self.out_types[i].dtype)

    def require(self, tensor: te.Tensor, holds: Callable[[tirx.Expr], tirx.Expr], kind: str,
                message: str) -> None:
        """Make the kernel check every element x of input `tensor` for holds(x) before it
        computes anything, and fail with `kind` ("ValueError", "IndexError") and
        `message` otherwise: the inputs the reference refuses (a zero integer divisor,
        an index out of range) raise instead of giving a made-up answer."""
        self.checks.append(Check(tensor, holds, kind, f"{self.node.op}: {message}"))

    def fail(self, message: str) -> CodegenError:
        """An error naming this node: `raise ctx.fail("...")`."""
        source = f" (from {self.node.source})" if self.node.source else ""
        return CodegenError(f"TVM lowering of {self.node.format()}{source}: {message}")


@dataclass(frozen=True)
class Check:
    """An input condition a kernel verifies before computing (see LowerContext.require)."""
    tensor: te.Tensor
    holds: Callable[[tirx.Expr], tirx.Expr]
    kind: str
    message: str


def _to_prim(e: sympy.Expr, var: Callable[[str], tirx.Var]) -> tirx.Expr:
    """A sympy integer expression over positive integer symbols as a TIR expression."""
    numer, denom = sympy.fraction(sympy.together(e))
    if denom != 1:  # integer-valued with rational coefficients: h*(h+1)/2
        return tirx.floordiv(_to_prim(numer, var), _to_prim(denom, var))
    if e.is_Integer:
        return index(int(e))
    if e.is_Symbol:
        return var(e.name)
    args = [a for a in e.args]
    if isinstance(e, sympy.Add):
        out = _to_prim(args[0], var)
        for a in args[1:]:
            out = out + _to_prim(a, var)
        return out
    if isinstance(e, sympy.Mul):
        out = _to_prim(args[0], var)
        for a in args[1:]:
            out = out * _to_prim(a, var)
        return out
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) > 0:
        base = _to_prim(e.base, var)
        out = base
        for _ in range(int(e.exp) - 1):
            out = out * base
        return out
    if isinstance(e, (sympy.floor, sympy.ceiling)):
        n, d = sympy.fraction(sympy.together(e.args[0]))
        pn, pd = _to_prim(n, var), _to_prim(d, var)
        return tirx.floordiv(pn, pd) if isinstance(e, sympy.floor) else \
            tirx.floordiv(pn + pd - index(1), pd)
    if isinstance(e, (sympy.Max, sympy.Min)):
        out = _to_prim(args[0], var)
        for a in args[1:]:
            out = (tirx.max if isinstance(e, sympy.Max) else tirx.min)(out, _to_prim(a, var))
        return out
    if isinstance(e, sympy.Mod):
        return tirx.floormod(_to_prim(args[0], var), _to_prim(args[1], var))
    raise CodegenError(f"dim expression {e} has no TIR form (its function {e.func} is not "
                       "one of + * ** floor ceiling Max Min Mod)")


# --- constants and dtypes ----------------------------------------------------------------
def numpy_scalar(value: Any, dtype: str) -> Any:
    """`value` converted to `dtype` as NumPy converts it (floats round to nearest even,
    float -> int truncates, nonzero -> True), as a Python scalar."""
    with np.errstate(over="ignore"):   # 70000 as float16 is inf, as NumPy says
        if dtype == "bfloat16":
            return float(np.asarray(value, np.float64).astype(ml_dtypes.bfloat16))
        return np.asarray(value).astype(dtype).item()


def const(value: Any, dtype: str) -> tirx.Expr:
    """A constant of `dtype` holding `value` rounded as NumPy rounds it."""
    v = numpy_scalar(value, dtype)
    if dtype == "bool":
        return tirx.const(bool(v), "bool")
    return tirx.const(v, dtype)


def compute_dtype(dtype: str) -> str:
    """The dtype float math runs in: float32 for the half types, else `dtype` itself."""
    return "float32" if dtype in HALF else dtype


def widen(e: tirx.Expr) -> tirx.Expr:
    """A half-type value as float32 (exact); other values unchanged.

    bfloat16 is widened by hand (its bits are float32's upper half): TVM's bfloat16
    legalization turns some casts inside reductions into unsigned-integer conversions."""
    dtype = dtype_of(e)
    if dtype == "bfloat16":
        bits = tirx.reinterpret("uint16", e).astype("uint32")
        return tirx.reinterpret("float32", tirx.shift_left(bits, tirx.const(16, "uint32")))
    return e.astype("float32") if dtype == "float16" else e


def narrow(e: tirx.Expr, dtype: str) -> tirx.Expr:
    """`e` converted to `dtype`; float32 -> bfloat16 rounds to nearest even by hand (TVM
    legalizes that cast into arithmetic that copies its operand, a Let included)."""
    if dtype_of(e) == dtype:
        return e
    if dtype == "bfloat16":
        return let(widen(e).astype("float32"), _to_bfloat16)
    return e.astype(dtype)


def _to_bfloat16(f: tirx.Expr) -> tirx.Expr:
    """A float32 as bfloat16: round to nearest even on the upper 16 bits; NaN stays a
    (quiet) NaN of the same sign."""
    u32 = "uint32"
    bits = tirx.reinterpret(u32, f)
    lsb = tirx.bitwise_and(tirx.shift_right(bits, tirx.const(16, u32)), tirx.const(1, u32))
    rounded = tirx.shift_right(bits + tirx.const(0x7FFF, u32) + lsb, tirx.const(16, u32))
    nan = tirx.bitwise_or(tirx.shift_right(bits, tirx.const(16, u32)), tirx.const(0x40, u32))
    out = select(is_nan(f), nan, rounded)
    return tirx.reinterpret("bfloat16", out.astype("uint16"))


def let(value: tirx.Expr, body: Callable[[tirx.Expr], tirx.Expr]) -> tirx.Expr:
    """body(value) with `value` computed once (tirx.Let). TVM treats expressions as
    trees: an operand used n times is n copies, and a copied Let defines its variable
    twice (ill-formed). Simple values (variables, loads, constants) are used directly."""
    if isinstance(value, (tirx.Var, tirx.IntImm, tirx.FloatImm)) or \
            type(value).__name__ in ("TensorLoad", "BufferLoad", "TensorSlice"):
        return body(value)
    var = tirx.Var("t", dtype_of(value))
    return tirx.Let(var, value, body(var))


def select(cond: tirx.Expr, a: tirx.Expr, b: tirx.Expr) -> tirx.Expr:
    """Both branches are evaluated (vectorizes); use `tirx.if_then_else` to guard loads."""
    return tirx.Select(cond, a, b)


_NAN_BITS = {"float32": ("int32", 0x7FFFFFFF, 0x7F800000),
             "float64": ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def is_nan(x: tirx.Expr) -> tirx.Expr:
    """x is NaN, from its bits (|x| above infinity's pattern): TVM's vectorizer
    scalarizes `tirx.isnan` inside a Select (LLVM then gathers), and TVM simplifies
    `x != x` to false; integer compares on the bits stay vector instructions."""
    dtype = dtype_of(x)
    if dtype not in _NAN_BITS:
        return tirx.isnan(x)
    itype, mask, inf = _NAN_BITS[dtype]
    bits = tirx.reinterpret(itype, x)
    return tirx.bitwise_and(bits, tirx.const(mask, itype)) > tirx.const(inf, itype)


def nan_max(a: tirx.Expr, b: tirx.Expr) -> tirx.Expr:
    """np.maximum: NaN if either is NaN."""
    if not is_float(dtype_of(a)):
        return tirx.max(a, b)
    return select(tirx.Or(is_nan(widen(a)), widen(a) >= widen(b)), a, b)


def nan_min(a: tirx.Expr, b: tirx.Expr) -> tirx.Expr:
    """np.minimum: NaN if either is NaN."""
    if not is_float(dtype_of(a)):
        return tirx.min(a, b)
    return select(tirx.Or(is_nan(widen(a)), widen(a) <= widen(b)), a, b)


def lowest(dtype: str) -> tirx.Expr:
    """The identity of max: -inf for floats, the minimum for integers."""
    if is_float(dtype):
        return tirx.const(-np.inf, dtype)
    return tirx.min_value(dtype)


def highest(dtype: str) -> tirx.Expr:
    if is_float(dtype):
        return tirx.const(np.inf, dtype)
    return tirx.max_value(dtype)


# --- indexing ------------------------------------------------------------------------------
def is_one(d: tirx.Expr) -> bool:
    return isinstance(d, tirx.IntImm) and d.value == 1


def load_broadcast(t: te.Tensor, idx: Sequence[tirx.Expr]) -> tirx.Expr:
    """`t` read at output index `idx` under NumPy broadcasting (kiln broadcasts only
    static size-1 dims; a symbolic dim never broadcasts)."""
    rank, out_rank = len(t.shape), len(idx)
    return t(*(index(0) if is_one(t.shape[k]) else idx[out_rank - rank + k]
               for k in range(rank)))


def elementwise(ctx: LowerContext, inputs: Sequence[te.Tensor],
                fn: Callable[..., tirx.Expr], name: str | None = None) -> te.Tensor:
    """out[i] = fn(in0[i], in1[i], ...) over the node's output shape, broadcasting; the
    result is converted to the node's output dtype."""
    dtype = ctx.out_dtype()

    def body(*idx):
        return narrow(fn(*(load_broadcast(t, idx) for t in inputs)), dtype)
    return te.compute(ctx.out_shape(), body, name=name or ctx.node.op)


def normalize_index(i: tirx.Expr, size: tirx.Expr) -> tirx.Expr:
    """A possibly negative index (from the end, as NumPy) as an int64 index in [0, size)
    (for indices `require_in_range` has checked)."""
    i = i.astype(INDEX)
    return select(i < index(0), i + size, i)


def require_in_range(ctx: LowerContext, indices: te.Tensor, size: tirx.Expr, axis: int) -> None:
    """Make the kernel refuse an index outside [-size, size), as the references do."""
    def holds(i: tirx.Expr) -> tirx.Expr:
        i = i.astype(INDEX)
        return tirx.And(i >= -size, i < size)
    ctx.require(indices, holds, "IndexError", f"index out of range on axis {axis}")
