"""Layout ops (kiln/ir/ops/layout.py) against torch, through GraphBuilder + interpret:
reshape, transpose, slice, concat, split, expand, squeeze/unsqueeze, flip, tile, pad,
gather, gather_elements, triu/tril — every dtype, size-0 dims, negative axes — and their
shape inference with symbolic dims."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from kiln.ir import GraphBuilder, tensor
from kiln.ir.ops.layout import BIG
from tests.ir.op_testing import (ALL_DTYPES, arrays, check_op, exercises, infer, infer_error,
                                 run, shapes, to_torch)

dtypes = st.sampled_from(ALL_DTYPES)


def _array(data, shape, dt=None):
    return data.draw(arrays(dt or data.draw(dtypes), shape, low=-100, high=100))


def _axis(data, rank):
    return data.draw(st.integers(-rank, rank - 1))


@st.composite
def _same_size_shape(draw, shape):
    """Another shape with as many elements as `shape`."""
    size = math.prod(shape)
    if size == 0:
        other = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
        return tuple(other) if 0 in other else tuple(other) + (0,)
    factors = [p for p in range(2, size + 1) for _ in range(_multiplicity(size, p))]
    rank = draw(st.integers(1, 4))
    dims = [1] * rank
    for f in factors:
        dims[draw(st.integers(0, rank - 1))] *= f
    return tuple(dims)


def _multiplicity(n, p):
    if any(p % q == 0 for q in range(2, p)):
        return 0
    k = 0
    while n % p == 0:
        n //= p
        k += 1
    return k


@exercises("reshape")
@given(data=st.data())
def test_reshape(data):
    x = _array(data, data.draw(shapes()))
    target = data.draw(_same_size_shape(x.shape))
    check_op("reshape", [x], {"shape": target}, to_torch(x).reshape(target))


@exercises("transpose")
@given(data=st.data())
def test_transpose(data):
    x = _array(data, data.draw(shapes()))
    perm = data.draw(st.permutations(range(x.ndim)))
    check_op("transpose", [x], {"perm": perm}, torch.permute(to_torch(x), tuple(perm)))


@exercises("slice")
@given(data=st.data(), step=st.integers(1, 3))
def test_slice(data, step):
    x = _array(data, data.draw(shapes(min_dims=1, max_side=6)))
    axis = _axis(data, x.ndim)
    size = x.shape[axis]
    start = data.draw(st.integers(-size - 2, size + 2))
    end = data.draw(st.integers(-size - 2, size + 2) | st.just(BIG))
    attrs = {"axis": axis, "start": start, "step": step}
    if end != BIG or data.draw(st.booleans()):  # BIG and the default both mean "to the end"
        attrs["end"] = end
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, None if end == BIG else end, step)
    check_op("slice", [x], attrs, to_torch(x)[tuple(index)])


@exercises("concat")
@given(data=st.data(), count=st.integers(1, 4))
def test_concat(data, count):
    dt = data.draw(dtypes)
    shape = data.draw(shapes(min_dims=1))
    axis = _axis(data, len(shape))
    xs = []
    for _ in range(count):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3))
        xs.append(_array(data, tuple(s), dt))
    check_op("concat", xs, {"axis": axis}, torch.cat([to_torch(x) for x in xs], dim=axis))


@exercises("split")
@given(data=st.data())
def test_split(data):
    sizes = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
    shape = list(data.draw(shapes(min_dims=1)))
    axis = _axis(data, len(shape))
    shape[axis] = sum(sizes)
    x = _array(data, tuple(shape))
    check_op("split", [x], {"axis": axis, "sizes": sizes},
             list(torch.split(to_torch(x), sizes, dim=axis)))


@exercises("expand")
@given(data=st.data())
def test_expand(data):
    x = _array(data, data.draw(shapes(max_side=2)))
    lead = data.draw(shapes(max_dims=2, max_side=3))
    target = lead + tuple(data.draw(st.integers(0, 3)) if d == 1 else d for d in x.shape)
    check_op("expand", [x], {"shape": target}, to_torch(x).expand(target))


@exercises("squeeze")
@given(data=st.data())
def test_squeeze(data):
    x = _array(data, data.draw(shapes(max_side=2)))
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    chosen = data.draw(st.lists(st.sampled_from(ones), unique=True) if ones else st.just([]))
    axes = tuple(a - x.ndim if data.draw(st.booleans()) else a for a in chosen)
    check_op("squeeze", [x], {"axes": axes}, to_torch(x).squeeze(tuple(chosen)))


@exercises("unsqueeze")
@given(data=st.data())
def test_unsqueeze(data):
    x = _array(data, data.draw(shapes(max_dims=3)))
    count = data.draw(st.integers(0, 3))
    rank = x.ndim + count
    chosen = data.draw(st.lists(st.integers(0, rank - 1), min_size=count, max_size=count,
                                unique=True)) if count else []
    axes = tuple(a - rank if data.draw(st.booleans()) else a for a in chosen)
    expected = to_torch(x)
    for a in sorted(chosen):
        expected = expected.unsqueeze(a)
    check_op("unsqueeze", [x], {"axes": axes}, expected)


@exercises("flip")
@given(data=st.data())
def test_flip(data):
    x = _array(data, data.draw(shapes()))
    axes = data.draw(st.lists(st.integers(0, max(x.ndim - 1, 0)), unique=True,
                              max_size=x.ndim))
    axes = [a - x.ndim if data.draw(st.booleans()) else a for a in axes]
    check_op("flip", [x], {"axes": axes}, torch.flip(to_torch(x), axes))


@exercises("tile")
@given(data=st.data())
def test_tile(data):
    x = _array(data, data.draw(shapes(max_dims=3, max_side=3)))
    repeats = data.draw(st.lists(st.integers(0, 3), min_size=x.ndim, max_size=x.ndim))
    check_op("tile", [x], {"repeats": repeats}, torch.tile(to_torch(x), tuple(repeats)))


def _torch_pads(pads, rank, count=None):
    """ONNX pads [b0..bn, e0..en] -> torch's (b_last, e_last, b_last-1, e_last-1, ...)
    for the last `count` dims (default: all)."""
    out = []
    for i in reversed(range(rank - (rank if count is None else count), rank)):
        out += [pads[i], pads[i + rank]]
    return tuple(out)


@exercises("pad")
@given(data=st.data())
def test_pad_constant(data):
    dt = data.draw(dtypes)
    x = _array(data, data.draw(shapes(max_dims=4, max_side=3)), dt)
    pads = data.draw(st.lists(st.integers(0, 3), min_size=2 * x.ndim, max_size=2 * x.ndim))
    value = float(data.draw(st.integers(-5, 5))) if dt != "bool" else 0.0
    if dt in ("f32", "f64", "f16", "bf16"):
        value /= 4
    elif dt == "u8":
        value = abs(value)
    check_op("pad", [x], {"pads": pads, "value": value},
             F.pad(to_torch(x), _torch_pads(pads, x.ndim), value=value))


@exercises("pad")
@given(data=st.data(), mode=st.sampled_from(["reflect", "edge"]))
def test_pad_reflect_and_edge(data, mode):
    # torch pads the last 1-3 dims of a [N, C, *spatial] tensor in these modes
    spatial = data.draw(shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = _array(data, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))) + spatial,
               data.draw(st.sampled_from(["f32", "f64"])))
    limit = [d - 1 if mode == "reflect" else 3 for d in x.shape]  # reflect: pad < size
    begins = [0, 0] + [data.draw(st.integers(0, limit[i])) for i in range(2, x.ndim)]
    ends = [0, 0] + [data.draw(st.integers(0, limit[i])) for i in range(2, x.ndim)]
    torch_mode = {"reflect": "reflect", "edge": "replicate"}[mode]
    check_op("pad", [x], {"pads": begins + ends, "mode": mode},
             F.pad(to_torch(x), _torch_pads(begins + ends, x.ndim, len(spatial)), mode=torch_mode))


@exercises("gather")
@given(data=st.data(), index_dtype=st.sampled_from(["i32", "i64"]))
def test_gather(data, index_dtype):
    x = _array(data, data.draw(shapes(min_dims=1)))
    axis = _axis(data, x.ndim)
    size = x.shape[axis]
    index_shape = data.draw(shapes(max_dims=2)) if size else (0,)
    indices = data.draw(arrays(index_dtype, index_shape, low=-size, high=max(size - 1, 0)))
    index = (slice(None),) * (axis % x.ndim) + (to_torch(indices).long(),)
    check_op("gather", [x, indices], {"axis": axis}, to_torch(x)[index])


@exercises("gather")
def test_gather_is_embedding_lookup():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([[0, 3], [2, 2]], np.int64)
    check_op("gather", [table, ids], {},
             F.embedding(to_torch(ids), to_torch(table)))


@exercises("gather_elements")
@given(data=st.data(), index_dtype=st.sampled_from(["i32", "i64"]))
def test_gather_elements(data, index_dtype):
    x = _array(data, data.draw(shapes(min_dims=1)))
    axis = _axis(data, x.ndim)
    size = x.shape[axis]
    # torch.gather: index dims may be smaller than x's outside the axis
    index_shape = [data.draw(st.integers(0, d)) for d in x.shape]
    index_shape[axis] = data.draw(st.integers(0, 4)) if size else 0
    indices = data.draw(arrays(index_dtype, tuple(index_shape), low=-size,
                               high=max(size - 1, 0)))
    expected = torch.gather(to_torch(x), axis, to_torch(indices).long() % max(size, 1))
    check_op("gather_elements", [x, indices], {"axis": axis}, expected)


TRIANGLE = {"triu": torch.triu, "tril": torch.tril}


@pytest.mark.parametrize("op", sorted(TRIANGLE))
@exercises(*TRIANGLE)
@given(data=st.data(), diagonal=st.integers(-4, 4))
def test_triangle(op, data, diagonal):
    x = _array(data, data.draw(shapes(min_dims=2)))
    check_op(op, [x], {"diagonal": diagonal}, TRIANGLE[op](to_torch(x), diagonal))


# --- inference: symbolic dims and errors -----------------------------------------------
def test_reshape_with_symbolic_dims():
    assert infer("reshape", tensor("f32", "b", 4), shape=("b*2", 2)) == tensor("f32", "2*b", 2)
    assert infer("reshape", tensor("f32", "b", "s", 8), shape=("b*s", 8)) == \
        tensor("f32", "b*s", 8)
    infer_error("reshape", [tensor("f32", "b", 4)], {"shape": ("b", 3)}, "cannot reshape")


@exercises("reshape")
def test_symbolic_reshape_runs():
    x = np.arange(24, dtype=np.float32).reshape(3, 8)
    check_op("reshape", [x], {"shape": ("b*4", 2)}, x.reshape(12, 2),
             input_types=[tensor("f32", "b", 8)])


def test_slice_with_symbolic_dims():
    x = tensor("f32", "n", 4)
    assert infer("slice", x, axis=0, start=1) == tensor("f32", "n - 1", 4)
    assert infer("slice", x, axis=0, start=-3) == tensor("f32", 3, 4)
    assert infer("slice", x, axis=0, end="n - 2") == tensor("f32", "n - 2", 4)
    assert infer("slice", x, axis=0, start=1, end="n", step=2) == \
        tensor("f32", "ceiling((n - 1)/2)", 4)
    assert infer("slice", x, axis=1, start=1, end=BIG, step=2) == tensor("f32", "n", 2)


@exercises("slice")
@pytest.mark.parametrize("n", [5, 6])
def test_slice_with_symbolic_end_runs(n):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    check_op("slice", [x], {"axis": 0, "start": 1, "end": "n", "step": 2}, x[1:n:2],
             input_types=[tensor("f32", "n", 2)])
    check_op("slice", [x], {"axis": -2, "end": "n - 2"}, x[:n - 2],
             input_types=[tensor("f32", "n", 2)])


def test_concat_split_expand_with_symbolic_dims():
    assert infer("concat", tensor("f16", "n", 2), tensor("f16", "m", 2), tensor("f16", 1, 2),
                 axis=0) == tensor("f16", "m + n + 1", 2)
    assert infer("concat", tensor("i8", "b", 2), tensor("i8", "b", 3), axis=-1) == \
        tensor("i8", "b", 5)
    assert infer("split", tensor("f32", "b", 5), axis=1, sizes=(2, 3)) == \
        (tensor("f32", "b", 2), tensor("f32", "b", 3))
    assert infer("expand", tensor("f32", 1, 3), shape=("b", 3)) == tensor("f32", "b", 3)
    assert infer("expand", tensor("f32", "n", 1), shape=(2, "n", 4)) == tensor("f32", 2, "n", 4)
    assert infer("tile", tensor("f32", "n", 2), repeats=(3, 1)) == tensor("f32", "3*n", 2)
    assert infer("pad", tensor("f32", "n", 2), pads=(1, 0, 2, 3)) == tensor("f32", "n + 3", 5)
    assert infer("gather", tensor("f32", 10, 4), tensor("i64", "b", "s")) == \
        tensor("f32", "b", "s", 4)
    assert infer("unsqueeze", tensor("f32", "n"), axes=(0, -1)) == tensor("f32", 1, "n", 1)


@exercises("concat", "expand")
def test_symbolic_concat_and_expand_run():
    a, b = np.ones((2, 2), np.float32), np.zeros((3, 2), np.float32)
    check_op("concat", [a, b], {"axis": 0}, np.concatenate([a, b]),
             input_types=[tensor("f32", "n", 2), tensor("f32", "m", 2)])
    # expand's target names a symbol bound by another graph input
    gb = GraphBuilder()
    x, y = gb.input("x", tensor("f32", 1, 3)), gb.input("y", tensor("f32", "b", 1))
    out = gb.expand(x, shape=("b", 3))
    assert out.type == tensor("f32", "b", 3)
    x_value = np.arange(3, dtype=np.float32).reshape(1, 3)
    result, _ = run(gb.build(out, y), [x_value, np.zeros((4, 1), np.float32)])
    np.testing.assert_array_equal(result, np.broadcast_to(x_value, (4, 3)))


@pytest.mark.parametrize("op, types, attrs, match", [
    ("reshape", [tensor("f32", 2, 3)], {"shape": (-1, 3)}, "negative dim"),
    ("reshape", [tensor("f32", 2, 3)], {"shape": (4, 2)}, "6 elements"),
    ("transpose", [tensor("f32", 2, 3)], {"perm": (0, 0)}, "not a permutation"),
    ("transpose", [tensor("f32", 2, 3)], {"perm": (1, -1)}, "not a permutation"),
    ("slice", [tensor("f32", 4)], {"axis": 0, "step": 0}, "step must be positive"),
    ("slice", [tensor("f32", 4)], {"axis": 0, "step": -1}, "use flip"),
    ("slice", [tensor("f32", 4)], {"axis": 1}, "out of range"),
    ("slice", [tensor("f32")], {"axis": 0}, "out of range for rank 0"),
    ("concat", [tensor("f32", 2, 3), tensor("f32", 2, 4)], {"axis": 0}, "differ outside axis"),
    ("concat", [tensor("f32", 2), tensor("f32", 2, 1)], {"axis": 0}, "differ outside axis"),
    ("concat", [tensor("f32", 2), tensor("i32", 2)], {"axis": 0}, "share one dtype"),
    ("concat", [tensor("f32"), tensor("f32")], {"axis": 0}, "out of range for rank 0"),
    ("split", [tensor("f32", 5)], {"axis": 0, "sizes": (2, 2)}, "do not add up"),
    ("split", [tensor("f32", 5)], {"axis": 0, "sizes": ()}, "not empty"),
    ("split", [tensor("f32", 5)], {"axis": 0, "sizes": (6, -1)}, "non-negative"),
    ("expand", [tensor("f32", 2, 3)], {"shape": (3,)}, "rank 2 to rank 1"),
    ("expand", [tensor("f32", 2, 3)], {"shape": (4, 3)}, "cannot expand|do not broadcast"),
    ("expand", [tensor("f32", 0)], {"shape": (1,)}, "cannot expand|do not broadcast"),
    ("squeeze", [tensor("f32", 2, 1)], {"axes": (0,)}, "axis 0 has size 2"),
    ("squeeze", [tensor("f32", 1, 1)], {"axes": (0, -2)}, "repeats an axis"),
    ("unsqueeze", [tensor("f32", 2)], {"axes": (2,)}, "out of range"),
    ("flip", [tensor("f32", 2)], {"axes": (1,)}, "out of range"),
    ("tile", [tensor("f32", 2, 2)], {"repeats": (2,)}, "one non-negative count per axis"),
    ("pad", [tensor("f32", 2, 2)], {"pads": (1, 1)}, "must hold 4"),
    ("pad", [tensor("f32", 2)], {"pads": (-1, 0)}, "non-negative"),
    ("pad", [tensor("f32", 3)], {"pads": (3, 0), "mode": "reflect"}, "less than"),
    ("pad", [tensor("f32", 0, 2)], {"pads": (1, 0, 0, 0), "mode": "edge"}, "empty"),
    ("pad", [tensor("f32", 3)], {"pads": (1, 0), "mode": "wrap"}, "not one of"),
    ("pad", [tensor("u8", 3)], {"pads": (1, 0), "value": -1.0}, "does not fit uint8"),
    ("gather", [tensor("f32", 3), tensor("f32", 2)], {}, "int32 or int64"),
    ("gather", [tensor("f32", 3), tensor("i64", 2)], {"axis": 1}, "out of range"),
    ("gather_elements", [tensor("f32", 3, 2), tensor("i64", 3)], {}, "rank 1 must equal"),
    ("gather_elements", [tensor("f32", 3, 2), tensor("i64", 3, 3)], {}, "larger than"),
    ("triu", [tensor("f32", 3)], {}, "rank >= 2"),
    ("tril", [tensor("f32", 3, 3)], {"diagonal": 1.5}, "expected int"),
])
def test_invalid_inputs_raise(op, types, attrs, match):
    infer_error(op, types, attrs, match)
