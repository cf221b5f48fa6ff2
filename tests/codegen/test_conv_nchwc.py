"""The blocked-channel convolution (`conv_nchwc`, ir/ops/linalg.py; its TVM kernel,
codegen/tvm/conv_nchwc.py): the op's reference equals `conv` on the unblocked tensors
and its shape inference refuses mismatched blocks; compiled through `block_layout`
and `fuse`, the kernel — with its fused bias, relu and residual add — computes what
the interpreter does on the original NCHW graph (stems of 3 channels, 1x1, 3x3,
7x7, stride 2, asymmetric pads, a dilation). The kernel alone, and as the anchor of a
fused group built by hand, against the interpreter (widths the register tile does
not fill, a symbolic batch), its epilogue stored from the accumulators (no block of
it left on its own); the tile choice; the refusal of other than 2 spatial dims."""
from __future__ import annotations

import collections
import math
import re

import numpy as np
import pytest
import tvm

import kiln
from kiln.codegen.tvm import cpu_target, lower_node
from kiln.codegen.tvm.conv_nchwc import choose_tile
from kiln.codegen.tvm.gemm import machine
from kiln.compiler import copy_graph
from kiln.errors import CodegenError, TypeInferenceError
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.ir.ops.linalg import block_channels, block_weight, unblock_channels, unblock_weight

RNG = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_blocking_round_trips():
    x, w = randn(2, 32, 5, 5), randn(48, 32, 3, 3)
    assert block_channels(x, 16).shape == (2, 2, 5, 5, 16)
    np.testing.assert_array_equal(unblock_channels(block_channels(x, 16)), x)
    assert block_weight(w, 16, 16).shape == (3, 2, 3, 3, 16, 16)
    np.testing.assert_array_equal(unblock_weight(block_weight(w, 16, 16)), w)


def test_shape_inference_checks_the_blocks():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 2, 8, 8, 16))
    window = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
    y = b.op("conv_nchwc", x, b.constant("w", randn(2, 2, 3, 3, 16, 16)), **window)
    assert y.type.shape == (1, 2, 8, 8, 16)
    with pytest.raises(TypeInferenceError, match="channel block"):
        b.op("conv_nchwc", x, b.constant("w8", randn(2, 2, 3, 3, 8, 16)), **window)
    with pytest.raises(TypeInferenceError, match="in-channel blocks"):
        b.op("conv_nchwc", x, b.constant("w3", randn(2, 3, 3, 3, 16, 16)), **window)


CASES = {   # c, hw, o, k, stride, pads (top, left, bottom, right), dilation
    "stem_7x7_s2_c3": (3, 20, 16, 7, 2, [3, 3, 3, 3], 1),
    "3x3": (16, 9, 32, 3, 1, [1, 1, 1, 1], 1),
    "1x1": (32, 7, 16, 1, 1, [0, 0, 0, 0], 1),
    "3x3_s2_asymmetric": (16, 10, 16, 3, 2, [0, 1, 1, 0], 1),
    "3x3_dilated": (16, 11, 16, 3, 1, [2, 2, 2, 2], 2),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_with_fused_epilogue_matches_the_interpreter(case):
    c, hw, o, k, stride, pads, dilation = CASES[case]
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 2, c, hw, hw))
    window = {"strides": [stride, stride], "pads": pads, "dilations": [dilation, dilation]}
    shortcut = b.conv(x, b.constant("w0", randn(o, c, k, k)), **window, groups=1)
    y = b.conv(x, b.constant("w", randn(o, c, k, k)), b.constant("b", randn(o)), **window,
               groups=1)
    graph = b.build(b.relu(b.add(y, shortcut)))      # the residual: blocked, as in a ResNet
    original = copy_graph(graph)
    compiled = kiln.compile(graph, passes="block_layout,fuse,plan", cache_dir="off")
    groups = [collections.Counter(m.op for m in n.body.nodes) for n in compiled.graph.nodes
              if n.body is not None]
    assert {"conv_nchwc": 1, "add": 1, "relu": 1} in groups
    inputs = [randn(2, c, hw, hw)]
    for got, want in zip(compiled(*inputs), interpret(original, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- the kernel alone, and as a fused group's anchor built by hand -------------------------
def run_node(node, arrays: list[np.ndarray], out_shape: tuple) -> tuple[np.ndarray, str]:
    """Compile `node` alone and run it on `arrays` (one per node input); returns the
    output and the scheduled function's TVMScript."""
    func = lower_node(node, "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=cpu_target())
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy(), func.script()


# (N, C, H, W), O, kernel, strides, pads, dilations, cb, ob
SHAPES = {
    "3x3": ((1, 32, 12, 12), 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16, 16),
    "3x3 stride 2": ((2, 16, 13, 11), 48, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 16, 16),
    "1x1": ((1, 64, 7, 7), 128, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 16, 16),
    "1x1 stride 2": ((1, 32, 14, 14), 64, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 16, 16),
    "7x7 stem, C=3": ((1, 3, 30, 30), 32, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 3, 16),
    "asymmetric pads, dilation": ((1, 8, 10, 9), 16, (3, 2), (1, 2), (2, 0, 1, 3), (2, 1), 4, 8),
    "prime width": ((1, 16, 5, 31), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16, 16),
}


def conv_graph(shape, o, kernel, strides, pads, dilations, cb, ob, *, bias: bool,
               batch: int | str | None = None):
    """(graph of one conv_nchwc with constant blocked weight/bias, blocked x, weight, bias)."""
    x = randn(*shape)
    w, b_ = randn(o, shape[1], *kernel), randn(o)
    xb = block_channels(x, cb)
    b = GraphBuilder("g")
    xv = b.input("x", tensor("f32", batch or xb.shape[0], *xb.shape[1:]))
    args = [xv, b.constant("w", block_weight(w, cb, ob))]
    if bias:
        args.append(b.constant("b", b_.reshape(o // ob, ob)))
    y = b.conv_nchwc(*args, strides=list(strides), pads=list(pads), dilations=list(dilations))
    return b, y, xb


@pytest.mark.parametrize("name", SHAPES)
def test_kernel_matches_interpreter(name):
    shape, o, kernel, *_ = SHAPES[name]
    b, y, xb = conv_graph(*SHAPES[name], bias=name != "1x1")
    graph = b.build(y)
    want = interpret(graph, [xb])[0]
    node = graph.nodes[-1]
    got, _ = run_node(node, [xb] + [graph.constant_array(v.producer) for v in node.inputs[1:]],
                      want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * math.sqrt(shape[1] * math.prod(kernel)))


def test_symbolic_batch():
    b, y, xb = conv_graph(*SHAPES["3x3 stride 2"], bias=True, batch="n")
    graph = b.build(y)
    want = interpret(graph, [xb])[0]
    node = graph.nodes[-1]
    got, _ = run_node(node, [xb] + [graph.constant_array(v.producer) for v in node.inputs[1:]],
                      want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def contraction_group(body):
    """A fused node (kind "contraction") whose body is the graph `body`."""
    g = GraphBuilder("group")
    return g.graph.add_node("fused", [g.input(v.name, v.type) for v in body.inputs],
                            {"kind": "contraction"}, body=body)


@pytest.mark.parametrize("name", ["3x3", "1x1 stride 2", "7x7 stem, C=3"])
def test_fused_bias_relu_residual(name):
    """A fused group conv_nchwc -> relu -> add(residual), all blocked: one kernel whose
    accumulator is stored through the whole epilogue."""
    b, y, xb = conv_graph(*SHAPES[name], bias=True)
    conv = b.build(y)
    node = conv.nodes[-1]
    arrays = [xb] + [conv.constant_array(v.producer) for v in node.inputs[1:]]
    arrays.append(randn(*y.type.shape))
    body = GraphBuilder("body")
    x, w, bias, residual = [body.input(f"p{i}", tensor("f32", *a.shape))
                            for i, a in enumerate(arrays)]
    body = body.build(body.add(body.relu(body.conv_nchwc(x, w, bias, **node.attrs)), residual))
    want = interpret(body, arrays)[0]
    got, script = run_node(contraction_group(body), arrays, want.shape)
    blocks = set(re.findall(r'T\.sblock\("(\w+)"', script))
    assert not {"conv_nchwc", "relu"} & blocks and "add" in blocks   # one epilogue block
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_tile_fills_registers_and_divides():
    lanes = machine().lanes("float32")
    for o_blocks, width in [(4, 56), (16, 28), (32, 14), (128, 7), (1, 31), (3, 12)]:
        tile = choose_tile(o_blocks, lanes, width, "float32")
        accumulators = tile.rw * tile.ot
        assert width % tile.rw == 0 and o_blocks % tile.ot == 0
        assert accumulators + tile.ot + 2 < machine().registers
    assert choose_tile(32, lanes, 7, "float32").rw == 7


def test_other_than_two_spatial_dims_is_refused():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 1, 8, 4))
    graph = b.build(b.conv_nchwc(x, b.constant("w", np.zeros((1, 1, 3, 4, 4), np.float32)),
                                 strides=[1], pads=[1, 1], dilations=[1]))
    with pytest.raises(CodegenError, match="conv_nchwc.*handles 2 spatial dims, got 1"):
        lower_node(graph.nodes[-1], "main")


@pytest.mark.parametrize("call, match", [
    (lambda: block_channels(np.zeros((1, 6, 2), np.float32), 4), "6 channels"),
    (lambda: block_weight(np.zeros((8, 6, 3, 3), np.float32), 3, 3), "8 out- and 6 in-"),
])
def test_blocking_helpers_need_whole_blocks(call, match):
    with pytest.raises(TypeInferenceError, match=match):
        call()


@pytest.mark.parametrize("types, match", [
    ([(1, 2, 5, 5, 4), (2, 2, 3, 3, 4, 8), (16,)], "bias shape \\[16\\] != \\[2, 8\\]"),
    ([(1, 2, 5, 4), (2, 2, 3, 3, 4, 8)], "rank"),
    ([(1, 2, 2, 5, 4), (2, 2, 3, 3, 4, 8)], "does not fit"),
])
def test_shape_inference_refuses(types, match):
    b = GraphBuilder("g")
    values = [b.input(f"v{i}", tensor("f32", *t)) for i, t in enumerate(types)]
    with pytest.raises(TypeInferenceError, match=match):
        b.op("conv_nchwc", *values, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])
