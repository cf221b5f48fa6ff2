"""Ops added to the registry for the torch frontend, against torch: `index` (NumPy/torch
advanced indexing on consecutive axes) and `trunc` (rounding toward zero)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from kiln.errors import InterpretError
from kiln.ir import tensor
from tests.ir.op_testing import (ALL_DTYPES, FLOAT_DTYPES, NUMERIC_DTYPES, arrays, build,
                                 check_op, exercises, infer, infer_error, run, shapes, to_torch)


@exercises("index")
@given(data=st.data(), index_dtype=st.sampled_from(["i32", "i64"]))
def test_index(data, index_dtype):
    x = data.draw(arrays(data.draw(st.sampled_from(ALL_DTYPES)), shapes(min_dims=1, min_side=1)))
    count = data.draw(st.integers(1, x.ndim))
    axis = data.draw(st.integers(0, x.ndim - count))
    index_shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3,
                                                               max_side=3)).input_shapes
    indices = [data.draw(arrays(index_dtype, s, low=-x.shape[axis + i],
                                high=x.shape[axis + i] - 1))
               for i, s in enumerate(index_shapes)]
    where = (slice(None),) * axis + tuple(to_torch(i).long() for i in indices)
    check_op("index", [x, *indices], {"axis": axis}, to_torch(x)[where])


@exercises("index")
def test_index_is_a_causal_mask_lookup():
    # the pattern transformers' mask code exports: positions[batch_idx, query_idx]
    positions = np.arange(12, dtype=np.int64).reshape(3, 4)
    rows = np.arange(3, dtype=np.int64).reshape(3, 1, 1, 1)
    cols = np.arange(4, dtype=np.int64).reshape(1, 1, 4, 1)
    check_op("index", [positions, rows, cols], {},
             to_torch(positions)[to_torch(rows), to_torch(cols)])


def test_index_infer():
    assert infer("index", tensor("f32", "b", "s", 8), tensor("i64", "b", 1), tensor("i64", 1, "s"),
                 axis=0) == tensor("f32", "b", "s", 8)
    assert infer("index", tensor("f32", 2, "s", 8), tensor("i32", 5), axis=2) == \
        tensor("f32", 2, "s", 5)
    infer_error("index", [tensor("f32", 2, 3), tensor("f32", 4)], {}, "int32 or int64")
    infer_error("index", [tensor("f32", 2, 3), tensor("i64", 4), tensor("i64", 4)], {"axis": 1},
                "do not fit rank 2")
    infer_error("index", [tensor("f32", 2, 3), tensor("i64", 4), tensor("i64", 3)], {},
                "do not broadcast")


def test_index_out_of_range_is_an_interpreter_error():
    graph = build("index", [np.zeros((2, 3), np.float32), np.zeros(1, np.int64)], {"axis": 1})
    with pytest.raises(InterpretError, match="out of range"):
        run(graph, [np.zeros((2, 3), np.float32), np.array([3])])


@exercises("trunc")
@given(data=st.data())
def test_trunc(data):
    x = data.draw(arrays(data.draw(st.sampled_from(NUMERIC_DTYPES)), shapes(), special=True))
    check_op("trunc", [x], {}, torch.trunc(to_torch(x)))


def test_trunc_infer():
    for name in FLOAT_DTYPES + ("i8", "i64"):
        assert infer("trunc", tensor(name, "n", 3)) == tensor(name, "n", 3)
    infer_error("trunc", [tensor("bool", 3)], {}, "numeric")
