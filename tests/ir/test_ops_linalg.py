"""Contractions and windowed ops (kiln/ir/ops/linalg.py) against torch, through
GraphBuilder + interpret: matmul (batch broadcasting, rank-1 operands, integers), linear,
conv 1-3d (strides, ONNX-ordered asymmetric pads, dilations, groups), max/avg pooling
(ceil_mode, count_include_pad), adaptive average pooling and scaled dot-product attention
— and their shape inference with symbolic dims."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from kiln.ir import tensor
from kiln.ir import symbolic
from kiln.ir.ops.linalg import (block_channels, block_weight, pack_panels, unpack_panels,
                                winograd_weight)
from tests.ir.op_testing import (FLOAT_DTYPES, INT_DTYPES, NUMERIC_DTYPES, arrays, assert_close,
                                 build, check_op, exercises, infer, infer_error, run, shapes,
                                 to_torch, torch_dtype)


def _torch_in_any_dtype(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn(*tensors) in their dtype, or in float64 rounded back where torch's CPU kernel
    lacks that dtype: integers truncated toward zero and clamped to their range (as
    torch's integer max pooling gives the dtype's minimum for a window of padding)."""
    try:
        return fn(*tensors)
    except (RuntimeError, NotImplementedError) as e:
        if "not implemented for" not in str(e):
            raise
    dt = tensors[0].dtype
    out = fn(*(t.double() for t in tensors))
    if not dt.is_floating_point:
        out = out.clamp(torch.iinfo(dt).min, torch.iinfo(dt).max)
    return out.to(dt)


# --- matmul and linear -------------------------------------------------------------------
@exercises("matmul")
@given(data=st.data(), a_vector=st.booleans(), b_vector=st.booleans())
def test_matmul(data, a_vector, b_vector):
    dt = data.draw(st.sampled_from(NUMERIC_DTYPES))
    batch_a, batch_b = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=2, max_dims=2, max_side=3)).input_shapes
    m, k, n = (data.draw(st.integers(0, 4)) for _ in range(3))
    a_shape = (k,) if a_vector else batch_a + (m, k)
    b_shape = (k,) if b_vector else batch_b + (k, n)
    full_range = dt in INT_DTYPES  # integer products and sums wrap around
    a = data.draw(arrays(dt, a_shape, low=-2 ** 63 if full_range else -4, high=2 ** 63))
    b = data.draw(arrays(dt, b_shape, low=-2 ** 63 if full_range else -4, high=2 ** 63))
    ta, tb = to_torch(a), to_torch(b)
    if full_range:  # torch computes integer matmul in the input dtype too; int64 is exact mod 2^n
        expected = torch.matmul(ta.long(), tb.long()).to(torch_dtype(dt))
    else:
        expected = torch.matmul(ta, tb)
    check_op("matmul", [a, b], {}, expected, reduce_size=max(k, 1) * 16)


@exercises("linear")
@given(data=st.data(), with_bias=st.booleans())
def test_linear(data, with_bias):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    lead = data.draw(shapes(max_dims=2, max_side=3))
    k, n = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    x = data.draw(arrays(dt, lead + (k,), low=-4, high=4))
    w = data.draw(arrays(dt, (n, k), low=-4, high=4))
    inputs = [x, w] + ([data.draw(arrays(dt, (n,), low=-4, high=4))] if with_bias else [])
    expected = F.linear(*(to_torch(v) for v in inputs))
    check_op("linear", inputs, {}, expected, reduce_size=max(k, 1) * 16)


# --- windows -----------------------------------------------------------------------------
@st.composite
def window(draw, *, max_dilation=2, symmetric=False, half_kernel_pads=False,
           avg_pool=False):
    """Spatial sizes and kernel/strides/dilations/pads (ONNX order) for which every
    window fits the padded input (`avg_pool`: torch's avg_pool3d also wants the unpadded
    input at least as large as the kernel)."""
    sp = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(sp)]
    strides = [draw(st.integers(1, 3)) for _ in range(sp)]
    dilations = [draw(st.integers(1, max_dilation)) for _ in range(sp)]
    begins, ends = [], []
    for k in kernel:
        limit = k // 2 if half_kernel_pads else 2
        begins.append(draw(st.integers(0, limit)))
        ends.append(begins[-1] if symmetric else draw(st.integers(0, limit)))
    sizes = []
    for k, d, b, e in zip(kernel, dilations, begins, ends):
        span = d * (k - 1) + 1
        least = max(0, span - b - e, 1 if half_kernel_pads else 0, k if avg_pool and sp == 3 else 0)
        sizes.append(draw(st.integers(least, span + 4)))
    return dict(sizes=tuple(sizes), kernel=kernel, strides=strides, dilations=dilations,
                pads=begins + ends)


def _torch_pads(pads):
    """ONNX spatial pads [b0..bn, e0..en] -> F.pad's (b_last, e_last, ..., b0, e0)."""
    n = len(pads) // 2
    return tuple(p for i in reversed(range(n)) for p in (pads[i], pads[i + n]))


@exercises("conv")
@given(data=st.data(), w=window(), groups=st.integers(1, 3), with_bias=st.booleans())
def test_conv(data, w, groups, with_bias):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    sp = len(w["kernel"])
    n = data.draw(st.integers(0, 2))
    c_in, c_out = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
    x = data.draw(arrays(dt, (n, c_in) + w["sizes"], low=-2, high=2))
    weight = data.draw(arrays(dt, (c_out, c_in // groups) + tuple(w["kernel"]), low=-2, high=2))
    inputs = [x, weight] + ([data.draw(arrays(dt, (c_out,), low=-2, high=2))] if with_bias
                            else [])
    conv = getattr(F, f"conv{sp}d")
    expected = conv(F.pad(to_torch(x), _torch_pads(w["pads"])), to_torch(weight),
                    to_torch(inputs[2]) if with_bias else None, stride=w["strides"],
                    dilation=w["dilations"], groups=groups)
    check_op("conv", inputs, {"strides": w["strides"], "pads": w["pads"],
                              "dilations": w["dilations"], "groups": groups},
             expected, reduce_size=c_in // groups * math.prod(w["kernel"]) * 4)


@exercises("linear_packed")
@given(data=st.data(), with_bias=st.booleans(), panel=st.sampled_from([1, 4, 16]))
def test_linear_packed(data, with_bias, panel):
    """linear on a weight given as `pack_panels(W, panel)` equals linear on W."""
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    lead = data.draw(shapes(max_dims=2, max_side=3))
    k, n = data.draw(st.integers(0, 5)), data.draw(st.integers(1, 20))
    x = data.draw(arrays(dt, lead + (k,), low=-4, high=4))
    w = data.draw(arrays(dt, (n, k), low=-4, high=4))
    bias = [data.draw(arrays(dt, (n,), low=-4, high=4))] if with_bias else []
    expected = F.linear(*(to_torch(v) for v in [x, w] + bias))
    check_op("linear_packed", [x, pack_panels(w, panel)] + bias, {"out_features": n}, expected,
             reduce_size=max(k, 1) * 16)


@exercises("conv_packed")
@given(data=st.data(), w=window(), with_bias=st.booleans(), panel=st.sampled_from([1, 3, 8]))
def test_conv_packed(data, w, with_bias, panel):
    """conv on a weight given as `pack_panels(W.reshape(O, -1), panel)` equals conv on W."""
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    c_in, c_out = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    x = data.draw(arrays(dt, (data.draw(st.integers(0, 2)), c_in) + w["sizes"], low=-2, high=2))
    weight = data.draw(arrays(dt, (c_out, c_in) + tuple(w["kernel"]), low=-2, high=2))
    bias = [data.draw(arrays(dt, (c_out,), low=-2, high=2))] if with_bias else []
    conv = getattr(F, f"conv{len(w['kernel'])}d")
    wide = lambda a: to_torch(a).double()  # noqa: E731  (torch's bf16 conv3d varied run to run)
    expected = conv(F.pad(wide(x), _torch_pads(w["pads"])), wide(weight),
                    wide(bias[0]) if with_bias else None, stride=w["strides"],
                    dilation=w["dilations"]).to(torch_dtype(dt))
    attrs = {"out_channels": c_out, "kernel": w["kernel"], "strides": w["strides"],
             "pads": w["pads"], "dilations": w["dilations"]}
    check_op("conv_packed", [x, pack_panels(weight.reshape(c_out, -1), panel)] + bias, attrs,
             expected, reduce_size=c_in * math.prod(w["kernel"]) * 4)


@exercises("conv_nchwc")
@given(data=st.data(), w=window(), with_bias=st.booleans(),
       blocks=st.sampled_from([(1, 1), (2, 3), (3, 2)]))
def test_conv_nchwc(data, w, with_bias, blocks):
    """conv in blocked channels (`block_channels`, `block_weight`) equals conv."""
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    cb, ob = blocks
    c_in, c_out = cb * data.draw(st.integers(1, 2)), ob * data.draw(st.integers(1, 2))
    x = data.draw(arrays(dt, (data.draw(st.integers(1, 2)), c_in) + w["sizes"], low=-2, high=2))
    weight = data.draw(arrays(dt, (c_out, c_in) + tuple(w["kernel"]), low=-2, high=2))
    bias = data.draw(arrays(dt, (c_out,), low=-2, high=2)) if with_bias else None
    wide = lambda a: to_torch(a).double()  # noqa: E731
    conv = getattr(F, f"conv{len(w['kernel'])}d")
    expected = conv(F.pad(wide(x), _torch_pads(w["pads"])), wide(weight),
                        None if bias is None else wide(bias), stride=w["strides"],
                        dilation=w["dilations"])
    expected = to_torch(block_channels(expected.numpy(), ob)).to(torch_dtype(dt))
    inputs = [block_channels(x, cb), block_weight(weight, cb, ob)] + \
        ([] if bias is None else [bias.reshape(-1, ob)])
    check_op("conv_nchwc", inputs, {"strides": w["strides"], "pads": w["pads"],
                                    "dilations": w["dilations"]},
             expected, reduce_size=c_in * math.prod(w["kernel"]) * 4)



@exercises("conv_winograd")
@given(data=st.data(), tile=st.sampled_from([2, 4]), with_bias=st.booleans(),
       blocks=st.sampled_from([(1, 1), (2, 3), (3, 2)]))
def test_conv_winograd(data, tile, with_bias, blocks):
    """Winograd F(tile, 3 x 3) on `winograd_weight(W)` equals the 3 x 3 conv on W (stride
    1, any pads; sizes the tiles do not divide)."""
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    cb, ob = blocks
    pads = [data.draw(st.integers(0, 2)) for _ in range(4)]
    sizes = tuple(data.draw(st.integers(max(1, 3 - pads[i] - pads[i + 2]), 9)) for i in (0, 1))
    c_in, c_out = cb * data.draw(st.integers(1, 2)), ob * data.draw(st.integers(1, 2))
    x = data.draw(arrays(dt, (data.draw(st.integers(1, 2)), c_in) + sizes, low=-2, high=2))
    weight = data.draw(arrays(dt, (c_out, c_in, 3, 3), low=-2, high=2))
    bias = data.draw(arrays(dt, (c_out,), low=-2, high=2)) if with_bias else None
    wide = lambda a: to_torch(a).double()  # noqa: E731
    expected = F.conv2d(F.pad(wide(x), _torch_pads(pads)), wide(weight),
                        None if bias is None else wide(bias))
    expected = to_torch(block_channels(expected.numpy(), ob)).to(torch_dtype(dt))
    inputs = [block_channels(x, cb), winograd_weight(weight, tile, cb, ob)] + \
        ([] if bias is None else [bias.reshape(-1, ob)])
    # the transformed weight is rounded to the dtype: F(4 x 4)'s sums of 36 products
    # scaled up to 8 x 8 carry that rounding further than the direct conv's 9 products
    check_op("conv_winograd", inputs, {"tile": tile, "pads": pads}, expected,
             reduce_size=c_in * 9 * (4 if tile == 2 else 64))

def test_pack_panels_round_trips():
    w = np.arange(70 * 3, dtype=np.float32).reshape(70, 3)
    packed = pack_panels(w, 64)
    assert packed.shape == (2, 3, 64) and packed.flags.c_contiguous
    assert packed[1, 2, 5] == w[69, 2] and not packed[1, :, 6:].any()
    np.testing.assert_array_equal(unpack_panels(packed, 70), w)


def _pool_input(data, w, dtypes):
    dt = data.draw(st.sampled_from(dtypes))
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(1, 2))) + w["sizes"]
    return data.draw(arrays(dt, shape, special=dt in FLOAT_DTYPES))


@exercises("max_pool")
@given(data=st.data(), w=window(symmetric=True, half_kernel_pads=True), ceil_mode=st.booleans())
def test_max_pool(data, w, ceil_mode):
    x = _pool_input(data, w, NUMERIC_DTYPES)
    sp = len(w["kernel"])
    pool = getattr(F, f"max_pool{sp}d")
    expected = _torch_in_any_dtype(
        lambda t: pool(t, w["kernel"], w["strides"], w["pads"][:sp], w["dilations"],
                       ceil_mode=ceil_mode), to_torch(x))
    check_op("max_pool", [x], {"kernel": w["kernel"], "strides": w["strides"], "pads": w["pads"],
                               "dilations": w["dilations"], "ceil_mode": ceil_mode}, expected)


@exercises("avg_pool")
@given(data=st.data(),
       w=window(max_dilation=1, symmetric=True, half_kernel_pads=True, avg_pool=True),
       ceil_mode=st.booleans(), count_include_pad=st.booleans())
def test_avg_pool(data, w, ceil_mode, count_include_pad):
    x = _pool_input(data, w, NUMERIC_DTYPES)
    sp = len(w["kernel"])
    pool = getattr(F, f"avg_pool{sp}d")
    expected = _torch_in_any_dtype(
        lambda t: pool(t, w["kernel"], w["strides"], w["pads"][:sp], ceil_mode=ceil_mode,
                       count_include_pad=count_include_pad), to_torch(x))
    check_op("avg_pool", [x], {"kernel": w["kernel"], "strides": w["strides"], "pads": w["pads"],
                               "ceil_mode": ceil_mode, "count_include_pad": count_include_pad},
             expected, reduce_size=math.prod(w["kernel"]))


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@exercises("max_pool", "avg_pool")
@given(data=st.data(), w=window(max_dilation=1, half_kernel_pads=True, avg_pool=True))
def test_pool_with_asymmetric_pads(op, data, w):
    # torch pads symmetrically: pad first (padding never wins a max; avg counts the pads)
    x = _pool_input(data, w, FLOAT_DTYPES)
    sp = len(w["kernel"])
    fill = -math.inf if op == "max_pool" else 0.0
    padded = F.pad(to_torch(x), _torch_pads(w["pads"]), value=fill)
    pool = getattr(F, f"{op}{sp}d")
    expected = _torch_in_any_dtype(lambda t: pool(t, w["kernel"], w["strides"]), padded)
    attrs = {"kernel": w["kernel"], "strides": w["strides"], "pads": w["pads"]}
    if op == "max_pool":
        attrs["dilations"] = w["dilations"]
    check_op(op, [x], attrs, expected, reduce_size=math.prod(w["kernel"]))


@exercises("adaptive_avg_pool")
@given(data=st.data())
def test_adaptive_avg_pool(data):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    sizes = data.draw(shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
    out = [data.draw(st.integers(1, 5)) for _ in sizes]
    x = data.draw(arrays(dt, (data.draw(st.integers(0, 2)), 2) + sizes))
    pool = getattr(F, f"adaptive_avg_pool{len(sizes)}d")
    check_op("adaptive_avg_pool", [x], {"output_size": out},
             _torch_in_any_dtype(lambda t: pool(t, out), to_torch(x)),
             reduce_size=math.prod(-(-s // o) + 1 for s, o in zip(sizes, out)))


# --- attention ---------------------------------------------------------------------------
@st.composite
def _broadcastable_to(draw, shape):
    """A shape that broadcasts to `shape` without growing it."""
    keep = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - keep:]
    return tuple(1 if draw(st.booleans()) else d for d in tail)


@exercises("scaled_dot_product_attention")
@given(data=st.data(), mask_kind=st.sampled_from([None, "bool", "float", "causal"]),
       scale=st.none() | st.floats(0.1, 2))
def test_scaled_dot_product_attention(data, mask_kind, scale):
    dt = data.draw(st.sampled_from(FLOAT_DTYPES))
    bq, bk, bv = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, max_dims=2, max_side=3)).input_shapes
    L, S, E, Ev = (data.draw(st.integers(lo, 4)) for lo in (0, 0, 1, 1))
    q = data.draw(arrays(dt, bq + (L, E), low=-3, high=3))
    k = data.draw(arrays(dt, bk + (S, E), low=-3, high=3))
    v = data.draw(arrays(dt, bv + (S, Ev), low=-3, high=3))
    batch = np.broadcast_shapes(bq, bk, bv)
    inputs, mask = [q, k, v], None
    if mask_kind in ("bool", "float"):   # rows masked everywhere give 0, as torch
        mask_shape = data.draw(_broadcastable_to(batch + (L, S)))
        mask = data.draw(arrays("bool", mask_shape)) if mask_kind == "bool" else \
            data.draw(arrays(dt, mask_shape, low=-3, high=3) .map(
                lambda m: np.where(m < -2, np.asarray(-np.inf, m.dtype), m)))
        inputs.append(mask)
    attrs = {"is_causal": mask_kind == "causal", "scale": scale}
    # torch does not always broadcast q, k, v and the mask itself (with a mask, a 0-d mask,
    # no queries or no keys); kiln does
    tq, tk, tv = (to_torch(t).expand(batch + t.shape[-2:]) for t in (q, k, v))
    expected = F.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=None if mask is None else to_torch(mask).expand(batch + (L, S)),
        is_causal=mask_kind == "causal", scale=scale)
    check_op("scaled_dot_product_attention", inputs, attrs, expected,
             reduce_size=max(S, 1) * max(E, 1) * 4)


@exercises("scaled_dot_product_attention")
def test_attention_fully_masked_rows_and_empty_keys_give_zeros():
    q = np.ones((2, 3), np.float32)
    k = np.ones((4, 3), np.float32)
    v = np.arange(8, dtype=np.float32).reshape(4, 2)
    mask = np.array([[True] * 4, [False] * 4])
    check_op("scaled_dot_product_attention", [q, k, v, mask], {},
             np.array([[3, 4], [0, 0]], np.float32))
    check_op("scaled_dot_product_attention", [q, k[:0], v[:0]], {}, np.zeros((2, 2), np.float32))


# --- inference: symbolic dims and errors -----------------------------------------------
def test_matmul_batch_broadcasting_with_symbolic_dims():
    assert infer("matmul", tensor("f32", "b", 1, "m", 8), tensor("f32", 1, "h", 8, "n")) == \
        tensor("f32", "b", "h", "m", "n")
    assert infer("matmul", tensor("f32", "s", 8), tensor("f32", 8)) == tensor("f32", "s")
    assert infer("matmul", tensor("f32", 8), tensor("f32", "b", 8, 3)) == tensor("f32", "b", 3)
    assert infer("linear", tensor("f16", "b", "s", 8), tensor("f16", 4, 8)) == \
        tensor("f16", "b", "s", 4)


@exercises("matmul")
def test_symbolic_matmul_runs():
    a = np.arange(12, dtype=np.float32).reshape(2, 1, 3, 2)
    b = np.ones((1, 4, 2, 5), np.float32)
    check_op("matmul", [a, b], {}, to_torch(a) @ to_torch(b),
             input_types=[tensor("f32", "b", 1, "m", 2), tensor("f32", 1, "h", 2, 5)])


def test_window_dims_with_symbolic_sizes():
    x = tensor("f32", "n", 3, "h", "w")
    out = infer("conv", x, tensor("f32", 8, 3, 3, 3), strides=(2, 1), pads=(1, 0, 1, 0),
                dilations=(1, 1))
    assert out == tensor("f32", "n", 8, "floor((h - 1)/2) + 1", "w - 2")
    assert infer("max_pool", x, kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0),
                 dilations=(1, 1)) == tensor("f32", "n", 3, "floor(h/2)", "floor(w/2)")
    assert infer("adaptive_avg_pool", x, output_size=(1, 1)) == tensor("f32", "n", 3, 1, 1)
    assert infer("scaled_dot_product_attention", tensor("f32", "b", "l", 4),
                 tensor("f32", "b", "s", 4), tensor("f32", "b", "s", 2)) == \
        tensor("f32", "b", "l", 2)


@pytest.mark.parametrize("op, ceil_mode", [("conv", None), ("max_pool", False),
                                           ("max_pool", True), ("avg_pool", False),
                                           ("avg_pool", True)])
@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 1), (2, 2, 1), (3, 3, 1)])
@exercises("max_pool", "avg_pool", "conv")
def test_symbolic_window_dims_agree_with_every_size(op, ceil_mode, kernel, stride, pad):
    """The symbolic output length, evaluated, equals the static one and torch's for many
    sizes (ceil_mode included: the last window must start inside the input or left pad)."""
    if op == "conv":
        attrs = {"strides": (stride,), "pads": (pad, pad), "dilations": (1,)}
        weight = np.ones((1, 1, kernel), np.float32)
        torch_fn = lambda t: F.conv1d(t, to_torch(weight), stride=stride, padding=pad)  # noqa: E731
    else:
        attrs = {"kernel": (kernel,), "strides": (stride,), "pads": (pad, pad),
                 "ceil_mode": ceil_mode} | ({"dilations": (1,)} if op == "max_pool" else {})
        pool = {"max_pool": F.max_pool1d, "avg_pool": F.avg_pool1d}[op]
        torch_fn = lambda t: pool(t, kernel, stride, pad, ceil_mode=ceil_mode)  # noqa: E731
    extra = [tensor("f32", 1, 1, kernel)] if op == "conv" else []
    graph = build(op, [tensor("f32", 1, 1, "n")] + extra, attrs)
    symbolic_len = graph.outputs[0].type.shape[2]
    for n in range(1, 12):
        static_len = infer(op, tensor("f32", 1, 1, n), *extra, **attrs).shape[2]
        assert symbolic.evaluate(symbolic_len, {"n": n}) == static_len, (n, symbolic_len)
        x = np.arange(n, dtype=np.float32).reshape(1, 1, n)
        (result,) = run(graph, [x] + ([weight] if op == "conv" else []))
        assert_close(result, torch_fn(to_torch(x)), what=f"n={n}")


@pytest.mark.parametrize("op, types, attrs, match", [
    ("matmul", [tensor("f32", 2, 3), tensor("f32", 4, 2)], {}, "contracted dims differ"),
    ("matmul", [tensor("f32"), tensor("f32", 2)], {}, "rank >= 1"),
    ("matmul", [tensor("bool", 2, 2), tensor("bool", 2, 2)], {}, "numeric"),
    ("matmul", [tensor("f32", 2, 2), tensor("f16", 2, 2)], {}, "share one dtype"),
    ("matmul", [tensor("f32", 3, 2, 2), tensor("f32", 4, 2, 2)], {}, "do not broadcast"),
    ("linear", [tensor("f32", 2, 3), tensor("f32", 3)], {}, "2-D weight"),
    ("linear", [tensor("f32", 2, 3), tensor("f32", 4, 2)], {}, "in-features"),
    ("linear", [tensor("f32", 2, 3), tensor("f32", 4, 3), tensor("f32", 3)], {}, "bias shape"),
    ("linear", [tensor("i32", 2, 3), tensor("i32", 4, 3)], {}, "float"),
    ("linear_packed", [tensor("f32", 2, 3), tensor("f32", 2, 3, 4)], {"out_features": 9},
     "do not fill"),
    ("linear_packed", [tensor("f32", 2, 3), tensor("f32", 2, 4, 4)], {"out_features": 8},
     "reduction length"),
    ("linear_packed", [tensor("f32", 2, 3), tensor("f32", 3, 4)], {"out_features": 3},
     "static \\[panels"),
    ("conv_packed", [tensor("f32", 1, 2, 5), tensor("f32", 1, 5, 4)],
     {"out_channels": 3, "kernel": (3,), "strides": (1,), "pads": (0, 0), "dilations": (1,)},
     "reduction length"),
    ("conv", [tensor("f32", 1, 4, 5), tensor("f32", 2, 3, 3)],
     {"strides": (1,), "pads": (0, 0), "dilations": (1,)}, "in-channels"),
    ("conv", [tensor("f32", 1, 4, 5), tensor("f32", 3, 2, 3)],
     {"strides": (1,), "pads": (0, 0), "dilations": (1,), "groups": 2}, "out-channels"),
    ("conv", [tensor("f32", 1, 2, 2), tensor("f32", 2, 2, 3)],
     {"strides": (1,), "pads": (0, 0), "dilations": (1,)}, "does not fit"),
    ("conv", [tensor("f32", 1, 2, 5), tensor("f32", 2, 2, 3)],
     {"strides": (1,), "pads": (0,), "dilations": (1,)}, "must have 2 entries"),
    ("conv", [tensor("f32", 1, 2, 5), tensor("f32", 2, 2, 3)],
     {"strides": (0,), "pads": (0, 0), "dilations": (1,)}, "must be positive"),
    ("conv", [tensor("f32", 1, 2, 5), tensor("f32", 2, 2, 3)],
     {"strides": (1,), "pads": (-1, 0), "dilations": (1,)}, "non-negative"),
    ("max_pool", [tensor("f32", 1, 2, 5)],
     {"kernel": (2,), "strides": (1,), "pads": (2, 0), "dilations": (1,)}, "half the kernel"),
    ("max_pool", [tensor("f32", 2, 5)],
     {"kernel": (2,), "strides": (1,), "pads": (0, 0), "dilations": (1,)}, "rank-3"),
    ("avg_pool", [tensor("bool", 1, 2, 5)], {"kernel": (2,), "strides": (1,), "pads": (0, 0)},
     "numeric"),
    ("adaptive_avg_pool", [tensor("i32", 1, 2, 5)], {"output_size": (2,)}, "float"),
    ("adaptive_avg_pool", [tensor("f32", 1, 2, 5)], {"output_size": (0,)}, "float rank-3"),
    ("scaled_dot_product_attention", [tensor("f32", 2, 4), tensor("f32", 3, 5),
                                      tensor("f32", 3, 4)], {}, "head dims"),
    ("scaled_dot_product_attention", [tensor("f32", 2, 4), tensor("f32", 3, 4),
                                      tensor("f32", 3, 4), tensor("i32", 2, 3)], {}, "mask must"),
    ("scaled_dot_product_attention", [tensor("f32", 2, 4), tensor("f32", 3, 4),
                                      tensor("f32", 3, 4), tensor("bool", 2, 3)],
     {"is_causal": True}, "not both"),
    ("scaled_dot_product_attention", [tensor("f32", 2, 4), tensor("f32", 3, 4),
                                      tensor("f32", 3, 4), tensor("bool", 5, 2, 3)], {},
     "mask shape"),
])
def test_invalid_inputs_raise(op, types, attrs, match):
    infer_error(op, types, attrs, match)
