"""Elementwise ops: unary math and activations, binary arithmetic and comparisons
(NumPy broadcasting, one shared dtype — kiln never promotes implicitly; the
frontends insert `cast`), `where`, `cast` and `clamp`."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..dtypes import bool_
from ..registry import (COMMUTATIVE, COMPARISON, ELEMENTWISE, MAY_RAISE, Attr, OpDef, Operand, register,
                        type_error)
from ..types import TensorType
from .common import as_dtype, broadcast_shapes, is_float_array, same_dtype, widen

X, A, B = Operand("x"), Operand("a"), Operand("b")


def _float_unary(x: TensorType, **_) -> TensorType:
    if not x.dtype.is_float:
        raise type_error(f"input must be floating point, got {x.dtype!r}")
    return x


def _numeric_unary(x: TensorType, **_) -> TensorType:
    if x.dtype.is_bool or x.dtype.packed:
        raise type_error(f"input must be numeric, got {x.dtype!r}")
    return x


def _in_f32(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Compute a float op in at least float32 and round back to the input dtype
    (how torch computes half-precision math on the CPU). IEEE results (NaN, inf)
    outside a function's domain are the semantics, not warnings."""
    def ref(x: np.ndarray, **attrs) -> np.ndarray:
        with np.errstate(all="ignore"):
            return as_dtype(fn(widen(x), **attrs), x.dtype)
    return ref


def _as_array(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """`fn` with its result as an ndarray (NumPy ufuncs return scalars for 0-d inputs);
    comparisons with NaN are False, not a warning."""
    def ref(*arrays: np.ndarray, **attrs) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(fn(*arrays, **attrs))
    return ref


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy import special   # imported on first use: it takes ~0.4 s, and a compile
    return special.erf(x)       # whose graph is cached never runs a reference


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy import special
    return special.expit(x)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    bx = x * beta
    return np.where(bx > threshold, x, np.log1p(np.exp(np.minimum(bx, threshold))) / beta)


_FLOAT_UNARY: dict[str, tuple[Callable[..., np.ndarray], tuple[Attr, ...]]] = {
    "exp": (np.exp, ()),
    "log": (np.log, ()),
    "log1p": (np.log1p, ()),
    "expm1": (np.expm1, ()),
    "sqrt": (np.sqrt, ()),
    "rsqrt": (lambda x: 1 / np.sqrt(x), ()),
    "reciprocal": (lambda x: 1 / x, ()),
    "sin": (np.sin, ()), "cos": (np.cos, ()), "tan": (np.tan, ()),
    "asin": (np.arcsin, ()), "acos": (np.arccos, ()), "atan": (np.arctan, ()),
    "sinh": (np.sinh, ()), "cosh": (np.cosh, ()), "tanh": (np.tanh, ()),
    "asinh": (np.arcsinh, ()), "acosh": (np.arccosh, ()), "atanh": (np.arctanh, ()),
    "erf": (_erf, ()),
    "sigmoid": (_expit, ()),
    "silu": (lambda x: x * _expit(x), ()),
    "gelu": (_gelu, (Attr("approximate", "str", "none", choices=("none", "tanh")),)),
    "softplus": (_softplus, (Attr("beta", "float", 1.0), Attr("threshold", "float", 20.0))),
    "elu": (lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
            (Attr("alpha", "float", 1.0),)),
    "leaky_relu": (lambda x, negative_slope: np.where(x >= 0, x, x * negative_slope),
                   (Attr("negative_slope", "float", 0.01),)),
    "hardsigmoid": (lambda x: np.clip(x / 6 + 0.5, 0, 1), ()),
    "hardswish": (lambda x: x * np.clip(x / 6 + 0.5, 0, 1), ()),
    "mish": (lambda x: x * np.tanh(np.log1p(np.exp(x))), ()),
}

for _name, (_fn, _attrs) in _FLOAT_UNARY.items():
    register(OpDef(_name, (X,), _float_unary, _in_f32(_fn), _attrs, {ELEMENTWISE}))


def _sign(x: np.ndarray) -> np.ndarray:
    """-1, 0 or 1; sign(NaN) = 0, as torch."""
    if is_float_array(x):
        return np.where(np.isnan(x), np.zeros((), x.dtype), np.sign(x))
    return np.sign(x)


def _keep_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda x, **attrs: as_dtype(fn(x, **attrs), x.dtype)


_NUMERIC_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "neg": np.negative,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "sign": _sign,
    "floor": lambda x: np.floor(x) if is_float_array(x) else x,
    "ceil": lambda x: np.ceil(x) if is_float_array(x) else x,
    "round": lambda x: np.round(x) if is_float_array(x) else x,  # half to even, as torch
    "trunc": lambda x: np.trunc(x) if is_float_array(x) else x,   # toward zero
}
for _name, _fn in _NUMERIC_UNARY.items():
    register(OpDef(_name, (X,), _numeric_unary, _keep_dtype(_fn), (), {ELEMENTWISE}))


def _clamp_ref(x: np.ndarray, min: float | None, max: float | None) -> np.ndarray:
    out = x
    if min is not None:
        out = np.where(out < min, np.asarray(min).astype(x.dtype), out)
    if max is not None:
        out = np.where(out > max, np.asarray(max).astype(x.dtype), out)
    return as_dtype(np.where(np.isnan(x), x, out) if is_float_array(x) else out, x.dtype)


def _clamp_infer(x: TensorType, *, min: float | None, max: float | None) -> TensorType:
    _numeric_unary(x)
    if x.dtype.is_integer:  # no implicit promotion: integer bounds the dtype can hold
        info = np.iinfo(x.dtype.numpy)
        for name, bound in (("min", min), ("max", max)):
            if bound is not None and not float(bound).is_integer():
                raise type_error(f"{name} {bound} must be an integer for a {x.dtype!r} input "
                                 "(cast the input to a float type first)")
            if bound is not None and not info.min <= bound <= info.max:
                raise type_error(f"{name} {bound:g} does not fit {x.dtype!r}")
    return x


register(OpDef("clamp", (X,), _clamp_infer, _clamp_ref,
               (Attr("min", "float", None, optional=True), Attr("max", "float", None, optional=True)),
               {ELEMENTWISE}, doc="min/max bounds; None leaves that side open. NaN stays NaN."))


def _bool_unary(x: TensorType, **_) -> TensorType:
    if not x.dtype.is_float:
        raise type_error(f"input must be floating point, got {x.dtype!r}")
    return x.with_dtype(bool_)


register(OpDef("isnan", (X,), _bool_unary, _as_array(np.isnan), (), {ELEMENTWISE}))
register(OpDef("isinf", (X,), _bool_unary, _as_array(np.isinf), (), {ELEMENTWISE}))


def _logical_not_infer(x: TensorType) -> TensorType:
    if not x.dtype.is_bool:
        raise type_error(f"input must be bool, got {x.dtype!r}")
    return x


register(OpDef("logical_not", (X,), _logical_not_infer, _as_array(np.logical_not), (),
               {ELEMENTWISE}))


def _bitwise_not_infer(x: TensorType) -> TensorType:
    if not (x.dtype.is_integer or x.dtype.is_bool) or x.dtype.packed:
        raise type_error(f"input must be integer or bool, got {x.dtype!r}")
    return x


register(OpDef("bitwise_not", (X,), _bitwise_not_infer, _as_array(np.invert), (), {ELEMENTWISE}))


def _cast_infer(x: TensorType, *, dtype) -> TensorType:
    if x.dtype.packed or dtype.packed:
        raise type_error("cast does not handle packed int4 (use the quantization ops)")
    return x.with_dtype(dtype)


def _cast_ref(x: np.ndarray, *, dtype) -> np.ndarray:
    if is_float_array(x) and dtype.is_integer:  # float -> int truncates toward zero, as torch
        x = np.trunc(x)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(x).astype(dtype.numpy)


register(OpDef("cast", (X,), _cast_infer, _cast_ref, (Attr("dtype", "dtype"),), {ELEMENTWISE}))


# --- binary ----------------------------------------------------------------------------
def _arith_infer(a: TensorType, b: TensorType, **_) -> TensorType:
    dtype = same_dtype([a, b])
    if dtype.is_bool or dtype.packed:
        raise type_error(f"arithmetic needs numeric inputs, got {dtype!r}")
    return TensorType(broadcast_shapes(a.shape, b.shape), dtype)


def _float_binary_infer(a: TensorType, b: TensorType, **_) -> TensorType:
    out = _arith_infer(a, b)
    if not out.dtype.is_float:
        raise type_error(f"inputs must be floating point, got {out.dtype!r}")
    return out


def _binary_ref(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):  # IEEE results and integer wrap-around are the semantics
            return as_dtype(fn(widen(a), widen(b)), a.dtype)
    return ref


def _nonzero_divisor(b: np.ndarray) -> np.ndarray:
    """Integer division by zero has no answer: raise (as torch does), never guess one."""
    if np.any(b == 0):
        raise ZeroDivisionError("integer division by zero")
    return b


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if is_float_array(a):
        return a / b
    b = _nonzero_divisor(b)
    q = np.floor_divide(a, b)  # exact (no float detour); integers truncate toward zero, as C/ONNX
    return q + ((q < 0) & (np.remainder(a, b) != 0)).astype(q.dtype)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if is_float_array(a):
        return np.power(a, b)
    if np.any(b < 0):
        raise ValueError("integer pow with a negative exponent")
    return np.power(a, b)


def _remainder(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.mod(a, b) if is_float_array(a) else np.mod(a, _nonzero_divisor(b))


_ARITH: dict[str, tuple[Callable, frozenset[str]]] = {
    "add": (np.add, frozenset({ELEMENTWISE, COMMUTATIVE})),
    "sub": (np.subtract, frozenset({ELEMENTWISE})),
    "mul": (np.multiply, frozenset({ELEMENTWISE, COMMUTATIVE})),
    "div": (_div, frozenset({ELEMENTWISE, MAY_RAISE})),
    "floor_div": (lambda a, b: np.floor_divide(a, b) if is_float_array(a)
                  else np.floor_divide(a, _nonzero_divisor(b)), frozenset({ELEMENTWISE, MAY_RAISE})),
    "remainder": (_remainder, frozenset({ELEMENTWISE, MAY_RAISE})),   # sign of the divisor
    "fmod": (lambda a, b: np.fmod(a, b) if is_float_array(a)
             else np.fmod(a, _nonzero_divisor(b)), frozenset({ELEMENTWISE, MAY_RAISE})),  # sign of a
    "pow": (_pow, frozenset({ELEMENTWISE, MAY_RAISE})),
    "maximum": (np.maximum, frozenset({ELEMENTWISE, COMMUTATIVE})),
    "minimum": (np.minimum, frozenset({ELEMENTWISE, COMMUTATIVE})),
}
for _name, (_fn, _traits) in _ARITH.items():
    register(OpDef(_name, (A, B), _arith_infer, _binary_ref(_fn), (), _traits))

register(OpDef("atan2", (A, B), _float_binary_infer, _binary_ref(np.arctan2), (), {ELEMENTWISE}))


def _compare_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype([a, b])
    if dtype.packed:
        raise type_error("comparison of packed int4 values")
    return TensorType(broadcast_shapes(a.shape, b.shape), bool_)


_COMPARE = {"eq": (np.equal, True), "ne": (np.not_equal, True), "lt": (np.less, False),
            "le": (np.less_equal, False), "gt": (np.greater, False), "ge": (np.greater_equal, False)}
for _name, (_fn, _commutes) in _COMPARE.items():
    register(OpDef(_name, (A, B), _compare_infer, _as_array(_fn), (),
                   {ELEMENTWISE, COMPARISON} | ({COMMUTATIVE} if _commutes else set())))


def _logical_infer(a: TensorType, b: TensorType) -> TensorType:
    if not (a.dtype.is_bool and b.dtype.is_bool):
        raise type_error(f"inputs must be bool, got {a.dtype!r} and {b.dtype!r}")
    return TensorType(broadcast_shapes(a.shape, b.shape), bool_)


for _name, _fn in {"logical_and": np.logical_and, "logical_or": np.logical_or,
                   "logical_xor": np.logical_xor}.items():
    register(OpDef(_name, (A, B), _logical_infer, _as_array(_fn), (), {ELEMENTWISE, COMMUTATIVE}))


def _bitwise_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype([a, b])
    if not (dtype.is_integer or dtype.is_bool) or dtype.packed:
        raise type_error(f"inputs must be integer or bool, got {dtype!r}")
    return TensorType(broadcast_shapes(a.shape, b.shape), dtype)


for _name, _fn in {"bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
                   "bitwise_xor": np.bitwise_xor}.items():
    register(OpDef(_name, (A, B), _bitwise_infer, _as_array(_fn), (), {ELEMENTWISE, COMMUTATIVE}))


def _where_infer(cond: TensorType, a: TensorType, b: TensorType) -> TensorType:
    if not cond.dtype.is_bool:
        raise type_error(f"condition must be bool, got {cond.dtype!r}")
    dtype = same_dtype([a, b], "the two branches")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), dtype)


register(OpDef("where", (Operand("cond"), A, B), _where_infer,
               lambda cond, a, b: as_dtype(np.where(cond, a, b), a.dtype), (), {ELEMENTWISE},
               doc="cond ? a : b, broadcast."))
