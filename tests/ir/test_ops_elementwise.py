"""Elementwise ops (kiln/ir/ops/elementwise.py) against torch, through GraphBuilder +
interpret: unary math and activations, binary arithmetic with broadcasting, comparisons,
logical and bitwise ops, where, cast and clamp."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from kiln.errors import InterpretError
from kiln.ir import tensor
from tests.ir.op_testing import (ALL_DTYPES, FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays,
                                 build, check_op, exercises, infer, infer_error, run, shapes,
                                 to_torch, torch_dtype)

FLOAT_UNARY = {
    "exp": torch.exp, "log": torch.log, "log1p": torch.log1p, "expm1": torch.expm1,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan,
    "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
    "asinh": torch.asinh, "acosh": torch.acosh, "atanh": torch.atanh,
    "erf": torch.erf, "sigmoid": torch.sigmoid, "silu": F.silu, "mish": F.mish,
    "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish,
}


@pytest.mark.parametrize("op", sorted(FLOAT_UNARY))
@exercises(*FLOAT_UNARY)
@given(data=st.data())
def test_float_unary(op, data):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    # values outside each function's domain too: both sides must give NaN there
    x = data.draw(arrays(dt, shapes(), low=-4, high=4, special=True))
    check_op(op, [x], {}, FLOAT_UNARY[op](to_torch(x)))


@exercises("gelu")
@given(data=st.data(), approximate=st.sampled_from(["none", "tanh"]))
def test_gelu(data, approximate):
    x = data.draw(arrays(data.draw(st.sampled_from(FLOAT_DTYPES)), shapes(), special=True))
    check_op("gelu", [x], {"approximate": approximate},
             F.gelu(to_torch(x), approximate=approximate))


@exercises("softplus")
@given(data=st.data(), beta=st.floats(0.25, 4), threshold=st.floats(1, 20))
def test_softplus(data, beta, threshold):
    x = data.draw(arrays(data.draw(st.sampled_from(FLOAT_DTYPES)), shapes(), special=True))
    check_op("softplus", [x], {"beta": beta, "threshold": threshold},
             F.softplus(to_torch(x), beta=beta, threshold=threshold))


@exercises("elu", "leaky_relu")
@given(data=st.data(), alpha=st.floats(0, 3))
def test_elu_and_leaky_relu(data, alpha):
    x = data.draw(arrays(data.draw(st.sampled_from(FLOAT_DTYPES)), shapes(), special=True))
    check_op("elu", [x], {"alpha": alpha}, F.elu(to_torch(x), alpha=alpha))
    check_op("leaky_relu", [x], {"negative_slope": alpha},
             F.leaky_relu(to_torch(x), negative_slope=alpha))


def test_activation_defaults_match_torch():
    x = np.linspace(-30, 30, 61, dtype=np.float32)
    for op, fn in {"gelu": F.gelu, "softplus": F.softplus, "elu": F.elu,
                   "leaky_relu": F.leaky_relu}.items():
        check_op(op, [x], {}, fn(to_torch(x)))


NUMERIC_UNARY = {"neg": torch.neg, "abs": torch.abs, "relu": torch.relu, "sign": torch.sign,
                 "floor": torch.floor, "ceil": torch.ceil, "round": torch.round}


@pytest.mark.parametrize("op", sorted(NUMERIC_UNARY))
@exercises(*NUMERIC_UNARY)
@given(data=st.data())
def test_numeric_unary(op, data):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    # ints over their whole range (abs/neg of the minimum wrap, as in torch)
    x = data.draw(arrays(dt, shapes(), low=-2 ** 63, high=2 ** 63, special=True)
                  if dt in INT_DTYPES else arrays(dt, shapes(), special=True))
    check_op(op, [x], {}, NUMERIC_UNARY[op](to_torch(x)))


@exercises("round")
def test_round_half_to_even():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], np.float32)
    check_op("round", [x], {}, np.array([-2, -2, -0, 0, 2, 2], np.float32))


@exercises("clamp")
@given(data=st.data(), bounds=st.tuples(st.none() | st.integers(-20, 20),
                                        st.none() | st.integers(-20, 20)))
def test_clamp(data, bounds):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    lo, hi = bounds
    if dt in FLOAT_DTYPES:   # fractional bounds for floats
        lo = None if lo is None else lo / 4
        hi = None if hi is None else hi / 4
    elif dt == "u8":         # torch rejects bounds its dtype cannot hold
        lo = None if lo is None else abs(lo)
        hi = None if hi is None else abs(hi)
    x = data.draw(arrays(dt, shapes(), special=True))
    attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    # torch refuses a clamp without bounds; kiln's is the identity
    expected = x if attrs == {} else torch.clamp(to_torch(x), min=lo, max=hi)
    check_op("clamp", [x], attrs, expected)


def test_clamp_rejects_bounds_an_integer_tensor_cannot_hold():
    infer_error("clamp", [tensor("i8", 3)], {"min": 1000.0}, "does not fit int8")
    infer_error("clamp", [tensor("i32", 3)], {"max": 1.5}, "must be an integer")
    assert infer("clamp", tensor("i8", 3), min=-128, max=127.0) == tensor("i8", 3)


@exercises("isnan", "isinf")
@given(data=st.data())
def test_isnan_isinf(data):
    x = data.draw(arrays(data.draw(st.sampled_from(FLOAT_DTYPES)), shapes(), special=True))
    check_op("isnan", [x], {}, torch.isnan(to_torch(x)))
    check_op("isinf", [x], {}, torch.isinf(to_torch(x)))


@exercises("logical_not")
@given(x=arrays("bool", shapes()))
def test_logical_not(x):
    check_op("logical_not", [x], {}, torch.logical_not(to_torch(x)))


@exercises("bitwise_not")
@given(data=st.data())
def test_bitwise_not(data):
    dt = data.draw(st.sampled_from(INT_DTYPES + ("bool",)))
    x = data.draw(arrays(dt, shapes(), low=-2 ** 63, high=2 ** 63))
    check_op("bitwise_not", [x], {}, torch.bitwise_not(to_torch(x)))


CASTABLE = ALL_DTYPES


@exercises("cast")
@given(data=st.data(), src=st.sampled_from(CASTABLE), dst=st.sampled_from(CASTABLE))
def test_cast(data, src, dst):
    if src in FLOAT_DTYPES and dst in INT_DTYPES:
        # float -> int truncates toward zero; out-of-range values are undefined (as in C)
        low, high = (0, 250) if dst == "u8" else (-120, 120)
        x = data.draw(arrays(src, shapes(), low=low, high=high))
    elif src in FLOAT_DTYPES:
        x = data.draw(arrays(src, shapes(), low=-1e4, high=1e4, special=True))
    else:  # integers wrap when narrowed, as in torch
        x = data.draw(arrays(src, shapes(), low=-2 ** 63, high=2 ** 63))
    check_op("cast", [x], {"dtype": dst}, to_torch(x).to(torch_dtype(dst)), rtol=0, atol=0)


@exercises("cast")
def test_cast_float_to_int_truncates_toward_zero():
    x = np.array([-2.7, -1.5, -0.5, 0.5, 1.5, 2.7], np.float32)
    check_op("cast", [x], {"dtype": "i32"}, np.array([-2, -1, 0, 0, 1, 2], np.int32))


# --- binary ----------------------------------------------------------------------------
def _two_arrays(data, dtypes, low=-10, high=10, special=True, full_int_range=False):
    """Two arrays of one dtype drawn from `dtypes`, of mutually broadcastable shapes;
    integers span their whole range when `full_int_range`."""
    dt = data.draw(st.sampled_from(dtypes))
    if full_int_range and dt in INT_DTYPES:
        low, high = -2 ** 63, 2 ** 63
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=4)).input_shapes
    special = special and dt in FLOAT_DTYPES
    a = data.draw(arrays(dt, shape_a, low=low, high=high, special=special))
    b = data.draw(arrays(dt, shape_b, low=low, high=high, special=special))
    return dt, a, b


def _nonzero(b: np.ndarray) -> np.ndarray:
    """Integer divisors without zeros (torch raises on integer division by zero)."""
    return np.where(b == 0, np.ones((), b.dtype), b)


ARITH = {"add": torch.add, "sub": torch.sub, "mul": torch.mul,
         "maximum": torch.maximum, "minimum": torch.minimum}


@pytest.mark.parametrize("op", sorted(ARITH))
@exercises(*ARITH)
@given(data=st.data())
def test_arith(op, data):
    _, a, b = _two_arrays(data, NUMERIC_DTYPES, full_int_range=True)
    check_op(op, [a, b], {}, ARITH[op](to_torch(a), to_torch(b)))


DIVISION = {"div": lambda a, b: torch.div(a, b, rounding_mode=None if a.is_floating_point()
                                          else "trunc"),
            "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
            "remainder": torch.remainder, "fmod": torch.fmod}


@pytest.mark.parametrize("op", sorted(DIVISION))
@exercises(*DIVISION)
@given(data=st.data())
def test_division(op, data):
    dt, a, b = _two_arrays(data, NUMERIC_DTYPES, full_int_range=True)
    if dt in INT_DTYPES:
        b = _nonzero(b)
        if dt != "u8":  # MIN / -1 overflows (undefined in C and torch)
            a = np.where(a == np.iinfo(a.dtype).min, np.zeros((), a.dtype), a)
    check_op(op, [a, b], {}, DIVISION[op](to_torch(a), to_torch(b)))


@exercises("div", "floor_div", "remainder", "fmod")
@pytest.mark.parametrize("dt", ["i32", "i64", "f32"])
def test_division_rounding_and_signs(dt):
    a = np.array([-7, 7, -7, 7, 6, -6], dtype=np.dtype({"i32": "int32", "i64": "int64",
                                                        "f32": "float32"}[dt]))
    b = np.array([2, -2, -2, 2, 3, 4], a.dtype)
    want = {"div": [-3.5, -3.5, 3.5, 3.5, 2, -1.5] if dt == "f32" else [-3, -3, 3, 3, 2, -1],
            "floor_div": [-4, -4, 3, 3, 2, -2],
            "remainder": [1, -1, -1, 1, 0, 2],   # sign of the divisor
            "fmod": [-1, 1, -1, 1, 0, -2]}       # sign of the dividend
    for op, values in want.items():
        check_op(op, [a, b], {}, np.array(values, a.dtype))


@exercises("div", "floor_div", "remainder", "fmod")
def test_integer_division_is_exact_for_large_int64():
    a = np.array([2 ** 62 + 1, -(2 ** 53) - 1, 2 ** 63 - 1], np.int64)
    b = np.array([1, 1, 3], np.int64)
    ta, tb = to_torch(a), to_torch(b)
    check_op("div", [a, b], {}, torch.div(ta, tb, rounding_mode="trunc"))
    check_op("floor_div", [a, b], {}, torch.div(ta, tb, rounding_mode="floor"))
    check_op("remainder", [a, b], {}, torch.remainder(ta, tb))
    check_op("fmod", [a, b], {}, torch.fmod(ta, tb))


@exercises("pow")
@given(data=st.data())
def test_pow(data):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    if dt in INT_DTYPES:  # integer powers wrap like repeated multiplication
        _, a, b = _two_arrays(data, [dt], full_int_range=True)
        b = np.abs(b % 8).astype(b.dtype)
    else:
        _, a, b = _two_arrays(data, [dt], low=-4, high=4)
    check_op("pow", [a, b], {}, torch.pow(to_torch(a), to_torch(b)))


@pytest.mark.parametrize("op", ["div", "floor_div", "remainder", "fmod"])
def test_integer_division_by_zero_raises(op):
    # torch raises too; a made-up quotient would be a wrong answer
    a, b = np.array([7, -7], np.int32), np.array([2, 0], np.int32)
    with pytest.raises(InterpretError, match="integer division by zero"):
        run(build(op, [a, b]), [a, b])


@exercises("pow")
def test_integer_pow_with_negative_exponent_raises():
    graph = build("pow", [tensor("i32", 2), tensor("i32", 2)])
    with pytest.raises(InterpretError, match="negative exponent"):
        run(graph, [np.array([2, 3], np.int32), np.array([1, -1], np.int32)])
    # a zero exponent is fine
    check_op("pow", [np.array([0, 3], np.int32), np.array([0, 0], np.int32)], {},
             np.array([1, 1], np.int32))


@exercises("atan2")
@given(data=st.data())
def test_atan2(data):
    _, a, b = _two_arrays(data, FLOAT_DTYPES)
    check_op("atan2", [a, b], {}, torch.atan2(to_torch(a), to_torch(b)))


COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
           "ge": torch.ge}


@pytest.mark.parametrize("op", sorted(COMPARE))
@exercises(*COMPARE)
@given(data=st.data())
def test_compare(op, data):
    _, a, b = _two_arrays(data, ALL_DTYPES, low=-3, high=3)  # small range: many ties
    check_op(op, [a, b], {}, COMPARE[op](to_torch(a), to_torch(b)))


LOGICAL = {"logical_and": torch.logical_and, "logical_or": torch.logical_or,
           "logical_xor": torch.logical_xor}
BITWISE = {"bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or,
           "bitwise_xor": torch.bitwise_xor}


@pytest.mark.parametrize("op", sorted(LOGICAL))
@exercises(*LOGICAL)
@given(data=st.data())
def test_logical(op, data):
    _, a, b = _two_arrays(data, ["bool"])
    check_op(op, [a, b], {}, LOGICAL[op](to_torch(a), to_torch(b)))


@pytest.mark.parametrize("op", sorted(BITWISE))
@exercises(*BITWISE)
@given(data=st.data())
def test_bitwise(op, data):
    _, a, b = _two_arrays(data, INT_DTYPES + ("bool",), full_int_range=True)
    check_op(op, [a, b], {}, BITWISE[op](to_torch(a), to_torch(b)))


@exercises("where")
@given(data=st.data())
def test_where(data):
    dt = data.draw(st.sampled_from(ALL_DTYPES))
    shapes_ = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, min_dims=0, max_dims=4, min_side=0, max_side=4)).input_shapes
    cond = data.draw(arrays("bool", shapes_[0]))
    a = data.draw(arrays(dt, shapes_[1], special=dt in FLOAT_DTYPES))
    b = data.draw(arrays(dt, shapes_[2], special=dt in FLOAT_DTYPES))
    check_op("where", [cond, a, b], {}, torch.where(to_torch(cond), to_torch(a), to_torch(b)))


# --- inference: symbolic dims and errors -----------------------------------------------
def test_broadcast_with_symbolic_dims():
    assert infer("add", tensor("f32", "n", 1), tensor("f32", 1, "m")) == tensor("f32", "n", "m")
    assert infer("mul", tensor("f32", "b", "s", 4), tensor("f32", 4)) == tensor("f32", "b", "s", 4)
    assert infer("eq", tensor("i32", "n"), tensor("i32", "n")) == tensor("bool", "n")
    assert infer("where", tensor("bool", "n", 1), tensor("f16", 3), tensor("f16", "n", 1)) \
        == tensor("f16", "n", 3)


@exercises("add")
def test_symbolic_broadcast_runs():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.ones((1, 2), np.float32)
    check_op("add", [a, b], {}, a + b, input_types=[tensor("f32", "n", 2), tensor("f32", 1, 2)])


@pytest.mark.parametrize("op, types, attrs, match", [
    ("add", [tensor("f32", 2), tensor("i32", 2)], {}, "share one dtype"),
    ("add", [tensor("f32", 2, 3), tensor("f32", 4)], {}, "do not broadcast"),
    ("add", [tensor("f32", "n"), tensor("f32", "m")], {}, "do not broadcast"),
    ("sub", [tensor("bool", 2), tensor("bool", 2)], {}, "numeric"),
    ("exp", [tensor("i32", 2)], {}, "floating point"),
    ("atan2", [tensor("i32", 2), tensor("i32", 2)], {}, "floating point"),
    ("neg", [tensor("bool", 2)], {}, "numeric"),
    ("isnan", [tensor("i64", 2)], {}, "floating point"),
    ("logical_and", [tensor("i8", 2), tensor("i8", 2)], {}, "must be bool"),
    ("logical_not", [tensor("f32", 2)], {}, "must be bool"),
    ("bitwise_or", [tensor("f32", 2), tensor("f32", 2)], {}, "integer or bool"),
    ("bitwise_not", [tensor("f16", 2)], {}, "integer or bool"),
    ("where", [tensor("f32", 2), tensor("f32", 2), tensor("f32", 2)], {}, "condition must be bool"),
    ("where", [tensor("bool", 2), tensor("f32", 2), tensor("f16", 2)], {}, "share one dtype"),
    ("lt", [tensor("f32", 2), tensor("f64", 2)], {}, "share one dtype"),
    ("cast", [tensor("f32", 2)], {"dtype": "i4"}, "packed int4"),
    ("gelu", [tensor("f32", 2)], {"approximate": "erf"}, "not one of"),
    ("exp", [tensor("f32", 2), tensor("f32", 2)], {}, "takes 1 input"),
])
def test_invalid_inputs_raise(op, types, attrs, match):
    infer_error(op, types, attrs, match)
