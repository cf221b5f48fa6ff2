"""The blocked-channel convolution (`conv_nchwc`, ir/ops/linalg.py; its TVM kernel,
codegen/tvm/conv_nchwc.py): the op's reference equals `conv` on the unblocked tensors
and its shape inference refuses mismatched blocks; compiled through `block_layout`
and `fuse`, the kernel — with its fused bias, relu and residual add — computes what
the interpreter does on the original NCHW graph (stems of 3 channels, 1x1, 3x3,
7x7, stride 2, asymmetric pads, a dilation)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import kiln
from kiln.compiler import copy_graph
from kiln.errors import TypeInferenceError
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
