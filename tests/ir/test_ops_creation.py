"""Creation ops (kiln/ir/ops/creation.py) against torch, through GraphBuilder + interpret:
`full` and `arange` (static and symbolic sizes, every dtype) and `constant` (a weight in the
graph's constant table, added with Graph.add_constant)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from kiln.errors import VerifyError
from kiln.ir import GraphBuilder, tensor
from tests.ir.op_testing import (ALL_DTYPES, FLOAT_DTYPES, NUMERIC_DTYPES, arrays, assert_close,
                                 check_op, exercises, infer, infer_error, run, shapes,
                                 torch_dtype)


@exercises("full")
@given(data=st.data(), dt=st.sampled_from(ALL_DTYPES))
def test_full(data, dt):
    shape = data.draw(shapes())
    if dt in FLOAT_DTYPES:
        value = data.draw(st.floats(-1e4, 1e4) | st.sampled_from([np.inf, -np.inf, np.nan]))
    elif dt == "bool":
        value = float(data.draw(st.booleans()))
    else:
        info = np.iinfo(np.dtype({"i8": "int8", "u8": "uint8", "i16": "int16", "i32": "int32",
                                  "i64": "int64"}[dt]))
        # int64's extremes are not floats; a fractional value truncates toward zero, as torch
        value = data.draw(st.integers(max(info.min, -2 ** 53), min(info.max, 2 ** 53))
                          .map(float) | st.floats(-100, 100).filter(
                              lambda v: info.min <= v <= info.max))
    check_op("full", [], {"shape": shape, "value": value, "dtype": dt},
             torch.full(shape, value, dtype=torch_dtype(dt)))


@exercises("full")
def test_full_defaults_to_float32():
    check_op("full", [], {"shape": (2,), "value": 1.5}, np.full(2, 1.5, np.float32))


@exercises("arange")
@given(data=st.data(), dt=st.sampled_from(NUMERIC_DTYPES))
def test_arange(data, dt):
    step = data.draw(st.integers(-4, 4).filter(bool))
    low = 0 if dt == "u8" else -20
    start, end = data.draw(st.integers(low, 20)), data.draw(st.integers(low, 20))
    attrs = {"end": end, "step": step, "dtype": dt}
    if start or data.draw(st.booleans()):
        attrs["start"] = start
    if (end - start) * step < 0:  # torch refuses an empty range there; kiln's is empty
        expected = torch.zeros(0, dtype=torch_dtype(dt))
    else:
        expected = torch.arange(start, end, step, dtype=torch_dtype(dt))
    check_op("arange", [], attrs, expected)


@exercises("arange")
def test_arange_defaults_to_int64_from_zero():
    check_op("arange", [], {"end": 4}, np.arange(4, dtype=np.int64))


@exercises("constant", "add")
@given(data=st.data(), dt=st.sampled_from(ALL_DTYPES))
def test_constant(data, dt):
    weight = data.draw(arrays(dt, shapes(), special=dt in FLOAT_DTYPES))
    b = GraphBuilder("constant")
    w = b.constant("w", weight)
    assert w.type == tensor(dt, *weight.shape)
    outputs = [w]
    if dt in NUMERIC_DTYPES:  # a constant also feeds other nodes
        x = b.input("x", tensor(dt, *weight.shape))
        outputs.append(b.add(x, w))
    graph = b.build(*outputs)
    results = run(graph, [weight] if len(outputs) == 2 else [])
    assert_close(results[0], weight)
    if len(outputs) == 2:
        expected = (weight.astype(np.float64) + weight).astype(weight.dtype) \
            if dt in FLOAT_DTYPES else weight + weight
        assert_close(results[1], expected)


@exercises("constant")
def test_constant_int4_is_stored_packed():
    packed = np.array([[0x21, 0xF3]], np.uint8)   # four int4 values, two per byte
    b = GraphBuilder()
    graph = b.build(b.graph.add_constant("q", packed))
    (result,) = run(graph, [])
    np.testing.assert_array_equal(result, packed)


def test_constant_is_not_an_ordinary_node():
    with pytest.raises(VerifyError, match="add_constant"):
        GraphBuilder().op("constant", ref="w")


# --- inference: symbolic dims and errors -----------------------------------------------
def test_creation_shapes_with_symbolic_dims():
    assert infer("arange", end="n") == tensor("i64", "n")
    assert infer("arange", start=2, end="n", dtype="f32") == tensor("f32", "n - 2")
    assert infer("arange", start=1, end="n", step=2) == tensor("i64", "ceiling((n - 1)/2)")
    assert infer("arange", start=10, end=0, step=-3) == tensor("i64", 4)
    assert infer("full", shape=("b", 3), value=0.0) == tensor("f32", "b", 3)


@exercises("arange", "full")
@pytest.mark.parametrize("n", [1, 4, 7])
def test_symbolic_sizes_run(n):
    """arange/full sized by a symbol that a graph input binds."""
    b = GraphBuilder()
    x = b.input("x", tensor("f32", "n"))
    r = b.arange(start=1, end="n", step=2, dtype="i32")
    f = b.full(shape=(2, "n"), value=-1.0, dtype="f16")
    results = run(b.build(r, f, x), [np.zeros(n, np.float32)])
    assert_close(results[0], torch.arange(1, n, 2, dtype=torch.int32))
    assert_close(results[1], np.full((2, n), -1, np.float16))


@pytest.mark.parametrize("op, attrs, match", [
    ("arange", {"end": 4, "step": 0}, "step must not be 0"),
    ("arange", {"end": 4, "dtype": "bool"}, "cannot make bool"),
    ("arange", {"end": 4, "dtype": "i4"}, "cannot make int4"),
    ("arange", {}, "requires attribute 'end'"),
    ("full", {"shape": (2, -1), "value": 0.0}, "negative"),
    ("full", {"shape": (2,), "value": 0.0, "dtype": "i4"}, "packed int4"),
    ("full", {"shape": (2,), "value": 300.0, "dtype": "u8"}, "does not fit uint8"),
    ("full", {"shape": (2,), "value": "one"}, "expected float"),
])
def test_invalid_inputs_raise(op, attrs, match):
    infer_error(op, [], attrs, match)

