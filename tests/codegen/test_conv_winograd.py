"""Winograd convolution (`conv_winograd`, ir/ops/linalg.py; its TVM kernel,
codegen/tvm/conv_winograd.py): the op's reference equals the direct blocked conv for
both tiles (sizes the tiles do not divide, asymmetric pads, a batch); shape inference
refuses what the op cannot read; the kernel alone, with its register-tile knobs, and
as the anchor of a fused group (bias, relu, residual add stored by the output
transform) computes what the interpreter does."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from kiln.codegen.tvm.tune import candidates
from kiln.codegen.tvm.tuning import Knobs, forcing, workload_key
from kiln.errors import TypeInferenceError
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.ir.ops.linalg import (block_channels, block_weight, winograd_matrices,
                                winograd_weight)

from tests.codegen.test_conv_nchwc import contraction_group, run_node

RNG = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# (N, C, H, W), O, pads (top, left, bottom, right)
SHAPES = {
    "12x12": ((1, 32, 12, 12), 32, (1, 1, 1, 1)),
    "batch 2, 7x9, asymmetric pads": ((2, 16, 7, 9), 48, (1, 0, 2, 1)),
    "no padding": ((1, 16, 6, 10), 16, (0, 0, 0, 0)),
}


def winograd_graph(shape, o, pads, tile: int, *, bias: bool = True):
    """(graph of one conv_winograd with constant transformed weight and bias, the
    blocked x, the direct conv_nchwc graph of the same weight)."""
    x, w, b_ = randn(*shape), randn(o, shape[1], 3, 3), randn(o)
    xb = block_channels(x, 16)
    graphs = []
    for op, weight in (("conv_winograd", winograd_weight(w, tile, 16, 16)),
                       ("conv_nchwc", block_weight(w, 16, 16))):
        b = GraphBuilder(op)
        args = [b.input("x", tensor("f32", *xb.shape)), b.constant("w", weight)]
        if bias:
            args.append(b.constant("b", b_.reshape(-1, 16)))
        attrs = {"tile": tile, "pads": list(pads)} if op == "conv_winograd" else \
            {"strides": [1, 1], "pads": list(pads), "dilations": [1, 1]}
        graphs.append(b.build(b.op(op, *args, **attrs)))
    return graphs[0], xb, graphs[1]


def test_matrices_compute_a_correlation():
    """A^T [(G g G^T) * (B^T d B)] A is the 3 x 3 correlation of the tile."""
    for tile in (2, 4):
        bt, g, at = winograd_matrices(tile)
        d, k = RNG.standard_normal((tile + 2, tile + 2)), RNG.standard_normal((3, 3))
        want = np.array([[np.sum(d[i:i + 3, j:j + 3] * k) for j in range(tile)]
                         for i in range(tile)])
        np.testing.assert_allclose(at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T, want,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("name", SHAPES)
def test_reference_equals_the_direct_conv(name, tile):
    winograd, xb, direct = winograd_graph(*SHAPES[name], tile)
    got, want = interpret(winograd, [xb])[0], interpret(direct, [xb])[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("name", SHAPES)
def test_kernel_matches_interpreter(name, tile):
    graph, xb, _ = winograd_graph(*SHAPES[name], tile)
    want = interpret(graph, [xb])[0]
    node = graph.nodes[-1]
    got, script = run_node(node, [xb] + [graph.constant_array(v.producer)
                                         for v in node.inputs[1:]], want.shape)
    assert "conv_winograd_m" in script
    np.testing.assert_allclose(got, want, rtol=1e-4,
                               atol=1e-4 * math.sqrt(SHAPES[name][0][1] * 9))


def test_register_tile_knobs_reach_the_kernel():
    """The tuner's candidates are register tiles of the product stage; forced, such a
    tile (one leaving a partial last tile too) is the one the kernel records, and it
    computes the same."""
    graph, xb, _ = winograd_graph(*SHAPES["batch 2, 7x9, asymmetric pads"], 4, bias=False)
    node = graph.nodes[-1]
    arrays = [xb, graph.constant_array(node.inputs[1].producer)]
    want = interpret(graph, [xb])[0]
    knobs = candidates(node)    # 2 x 2 x 3 = 12 Winograd tiles, 3 output-channel blocks
    assert Knobs() in knobs and Knobs(rw=6, ot=2) in knobs and Knobs(rw=8, ot=3) in knobs
    assert all(k.rw <= 12 and k.ot <= 3 for k in knobs[1:])
    for k in (Knobs(), Knobs(rw=6, ot=2), Knobs(rw=8, ot=3)):
        with forcing(workload_key(node), k):
            got, script = run_node(node, arrays, want.shape)
        if k.rw:
            assert re.search(rf'"rw": {k.rw}\b', script) and re.search(rf'"ot": {k.ot}\b', script)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3, err_msg=str(k))


def test_fused_bias_relu_residual():
    """conv_winograd -> relu -> add(residual) as one kernel: the epilogue is computed in
    the output transform's block (no block of its own left)."""
    graph, xb, _ = winograd_graph(*SHAPES["12x12"], 4)
    node = graph.nodes[-1]
    arrays = [xb] + [graph.constant_array(v.producer) for v in node.inputs[1:]]
    arrays.append(randn(*node.outputs[0].type.shape))
    body = GraphBuilder("body")
    x, w, bias, residual = [body.input(f"p{i}", tensor("f32", *a.shape))
                            for i, a in enumerate(arrays)]
    body = body.build(body.add(body.relu(body.conv_winograd(x, w, bias, **node.attrs)),
                               residual))
    want = interpret(body, arrays)[0]
    got, script = run_node(contraction_group(body), arrays, want.shape)
    blocks = set(re.findall(r'T\.sblock\("(\w+)"', script))
    assert not {"conv_winograd", "relu"} & blocks and "add" in blocks
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("types, attrs, match", [
    ([(1, 2, 8, 8, 16), (6, 6, 2, 2, 16, 16)], {"tile": 3}, "tile=3, expected 2 or 4"),
    ([(1, 2, 8, 8, 16), (4, 4, 2, 2, 16, 16)], {"tile": 4}, "weight \\[6, 6, O/ob"),
    ([(1, 2, 8, 8, 16), (6, 6, 2, 3, 16, 16)], {"tile": 4}, "channel blocks"),
    ([(1, 2, 8, 8, 16), (6, 6, 2, 2, 16, 16), (32,)], {"tile": 4}, "bias shape"),
    ([(1, 2, 8, 8, 16), (6, 6, 2, 2, 16, 16)], {"tile": 4, "pads": [1, 1]}, "4 entries"),
])
def test_shape_inference_refuses(types, attrs, match):
    b = GraphBuilder("g")
    values = [b.input(f"v{i}", tensor("f32", *t)) for i, t in enumerate(types)]
    with pytest.raises(TypeInferenceError, match=match):
        b.op("conv_winograd", *values, **{"pads": [1, 1, 1, 1], **attrs})


def test_weight_transform_needs_a_blocked_3x3():
    with pytest.raises(TypeInferenceError, match="\\[O, C, 3, 3\\]"):
        winograd_weight(randn(16, 16, 5, 5), 4, 16, 16)
    with pytest.raises(TypeInferenceError, match="2 or 4"):
        winograd_matrices(6)
