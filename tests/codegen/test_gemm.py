"""The contraction kernels of the TVM CPU backend (codegen/tvm/gemm.py, conv.py,
attention.py) against the reference interpreter: matmul (2-D, batched with
broadcasting, rank-1 operands, odd sizes, symbolic rows at several sizes, every
numeric dtype, integer wrap-around), linear (bias or not, batch dims, symbolic rows,
empty reduction), conv (strides, asymmetric pads, dilations, groups, depthwise, 1-d,
3-d, symbolic batch and image size), scaled dot-product attention (bool and float
masks, a fully masked row, causal, scale, symbolic sequence) and the vector exp
attention uses.

Each case compiles one node with `lower_node` (so the registered lowering and
schedule are the ones under test) and runs it on NumPy inputs.

Tolerances: float32 results rtol 1e-4 with atol 1e-4 * sqrt(reduction length) (the
kernels sum in another order than NumPy); half types: one unit in the last place of
the output dtype; integers: exact.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import tvm

from kiln.codegen.tvm import cpu_target, lower_node
from kiln.codegen.tvm.attention import exp_nonpositive
from kiln.ir import GraphBuilder, interpret, tensor

RNG = np.random.default_rng(0)
BF16 = np.dtype(ml_dtypes.bfloat16)


# --- helpers --------------------------------------------------------------------------------
class Kernel:
    """One graph's last node compiled for the host CPU."""

    def __init__(self, graph):
        self.graph = graph
        self.node = graph.nodes[-1]
        self.func = lower_node(self.node, "main")
        self.lib = tvm.compile(tvm.IRModule({"main": self.func}), target=cpu_target())

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kernel output, interpreter output) for `arrays`."""
        want = interpret(self.graph, list(arrays))[0]
        out = tvm.runtime.tensor(np.zeros(want.shape, want.dtype))
        self.lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
        return out.numpy(), want


def one_node(op: str, inputs: list[tuple[str, str, tuple]], **attrs) -> Kernel:
    """A graph of one `op` node over inputs given as (name, dtype, shape)."""
    b = GraphBuilder(op)
    values = [b.input(name, tensor(dt, *shape)) for name, dt, shape in inputs]
    return Kernel(b.build(getattr(b, op)(*values, **attrs)))


def random(dt: str, shape: tuple) -> np.ndarray:
    np_dtype = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": BF16,
                "i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32,
                "i64": np.int64}[dt]
    if dt.startswith(("i", "u")):   # the whole range: products and sums overflow and wrap
        info = np.iinfo(np_dtype)
        return RNG.integers(info.min, info.max, shape, dtype=np_dtype, endpoint=True)
    return RNG.standard_normal(shape).astype(np_dtype)


def assert_close(got: np.ndarray, want: np.ndarray, reduce: int = 1) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
        return
    if want.dtype in (np.float16, BF16):
        eps = float(np.finfo(np.float16).eps) if want.dtype == np.float16 else 2.0 ** -7
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                                   rtol=eps, atol=eps * math.sqrt(reduce))
        return
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * math.sqrt(reduce))


def check(kernel: Kernel, arrays: list[np.ndarray], reduce: int) -> None:
    got, want = kernel(*arrays)
    assert_close(got, want, reduce)


# --- matmul ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b", [
    ((1, 7), (7, 13)),                 # one row
    ((33, 65), (65, 17)),              # odd sizes: ragged row and column tiles
    ((130, 300), (300, 200)),          # several panels: the panel-parallel path
    ((2, 3, 9, 8), (8, 70)),           # batched a, shared b (packed once)
    ((3, 1, 5, 8), (2, 8, 4)),         # both batched, broadcasting
    ((2, 6, 16), (2, 16, 20)),         # batched b: packed per batch
    ((8,), (8, 3)),                    # rank-1 a
    ((4, 8), (8,)),                    # rank-1 b
    ((8,), (8,)),                      # dot product
    ((2, 5, 8), (8,)),                 # batched matrix @ vector
])
def test_matmul_shapes(a, b):
    kernel = one_node("matmul", [("a", "f32", a), ("b", "f32", b)])
    check(kernel, [random("f32", a), random("f32", b)], reduce=a[-1])


@pytest.mark.parametrize("dt", ["f64", "f16", "bf16", "i8", "u8", "i16", "i32", "i64"])
def test_matmul_dtypes(dt):
    """Half types accumulate in float32 and round once; integers wrap as the reference
    (random values over the whole range overflow)."""
    a, b = (2, 9, 30), (30, 20)
    kernel = one_node("matmul", [("a", dt, a), ("b", dt, b)])
    check(kernel, [random(dt, a), random(dt, b)], reduce=30)


def test_matmul_symbolic_rows():
    """One kernel for every row count, including fewer rows than one tile."""
    kernel = one_node("matmul", [("a", "f32", ("m", 40)), ("b", "f32", (40, 70))])
    for m in (1, 5, 13, 64):
        check(kernel, [random("f32", (m, 40)), random("f32", (40, 70))], reduce=40)


def test_matmul_symbolic_columns_and_batch():
    kernel = one_node("matmul", [("a", "f32", ("batch", 6, 16)),
                                 ("b", "f32", ("batch", 16, "n"))])
    for batch, n in ((1, 3), (3, 70)):
        check(kernel, [random("f32", (batch, 6, 16)), random("f32", (batch, 16, n))], 16)


def test_matmul_empty_rows_and_reduction():
    """No rows: nothing to write; an empty reduction: zeros (plus the bias)."""
    kernel = one_node("matmul", [("a", "f32", ("m", 8)), ("b", "f32", (8, 5))])
    check(kernel, [random("f32", (0, 8)), random("f32", (8, 5))], reduce=8)
    kernel = one_node("linear", [("x", "f32", (3, "k")), ("w", "f32", (5, "k")),
                                 ("b", "f32", (5,))])
    check(kernel, [random("f32", (3, 0)), random("f32", (5, 0)), random("f32", (5,))], 1)
    check(kernel, [random("f32", (3, 20)), random("f32", (5, 20)), random("f32", (5,))], 20)


def test_matmul_schedule_is_tiled_parallel_and_vectorized():
    """The GEMM schedule, not a fallback, is what gets compiled: a parallel loop,
    64-lane register tiles split into vectors, and the packs as stages."""
    kernel = one_node("matmul", [("a", "f32", (256, 256)), ("b", "f32", (256, 256))])
    text = kernel.func.script()
    assert "T.parallel" in text and "T.vectorized" in text
    assert "matmul_pack_l" in text and "matmul_pack_r" in text
    assert '"mr": 6' in text and '"nb": 64' in text


# --- linear ---------------------------------------------------------------------------------
@pytest.mark.parametrize("x, n, bias", [
    ((5, 24), 7, False),
    ((5, 24), 70, True),
    ((2, 3, 40), 130, True),           # batch dims; several weight panels
    ((24,), 9, True),                  # rank-1 x
])
def test_linear(x, n, bias):
    inputs = [("x", "f32", x), ("w", "f32", (n, x[-1]))] + ([("b", "f32", (n,))] if bias else [])
    kernel = one_node("linear", inputs)
    check(kernel, [random(dt, shape) for _, dt, shape in inputs], reduce=x[-1])


def test_linear_symbolic_batch_and_rows():
    """A weight shared by symbolic batch dims: its panels are packed once per call."""
    inputs = [("x", "f32", ("batch", "seq", 24)), ("w", "f32", (300, 24)), ("b", "f32", (300,))]
    kernel = one_node("linear", inputs)
    for batch, seq in ((1, 1), (3, 7)):
        check(kernel, [random("f32", (batch, seq, 24)), random("f32", (300, 24)),
                       random("f32", (300,))], reduce=24)


def test_linear_symbolic_rows():
    inputs = [("x", "f32", ("m", 40)), ("w", "f32", (70, 40)), ("b", "f32", (70,))]
    kernel = one_node("linear", inputs)
    for m in (1, 5, 13, 64):
        check(kernel, [random("f32", (m, 40)), random("f32", (70, 40)), random("f32", (70,))],
              reduce=40)


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_linear_half(dt):
    inputs = [("x", dt, (3, 4, 32)), ("w", dt, (20, 32)), ("b", dt, (20,))]
    kernel = one_node("linear", inputs)
    check(kernel, [random(dt, shape) for _, dt, shape in inputs], reduce=32)


# --- conv -----------------------------------------------------------------------------------
CONVS = {
    "3x3 pad 1": ((1, 3, 9, 10), (4, 3, 3, 3), dict(strides=[1, 1], pads=[1, 1, 1, 1])),
    "stride 2x1, asymmetric pads": ((2, 4, 11, 9), (6, 4, 3, 2),
                                    dict(strides=[2, 1], pads=[0, 1, 2, 0])),
    "dilation 2, groups 2": ((1, 4, 12, 12), (8, 2, 3, 3),
                             dict(strides=[1, 2], pads=[2, 1, 0, 2], dilations=[2, 1],
                                  groups=2)),
    "depthwise": ((1, 6, 8, 8), (6, 1, 3, 3), dict(strides=[1, 1], pads=[1, 1, 1, 1],
                                                   groups=6)),
    "1-d stride 3, dilation 2": ((2, 3, 17), (5, 3, 4),
                                 dict(strides=[3], pads=[1, 2], dilations=[2])),
    "3-d": ((1, 2, 5, 6, 7), (3, 2, 2, 3, 2), dict(strides=[1, 2, 1], pads=[0, 1, 1, 0, 1, 0],
                                                  dilations=[1, 1, 2])),
    "1x1 stride 2": ((1, 64, 14, 14), (70, 64, 1, 1), dict(strides=[2, 2], pads=[0, 0, 0, 0])),
    "7x7 stride 2": ((1, 3, 30, 30), (8, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv(name, bias):
    x, w, attrs = CONVS[name]
    sp = len(w) - 2
    attrs = {"dilations": [1] * sp, "groups": 1, **attrs}
    inputs = [("x", "f32", x), ("w", "f32", w)] + ([("b", "f32", (w[0],))] if bias else [])
    kernel = one_node("conv", inputs, **attrs)
    check(kernel, [random(dt, shape) for _, dt, shape in inputs], reduce=math.prod(w[1:]))


def test_conv_symbolic_batch():
    attrs = dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)
    kernel = one_node("conv", [("x", "f32", ("n", 8, 10, 10)), ("w", "f32", (16, 8, 3, 3))],
                      **attrs)
    for n in (1, 3):
        check(kernel, [random("f32", (n, 8, 10, 10)), random("f32", (16, 8, 3, 3))], 72)


def test_conv_symbolic_spatial_dims():
    kernel = one_node("conv", [("x", "f32", (1, 4, "h", "w")), ("w", "f32", (6, 4, 3, 3))],
                      strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2], groups=1)
    for h, w in ((7, 9), (12, 5)):
        check(kernel, [random("f32", (1, 4, h, w)), random("f32", (6, 4, 3, 3))], 36)


@pytest.mark.parametrize("dt", ["f16", "bf16", "f64"])
def test_conv_dtypes(dt):
    attrs = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1)
    inputs = [("x", dt, (1, 4, 6, 6)), ("w", dt, (5, 4, 3, 3)), ("b", dt, (5,))]
    kernel = one_node("conv", inputs, **attrs)
    check(kernel, [random(dt, shape) for _, dt, shape in inputs], reduce=36)


# --- attention ------------------------------------------------------------------------------
def _sdpa(q, k, v, mask=None, **attrs) -> tuple[Kernel, list[np.ndarray]]:
    inputs = [("q", "f32", q), ("k", "f32", k), ("v", "f32", v)]
    arrays = [random("f32", s) for s in (q, k, v)]
    if mask is not None:
        dt, shape = mask
        inputs.append(("mask", dt, shape))
        if dt == "bool":
            m = RNG.random(shape) > 0.3
            m[..., 0, :] = False          # a fully masked row attends to nothing: 0
            arrays.append(m)
        else:
            arrays.append(random("f32", shape))
    attrs = {"is_causal": False, "scale": None, **attrs}
    return one_node("scaled_dot_product_attention", inputs, **attrs), arrays


@pytest.mark.parametrize("q, k, v, mask, attrs", [
    ((2, 3, 7, 16), (2, 3, 9, 16), (2, 3, 9, 8), None, {}),
    ((1, 2, 70, 64), (1, 2, 70, 64), (1, 2, 70, 64), None, {"is_causal": True}),
    ((1, 2, 5, 16), (1, 2, 9, 16), (1, 2, 9, 16), None, {"is_causal": True}),   # L < S
    ((2, 5, 16), (2, 20, 16), (2, 20, 16), ("bool", (5, 20)), {"scale": 0.3}),
    ((2, 4, 5, 16), (2, 1, 20, 16), (2, 1, 20, 16), ("f32", (2, 1, 1, 20)), {}),
    ((1, 3, 8), (1, 6, 8), (1, 6, 70), ("bool", (3, 6)), {}),                    # Ev != E
])
def test_attention(q, k, v, mask, attrs):
    kernel, arrays = _sdpa(q, k, v, mask, **attrs)
    check(kernel, arrays, reduce=k[-2])


def test_attention_symbolic_sequence():
    inputs = [("q", "f32", (1, 2, "s", 16)), ("k", "f32", (1, 2, "s", 16)),
              ("v", "f32", (1, 2, "s", 16))]
    kernel = one_node("scaled_dot_product_attention", inputs, is_causal=True, scale=None)
    for s in (1, 17, 80):
        check(kernel, [random("f32", (1, 2, s, 16)) for _ in range(3)], reduce=s)


def test_attention_bf16():
    inputs = [(n, "bf16", (1, 2, 10, 32)) for n in "qkv"]
    kernel = one_node("scaled_dot_product_attention", inputs, is_causal=False, scale=None)
    check(kernel, [random("bf16", (1, 2, 10, 32)) for _ in range(3)], reduce=10)


def test_exp_nonpositive_matches_numpy():
    """The vector exp of attention: relative error within 2 ulp over (-87.3, 0], exact
    0 below the smallest normal and for -inf, NaN kept."""
    from tvm import te

    x = np.concatenate([-np.geomspace(1e-8, 87.3, 20000), [0.0, -90.0, -np.inf, np.nan]])
    x = x.astype(np.float32)
    inp = te.placeholder((x.size,), "float32", name="x")
    out = te.compute((x.size,), lambda i: exp_nonpositive(inp[i]), name="y")
    lib = tvm.compile(te.create_prim_func([inp, out]), target=cpu_target())
    y = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), y)
    got, want = y.numpy(), np.exp(x.astype(np.float64))
    body = slice(0, 20001)
    np.testing.assert_allclose(got[body], want[body], rtol=2.5e-7)
    assert got[-3] == 0.0 and got[-2] == 0.0 and np.isnan(got[-1])


# --- regressions: half-precision contractions, float64 attention -------------------------------
# Tolerances (assert_close): f16 one f16 ulp (2^-10) relative, bf16 one bf16 ulp (2^-7),
# both with atol ulp * sqrt(reduction); f64 below: rtol 1e-12, atol 1e-12 * sqrt(reduction).
def assert_close_f64(got: np.ndarray, want: np.ndarray, reduce: int = 1) -> None:
    assert got.dtype == want.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * math.sqrt(reduce))


@pytest.mark.parametrize("dt", ["f16", "bf16"])
@pytest.mark.parametrize("x, n, bias", [
    ((2, 1, 5, 24), 6, True),          # the failing case: bias widened by a bad cast
    ((2, 1, 5, 24), 6, False),
    ((7, 40), 70, True),               # ragged tiles, two column panels
    ((24,), 9, True),                  # rank-1 x
])
def test_linear_half_regression(dt, x, n, bias):
    """Half inputs widen to float32 exactly (packs and bias), round once at the end."""
    inputs = [("x", dt, x), ("w", dt, (n, x[-1]))] + ([("b", dt, (n,))] if bias else [])
    kernel = one_node("linear", inputs)
    check(kernel, [random(d, shape) for _, d, shape in inputs], reduce=x[-1])


@pytest.mark.parametrize("dt", ["f16", "bf16"])
@pytest.mark.parametrize("a, b", [((3, 5, 24), (24, 7)), ((2, 6, 16), (2, 16, 20)),
                                  ((8,), (8, 3)), ((33, 65), (65, 17))])
def test_matmul_half_regression(dt, a, b):
    kernel = one_node("matmul", [("a", dt, a), ("b", dt, b)])
    check(kernel, [random(dt, a), random(dt, b)], reduce=a[-1])


@pytest.mark.parametrize("dt", ["f16", "bf16"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_half_regression(dt, bias):
    """The failing case: strides (2, 1), asymmetric pads, dilation, 3 groups."""
    attrs = dict(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2], groups=3)
    inputs = [("x", dt, (2, 6, 7, 9)), ("w", dt, (6, 2, 3, 3))] + \
        ([("b", dt, (6,))] if bias else [])
    kernel = one_node("conv", inputs, **attrs)
    check(kernel, [random(d, shape) for _, d, shape in inputs], reduce=18)


@pytest.mark.parametrize("q, k, mask", [
    ((2, 3, 7, 16), (2, 3, 7, 16), None),
    ((1, 2, 5, 16), (1, 2, 9, 16), None),                      # L < S
    ((1, 2, 70, 64), (1, 2, 70, 64), None),                    # several tiles
    ((2, 5, 16), (2, 20, 16), ("f64", (5, 20))),               # float mask
    ((2, 5, 16), (2, 20, 16), ("bool", (5, 20))),              # a fully masked row
])
def test_attention_f64_causal(q, k, mask):
    """float64 computes in float64 (it used to fail to lower: f32 -inf in a f64 Select)."""
    inputs = [("q", "f64", q), ("k", "f64", k), ("v", "f64", k)]
    arrays = [random("f64", s) for s in (q, k, k)]
    if mask is not None:
        dt, shape = mask
        inputs.append(("mask", dt, shape))
        if dt == "bool":
            m = RNG.random(shape) > 0.3
            m[..., 0, :] = False
            arrays.append(m)
        else:
            arrays.append(random("f64", shape))
    kernel = one_node("scaled_dot_product_attention", inputs, is_causal=mask is None,
                      scale=None)     # a mask excludes is_causal: those cases test f64 masks
    got, want = kernel(*arrays)
    assert_close_f64(got, want, reduce=k[-2])


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_attention_half_causal(dt):
    inputs = [(n, dt, (1, 2, 9, 16)) for n in "qkv"]
    kernel = one_node("scaled_dot_product_attention", inputs, is_causal=True, scale=0.5)
    check(kernel, [random(dt, (1, 2, 9, 16)) for _ in range(3)], reduce=9)
