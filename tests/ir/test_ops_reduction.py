"""Reductions and normalizations (kiln/ir/ops/reduction.py) against torch, through
GraphBuilder + interpret: axes (empty = all, negative), keepdims, size-0 dims, integer
wrap-around, half precision computed in float32."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st

from kiln.errors import InterpretError
from kiln.ir import tensor
from tests.ir.op_testing import (FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays, build,
                                 check_op, exercises, infer, infer_error, run, shapes, to_torch,
                                 torch_dtype)


@st.composite
def shape_and_axes(draw, min_dims=0, max_dims=4, min_side=0):
    """A shape, a subset of its axes (empty = all) with some counted from the end, and
    the positive axes that subset reduces."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side))
    axes = draw(st.lists(st.integers(0, max(len(shape) - 1, 0)), unique=True,
                         max_size=len(shape)))
    negate = draw(st.lists(st.booleans(), min_size=len(axes), max_size=len(axes)))
    given_axes = tuple(a - len(shape) if n else a for a, n in zip(axes, negate))
    reduced = tuple(sorted(axes)) if axes else tuple(range(len(shape)))
    return shape, given_axes, reduced


def _size(shape, axes) -> int:
    return math.prod(shape[a] for a in axes)


def _torch_prod(t: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """torch.prod over several dims (torch's takes one)."""
    out = t
    for d in sorted(dims, reverse=True):
        out = torch.prod(out, dim=d, keepdim=True)
    return out if keepdim else out.reshape([s for i, s in enumerate(t.shape) if i not in dims])


REDUCE = {
    "sum": (NUMERIC_DTYPES, lambda t, d, k: torch.sum(t, dim=d, keepdim=k)),
    "prod": (NUMERIC_DTYPES, _torch_prod),
    "mean": (FLOAT_DTYPES, lambda t, d, k: torch.mean(t, dim=d, keepdim=k)),
    "max": (NUMERIC_DTYPES, lambda t, d, k: torch.amax(t, dim=d, keepdim=k)),
    "min": (NUMERIC_DTYPES, lambda t, d, k: torch.amin(t, dim=d, keepdim=k)),
    "any": (("bool",), lambda t, d, k: torch.any(t, dim=d, keepdim=k)),
    "all": (("bool",), lambda t, d, k: torch.all(t, dim=d, keepdim=k)),
}


@pytest.mark.parametrize("op", sorted(REDUCE))
@exercises(*REDUCE)
@given(data=st.data(), keepdims=st.booleans())
def test_reduce(op, data, keepdims):
    dtypes, fn = REDUCE[op]
    dt = data.draw(st.sampled_from(dtypes))
    # max/min have no identity: they need non-empty reduced axes (tested below)
    shape, axes, reduced = data.draw(shape_and_axes(min_side=1 if op in ("max", "min") else 0))
    low, high = (-2, 2) if op == "prod" else (-10, 10)
    if dt in INT_DTYPES:  # integer sums and products wrap around in the input dtype
        low, high = -2 ** 63, 2 ** 63
    x = data.draw(arrays(dt, shape, low=low, high=high, special=op in ("max", "min")))
    expected = fn(to_torch(x), reduced, keepdims).to(torch_dtype(dt))  # torch widens int sums
    check_op(op, [x], {"axes": axes, "keepdims": keepdims}, expected,
             reduce_size=_size(shape, reduced))


@pytest.mark.filterwarnings("ignore:var\\(\\). degrees of freedom")  # correction >= n: inf/nan
@exercises("var")
@given(data=st.data(), keepdims=st.booleans(), correction=st.integers(0, 2))
def test_var(data, keepdims, correction):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape, axes, reduced = data.draw(shape_and_axes())
    x = data.draw(arrays(dt, shape))
    n = _size(shape, reduced)
    expected = torch.var(to_torch(x).double(), dim=reduced, correction=correction,
                         keepdim=keepdims).to(torch_dtype(dt))
    check_op("var", [x], {"axes": axes, "keepdims": keepdims, "correction": correction},
             expected, reduce_size=n * 10)  # squares of values up to 10


@exercises("sum", "mean", "var", "any")
def test_empty_axes_reduce_everything_and_rank_0_works():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    check_op("sum", [x], {}, np.array(15, np.float32))
    check_op("sum", [x], {"keepdims": True}, np.array([[15]], np.float32))
    check_op("mean", [np.array(2.5, np.float32)], {}, np.array(2.5, np.float32))
    check_op("var", [np.array(2.5, np.float32)], {}, np.array(0, np.float32))
    check_op("any", [np.zeros((0, 2), bool)], {"axes": (0,)}, np.zeros(2, bool))


@pytest.mark.parametrize("op", ["max", "min"])
@exercises("max", "min")
def test_max_min_over_an_empty_axis_fail(op):
    infer_error(op, [tensor("f32", 0, 3)], {"axes": (0,)}, "empty")
    infer_error(op, [tensor("f32", 2, 0)], {}, "empty")
    check_op(op, [np.zeros((0, 3), np.float32)], {"axes": (1,)}, np.zeros(0, np.float32))
    graph = build(op, [tensor("f32", "n", 3)], {"axes": (0,)})
    with pytest.raises(InterpretError, match="empty"):
        run(graph, [np.zeros((0, 3), np.float32)])


ARG = {"argmax": torch.argmax, "argmin": torch.argmin}


@pytest.mark.parametrize("op", sorted(ARG))
@exercises(*ARG)
@given(data=st.data(), keepdims=st.booleans())
def test_argmax_argmin(op, data, keepdims):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    shape = data.draw(shapes(min_dims=1, min_side=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    # a small range makes ties: both return the first extreme; NaN counts as the extreme
    x = data.draw(arrays(dt, shape, low=-3, high=3, special=dt in FLOAT_DTYPES))
    check_op(op, [x], {"axis": axis, "keepdims": keepdims},
             ARG[op](to_torch(x), dim=axis, keepdim=keepdims))


@exercises("cumsum")
@given(data=st.data())
def test_cumsum(data):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    shape = data.draw(shapes(min_dims=1, max_side=6))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(dt, shape, low=-2 ** 63 if dt in INT_DTYPES else -10, high=2 ** 63))
    check_op("cumsum", [x], {"axis": axis},
             torch.cumsum(to_torch(x), dim=axis).to(torch_dtype(dt)), reduce_size=shape[axis])


@exercises("cumsum")
def test_cumsum_accumulates_half_precision_in_float32():
    x = np.full(2048, 1, np.float16)   # float16 stops counting at 2048 ulp-wise
    x = np.concatenate([x, np.full(8, 1, np.float16)])
    check_op("cumsum", [x], {"axis": 0}, torch.cumsum(to_torch(x), 0))


SOFTMAX = {"softmax": F.softmax, "log_softmax": F.log_softmax}


@pytest.mark.parametrize("op", sorted(SOFTMAX))
@exercises(*SOFTMAX)
@given(data=st.data())
def test_softmax(op, data):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(dt, shape, special=True))
    check_op(op, [x], {"axis": axis}, SOFTMAX[op](to_torch(x), dim=axis),
             reduce_size=shape[axis])


def _affine(data, dt, shape, n_params):
    """Up to `n_params` optional per-feature parameters (weight, then bias)."""
    k = data.draw(st.integers(0, n_params))
    return [data.draw(arrays(dt, shape, low=-2, high=2)) for _ in range(k)]


@exercises("layer_norm")
@given(data=st.data(), eps=st.floats(1e-5, 1e-1))
def test_layer_norm(data, eps):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    norm_shape = shape[axis:]
    x = data.draw(arrays(dt, shape))
    params = _affine(data, dt, norm_shape, 2)
    w, b = (params + [None, None])[:2]
    expected = F.layer_norm(to_torch(x), norm_shape, None if w is None else to_torch(w),
                            None if b is None else to_torch(b), eps)
    check_op("layer_norm", [x, *params], {"axis": axis, "eps": eps}, expected,
             reduce_size=math.prod(norm_shape) * 10)


@exercises("rms_norm")
@given(data=st.data(), eps=st.floats(1e-6, 1e-1))
def test_rms_norm(data, eps):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    norm_shape = shape[axis:]
    x = data.draw(arrays(dt, shape))
    params = _affine(data, dt, norm_shape, 1)
    expected = F.rms_norm(to_torch(x), norm_shape, to_torch(params[0]) if params else None, eps)
    check_op("rms_norm", [x, *params], {"axis": axis, "eps": eps}, expected,
             reduce_size=math.prod(norm_shape))


@exercises("batch_norm")
@given(data=st.data(), eps=st.floats(1e-5, 1e-1))
def test_batch_norm(data, eps):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    shape = data.draw(shapes(min_dims=2, max_dims=5, max_side=3).filter(lambda s: s[1] > 0))
    c = shape[1]
    x = data.draw(arrays(dt, shape))
    mean = data.draw(arrays(dt, (c,)))
    var = data.draw(arrays(dt, (c,), low=0.1, high=4))
    params = _affine(data, dt, (c,), 2)
    w, b = (params + [None, None])[:2]
    expected = F.batch_norm(to_torch(x), to_torch(mean), to_torch(var),
                            None if w is None else to_torch(w), None if b is None else to_torch(b),
                            training=False, eps=eps)
    check_op("batch_norm", [x, mean, var, *params], {"eps": eps}, expected, reduce_size=4)


@exercises("group_norm")
@given(data=st.data(), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       eps=st.floats(1e-5, 1e-1))
def test_group_norm(data, groups, per_group, eps):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    c = groups * per_group
    batch = data.draw(st.integers(0, 3))   # batch 0 included
    spatial = data.draw(shapes(min_dims=0, max_dims=2, min_side=1))
    # torch refuses groups of one value ("Expected more than 1 value per channel"); kiln
    # normalizes them to 0 — checked in test_group_norm_of_single_values
    assume(per_group * math.prod(spatial) > 1 or batch == 0)
    x = data.draw(arrays(dt, (batch, c) + spatial))
    params = _affine(data, dt, (c,), 2)
    w, b = (params + [None, None])[:2]
    expected = F.group_norm(to_torch(x), groups, None if w is None else to_torch(w),
                            None if b is None else to_torch(b), eps)
    check_op("group_norm", [x, *params], {"num_groups": groups, "eps": eps}, expected,
             reduce_size=per_group * math.prod(spatial) * 10)


@exercises("group_norm")
def test_group_norm_of_single_values():
    x = np.array([[[3.0], [-2.0]]], np.float32)          # 2 groups of one value each
    check_op("group_norm", [x], {"num_groups": 2, "eps": 1e-5}, np.zeros_like(x))


# --- inference: symbolic dims and errors -----------------------------------------------
def test_reduction_shapes_with_symbolic_dims():
    x = tensor("f32", "b", "s", 4)
    assert infer("sum", x, axes=(-1,)) == tensor("f32", "b", "s")
    assert infer("mean", x, axes=(0, 2), keepdims=True) == tensor("f32", 1, "s", 1)
    assert infer("max", x) == tensor("f32")
    assert infer("argmax", x, axis=1, keepdims=True) == tensor("i64", "b", 1, 4)
    assert infer("softmax", x, axis=1) == x
    assert infer("layer_norm", x, tensor("f32", "s", 4), axis=1) == x
    assert infer("group_norm", tensor("f16", "n", 6, "h"), num_groups=3) == \
        tensor("f16", "n", 6, "h")
    assert infer("cumsum", tensor("i32", "n"), axis=0) == tensor("i32", "n")


@exercises("sum", "softmax")
def test_symbolic_reductions_run():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    check_op("sum", [x], {"axes": (0,)}, x.sum(0), input_types=[tensor("f32", "n", 4)])
    check_op("softmax", [x], {"axis": 0}, F.softmax(to_torch(x), 0),
             input_types=[tensor("f32", "n", "m")])


@pytest.mark.parametrize("op, types, attrs, match", [
    ("sum", [tensor("f32", 2, 3)], {"axes": (2,)}, "axes 2 is out of range for rank 2"),
    ("sum", [tensor("f32", 2, 3)], {"axes": (1, -1)}, "repeats an axis"),
    ("sum", [tensor("bool", 2)], {}, "numeric"),
    ("sum", [tensor("f32")], {"axes": (0,)}, "out of range for rank 0"),
    ("mean", [tensor("i32", 2)], {}, "floating point"),
    ("any", [tensor("f32", 2)], {}, "must be bool"),
    ("var", [tensor("i64", 2)], {}, "floating point"),
    ("argmax", [tensor("f32", 3, 0)], {"axis": 1}, "size 0"),
    ("argmin", [tensor("bool", 3)], {}, "numeric"),
    ("argmax", [tensor("f32", 3)], {"axis": 1}, "out of range"),
    ("cumsum", [tensor("f32", 3)], {"axis": -2}, "out of range"),
    ("softmax", [tensor("i32", 3)], {}, "floating point"),
    ("log_softmax", [tensor("f32")], {}, "out of range for rank 0"),
    ("layer_norm", [tensor("f32", 2, 3), tensor("f32", 2)], {}, r"weight shape \[2\]"),
    ("layer_norm", [tensor("f32", 2, 3), tensor("f16", 3)], {}, "share one dtype"),
    ("rms_norm", [tensor("f32", 2, 3), tensor("f32", 2, 3)], {"axis": -1}, "normalized dims"),
    ("batch_norm", [tensor("f32", 2, 3), tensor("f32", 2), tensor("f32", 3)], {}, "channels"),
    ("batch_norm", [tensor("f32", 3), tensor("f32", 3), tensor("f32", 3)], {}, "rank >= 2"),
    ("group_norm", [tensor("f32", 2, 6)], {"num_groups": 4}, "do not split into 4 groups"),
    ("group_norm", [tensor("f32", 2, 6)], {"num_groups": 0}, "0 groups"),
    ("group_norm", [tensor("f32", 2, 6), tensor("f32", 3)], {"num_groups": 3}, "shape"),
])
def test_invalid_inputs_raise(op, types, attrs, match):
    infer_error(op, types, attrs, match)
