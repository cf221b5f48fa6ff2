"""TVM lowerings of the elementwise ops (ir/ops/elementwise.py: unary math and
activations, binary arithmetic and comparisons with broadcasting, where, cast,
clamp) and of the creation ops `full` and `arange` (ir/ops/creation.py).

Each follows its NumPy reference: half types compute in float32 and round once
(float32 exp, expm1, tanh and erf are fastmath's vectorizable polynomials);
float formulas are the references' own (same constants, same order); NaN propagates
through maximum/minimum/clamp; `ne` is true for NaN; integers wrap. What the
references refuse (an integer division by zero, a negative integer exponent) the
kernel refuses too: it checks those inputs first and returns an error.
"""
from __future__ import annotations

import math
from typing import Callable

import tvm
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ...ir.registry import register_lowering
from . import fastmath
from .common import (LowerContext, const, dtype_of, elementwise, index, is_float, is_nan, is_signed,
                     let, load_broadcast, narrow, nan_max, nan_min, numpy_scalar, select, widen)

E = tirx.Expr


def _c(value: float, like: E) -> E:
    """A constant of `like`'s dtype (a Python float in the reference is a weak scalar:
    it takes the array's dtype)."""
    return const(value, dtype_of(like))


def _ne(a: E, b: E) -> E:
    """a != b, true when either is NaN (TIR's NE on floats is ordered, and the
    simplifier turns !(a == b) into it); bools compare as int8 (LLVM's NE on i1 fails)."""
    if is_float(dtype_of(a)):
        return tirx.Or(tirx.Or(is_nan(widen(a)), is_nan(widen(b))), tirx.NE(a, b))
    if dtype_of(a) == "bool":
        return tirx.NE(a.astype("int8"), b.astype("int8"))
    return tirx.NE(a, b)


def _clip01(v: E) -> E:
    """np.clip(v, 0, 1): NaN stays NaN."""
    return nan_min(nan_max(v, _c(0, v)), _c(1, v))


def _expm1(v: E) -> E:
    """expm1: float32 by fastmath; otherwise Kahan's (u - 1) * x / log(u), u = e**x,
    which stays accurate near 0 where e**x - 1 cancels."""
    if dtype_of(v) == "float32":
        return fastmath.expm1(v)
    u = tirx.exp(v)
    um1 = u - _c(1, v)
    return select(tirx.EQ(u, _c(1, v)), v,
                  select(tirx.EQ(um1, _c(-1, v)), _c(-1, v),
                         select(tirx.isinf(u), u, um1 * v / tirx.log(u))))


def _sigmoid(v: E) -> E:
    return _c(1, v) / (_c(1, v) + fastmath.exp(-v))


def _gelu(v: E, approximate: str) -> E:
    if approximate == "tanh":
        inner = _c(math.sqrt(2 / math.pi), v) * (v + _c(0.044715, v) * (v * v * v))
        return _c(0.5, v) * v * (_c(1, v) + fastmath.tanh(inner))
    return _c(0.5, v) * v * (_c(1, v) + fastmath.erf(v / _c(math.sqrt(2), v)))


def _softplus(v: E, beta: float, threshold: float) -> E:
    bx = v * _c(beta, v)
    # (log1p is legalized into an expression that reads its operand twice: bind it)
    soft = let(fastmath.exp(nan_min(bx, _c(threshold, v))), tirx.log1p) / _c(beta, v)
    return select(bx > _c(threshold, v), v, soft)


_FLOAT_UNARY: dict[str, Callable[..., E]] = {
    "exp": fastmath.exp, "log": tirx.log, "log1p": tirx.log1p, "expm1": _expm1,
    "sqrt": tirx.sqrt,
    "rsqrt": lambda v: _c(1, v) / tirx.sqrt(v),
    "reciprocal": lambda v: _c(1, v) / v,
    "sin": tirx.sin, "cos": tirx.cos, "tan": tirx.tan,
    "asin": tirx.asin, "acos": tirx.acos, "atan": tirx.atan,
    "sinh": tirx.sinh, "cosh": tirx.cosh, "tanh": fastmath.tanh,   # sinh, cosh: scalar libm
    "asinh": tirx.asinh, "acosh": tirx.acosh, "atanh": tirx.atanh,
    "erf": fastmath.erf,
    "sigmoid": _sigmoid,
    "silu": lambda v: v * _sigmoid(v),
    "gelu": _gelu,
    "softplus": _softplus,
    "elu": lambda v, alpha: select(v > _c(0, v), v, _c(alpha, v) * _expm1(nan_min(v, _c(0, v)))),
    "leaky_relu": lambda v, negative_slope: select(v >= _c(0, v), v, v * _c(negative_slope, v)),
    "hardsigmoid": lambda v: _clip01(v / _c(6, v) + _c(0.5, v)),
    "hardswish": lambda v: v * _clip01(v / _c(6, v) + _c(0.5, v)),
    "mish": lambda v: v * fastmath.mish_gate(v),
}


def _register_float_unary(name: str, fn: Callable[..., E]) -> None:
    @register_lowering(name, backend="tvm")
    def lower(ctx: LowerContext, x: te.Tensor, **attrs) -> te.Tensor:
        return elementwise(ctx, [x], lambda v: fn(widen(v), **attrs))


for _name, _fn in _FLOAT_UNARY.items():
    _register_float_unary(_name, _fn)


# --- numeric unary ---------------------------------------------------------------------
def _neg(v: E) -> E:
    return -v if is_float(dtype_of(v)) else _c(0, v) - v


def _abs(v: E) -> E:
    if is_float(dtype_of(v)):
        return tirx.abs(v)
    return select(v < _c(0, v), _c(0, v) - v, v) if is_signed(dtype_of(v)) else v


def _sign(v: E) -> E:
    s = select(v > _c(0, v), _c(1, v), select(v < _c(0, v), _c(-1, v), _c(0, v)))
    return select(is_nan(v), _c(0, v), s) if is_float(dtype_of(v)) else s


def _float_only(fn: Callable[[E], E]) -> Callable[[E], E]:
    """Rounding: a float function; integers are already whole."""
    return lambda v: fn(v) if is_float(dtype_of(v)) else v


_NUMERIC_UNARY: dict[str, Callable[[E], E]] = {
    "neg": _neg, "abs": _abs,
    "relu": lambda v: nan_max(v, _c(0, v)),
    "sign": _sign,
    "floor": _float_only(tirx.floor), "ceil": _float_only(tirx.ceil),
    "round": _float_only(tirx.nearbyint),   # half to even
    "trunc": _float_only(tirx.trunc),
}


def _register_numeric_unary(name: str, fn: Callable[[E], E]) -> None:
    @register_lowering(name, backend="tvm")
    def lower(ctx: LowerContext, x: te.Tensor) -> te.Tensor:
        return elementwise(ctx, [x], lambda v: fn(widen(v)))


for _name, _fn in _NUMERIC_UNARY.items():
    _register_numeric_unary(_name, _fn)


@register_lowering("clamp", backend="tvm")
def _clamp(ctx: LowerContext, x: te.Tensor, *, min: float | None, max: float | None
           ) -> te.Tensor:
    # bounds are rounded to x's dtype first (NumPy compares with a weak Python scalar)
    lo = None if min is None else numpy_scalar(min, dtype_of(x))
    hi = None if max is None else numpy_scalar(max, dtype_of(x))

    def fn(v: E) -> E:
        v = widen(v)
        if lo is not None:
            v = select(v < _c(lo, v), _c(lo, v), v)
        if hi is not None:
            v = select(v > _c(hi, v), _c(hi, v), v)
        return v
    return elementwise(ctx, [x], fn)


register_lowering("isnan", backend="tvm")(
    lambda ctx, x: elementwise(ctx, [x], lambda v: is_nan(widen(v))))
register_lowering("isinf", backend="tvm")(
    lambda ctx, x: elementwise(ctx, [x], lambda v: tirx.isinf(widen(v))))
register_lowering("logical_not", backend="tvm")(
    lambda ctx, x: elementwise(ctx, [x], tirx.Not))


@register_lowering("bitwise_not", backend="tvm")
def _bitwise_not(ctx: LowerContext, x: te.Tensor) -> te.Tensor:
    return elementwise(ctx, [x], tirx.Not if dtype_of(x) == "bool" else tirx.bitwise_not)


@register_lowering("cast", backend="tvm")
def _cast(ctx: LowerContext, x: te.Tensor, *, dtype) -> te.Tensor:
    to = ctx.out_dtype()

    def fn(v: E) -> E:
        if to == "bool":   # nonzero (NaN included) is True
            return v if dtype_of(v) == "bool" else _ne(v, _c(0, v))
        if dtype_of(v) == "bool":
            return select(v, const(1, to), const(0, to))
        # float -> int truncates toward zero (LLVM's fptosi); out of range is undefined
        return widen(v).astype(to) if is_float(dtype_of(v)) else v.astype(to)
    return elementwise(ctx, [x], fn)


# --- binary ----------------------------------------------------------------------------
def _int_divisor(a: E, b: E, op: Callable[[E, E], E], at_minus_one: Callable[[E], E]) -> E:
    """An integer division-like op: a divisor of -1 is computed by `at_minus_one`
    (INT_MIN / -1 traps in hardware; NumPy wraps). A zero divisor never gets here: the
    kernel checks its divisors first (see `_register_binary`)."""
    if not is_signed(dtype_of(b)):
        return op(a, b)
    minus_one = tirx.EQ(b, _c(-1, b))
    return select(minus_one, at_minus_one(a), op(a, select(minus_one, _c(1, b), b)))


def _fmod_float(a: E, b: E) -> E:
    """C's fmod (libm; TVM's tirx.fmod has no LLVM lowering). Scalar: not vectorized."""
    dtype = dtype_of(a)
    return tirx.call_pure_extern(dtype, "fmodf" if dtype == "float32" else "fmod", a, b)


def _remainder_float(a: E, b: E) -> E:
    """npy_remainder: fmod, moved to the divisor's sign; an exact zero takes b's sign."""
    mod = _fmod_float(a, b)
    zero = _c(0, a)
    moved = select(_ne(b < zero, mod < zero), mod + b, mod)
    return select(_ne(mod, zero), moved, tirx.copysign(zero, b))


def _floor_div_float(a: E, b: E) -> E:
    """npy_floor_divide: NumPy's divmod-based quotient (not floor(a / b))."""
    zero, one = _c(0, a), _c(1, a)
    mod = _fmod_float(a, b)
    div = (a - mod) / b
    div = select(tirx.And(_ne(mod, zero), _ne(b < zero, mod < zero)), div - one, div)
    fl = tirx.floor(div)
    snapped = select(div - fl > _c(0.5, a), fl + one, fl)
    out = select(_ne(div, zero), snapped, tirx.copysign(zero, a / b))
    return select(tirx.EQ(b, zero), a / b, out)


def _arith(float_fn: Callable[[E, E], E], int_fn: Callable[[E, E], E]
           ) -> Callable[[E, E], E]:
    return lambda a, b: float_fn(widen(a), widen(b)) if is_float(dtype_of(a)) else int_fn(a, b)


_ARITH: dict[str, Callable[[E, E], E]] = {
    "add": _arith(lambda a, b: a + b, lambda a, b: a + b),
    "sub": _arith(lambda a, b: a - b, lambda a, b: a - b),
    "mul": _arith(lambda a, b: a * b, lambda a, b: a * b),
    "div": _arith(lambda a, b: a / b,
                  lambda a, b: _int_divisor(a, b, tirx.truncdiv, lambda x: _c(0, x) - x)),
    "floor_div": _arith(_floor_div_float,
                        lambda a, b: _int_divisor(a, b, tirx.floordiv, lambda x: _c(0, x) - x)),
    "remainder": _arith(_remainder_float,
                        lambda a, b: _int_divisor(a, b, tirx.floormod, lambda x: _c(0, x))),
    "fmod": _arith(_fmod_float,
                   lambda a, b: _int_divisor(a, b, tirx.truncmod, lambda x: _c(0, x))),
    "maximum": nan_max,
    "minimum": nan_min,
    "atan2": _arith(tirx.atan2, tirx.atan2),
}


_INT_DIVISION = frozenset({"div", "floor_div", "remainder", "fmod"})


def _register_binary(name: str, fn: Callable[[E, E], E]) -> None:
    @register_lowering(name, backend="tvm")
    def lower(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
        if name in _INT_DIVISION and not is_float(dtype_of(b)):
            ctx.require(b, lambda v: tirx.NE(v, _c(0, v)), "ValueError",
                        "integer division by zero")
        return elementwise(ctx, [a, b], fn)


for _name, _fn in _ARITH.items():
    _register_binary(_name, _fn)


@register_lowering("pow", backend="tvm")
def _pow(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
    if is_float(dtype_of(a)):
        small = _small_exponent(b)
        if small is not None:   # x ** 3 in gelu-tanh, x ** 2 in rms-norm: multiplies
            return elementwise(ctx, [a], lambda x: _power_by_multiplying(widen(x), small))
        return elementwise(ctx, [a, b], lambda x, y: tirx.power(widen(x), widen(y)))
    ctx.require(b, lambda v: v >= _c(0, v), "ValueError", "integer pow with a negative exponent")
    return _int_pow(ctx, a, b)


_SMALL_EXPONENTS = (-1, 1, 2, 3, 4)   # (x ** 0: a constant output, which bf16 stores refuse)


def _small_exponent(b: te.Tensor) -> int | None:
    """The exponent when `b` is a constant (a `full` in the same kernel) in
    _SMALL_EXPONENTS, else None. Those powers are a few multiplies (or one division)
    that vectorize, where `powf` is a scalar libm call per element; each is within an
    ulp or two of the correctly rounded power, and NaN, +-inf and +-0 come out as
    from pow."""
    op = b.op
    if not isinstance(op, te.ComputeOp) or len(op.body) != 1:
        return None
    value = op.body[0]
    if not isinstance(value, (tirx.FloatImm, tirx.IntImm)):
        return None
    v = float(value.value)
    return int(v) if v.is_integer() and int(v) in _SMALL_EXPONENTS else None


def _power_by_multiplying(x: E, n: int) -> E:
    if n == -1:
        return _c(1, x) / x
    if n == 4:
        return let(x * x, lambda sq: sq * sq)
    out = x
    for _ in range(n - 1):
        out = out * x
    return out


def _int_pow(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """Integer power by squaring, wrapping in the dtype: a scalar loop per element over
    the exponent's bits (as an expression, squaring would double the tree per bit)."""
    dtype = ctx.out_dtype()
    bits = tvm.DataType(dtype).bits
    shape = ctx.out_shape()

    def kernel(ins, outs):
        with IRBuilder() as ib:
            ab, bb, ob = (T.buffer_proxy(t) for t in (ins[0], ins[1], outs[0]))
            size = index(1)
            for d in shape:
                size = size * d
            with T.parallel(index(0), size) as flat:
                # per-iteration locals (declared inside the parallel loop: one per thread)
                r, base, e = (T.buffer_proxy(T.decl_buffer([1], dtype, scope="local"))
                              for _ in range(3))
                idx = _unravel(flat, shape)
                r[0] = tirx.const(1, dtype)
                base[0] = load_broadcast(_Indexable(ab, ins[0].shape), idx)
                e[0] = load_broadcast(_Indexable(bb, ins[1].shape), idx)
                with T.serial(0, bits):
                    with T.If(tirx.NE(tirx.bitwise_and(e[0], tirx.const(1, dtype)),
                                      tirx.const(0, dtype))):
                        with T.Then():
                            r[0] = r[0] * base[0]
                    base[0] = base[0] * base[0]
                    e[0] = tirx.shift_right(e[0], tirx.const(1, dtype))
                ob[tuple(idx)] = r[0]
            return ib.get()
    return te.extern(shape, [a, b], kernel, name="pow", dtype=dtype)


class _Indexable:
    """A buffer proxy with a `shape` and call syntax, for `load_broadcast`."""

    def __init__(self, proxy, shape):
        self.proxy, self.shape = proxy, shape

    def __call__(self, *idx):
        return self.proxy[tuple(idx)] if idx else self.proxy[()]


def _unravel(flat: E, shape: list[E]) -> list[E]:
    idx: list[E] = []
    for d in reversed(shape):
        idx.append(tirx.floormod(flat, d))
        flat = tirx.floordiv(flat, d)
    return idx[::-1]


# --- comparisons, logic, where -----------------------------------------------------------
def _ordered(v: E) -> E:
    """Comparable operands: half types widened (exactly); bool as int8 (False < True)."""
    return v.astype("int8") if dtype_of(v) == "bool" else widen(v)


_COMPARE: dict[str, Callable[[E, E], E]] = {
    "eq": tirx.EQ, "ne": _ne, "lt": tirx.LT, "le": tirx.LE, "gt": tirx.GT, "ge": tirx.GE,
}


def _register_compare(name: str, fn: Callable[[E, E], E]) -> None:
    @register_lowering(name, backend="tvm")
    def lower(ctx: LowerContext, a: te.Tensor, b: te.Tensor) -> te.Tensor:
        return elementwise(ctx, [a, b], lambda x, y: fn(_ordered(x), _ordered(y)))


for _name, _fn in _COMPARE.items():
    _register_compare(_name, _fn)

_LOGICAL: dict[str, Callable[[E, E], E]] = {
    "logical_and": tirx.And, "logical_or": tirx.Or, "logical_xor": _ne,
}
_BITWISE: dict[str, tuple[Callable[[E, E], E], Callable[[E, E], E]]] = {
    "bitwise_and": (tirx.bitwise_and, tirx.And),
    "bitwise_or": (tirx.bitwise_or, tirx.Or),
    "bitwise_xor": (tirx.bitwise_xor, _ne),
}
for _name, _fn in _LOGICAL.items():
    _register_binary(_name, _fn)
for _name, (_int_fn, _bool_fn) in _BITWISE.items():
    _register_binary(_name, lambda a, b, on_int=_int_fn, on_bool=_bool_fn:
                     on_bool(a, b) if dtype_of(a) == "bool" else on_int(a, b))


@register_lowering("where", backend="tvm")
def _where(ctx: LowerContext, cond: te.Tensor, a: te.Tensor, b: te.Tensor) -> te.Tensor:
    return elementwise(ctx, [cond, a, b], select)


# --- creation --------------------------------------------------------------------------
@register_lowering("full", backend="tvm")
def _full(ctx: LowerContext, *, shape, value: float, dtype) -> te.Tensor:
    out = ctx.out_dtype()
    return te.compute(ctx.out_shape(), lambda *idx: const(value, out), name="full")


@register_lowering("arange", backend="tvm")
def _arange(ctx: LowerContext, *, start, end, step: int, dtype) -> te.Tensor:
    # NumPy computes start + i * step in int64, then converts
    first = ctx.dim(start)
    out = ctx.out_dtype()

    return te.compute(ctx.out_shape(), lambda i: narrow(first + i * index(step), out),
                      name="arange")
