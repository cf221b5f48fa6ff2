"""The TVM lowering of every registered op (codegen/tvm/lower*.py, schedule.py,
fastmath.py) against the reference interpreter, the ground truth.

- `test_op_matches_interpreter[op]`: every op but `constant`, on the cases in CASES
  (representative shapes, attributes and dtypes; NaN, +-inf and -0 for float math;
  integer wrap-around and INT_MIN / -1; broadcasting; empty axes). An op's cases are
  lowered with `lower_node` (the registered lowering and the chosen schedule) into
  one IRModule, compiled once.
- symbolic dims: one kernel per case compiled with symbols and run at two sizes,
  including an expression dim ("b*s") no buffer binds by itself and a symbol only an
  attribute holds (a scalar parameter).
- the basic contraction lowerings (lower_linalg.BASIC_LOWERINGS), which the GEMM
  module's replace in the registry;
- inputs the references refuse (zero integer divisors, negative integer exponents,
  indices out of range) make the kernels fail too;
- `missing_lowerings` and the errors of `lower_node`; the schedule table; fastmath's
  accuracy on a dense float32 sweep; the shape of the default schedules (parallel and
  vectorized loops where they belong).

Comparison: `tests.ir.op_testing.assert_close`: exact for integers and bools, NaN in
the same places, floats within the per-dtype tolerance (scaled by the reduction length).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import scipy.special
import tvm
from tvm import te

from kiln.codegen.tvm import SCHEDULES, cpu_target, lower_node, missing_lowerings, symbol_args
from kiln.codegen.tvm import fastmath, lower_linalg
from kiln.errors import CodegenError, UnsupportedOpsError
from kiln.ir import GraphBuilder, TensorType, all_ops, dtype, get_op, interpret, parse, tensor
from kiln.ir.interpret import bind_inputs
from kiln.ir.ops.linalg import pack_panels
from tests.ir.op_testing import assert_close

RNG = np.random.default_rng(1234)
BF16 = np.dtype(ml_dtypes.bfloat16)
NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": BF16, "i8": np.int8,
      "u8": np.uint8, "i16": np.int16, "i32": np.int32, "i64": np.int64, "bool": np.bool_}
FLOATS = ("f32", "f64", "f16", "bf16")
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 1e-30, 80.0, -90.0]


def arr(dt: str, shape: tuple, low: float = -4, high: float = 4, special: bool = False
        ) -> np.ndarray:
    """Random values of kiln dtype `dt`; `special` puts NaN, +-inf, +-0 and ties first."""
    if dt == "bool":
        return RNG.random(shape) < 0.5
    if dt in FLOATS:
        a = RNG.uniform(low, high, shape)
        if special and a.size:
            flat = a.reshape(-1)
            n = min(len(SPECIAL), flat.size)
            flat[:n] = SPECIAL[:n]
        return a.astype(NP[dt])
    info = np.iinfo(NP[dt])
    return RNG.integers(max(low, info.min), min(high, info.max) + 1, shape).astype(NP[dt])


def full_range(dt: str, shape: tuple) -> np.ndarray:
    """Integers over the dtype's whole range, the extremes first."""
    info = np.iinfo(NP[dt])
    a = RNG.integers(info.min, info.max, shape, endpoint=True).astype(NP[dt]).reshape(-1)
    a[:2] = [info.min, info.max]
    return a.reshape(shape)


@dataclass
class Case:
    op: str
    inputs: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    reduce_size: int = 1     # scales the float tolerance (sums, dot products)
    body: str | None = None  # a fused node's body, as .kir text

    @property
    def name(self) -> str:
        ins = ",".join(f"{dtype(a.dtype).name}{list(a.shape)}" for a in self.inputs)
        return f"{self.op}({ins}){self.attrs or ''}"

    def graph(self):
        b = GraphBuilder(self.op)
        values = [b.input(f"x{i}", TensorType(a.shape, dtype(a.dtype)))
                  for i, a in enumerate(self.inputs)]
        if self.body is not None:
            return b.build(*b.graph.add_node(self.op, values, self.attrs,
                                             body=parse(self.body)).outputs)
        out = b.op(self.op, *values, **self.attrs)
        return b.build(*(out if isinstance(out, tuple) else (out,)))


CASES: list[Case] = []


def case(op: str, *inputs: np.ndarray, reduce_size: int = 1, **attrs: Any) -> None:
    CASES.append(Case(op, list(inputs), attrs, reduce_size))


# --- elementwise ----------------------------------------------------------------------------
_FLOAT_UNARY_ATTRS: dict[str, list[dict]] = {
    "gelu": [{}, {"approximate": "tanh"}], "softplus": [{}, {"beta": 2.0, "threshold": 3.0}],
    "elu": [{"alpha": 0.7}], "leaky_relu": [{"negative_slope": 0.2}]}
_FLOAT_UNARY = ("exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos",
                "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
                "erf", "sigmoid", "silu", "gelu", "softplus", "elu", "leaky_relu", "hardsigmoid",
                "hardswish", "mish")
for _op in _FLOAT_UNARY:
    for _attrs in _FLOAT_UNARY_ATTRS.get(_op, [{}]):
        for _dt in FLOATS:
            case(_op, arr(_dt, (5, 48), special=True), **_attrs)
    case(_op, arr("f32", (3, 7), low=-0.9, high=0.9))   # inside every domain, odd sizes
case("exp", arr("f32", (4, 64), low=-110, high=95))     # overflow and gradual underflow
case("tanh", arr("f32", (64,), low=-1e-3, high=1e-3))   # tiny: no cancellation
case("expm1", arr("f32", (64,), low=-1e-4, high=1e-4))

for _op in ("neg", "abs", "relu", "sign", "floor", "ceil", "round", "trunc"):
    for _dt in ("f32", "f16", "bf16", "f64"):
        case(_op, arr(_dt, (4, 33), special=True))
    for _dt in ("i8", "u8", "i64"):
        case(_op, full_range(_dt, (4, 33)))
for _dt in ("f32", "f16", "i8", "u8", "i64"):
    _x = arr(_dt, (6, 32), low=-10, high=10, special=True)
    for _lo, _hi in ((-2.5, 3.25), (None, 2.0), (3.0, None), (None, None)):
        if _dt in ("i8", "u8", "i64"):
            _lo = None if _lo is None else abs(int(_lo))
            _hi = None if _hi is None else int(_hi) + 4
        case("clamp", _x, **{k: v for k, v in (("min", _lo), ("max", _hi)) if v is not None})
for _op in ("isnan", "isinf"):
    for _dt in ("f32", "bf16", "f64"):
        case(_op, arr(_dt, (2, 24), special=True))
case("logical_not", arr("bool", (3, 40)))
for _dt in ("i8", "u8", "i64", "bool"):
    case("bitwise_not", full_range(_dt, (70,)) if _dt != "bool" else arr("bool", (70,)))

_CASTS = [(s, d) for s in ("f32", "f16", "bf16", "f64") for d in ("f32", "f16", "bf16", "f64",
                                                                  "i8", "u8", "i32", "i64", "bool")]
_CASTS += [(s, d) for s in ("i8", "u8", "i32", "i64", "bool") for d in ("f32", "bf16", "i8",
                                                                        "u8", "i64", "bool")]
for _s, _d in _CASTS:
    if _d in FLOATS + ("bool",) or _s not in FLOATS:
        _x = arr(_s, (3, 32), low=-300, high=300, special=_s in FLOATS and _d in FLOATS)
    else:   # float -> int: in range (beyond is undefined, as in C)
        _x = arr(_s, (3, 32), low=0 if _d == "u8" else -120, high=250 if _d == "u8" else 120)
    if _s in FLOATS and _d == "bool":
        _x.reshape(-1)[:3] = [0.0, math.nan, -0.0]
    case("cast", _x, dtype=_d)

_ARITH = ("add", "sub", "mul", "div", "floor_div", "remainder", "fmod", "pow", "maximum",
          "minimum")
for _op in _ARITH + ("atan2",):
    for _dt in ("f32", "f16", "bf16", "f64") + (("i8", "u8", "i32", "i64") if _op != "atan2"
                                                 else ()):
        a, b = arr(_dt, (3, 1, 5), low=-9, high=9), arr(_dt, (4, 1), low=-9, high=9)
        if _op in ("div", "floor_div", "remainder", "fmod") and _dt not in FLOATS:
            b = np.where(b == 0, 3, b).astype(b.dtype)
        if _op == "pow":
            a = np.abs(a).astype(a.dtype) if _dt in FLOATS else a
            b = arr(_dt, (4, 1), low=0, high=5) if _dt not in FLOATS else b / 3
        case(_op, a, b.astype(a.dtype))
    if _op in ("div", "floor_div", "remainder", "fmod", "pow", "maximum", "minimum", "atan2"):
        _pairs = np.array([(x, y) for x in SPECIAL + [7.0, -7.0] for y in SPECIAL + [3.0, -3.0]])
        case(_op, _pairs[:, 0].astype(np.float32), _pairs[:, 1].astype(np.float32))
for _op in ("div", "floor_div", "remainder", "fmod"):   # never a hardware trap
    for _dt in ("i8", "i32", "i64"):
        _info = np.iinfo(NP[_dt])
        case(_op, np.array([_info.min, _info.min, _info.max, -7, 7, -7, 7, 0], NP[_dt]),
             np.array([-1, 1, -1, 2, -2, -2, 2, 5], NP[_dt]))
case("add", full_range("i8", (64,)), full_range("i8", (64,)))   # wraps
case("mul", full_range("i16", (64,)), full_range("i16", (64,)))
case("pow", arr("i64", (20,), low=-3, high=3), arr("i64", (20,), low=0, high=62))
for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    case(_op, arr("f32", (8, 12), special=True), arr("f32", (12,), special=True))
    case(_op, arr("bf16", (2, 16)), arr("bf16", (2, 16)))
    case(_op, arr("i32", (5, 6), low=-2, high=2), arr("i32", (1, 6), low=-2, high=2))
    case(_op, arr("bool", (4, 4)), arr("bool", (4,)))
for _op in ("logical_and", "logical_or", "logical_xor"):
    case(_op, arr("bool", (3, 1, 8)), arr("bool", (5, 8)))
for _op in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    for _dt in ("i16", "u8", "i64"):
        case(_op, full_range(_dt, (40,)), full_range(_dt, (40,)))
    case(_op, arr("bool", (40,)), arr("bool", (40,)))
for _dt in ("f32", "bf16", "i64", "bool"):
    case("where", arr("bool", (3, 1)), arr(_dt, (3, 16)), arr(_dt, (16,)))

# --- creation -------------------------------------------------------------------------------
for _dt, _v in (("f32", 0.1), ("bf16", 1 / 3), ("f16", 70000.0), ("i8", -3.7), ("u8", 200.0),
                ("bool", 0.5), ("i64", 2.0 ** 40)):
    case("full", shape=(3, 5), value=_v, dtype=_dt)
case("full", shape=(), value=2.0)
for _start, _end, _step, _dt in ((0, 10, 1, "i64"), (3, -7, -2, "f32"), (-5, 300, 7, "i8"),
                                 (2, 2, 1, "i32")):
    case("arange", start=_start, end=_end, step=_step, dtype=_dt)

# --- layout ---------------------------------------------------------------------------------
for _dt in ("f32", "i8", "bool", "bf16"):
    x = arr(_dt, (2, 3, 4))
    case("reshape", x, shape=(4, 6))
    case("reshape", x, shape=(24,))
    case("transpose", x, perm=(2, 0, 1))
    case("concat", x, x[:, :1], x[:, :0], axis=1)
    case("split", x, axis=2, sizes=(1, 3, 0))
    case("expand", x[:, :1], shape=(5, 2, 3, 4))
    case("squeeze", x[:, :1], axes=(1,))
    case("unsqueeze", x, axes=(0, -1))
    case("flip", x, axes=(0, 2))
    case("tile", x, repeats=(2, 1, 3))
    case("gather", x, np.array([[0, -1], [1, 2]], np.int64), axis=1)
    case("gather_elements", x, arr("i64", (2, 2, 3), low=-4, high=3), axis=2)
    case("index", x, np.array([[0], [1]], np.int32), np.array([0, -1, 2], np.int64))
    case("triu", x, diagonal=0)
    case("tril", x, diagonal=1)
    for _mode in ("constant", "reflect", "edge"):
        case("pad", x, pads=(1, 0, 2, 0, 2, 3), mode=_mode, value=1.0)
for _axis, _start, _end, _step in ((0, 0, 2 ** 62, 1), (1, 1, 3, 1), (2, -3, 2 ** 62, 2),
                                   (2, -10, 10, 3), (1, 5, 7, 1), (-1, 0, -1, 1)):
    case("slice", arr("f32", (2, 3, 4)), axis=_axis, start=_start, end=_end, step=_step)
case("concat", arr("f32", (4, 20)), arr("f32", (4, 44)), axis=-1)
case("gather", arr("f32", (5, 3)), np.array(2, np.int32), axis=0)
case("gather_elements", arr("f32", (2, 3, 4)), arr("i32", (3, 3, 4), low=-2, high=1), axis=0)
case("index", arr("f32", (3, 5, 2)), np.array([1, -1], np.int64), axis=1)
case("pad", arr("f32", (0, 3)), pads=(1, 1, 1, 1), value=2.0)
case("pad", arr("f32", (3, 1)), pads=(0, 0, 0, 0), mode="reflect")
case("pad", arr("i8", (3, 5)), pads=(1, 1, 2, 1), value=-7.0)

# --- reductions -----------------------------------------------------------------------------
for _dt in ("f32", "f16", "bf16", "f64", "i8", "u8", "i64"):
    x = arr(_dt, (3, 4, 80), low=-5, high=5) if _dt in FLOATS else full_range(_dt, (3, 4, 80))
    for _axes, _keep in (((), False), ((2,), True), ((0, 2), False), ((0,), True)):
        n = math.prod(x.shape[a] for a in (_axes or range(3)))
        ops = ("sum", "prod", "max", "min") + (("mean", "var") if _dt in FLOATS else ())
        for _op in ops:
            attrs = {"correction": 1} if _op == "var" else {}
            xx = (x / 4).astype(x.dtype) if _op == "prod" and _dt in FLOATS else x
            case(_op, xx, axes=_axes, keepdims=_keep, reduce_size=n, **attrs)
    if _dt in FLOATS:
        x = x.copy()
        x[0, 1, 2], x[1, 2, :] = np.nan, x[1, 2, 0]   # NaN wins; ties: the first index
    for _op in ("argmax", "argmin"):
        case(_op, x, axis=2, keepdims=True)
        case(_op, x, axis=0, keepdims=False)
    case("cumsum", x, axis=1, reduce_size=4)
    case("cumsum", x, axis=-1, reduce_size=80)
for _op in ("any", "all"):
    case(_op, arr("bool", (3, 40)), axes=(), keepdims=False)
    case(_op, arr("bool", (3, 40)), axes=(1,), keepdims=True)
    case(_op, arr("bool", (3, 0)), axes=(1,), keepdims=False)
case("sum", arr("f32", (3, 0)), axes=(1,), keepdims=False)      # the empty sum is 0
case("mean", arr("f32", (3, 0)), axes=(1,), keepdims=False)     # the empty mean is NaN
case("var", arr("f32", (4, 1)), axes=(1,), keepdims=False, correction=1)
case("max", arr("f32", (4, 32), special=True), axes=(1,), keepdims=False)
for _dt in ("f32", "f16", "bf16", "f64"):
    x = arr(_dt, (3, 5, 96))
    for _op in ("softmax", "log_softmax"):
        case(_op, x, axis=-1, reduce_size=96)
        case(_op, x, axis=0, reduce_size=3)
    w, b = arr(_dt, (5, 96)), arr(_dt, (5, 96))
    case("layer_norm", x, w, b, axis=1, reduce_size=480)
    case("layer_norm", x, axis=-1, eps=1e-3, reduce_size=96)
    case("rms_norm", x, w, axis=1, reduce_size=480)
    case("rms_norm", x, axis=-1, reduce_size=96)
    c = arr(_dt, (5,))
    case("batch_norm", x, c, np.abs(c).astype(c.dtype), c, c)
    case("batch_norm", x, c, np.abs(c).astype(c.dtype))
    x4, c6 = arr(_dt, (2, 6, 3, 8)), arr(_dt, (6,))
    case("group_norm", x4, c6, c6, num_groups=3, reduce_size=48)
    case("group_norm", x4, num_groups=2, reduce_size=72)
case("softmax", arr("f32", (4, 32), special=True), axis=-1)   # NaN / inf rows

# --- windows and contractions ---------------------------------------------------------------
_POOLS = (dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=False),
          dict(kernel=(2, 3), strides=(2, 1), pads=(0, 1, 1, 0), ceil_mode=True),
          dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True))
for _dt in ("f32", "f16", "bf16", "f64", "i8"):
    x = arr(_dt, (2, 3, 7, 10), low=-50, high=50)
    for _kw in _POOLS:
        case("max_pool", x, dilations=(1, 2) if _kw["kernel"] == (2, 3) else (1, 1), **_kw)
        if _dt in FLOATS:
            for _cip in (True, False):
                case("avg_pool", x, count_include_pad=_cip, reduce_size=9, **_kw)
    case("max_pool", x[:, :, 0], kernel=(3,), strides=(2,), pads=(1, 1), ceil_mode=True,
         dilations=(1,))
    if _dt in FLOATS:
        case("adaptive_avg_pool", x, output_size=(3, 4), reduce_size=12)
        case("adaptive_avg_pool", x[:, :, 0], output_size=(4,), reduce_size=3)
for _dt in ("f32", "bf16", "f64"):
    a, b = arr(_dt, (2, 1, 5, 24)), arr(_dt, (3, 24, 6))
    case("matmul", a, b, reduce_size=24)
    case("matmul", a[0, 0, 0], b, reduce_size=24)
    case("matmul", a, b[0, :, 0], reduce_size=24)
    w, bias = arr(_dt, (6, 24)), arr(_dt, (6,))
    case("linear", a, w, bias, reduce_size=24)
    case("linear", a[0, 0, 0], w, reduce_size=24)
    x, w = arr(_dt, (2, 6, 7, 9)), arr(_dt, (6, 2, 3, 3))
    case("conv", x, w, arr(_dt, (6,)), strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2),
         groups=3, reduce_size=18)
    case("conv", x[:, :, 0], arr(_dt, (4, 6, 3)), strides=(1,), pads=(1, 1), dilations=(1,),
         reduce_size=18)
    case("linear_packed", a, pack_panels(arr(_dt, (6, 24)), 4), bias, out_features=6,
         reduce_size=24)
    case("conv_packed", x, pack_panels(arr(_dt, (5, 54)), 16), arr(_dt, (5,)), out_channels=5,
         kernel=(3, 3), strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2), reduce_size=54)
    case("conv_nchwc", arr(_dt, (2, 2, 7, 9, 3)), arr(_dt, (2, 2, 3, 3, 3, 4)), arr(_dt, (2, 4)),
         strides=(2, 1), pads=(1, 0, 1, 2), dilations=(1, 2), reduce_size=54)
    for _tile in (2, 4):     # transforms in the accumulator dtype: error grows with the tile
        a = _tile + 2
        case("conv_winograd", arr(_dt, (2, 2, 7, 9, 3)), arr(_dt, (a, a, 2, 2, 3, 4)),
             arr(_dt, (2, 4)), tile=_tile, pads=(1, 0, 1, 2), reduce_size=54 * _tile)
    q, k, v = arr(_dt, (2, 3, 5, 8)), arr(_dt, (2, 1, 6, 8)), arr(_dt, (2, 1, 6, 4))
    mask = arr("bool", (5, 6))
    mask[0] = False   # a fully masked row attends to nothing: 0
    case("scaled_dot_product_attention", q, k, v, is_causal=True, reduce_size=8)
    case("scaled_dot_product_attention", q, k, v, scale=0.3, reduce_size=8)
    case("scaled_dot_product_attention", q, k, v, mask, reduce_size=8)
    case("scaled_dot_product_attention", q, k, v, arr(_dt, (1, 5, 6)), reduce_size=8)
for _dt in ("i8", "u8", "i32", "i64"):
    case("matmul", full_range(_dt, (3, 5, 16)), full_range(_dt, (16, 4)))


# fused groups: an elementwise chain with broadcasting, a reduction with its prologue and
# epilogue (rms-norm written out, with a `full` inside), a GEMM with bias, gelu and residual
CASES.append(Case("fused", [arr("f32", (3, 4, 16)), arr("f32", (16,))], body="""\
graph chain(%x: f32[3, 4, 16], %y: f32[16]) {
  %a: f32[3, 4, 16] = add(%x, %y)
  %b: f32[3, 4, 16] = tanh(%a)
  %c: f32[3, 4, 16] = mul(%b, %x)
  return %c
}
"""))
CASES.append(Case("fused", [arr("f32", (2, 5, 32)), arr("f32", (32,))], reduce_size=32,
                  attrs={"kind": "reduction"}, body="""\
graph rms(%x: f32[2, 5, 32], %w: f32[32]) {
  %two: f32[] = full() {shape=[], value=2.0}
  %sq: f32[2, 5, 32] = pow(%x, %two)
  %ms: f32[2, 5, 1] = mean(%sq) {axes=[-1], keepdims=true}
  %r: f32[2, 5, 1] = rsqrt(%ms)
  %n: f32[2, 5, 32] = mul(%x, %r)
  %out: f32[2, 5, 32] = mul(%w, %n)
  return %out
}
"""))
# powers by small constant exponents are multiplies (gelu-tanh's x ** 3): special values
for _dt in ("f32", "bf16"):
    CASES.append(Case("fused", [arr(_dt, (4, 48), low=-60, high=60, special=True)], body=f"""\
graph powers(%x: {_dt}[4, 48]) {{
  %c3: {_dt}[] = full() {{shape=[], value=3.0, dtype={_dt}}}
  %p3: {_dt}[4, 48] = pow(%x, %c3)
  %cm1: {_dt}[] = full() {{shape=[], value=-1.0, dtype={_dt}}}
  %pm1: {_dt}[4, 48] = pow(%x, %cm1)
  %c4: {_dt}[] = full() {{shape=[], value=4.0, dtype={_dt}}}
  %p4: {_dt}[4, 48] = pow(%x, %c4)
  %c1: {_dt}[] = full() {{shape=[], value=1.0, dtype={_dt}}}
  %p1: {_dt}[4, 48] = pow(%x, %c1)
  return %p3, %pm1, %p4, %p1
}}
"""))
CASES.append(Case("fused", [arr("f32", (7, 24)), arr("f32", (24, 40)), arr("f32", (40,)),
                            arr("f32", (7, 40))], reduce_size=24, attrs={"kind": "contraction"},
                  body="""\
graph gemm(%x: f32[7, 24], %w: f32[24, 40], %b: f32[40], %r: f32[7, 40]) {
  %mm: f32[7, 40] = matmul(%x, %w)
  %biased: f32[7, 40] = add(%mm, %b)
  %act: f32[7, 40] = gelu(%biased)
  %out: f32[7, 40] = add(%act, %r)
  return %out
}
"""))


# --- running --------------------------------------------------------------------------------
def _tensor(a: np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.array(a, copy=True, order="C"))


def run_kernel(lib, name: str, arrays: list[np.ndarray], like: list[np.ndarray],
               scalars: list[int] = ()) -> list[np.ndarray]:
    """Call kernel `name` on `arrays`; outputs shaped and typed as `like`."""
    outs = [tvm.runtime.tensor(np.zeros(r.shape, r.dtype)) for r in like]
    lib[name](*[_tensor(a) for a in arrays], *outs, *scalars)
    return [o.numpy() for o in outs]


@pytest.fixture(scope="module")
def compiled():
    """op -> (library of its cases, lowering errors by case index), built on first use:
    each op's cases are one IRModule, compiled once (and by one pytest worker)."""
    cache: dict[str, tuple[Any, dict[int, Exception]]] = {}

    def get(op: str):
        if op not in cache:
            funcs, errors = {}, {}
            for i, c in enumerate(CASES):
                if c.op != op:
                    continue
                try:
                    funcs[f"case{i}"] = lower_node(c.graph().nodes[-1], f"case{i}")
                except Exception as e:  # noqa: BLE001  reported by the case itself
                    errors[i] = e
            lib = tvm.compile(tvm.IRModule(funcs), target=cpu_target()) if funcs else None
            cache[op] = (lib, errors)
        return cache[op]
    return get


OPS = sorted(set(all_ops()) - {"constant"})


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_op_matches_interpreter(compiled, op):
    lib, errors = compiled(op)
    mine = [(i, c) for i, c in enumerate(CASES) if c.op == op]
    assert mine, f"no test case lowers op '{op}': add one to CASES"
    failures = []
    for i, c in mine:
        if i in errors:
            raise AssertionError(f"{c.name}: lowering failed") from errors[i]
        graph = c.graph()
        want = interpret(graph, c.inputs)
        got = run_kernel(lib, f"case{i}", c.inputs, want)
        for k, (g, w) in enumerate(zip(got, want)):
            try:
                assert_close(g, w, reduce_size=c.reduce_size, what=f"{c.name} output {k}")
            except AssertionError as e:
                failures.append(str(e))
    assert not failures, "\n\n".join(failures)


# --- symbolic dims --------------------------------------------------------------------------
def _sym(op: str, types: list[TensorType], runs: list[list[np.ndarray]], **attrs):
    return (op, types, attrs, runs)


SYMBOLIC = [
    _sym("add", [tensor("f32", "n", 40), tensor("f32", 40)],
         [[arr("f32", (3, 40)), arr("f32", (40,))], [arr("f32", (17, 40)), arr("f32", (40,))]]),
    _sym("gelu", [tensor("f16", "b", "s", 64)],
         [[arr("f16", (2, 3, 64))], [arr("f16", (1, 5, 64))]]),
    _sym("softmax", [tensor("f32", "b", 128)], [[arr("f32", (3, 128))], [arr("f32", (1, 128))]],
         axis=-1),
    _sym("softmax", [tensor("f32", 4, "s")], [[arr("f32", (4, 5))], [arr("f32", (4, 33))]],
         axis=-1),
    _sym("layer_norm", [tensor("f32", "b", "s", 64), tensor("f32", 64), tensor("f32", 64)],
         [[arr("f32", (2, 3, 64)), arr("f32", (64,)), arr("f32", (64,))],
          [arr("f32", (1, 1, 64)), arr("f32", (64,)), arr("f32", (64,))]], axis=-1),
    _sym("sum", [tensor("f32", 4, "n")], [[arr("f32", (4, 3))], [arr("f32", (4, 100))]],
         axes=(1,), keepdims=True),
    _sym("reshape", [tensor("f32", "b", "s", 8)],
         [[arr("f32", (2, 3, 8))], [arr("f32", (4, 1, 8))]], shape=("b*s", 8)),
    _sym("concat", [tensor("f32", "n", 3), tensor("f32", "m", 3)],
         [[arr("f32", (2, 3)), arr("f32", (5, 3))], [arr("f32", (7, 3)), arr("f32", (1, 3))]],
         axis=0),
    _sym("slice", [tensor("f32", "n", 6)], [[arr("f32", (9, 6))], [arr("f32", (3, 6))]],
         axis=0, start=1, end=2 ** 62, step=2),
    _sym("pad", [tensor("f32", "h", "w")], [[arr("f32", (4, 5))], [arr("f32", (3, 9))]],
         pads=(2, 1, 0, 2), mode="reflect"),
    _sym("gather", [tensor("f32", 10, 4), tensor("i64", "n")],
         [[arr("f32", (10, 4)), arr("i64", (3,), low=-10, high=9)],
          [arr("f32", (10, 4)), arr("i64", (12,), low=-10, high=9)]]),
    _sym("max_pool", [tensor("f32", "b", 2, "h", "w")],
         [[arr("f32", (1, 2, 7, 9))], [arr("f32", (2, 2, 12, 5))]],
         kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=False, dilations=(1, 1)),
    _sym("conv", [tensor("f32", "b", 3, "h", "w"), tensor("f32", 4, 3, 3, 3)],
         [[arr("f32", (1, 3, 8, 9)), arr("f32", (4, 3, 3, 3))],
          [arr("f32", (2, 3, 5, 6)), arr("f32", (4, 3, 3, 3))]],
         strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)),
    _sym("matmul", [tensor("f32", "m", 16), tensor("f32", 16, 8)],
         [[arr("f32", (5, 16)), arr("f32", (16, 8))], [arr("f32", (33, 16)), arr("f32", (16, 8))]]),
]


@pytest.mark.slow
@pytest.mark.parametrize("op, types, attrs, runs", SYMBOLIC, ids=[s[0] for s in SYMBOLIC])
def test_symbolic_dims_run_at_two_sizes(op, types, attrs, runs):
    b = GraphBuilder(op)
    values = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    graph = b.build(b.op(op, *values, **attrs))
    func = lower_node(graph.nodes[-1], "k")
    lib = tvm.compile(tvm.IRModule({"k": func}), target=cpu_target())
    for arrays in runs:
        want = interpret(graph, arrays)
        got = run_kernel(lib, "k", arrays, want)
        assert_close(got[0], want[0], reduce_size=128, what=f"{op} at {[a.shape for a in arrays]}")


def test_expression_dims_and_attribute_symbols():
    """exp over [b*s, 8] (no buffer holds b or s alone: the expression is one variable)
    and arange(past, past + s) (past only in an attribute: a scalar parameter)."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "b", "s", 8))
    b.input("p", tensor("f32", "past"))
    flat = b.op("reshape", x, shape=("b*s", 8))
    e = b.op("exp", flat)
    positions = b.op("arange", start="past", end="past+s", dtype="i64")
    graph = b.build(e, flat, positions)
    exp_func, arange_func = lower_node(graph.nodes[1], "e"), lower_node(graph.nodes[2], "a")
    assert symbol_args(exp_func) == [] and symbol_args(arange_func) == ["past"]
    assert [p.name for p in exp_func.params] == ["in0", "exp"]
    lib = tvm.compile(tvm.IRModule({"e": exp_func, "a": arange_func}), target=cpu_target())
    for batch, seq, past in ((2, 3, 4), (1, 5, 1)):
        inputs = [arr("f32", (batch, seq, 8)), arr("f32", (past,))]
        want_e, flat_value, want_a = interpret(graph, inputs)
        _, bindings = bind_inputs(graph, inputs)
        assert_close(run_kernel(lib, "e", [flat_value], [want_e])[0], want_e)
        got_a = run_kernel(lib, "a", [], [want_a], [bindings[s] for s in symbol_args(arange_func)])
        np.testing.assert_array_equal(got_a[0], want_a)


# --- basic contraction lowerings ------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(lower_linalg.BASIC_LOWERINGS))
def test_basic_contraction_lowerings(op):
    """The plain TE contractions, compiled instead of the registered (GEMM) ones."""
    from kiln.codegen.tvm.schedule import BASIC, default_schedule
    mine = [c for c in CASES if c.op == op]
    funcs = {f"k{i}": lower_node(c.graph().nodes[-1], f"k{i}",
                                 lowering=lower_linalg.BASIC_LOWERINGS[op],
                                 schedule=BASIC.get(op, default_schedule))
             for i, c in enumerate(mine)}
    lib = tvm.compile(tvm.IRModule(funcs), target=cpu_target())
    for i, c in enumerate(mine):
        want = interpret(c.graph(), c.inputs)
        assert_close(run_kernel(lib, f"k{i}", c.inputs, want)[0], want[0],
                     reduce_size=c.reduce_size, what=c.name)


# --- errors, registry, schedules ------------------------------------------------------------
def _graph_with_erf():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 4))
    y = b.op("erf", b.op("exp", x, source="model.py:3"), source="model.py:4")
    return b.build(y)


def test_missing_lowerings_lists_ops_without_a_tvm_lowering(monkeypatch):
    graph = _graph_with_erf()
    assert missing_lowerings(graph) == {}
    monkeypatch.delitem(get_op("erf").lowerings, "tvm")
    missing = missing_lowerings(graph)
    assert list(missing) == ["erf"] and "model.py:4" in missing["erf"][0]
    with pytest.raises(UnsupportedOpsError, match="erf"):
        lower_node(graph.nodes[-1], "k")


def test_lower_node_refuses_constants_and_packed_types():
    b = GraphBuilder("g")
    w = b.graph.add_constant("w", np.zeros(3, np.float32))
    packed = b.input("q", tensor("i4", 4, 2))
    graph = b.build(w, b.op("reshape", packed, shape=(8,)))
    with pytest.raises(CodegenError, match="no kernel"):
        lower_node(graph.nodes[0], "k")
    with pytest.raises(CodegenError, match="int4"):
        lower_node(graph.nodes[1], "k")


def _copy(x):
    return lambda *i: x(*i)


def test_lowering_errors_name_the_node():
    graph = _graph_with_erf()

    def broken(ctx, x):
        raise ValueError("no idea")
    with pytest.raises(CodegenError, match=r"erf\(%exp\).*model.py:4.*ValueError: no idea"):
        lower_node(graph.nodes[-1], "k", lowering=broken)
    b = GraphBuilder("g")
    cast = b.build(b.op("cast", b.input("x", tensor("f32", 4)), dtype="i32")).nodes[-1]
    with pytest.raises(CodegenError, match="cast.*output 0 is float32, declared int32"):
        lower_node(cast, "k", lowering=lambda ctx, x, dtype: te.compute(x.shape, _copy(x)))


@pytest.mark.parametrize("op, inputs, attrs, bad, error", [
    ("div", [np.array([7, -7], np.int32), np.array([2, 3], np.int32)], {},
     [np.array([7, -7], np.int32), np.array([2, 0], np.int32)], "integer division by zero"),
    ("remainder", [np.array([7], np.int8), np.array([3], np.int8)], {},
     [np.array([7], np.int8), np.array([0], np.int8)], "integer division by zero"),
    ("pow", [np.array([3], np.int64), np.array([2], np.int64)], {},
     [np.array([3], np.int64), np.array([-1], np.int64)], "negative exponent"),
    ("gather", [np.zeros((3, 4), np.float32), np.array([-4, 3], np.int64)], {"axis": 1},
     [np.zeros((3, 4), np.float32), np.array([0, 4], np.int64)], "out of range on axis 1"),
    ("index", [np.zeros((3, 4), np.float32), np.array([-3], np.int32)], {},
     [np.zeros((3, 4), np.float32), np.array([-4], np.int32)], "out of range on axis 0"),
])
def test_kernels_refuse_what_the_reference_refuses(op, inputs, attrs, bad, error):
    """A zero integer divisor, a negative integer exponent, an index out of range: the
    kernel checks its inputs first and fails (the reference raises), never a made-up
    answer or an out-of-bounds read."""
    c = Case(op, inputs, attrs)
    lib = tvm.compile(tvm.IRModule({"k": lower_node(c.graph().nodes[-1], "k")}),
                      target=cpu_target())
    want = interpret(c.graph(), inputs)
    assert_close(run_kernel(lib, "k", inputs, want)[0], want[0])
    with pytest.raises(Exception, match=error):
        run_kernel(lib, "k", bad, want)


def test_a_registered_schedule_replaces_the_default(monkeypatch):
    seen = []
    monkeypatch.setitem(SCHEDULES, "relu", lambda sch, node: seen.append(node.op))
    func = lower_node(Case("relu", [arr("f32", (64, 64))]).graph().nodes[-1], "k")
    assert seen == ["relu"] and "T.parallel" not in func.script()


def _script(op: str, *inputs: np.ndarray, **attrs) -> str:
    return lower_node(Case(op, list(inputs), attrs).graph().nodes[-1], "k").script()


def test_default_schedules_parallelize_and_vectorize():
    ew = _script("add", arr("f32", (256, 768)), arr("f32", (768,)))
    assert "T.parallel" in ew and "T.vectorized(T.int64(16))" in ew
    # per row: the statistics under the parallel row loop, partial sums vectorized
    norm = _script("layer_norm", arr("f32", (256, 768)), axis=-1)
    assert norm.count("T.parallel") == 1 and norm.count("T.vectorized(T.int64(16))") >= 3
    assert "_rf" in norm
    small = _script("relu", arr("f32", (4, 8)))
    assert "T.parallel" not in small              # too little work for threads
    col = _script("sum", arr("f32", (512, 64)), axes=(0,))
    assert "T.vectorized(T.int64(16))" in col     # across the kept contiguous axis


def _elementwise(fn, a):
    return lambda i: fn(a[i])


def test_fastmath_accuracy_on_a_dense_float32_sweep():
    """exp, expm1, tanh within 2 ulp and erf within 6 ulp of float64 references, with
    NaN, +-inf and overflow as libm, and subnormal results within 2**-140."""
    n = 1 << 16
    x = np.concatenate([np.linspace(-110, 95, n), np.geomspace(1e-30, 100, n),
                        -np.geomspace(1e-30, 100, n)]).astype(np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    funcs = {}
    for name in ("exp", "expm1", "tanh", "erf"):
        a = te.placeholder((len(x),), "float32", name="a")
        out = te.compute((len(x),), _elementwise(getattr(fastmath, name), a), name=name)
        funcs[name] = te.create_prim_func([a, out]).with_attr("global_symbol", name)
    lib = tvm.compile(tvm.IRModule(funcs), target=cpu_target())
    refs = {"exp": np.exp, "expm1": np.expm1, "tanh": np.tanh, "erf": scipy.special.erf}
    bounds = {"exp": 2, "expm1": 2, "tanh": 2, "erf": 6}
    for name, ref in refs.items():
        got = run_kernel(lib, name, [x], [x])[0]
        with np.errstate(all="ignore"):
            want = ref(x.astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=name)
        normal = np.isfinite(want) & (np.abs(want) >= np.finfo(np.float32).tiny)
        ulp = np.abs(got[normal].astype(np.float64) - want[normal]) / np.spacing(
            np.abs(want[normal]))
        assert ulp.max() <= bounds[name], f"{name}: {ulp.max()} ulp at {x[normal][ulp.argmax()]}"
        tiny = np.isfinite(want) & ~normal
        assert np.abs(got[tiny] - want[tiny]).max(initial=0) <= 2.0 ** -140, name
