"""The `winograd` pass (passes/winograd.py): after block_layout, 3 x 3 stride-1 convs
become `conv_winograd` with the weight transformed once at compile time; strided,
dilated, other kernels and half-precision convs stay direct; each conv gets the largest
tile whose transformed weight fits the size limit; results are the interpreter's (and
the compiled kernels'), and a second run changes nothing. Over the benchmark models the differential test is in
tests/passes/test_models.py (PASSES)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import kiln
from kiln.compiler import copy_graph
from kiln.errors import PipelineError
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.passes import PassManager

from tests.passes.pass_testing import assert_idempotent, assert_same_results
from tests.passes.test_layout import WINDOW, randn, residual_block


def ops(graph) -> collections.Counter:
    return collections.Counter(n.op for n in graph.nodes)


def test_3x3_convs_become_winograd():
    _, graph = residual_block()
    original = copy_graph(graph)
    _, report = PassManager("block_layout,winograd").run(graph)
    counts = ops(graph)
    # the stem (3 -> 16) and the 16 -> 32 conv are 3 x 3; the 1 x 1 stays direct
    assert counts["conv_winograd"] == 2 and counts["conv_nchwc"] == 1
    assert report.counts["conv_winograd"] == 2
    assert report.counts["bytes_transformed"] == 4 * 36 * (16 * 3 + 32 * 16)
    for node in graph.nodes:
        if node.op == "conv_winograd":
            assert node.attrs == {"tile": 4, "pads": (1, 1, 1, 1)}
            assert node.inputs[1].type.shape[:2] == (6, 6)
    assert_same_results(original, graph, bindings={"n": 2}, rtol=1e-4, atol=1e-4)
    assert_idempotent("winograd", graph)


def test_tile_2():
    _, graph = residual_block()
    original = copy_graph(graph)
    PassManager("block_layout,winograd(tile=2)").run(graph)
    assert {n.inputs[1].type.shape[:2] for n in graph.nodes if n.op == "conv_winograd"} \
        == {(4, 4)}
    assert_same_results(original, graph, bindings={"n": 1}, rtol=1e-4, atol=1e-4)


def conv_chain(window: dict, kernel: int = 3, dtype: str = "f32"):
    b = GraphBuilder("g")
    x = b.input("x", tensor(dtype, 1, 16, 10, 10))
    w = b.constant("w", randn(16, 16, kernel, kernel).astype(
        {"f32": np.float32, "f16": np.float16}[dtype]))
    return b.build(b.relu(b.conv(x, w, **window, groups=1)))


@pytest.mark.parametrize("graph", [
    conv_chain({**WINDOW, "strides": [2, 2]}),
    conv_chain({**WINDOW, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    conv_chain({**WINDOW, "pads": [2, 2, 2, 2]}, kernel=5),
    conv_chain(WINDOW, dtype="f16"),
], ids=["stride 2", "dilation 2", "5x5", "float16"])
def test_other_convs_stay_direct(graph):
    [_, report] = PassManager("block_layout,winograd").run(graph)
    assert not report.changed and ops(graph)["conv_nchwc"] == 1


@pytest.mark.parametrize("limit, tile", [(36864, 4), (36863, 2), (16384, 2), (16383, None)])
def test_the_largest_tile_whose_weight_fits(limit, tile):
    """16 x 16 x 3 x 3 floats (9 KiB) are 36 KiB transformed for tile 4, 16 KiB for 2."""
    graph = conv_chain(WINDOW)
    PassManager(f"block_layout,winograd(max_weight_bytes={limit})").run(graph)
    tiles = [n.attrs["tile"] for n in graph.nodes if n.op == "conv_winograd"]
    assert tiles == ([tile] if tile else [])
    assert ops(graph)["conv_nchwc"] == (0 if tile else 1)


def test_a_shared_weight_is_transformed_once():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 16, 8, 8))
    w = b.constant("w", randn(16, 16, 3, 3))
    y = b.conv(b.relu(b.conv(x, w, **WINDOW, groups=1)), w, **WINDOW, groups=1)
    graph = b.build(y)
    original = copy_graph(graph)
    _, report = PassManager("block_layout,winograd").run(graph)
    assert report.counts["conv_winograd"] == 2
    assert report.counts["bytes_transformed"] == 4 * 36 * 16 * 16
    assert_same_results(original, graph, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, match", [
    ("winograd(tile=3)", "tile=3, expected 2 or 4"),
    ("winograd(max_weight_bytes=-1)", "must not be negative"),
])
def test_bad_options_are_refused(spec, match):
    with pytest.raises(PipelineError, match=match):
        PassManager(spec).run(conv_chain(WINDOW))


def test_compiled_residual_block_matches_the_interpreter():
    """The default pipeline (winograd in it) compiles the block into kernels that run
    conv_winograd with its fused epilogue, and computes what the interpreter does."""
    _, graph = residual_block(batch=2)
    original = copy_graph(graph)
    compiled = kiln.compile(graph, cache_dir="off")
    anchors = [m.op for n in compiled.graph.nodes if n.body is not None for m in n.body.nodes
               if m.op.startswith("conv")]
    assert anchors.count("conv_winograd") == 2
    x = randn(2, 3, 12, 12)
    for got, want in zip(compiled(x), interpret(original, [x]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
