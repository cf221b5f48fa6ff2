"""The `block_layout` pass (passes/layout.py): on hand-built graphs, a conv chain runs in
blocked channels with layout changes only at its ends, elementwise ops between convs
move into the blocked layout, convs it cannot take are left alone, results are the
interpreter's, and a second run changes nothing. Pooling layers run blocked too. Over the CNN benchmark models the
differential test is in tests/passes/test_models.py (PASSES)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import kiln
from kiln.compiler import copy_graph
from kiln.errors import PipelineError
from kiln.ir import GraphBuilder, interpret, tensor
from kiln.ir.ops.linalg import unblock_weight
from kiln.passes import PassManager

from tests.passes.pass_testing import assert_idempotent, assert_same_results

WINDOW = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def ops(graph) -> collections.Counter:
    return collections.Counter(n.op for n in graph.nodes)


def residual_block(batch: int | str = "n") -> tuple:
    """stem conv (3 channels) -> relu -> max_pool -> conv -> relu -> conv (+ the pooled
    input, residual) -> relu."""
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", batch, 3, 12, 12))
    stem = b.relu(b.conv(x, b.constant("w0", randn(16, 3, 3, 3)), b.constant("b0", randn(16)),
                         **WINDOW, groups=1))
    pooled = b.max_pool(stem, kernel=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=False,
                        dilations=[1, 1])
    h = b.relu(b.conv(pooled, b.constant("w1", randn(32, 16, 3, 3)), **WINDOW, groups=1))
    y = b.conv(h, b.constant("w2", randn(16, 32, 1, 1)), b.constant("b2", randn(16)),
               strides=[1, 1], pads=[0] * 4, dilations=[1, 1], groups=1)
    return b, b.build(b.relu(b.add(y, pooled)))


def test_a_conv_chain_runs_blocked_with_layout_changes_at_its_ends():
    _, graph = residual_block()
    original = copy_graph(graph)
    [report] = PassManager("block_layout").run(graph)
    counts = ops(graph)
    assert counts["conv"] == 0 and counts["conv_nchwc"] == 3
    assert report.counts["conv_blocked"] == 3
    # in: the image; out: the graph's output. The pool runs blocked between them.
    assert counts["transpose"] == 2
    [pool] = [n for n in graph.nodes if n.op == "max_pool"]
    assert pool.inputs[0].type.shape[-1] == 16 and tuple(pool.attrs["kernel"]) == (2, 2, 1)
    assert report.counts["pool_blocked"] == 1
    assert report.counts["elementwise_blocked"] == 4    # 2 relus, the residual add, relu
    [w1] = [graph.constants[k] for k in graph.constants if k.startswith("w1")]
    assert w1.shape == (2, 1, 3, 3, 16, 16)
    np.testing.assert_array_equal(unblock_weight(w1), original.constants["w1"])
    for seed, n in enumerate((1, 3)):
        assert_same_results(original, graph, bindings={"n": n}, seed=seed, rtol=1e-4, atol=1e-5)
    assert_idempotent("block_layout", graph)


@pytest.mark.parametrize("pool", ["max_pool", "avg_pool", "adaptive_avg_pool"])
def test_pooling_runs_blocked_with_the_block_as_a_unit_window_dim(pool):
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 2, 32, 9, 8))
    h = b.conv(x, b.constant("w", randn(32, 32, 1, 1)), strides=[1, 1], pads=[0] * 4,
               dilations=[1, 1], groups=1)
    window = {"kernel": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": True}
    attrs = {"max_pool": {**window, "dilations": [1, 2]},
             "avg_pool": {**window, "count_include_pad": False},
             "adaptive_avg_pool": {"output_size": [2, 3]}}[pool]
    graph = b.build(getattr(b, pool)(h, **attrs))
    original = copy_graph(graph)
    [report] = PassManager("block_layout").run(graph)
    assert report.counts["pool_blocked"] == 1
    [pooled] = [n for n in graph.nodes if n.op == pool]
    assert pooled.inputs[0].type.shape == (2, 2, 9, 8, 16)
    assert_same_results(original, graph, seed=1, rtol=1e-5, atol=1e-5)
    compiled = kiln.compile(copy_graph(original), passes="block_layout,fuse,plan",
                            cache_dir="off")
    xs = [randn(2, 32, 9, 8)]
    np.testing.assert_allclose(compiled(*xs)[0], interpret(original, xs)[0], rtol=1e-5,
                               atol=1e-5)
    assert_idempotent("block_layout", graph)


def test_convs_it_cannot_take_are_left_alone():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 1, 24, 6, 6))
    w = b.input("w", tensor("f32", 16, 24, 3, 3))
    outs = [
        b.conv(x, b.constant("grouped", randn(16, 12, 3, 3)), **WINDOW, groups=2),
        b.conv(x, b.constant("odd_in", randn(16, 24, 3, 3)), **WINDOW, groups=1),  # 24 % 16
        b.conv(x, b.constant("odd_out", randn(8, 24, 3, 3)), **WINDOW, groups=1),  # 8 < 16
        b.conv(x, w, **WINDOW, groups=1),                                          # not constant
    ]
    graph = b.build(*outs)
    [report] = PassManager("block_layout").run(graph)
    assert not report.changed and ops(graph)["conv"] == 4


def test_block_option():
    _, graph = residual_block(batch=2)
    PassManager("block_layout(block=8)").run(graph)
    assert {n.outputs[0].type.shape[-1] for n in graph.nodes if n.op == "conv_nchwc"} == {8}
    with pytest.raises(PipelineError, match="block=0"):
        PassManager("block_layout(block=0)").run(residual_block()[1])
