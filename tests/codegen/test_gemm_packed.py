"""Weights packed at compile time and fused epilogues on the contraction kernels:

- `linear_packed` / `conv_packed` kernels (codegen/tvm/gemm.py, conv.py) against the
  reference interpreter, for graphs rewritten by the `pack_weights` pass (and that the
  rewritten graph computes what the original did);
- both conv GEMMs (rows: few output positions; columns: the rest) on packed and
  unpacked weights;
- the tiling and schedule choices made for speed: row tiles that pad least, a linear
  reading its input rows in place (no row pack), the conv rows GEMM's input gather
  over the split (channel, taps) loops;
- GEMM/conv PrimFuncs with elementwise blocks stacked after the anchor's output, as
  a fused group lowers (bias, activation, residual add with broadcasting, cast): the
  schedule folds them into one epilogue, no block of them left at the root, values
  against NumPy.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx

from kiln.codegen.tvm import cpu_target, lower_node
from kiln.codegen.tvm.common import LowerContext
from kiln.codegen.tvm.conv import ROWS_GEMM_MAX_POSITIONS, lower_conv, schedule_conv
from kiln.codegen.tvm.gemm import (least_padding, lower_linear, lower_linear_packed,
                                   schedule_gemm)
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.passes.pack import PackWeights

RNG = np.random.default_rng(1)


def randn(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def run_last_node(graph, arrays: list[np.ndarray]) -> np.ndarray:
    """Compile the graph's last node and run it on the graph inputs `arrays` (the
    node's constant inputs come from the graph's weights)."""
    node = graph.nodes[-1]
    given = {id(v): a for v, a in zip(graph.inputs, arrays)}
    args = [given[id(v)] if id(v) in given else graph.constant_array(v.producer)
            for v in node.inputs]
    lib = tvm.compile(tvm.IRModule({"main": lower_node(node, "main")}), target=cpu_target())
    shape = interpret(graph, arrays)[0].shape    # symbolic dims bound by the inputs
    out = tvm.runtime.tensor(np.zeros(shape, node.outputs[0].type.dtype.numpy))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    return out.numpy()


def packed(build, inputs: list[np.ndarray], op: str):
    """(graph before packing, graph after): `build(b, *values)` makes the node."""
    graphs = []
    for _ in range(2):
        b = GraphBuilder("g")
        values = [b.input(f"x{i}", tensor(str(a.dtype).replace("float", "f"), *a.shape))
                  for i, a in enumerate(inputs)]
        graphs.append(b.build(build(b, *values)))
    report = PackWeights().run(graphs[1])
    assert report.changed and graphs[1].nodes[-1].op == op
    return graphs[0], graphs[1]


def check_packed(build, inputs, op, reduce):
    before, after = packed(build, inputs, op)
    want = interpret(before, inputs)[0]
    np.testing.assert_allclose(interpret(after, inputs)[0], want, rtol=1e-5, atol=1e-5)
    got = run_last_node(after, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * math.sqrt(reduce))


# --- linear_packed ------------------------------------------------------------------------
@pytest.mark.parametrize("x, n, bias", [
    ((1, 40), 300, True),        # a decode step; a ragged last panel
    ((37, 64), 64, False),       # one panel, ragged row tiles
    ((2, 3, 50), 20, True),      # batch dims; a narrow panel (N < 64)
    ((24,), 130, True),          # rank-1 x
])
def test_linear_packed(x, n, bias):
    w, b_ = randn(n, x[-1]), randn(n)

    def build(b, xv):
        return b.linear(xv, b.constant("w", w), *([b.constant("b", b_)] if bias else []))
    check_packed(build, [randn(*x)], "linear_packed", x[-1])


@pytest.mark.parametrize("x, k, n", [((5, 33), 33, 70), ((2, 4, 16), 16, 8), ((16,), 16, 65)])
def test_matmul_with_constant_weight_packed(x, k, n):
    w = randn(k, n)
    check_packed(lambda b, xv: b.matmul(xv, b.constant("w", w)), [randn(*x)], "linear_packed", k)


def test_linear_packed_symbolic_rows():
    w, bias = randn(96, 48), randn(96)
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "m", 48))
    graph = b.build(b.linear(x, b.constant("w", w), b.constant("b", bias)))
    PackWeights().run(graph)
    for m in (1, 7, 50):
        xs = randn(m, 48)
        np.testing.assert_allclose(run_last_node(graph, [xs]), xs @ w.T + bias,
                                   rtol=1e-4, atol=1e-3)


# --- the transposed linear: a few rows in the vector axis ---------------------------------
@pytest.mark.parametrize("n, bias", [(1000, True), (10, False), (64, True)])
def test_linear_packed_transposed(n, bias):
    """32 rows: `pack_weights` packs the weight in 8-wide panels and the kernel computes
    outT = W xT (a ragged last panel at 1000 and 10 features)."""
    w, b_ = randn(n, 96), randn(n)

    def build(b, xv):
        return b.linear(xv, b.constant("w", w), *([b.constant("b", b_)] if bias else []))
    before, after = packed(build, [randn(32, 96)], "linear_packed")
    assert after.nodes[-1].inputs[1].type.shape[-1] == 8
    assert "linear_t_acc" in lower_node(after.nodes[-1], "main").script()
    check_packed(build, [randn(32, 96)], "linear_packed", 96)


def test_matmul_with_constant_weight_transposed():
    w = randn(70, 50)
    build = lambda b, xv: b.matmul(xv, b.constant("w", w))  # noqa: E731
    check_packed(build, [randn(32, 70)], "linear_packed", 70)


@pytest.mark.parametrize("x, panel, want", [
    ((32, 64), 8, True),
    ((32, 64), 64, False),      # packed for the column-panel tile
    ((16, 64), 8, False),       # one vector of rows: 8 accumulators, slower transposed
    ((48, 64), 8, False),       # three: slower too (measured)
    ((1, 32, 64), 8, False),    # batch dims: the column-panel tile
])
def test_which_linears_run_transposed(x, panel, want):
    from kiln.codegen.tvm.gemm import transposed_linear
    assert transposed_linear(te.placeholder(x, "float32"), panel) is want


# --- tiling and schedule choices -------------------------------------------------------------
@pytest.mark.parametrize("rows, mr, want", [
    (32, 6, 4),     # the benchmark MLP's batch: 4-row tiles, not 36 rows in 6-row ones
    (49, 6, 5),     # a 7x7 conv output: 50 rows, not 54
    (196, 6, 6),    # 14x14: 198 rows pad under 5 %, the widest tile stays
    (64, 6, 6),
    (12, 6, 6),     # a whole number of tiles
    (7, 4, 4),      # 8 rows either way (4-row tiles pad no more than 2-row ones)
])
def test_row_tiles_pad_least(rows, mr, want):
    assert least_padding(rows, mr) == want


def _packed_linear_script(m: int) -> str:
    b = GraphBuilder("g")
    graph = b.build(b.linear(b.input("x", tensor("f32", m, 64)), b.constant("w", randn(128, 64)),
                             b.constant("b", randn(128))))
    PackWeights().run(graph)
    return lower_node(graph.nodes[-1], "main").script()


def test_linear_reads_its_rows_in_place():
    """A linear's row panel is not packed: the tile reads x directly (one parallel
    loop, the GEMM's, and no pack buffer), here with 4-row tiles for 16 rows."""
    text = _packed_linear_script(16)
    assert "pack_l" not in text and text.count("T.parallel") == 1
    assert '"mr": 4' in text


def test_conv_rows_gather_loops_are_channels_and_taps():
    """The rows GEMM's input gather walks its reduction as (channel, kh, kw) loops, so
    the input indices are affine in them (no division by the tap count per element)."""
    b = GraphBuilder("g")
    graph = b.build(b.conv(b.input("x", tensor("f32", 1, 16, 14, 14)),
                           b.constant("w", randn(24, 16, 3, 3)), strides=[1, 1], pads=[1] * 4,
                           dilations=[1, 1], groups=1))
    PackWeights().run(graph)
    text = lower_node(graph.nodes[-1], "main").script()
    assert "T.int64(16), T.int64(3), T.int64(3)" in text   # the pack's loops, not 144


# --- conv_packed and the two conv GEMMs ----------------------------------------------------
CONVS = {   # x, weight, strides, pads
    "1x1 7x7 (rows)": ((1, 40, 7, 7), (70, 40, 1, 1), 1, 0),
    "3x3 14x14 (rows)": ((1, 16, 14, 14), (24, 16, 3, 3), 1, 1),
    "3x3 s2 (rows)": ((2, 8, 13, 13), (20, 8, 3, 3), 2, 1),
    "1x1 s2 (rows)": ((1, 24, 14, 14), (64, 24, 1, 1), 2, 0),
    "3x3 28x28 (columns)": ((1, 8, 28, 28), (16, 8, 3, 3), 1, 1),
    "7x7 s2 (columns)": ((1, 3, 40, 40), (16, 3, 7, 7), 2, 3),
}


@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("pack", [False, True])
def test_conv_rows_and_columns(name, pack):
    xs, ws, s, p = CONVS[name]
    w, bias = randn(*ws), randn(ws[0])
    attrs = dict(strides=[s, s], pads=[p] * 4, dilations=[1, 1], groups=1)

    def build(b, xv):
        return b.conv(xv, b.constant("w", w), b.constant("b", bias), **attrs)
    inputs = [randn(*xs)]
    if pack:
        check_packed(build, inputs, "conv_packed", ws[1] * ws[2] * ws[3])
        return
    b = GraphBuilder("g")
    graph = b.build(build(b, b.input("x", tensor("f32", *xs))))
    out = graph.outputs[0].type.shape
    assert (math.prod(out[2:]) <= ROWS_GEMM_MAX_POSITIONS) == ("rows" in name)
    np.testing.assert_allclose(run_last_node(graph, inputs), interpret(graph, inputs)[0],
                               rtol=1e-4, atol=1e-3)


def test_pack_weights_leaves_runtime_weights_and_groups_alone():
    """Only constant weights are packed (once, when shared); a grouped conv and a
    matmul of two runtime values stay; a second run changes nothing."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 4, 16))
    img = b.input("img", tensor("f32", 1, 4, 6, 6))
    w = b.constant("w", randn(8, 16))
    y = b.add(b.linear(x, w), b.linear(x, w))
    z = b.matmul(x, b.input("m", tensor("f32", 16, 3)))
    c = b.conv(img, b.constant("cw", randn(4, 2, 3, 3)), strides=[1, 1], pads=[1] * 4,
               dilations=[1, 1], groups=2)
    graph = b.build(y, z, c)
    report = PackWeights().run(graph)
    ops = [n.op for n in graph.nodes]
    assert ops.count("linear_packed") == 2 and "matmul" in ops and "conv" in ops
    assert report.counts["weights_packed"] == 1 and "w" not in graph.constants
    assert not PackWeights().run(graph).changed


# --- fused epilogues -------------------------------------------------------------------------
def _node(op: str, shapes: list[tuple], **attrs):
    b = GraphBuilder("g")
    values = [b.input(f"x{i}", tensor("f32", *s)) for i, s in enumerate(shapes)]
    return b.build(getattr(b, op)(*values, **attrs)).nodes[-1]


def _fused(node, lowering, epilogue, schedule, extra_shapes):
    """The anchor's lowering with `epilogue(out, *extras)` stacked after it as
    te.compute blocks, scheduled by the anchor's schedule; returns (library, the
    names of the blocks left, whether the last block runs inside the accumulator's
    outer (tile) loop)."""
    ctx = LowerContext(node)
    inputs = [te.placeholder(ctx.shape(v.type.shape), "float32", name=f"in{i}")
              for i, v in enumerate(node.inputs)]
    extras = [te.placeholder(s, "float32", name=f"extra{i}") for i, s in enumerate(extra_shapes)]
    out = lowering(ctx, *inputs, **node.attrs)
    final = epilogue(out, *extras)
    sch = s_tir.Schedule(te.create_prim_func([*inputs, *extras, final]))
    schedule(sch, node)
    func = sch.mod["main"]
    acc = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
           if sch.get(b).name_hint.endswith("_acc_update")][0]
    in_tile = sch.get(sch.get_loops(acc)[0]).same_as(
        sch.get(sch.get_loops(sch.get_sblock(final.op.name))[0]))
    blocks = re.findall(r'T\.sblock\("(\w+)"\)', func.script())
    return tvm.compile(tvm.IRModule({"main": func}), target=cpu_target()), blocks, in_tile


def _linear_epilogue(out, residual):
    """relu(out) + residual (broadcast over rows), via a float64 round trip."""
    relu = te.compute(out.shape, lambda *i: tirx.max(out(*i), tirx.const(0, "float32")),
                      name="bias_relu")
    wide = te.compute(out.shape, lambda *i: relu(*i).astype("float64"), name="cast_back")
    return te.compute(out.shape, lambda *i: (wide(*i) + residual[i[-1]].astype("float64"))
                      .astype("float32"), name="residual")


@pytest.mark.parametrize("m, k, n, packed_weight", [
    (50, 40, 128, False), (13, 24, 70, False), (50, 40, 128, 64),
    (32, 40, 130, 8),             # transposed: the epilogue stores its tile transposed
])
def test_linear_fused_epilogue(m, k, n, packed_weight):
    x, w, bias, residual = randn(m, k), randn(n, k), randn(n), randn(n)
    if packed_weight:
        from kiln.ir.ops.linalg import pack_panels
        wp = pack_panels(w, packed_weight)
        node = _node("linear_packed", [(m, k), wp.shape, (n,)], out_features=n)
        args = [x, wp, bias]
        lowering = lower_linear_packed
    else:
        node = _node("linear", [(m, k), (n, k), (n,)])
        args = [x, w, bias]
        lowering = lower_linear
    lib, blocks, in_tile = _fused(node, lowering, _linear_epilogue, schedule_gemm, [(n,)])
    # one epilogue, computed per output tile: the chain inlined into its last block
    assert not {"linear", "bias_relu", "cast_back"} & set(blocks)
    assert "residual" in blocks and in_tile
    out = tvm.runtime.tensor(np.zeros((m, n), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (*args, residual)], out)
    want = np.maximum(x @ w.T + bias, 0) + residual
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4 * math.sqrt(k))


@pytest.mark.parametrize("size", [7, 28])   # rows GEMM, columns GEMM
def test_conv_fused_epilogue(size):
    c, o = 16, 32
    x, w, bias = randn(1, c, size, size), randn(o, c, 3, 3), randn(o)
    residual = randn(1, o, size, size)
    node = _node("conv", [x.shape, w.shape, bias.shape], strides=[1, 1], pads=[1] * 4,
                 dilations=[1, 1], groups=1)

    def epilogue(out, res):
        relu = te.compute(out.shape, lambda *i: tirx.max(out(*i), tirx.const(0, "float32")),
                          name="bias_relu")
        return te.compute(out.shape, lambda *i: relu(*i) + res(*i), name="residual")
    lib, blocks, _ = _fused(node, lower_conv, epilogue, schedule_conv, [residual.shape])
    assert not {"conv", "bias_relu"} & set(blocks) and "residual" in blocks   # one epilogue
    out = tvm.runtime.tensor(np.zeros((1, o, size, size), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (x, w, bias, residual)], out)
    b = GraphBuilder("g")
    graph = b.build(b.conv(b.input("x", tensor("f32", *x.shape)), b.constant("w", w),
                           b.constant("b", bias), strides=[1, 1], pads=[1] * 4,
                           dilations=[1, 1], groups=1))
    want = np.maximum(interpret(graph, [x])[0], 0) + residual
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-3)
