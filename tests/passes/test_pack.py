"""The `pack_weights` pass (passes/pack.py): a unit test on a hand-built graph (through
the pass manager, verified after the pass) and a differential test over the benchmark
models (tests/models.py): the interpreter gives the same results before and after
canonicalize + pack_weights, every constant linear/matmul/conv weight is packed, and a
second run changes nothing. (The kernels on packed weights: tests/codegen/test_gemm_packed.py.)"""
from __future__ import annotations

import collections

import numpy as np
import pytest

from kiln.compiler import copy_graph
from kiln.errors import PipelineError
from kiln.ir import GraphBuilder, tensor
from kiln.ir.ops.linalg import unpack_panels
from kiln.passes import PassManager
from kiln.passes.pack import panel_width

from tests.passes.pass_testing import assert_idempotent, assert_same_results
from tests.passes.test_models import SIZES, TOLERANCE, _bindings, model_graph  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def test_pack_weights_rewrites_constant_contractions():
    rng = np.random.default_rng(0)
    w, wm, wc = (rng.standard_normal(s).astype(np.float32) for s in
                 [(100, 12), (12, 10), (8, 3, 3, 3)])
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "n", 12))
    img = b.input("img", tensor("f32", 1, 3, 8, 8))
    y = b.linear(x, b.constant("w", w))
    z = b.matmul(x, b.constant("wm", wm))
    c = b.conv(img, b.constant("wc", wc), strides=[1, 1], pads=[1] * 4, dilations=[1, 1])
    graph = b.build(y, z, c)
    original = copy_graph(graph)
    [report] = PassManager("pack_weights(panel=64)").run(graph)
    assert report.counts == {"linear_packed": 1, "matmul_packed": 1, "conv_packed": 1,
                             "weights_packed": 3, "bytes_packed": 4 * (2 * 12 * 64 + 12 * 16
                                                                       + 27 * 16)}
    ops = collections.Counter(n.op for n in graph.nodes)
    assert ops["linear_packed"] == 2 and ops["conv_packed"] == 1 and not graph.constants.keys() \
        & {"w", "wm", "wc"}
    packed = {k: v for k, v in graph.constants.items()}
    np.testing.assert_array_equal(unpack_panels(packed["w.packed"], 100), w)
    np.testing.assert_array_equal(unpack_panels(packed["wm.packed"], 10), wm.T)
    assert packed["wm.packed"].shape == (1, 12, 16)       # 10 columns: one 16-wide panel
    np.testing.assert_array_equal(unpack_panels(packed["wc.packed"], 8), wc.reshape(8, -1))
    assert_same_results(original, graph, bindings={"n": 5})
    assert_idempotent("pack_weights", graph)


def test_a_few_rows_get_narrow_panels_once_per_width():
    """x of `small_rows` rows: 8-wide panels (the transposed kernel's); a weight that
    such a linear and another one share is packed once for each."""
    w = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
    b = GraphBuilder("g")
    small, wide = b.input("small", tensor("f32", 32, 12)), b.input("wide", tensor("f32", 5, 12))
    weight = b.constant("w", w)
    graph = b.build(b.linear(small, weight), b.linear(wide, weight), b.linear(small, weight))
    original = copy_graph(graph)
    [report] = PassManager("pack_weights").run(graph)
    assert report.counts["weights_packed"] == 2
    shapes = sorted(v.shape for v in graph.constants.values())
    assert shapes == [(1, 12, 48), (5, 12, 8)]
    assert_same_results(original, graph)
    [report] = PassManager("pack_weights(small_rows=5, small_rows_panel=16)").run(
        copy_graph(original))
    assert report.counts["weights_packed"] == 2   # now the 5 rows get 16-wide panels


def test_panel_width_and_bad_panel():
    assert [panel_width(n, 64) for n in (1, 16, 17, 64, 1000)] == [16, 16, 32, 64, 64]
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 2, 4))
    graph = b.build(b.linear(x, b.constant("w", np.ones((3, 4), np.float32))))
    with pytest.raises(PipelineError, match="panel=0"):
        PassManager("pack_weights(panel=0)").run(graph)
    with pytest.raises(PipelineError, match="small_rows_panel=0"):
        PassManager("pack_weights(small_rows_panel=0)").run(graph)


@pytest.mark.slow
def test_pack_weights_keeps_results_on_the_models(model_graph):  # noqa: F811
    name, original = model_graph
    graph = copy_graph(original)
    PassManager("canonicalize,pack_weights").run(graph)
    for seed, size in enumerate(SIZES):
        assert_same_results(original, graph, bindings=_bindings(original, size), seed=seed,
                            **TOLERANCE)
    left = [n for n in graph.nodes if n.op in ("linear", "matmul", "conv")
            and n.inputs[1].producer is not None and n.inputs[1].producer.op == "constant"
            and (n.op != "conv" or n.attrs["groups"] == 1)]
    assert not left, f"{name}: unpacked constant weights: {[n.format() for n in left]}"
    assert_idempotent("pack_weights", graph)
