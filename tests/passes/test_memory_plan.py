"""The `plan` pass (kiln.passes.memory.PlanMemory) on hand-built graphs: views become
aliases, elementwise nodes (and all-elementwise fused groups, and conv groups over
the residual their epilogue reads) whose input dies there
are planned in place, the report states the peak intermediate bytes, and
`compiler.make_plan` uses what the pass stored — or says it is stale."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir import GraphBuilder, tensor
from kiln.passes import PassManager
from kiln.passes.memory import (MemoryPlan, PlanMemory, graph_plan, inplace_candidates,
                                memory_report)

F = 4  # bytes per f32


def views_graph():
    """x: f32[batch, 8]; w: f32[8, 8].

        h = matmul(x, w)                          kernel
        a = relu(h)                               kernel, in place of h
        r = reshape(a, [batch*8])                 view of an intermediate
        s = sigmoid(r)                            kernel, in place of a (through r)
        xv = reshape(x, [batch*8])                view of a graph input
        m = mul(s, xv)                            kernel (s still lives: no in place)
        wv = reshape(w, [64]); wu = unsqueeze(wv, [0])   views of a constant, chained
        u = unsqueeze(m, [0])                     view of a value the graph returns
        out = reshape(u, [batch, 8])              chained view: a graph output
        return out, s, wu
    """
    b = GraphBuilder("views")
    x = b.input("x", tensor("f32", "batch", 8))
    w = b.constant("w", np.arange(64, dtype=np.float32).reshape(8, 8) / 64)
    h = b.matmul(x, w, name="h")
    a = b.relu(h, name="a")
    r = b.reshape(a, shape=["batch*8"], name="r")
    s = b.sigmoid(r, name="s")
    xv = b.reshape(x, shape=["batch*8"], name="xv")
    m = b.mul(s, xv, name="m")
    wu = b.unsqueeze(b.reshape(w, shape=[64], name="wv"), axes=[0], name="wu")
    u = b.unsqueeze(m, axes=[0], name="u")
    out = b.reshape(u, shape=["batch", 8], name="out")
    return b.build(out, s, wu)


def test_the_pass_plans_views_and_in_place_steps():
    graph = views_graph()
    report = PlanMemory().run(graph)
    mp = graph.memory_plan
    assert isinstance(mp, MemoryPlan)
    assert mp.aliases == {"r": "a", "xv": "x", "wv": "w", "wu": "wv", "u": "m", "out": "u"}
    assert mp.steps == (("h",), ("a",), ("s",), ("m",))
    assert mp.inplace == {"a": "h"}     # s is returned: a fresh array, never in place
    assert set(mp.memory) == {"h", "a"} and mp.memory["h"] == mp.memory["a"]
    assert report.changed is False
    assert report.counts == {"kernels": 4, "intermediates": 2, "slots": 1, "inplace": 1,
                             "views": 6, "peak_bytes": 64 * 8 * F,
                             "unplanned_bytes": 2 * 64 * 8 * F}
    assert report.notes == ("bytes at batch=64",)


def test_in_place_through_a_view_into_a_dying_intermediate():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "n", 8))
    h = b.matmul(x, b.constant("w", np.eye(8, dtype=np.float32)), name="h")
    r = b.reshape(h, shape=["n*8"], name="r")
    s = b.sigmoid(r, name="s")
    w2 = b.constant("w2", np.eye(8, dtype=np.float32))
    out = b.matmul(b.reshape(s, shape=["n", 8], name="sv"), w2, name="out")
    graph = b.build(out)
    PlanMemory().run(graph)
    assert graph.memory_plan.inplace == {"s": "r"}
    assert graph.memory_plan.memory == {"h": 0, "s": 0}


def test_never_in_place_into_inputs_or_constants():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 4, 8))
    c = b.constant("c", np.ones((4, 8), np.float32))
    t = b.add(x, c, name="t")                 # candidates x (input), c (constant)
    cv = b.reshape(c, shape=[32], name="cv")
    e = b.exp(cv, name="e")                   # candidate: a view of a constant
    out = b.add(b.reshape(e, shape=[4, 8]), t, name="out")
    graph = b.build(out)
    assert inplace_candidates(graph) == {"t": ("x", "c"), "e": ("cv",),
                                         "out": (graph.nodes[-2].output.name, "t")}
    PlanMemory().run(graph)
    assert graph.memory_plan.inplace == {}


def test_peak_memory_at_several_bindings():
    graph = views_graph()
    PlanMemory().run(graph)
    plan = graph.memory_plan.apply(graph_plan(graph))
    for batch in (1, 3, 100):
        report = memory_report(plan, {"batch": batch})
        assert report.planned_bytes == batch * 8 * F          # h and a share one slot
        assert report.unplanned_bytes == 2 * batch * 8 * F
        assert report.live_peak_bytes == batch * 8 * F
        assert (report.views, report.inplace, report.slots) == (6, 1, 1)


def test_a_fused_elementwise_group_is_planned_in_place():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "n", 8))
    c = b.concat(x, x, axis=1, name="c")                  # not fusable: c is a kernel output
    e = b.relu(b.add(c, c), name="e")                     # fuse: one elementwise group
    out = b.matmul(e, b.constant("w", np.ones((16, 4), np.float32)), name="out")
    graph = b.build(out)
    reports = PassManager("fuse,plan").run(graph)
    fused = [n for n in graph.nodes if n.op == "fused"]
    assert [n.body is not None for n in fused] == [True]
    assert graph.memory_plan.inplace == {fused[0].output.name: "c"}
    assert str(reports[-1]).startswith("plan: kernels=3 intermediates=2 slots=1 inplace=1 "
                                       "views=0 peak_bytes=4096 unplanned_bytes=8192")


def test_a_group_with_a_non_elementwise_body_is_not_in_place():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "n", 8))
    c = b.concat(x, x, axis=1, name="c")
    e = b.relu(b.softmax(c, axis=1), name="e")           # a reduction group
    out = b.matmul(e, b.constant("w", np.ones((16, 4), np.float32)), name="out")
    graph = b.build(out)
    PassManager("fuse,plan").run(graph)
    assert any(n.op == "fused" for n in graph.nodes)
    assert graph.memory_plan.inplace == {}


def test_a_stale_memory_plan_is_refused():
    graph = views_graph()
    PlanMemory().run(graph)
    x = graph.inputs[0]
    graph.add_node("relu", [x], name="late")
    with pytest.raises(KilnError, match="no longer matches its nodes; a pass changed the graph "
                                        "after `plan`"):
        graph.memory_plan.apply(graph_plan(graph))


def test_the_pass_is_deterministic_and_idempotent():
    graph = views_graph()
    first = PlanMemory().run(graph)
    plan = graph.memory_plan
    assert PlanMemory().run(graph) == first and graph.memory_plan == plan


CONV = "{strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], groups=1}"
RESIDUAL = f"""\
graph res(%x: f32[batch, 4, 6, 6], %w: f32[4, 4, 3, 3], %v: f32[4, 4, 3, 3]) {{
  %h: f32[batch, 4, 6, 6] = conv(%x, %w) {CONV}
  %r: f32[batch, 4, 6, 6] = relu(%h)
  %y: f32[batch, 4, 6, 6] = conv(%r, %v) {CONV}
  %z: f32[batch, 4, 6, 6] = add(%y, %h)
  %out: f32[batch, 4, 6, 6] = relu(%z)
  %t: f32[batch, 4, 6, 6] = neg(%out)
  %final: f32[batch, 4, 6, 6] = conv(%t, %w) {CONV}
  return %final
}}
"""
GEMM_RESIDUAL = """\
graph res(%x: f32[batch, 16], %w: f32[16, 16], %v: f32[16, 16]) {
  %h: f32[batch, 16] = matmul(%x, %w)
  %r: f32[batch, 16] = relu(%h)
  %y: f32[batch, 16] = matmul(%r, %v)
  %z: f32[batch, 16] = add(%y, %h)
  %out: f32[batch, 16] = relu(%z)
  return %out
}
"""


def test_conv_epilogue_writes_over_its_dying_residual():
    """conv -> + residual -> relu fused: the group's output may take the residual's
    storage (the kernel reads each residual element once, where it then writes), but
    never the conv input it reads whole."""
    from kiln.compiler import compile as kiln_compile, copy_graph
    from kiln.ir import example_inputs, interpret, parse
    graph = parse(RESIDUAL)
    original = copy_graph(graph)
    PassManager("fuse").run(graph)
    fused = [n for n in graph.nodes if n.body is not None and n.attrs["kind"] == "contraction"]
    residual_group = next(n for n in fused if "h" in [v.name for v in n.inputs])
    assert inplace_candidates(graph)[residual_group.output.name] == ("h",)
    [report] = PassManager("plan").run(graph)
    assert graph.memory_plan.inplace.get(residual_group.output.name) == "h"
    compiled = kiln_compile(graph, passes="")
    inputs = example_inputs(original, {"batch": 2}, seed=1)
    np.testing.assert_allclose(compiled(*inputs)[0], interpret(original, inputs)[0],
                               rtol=1e-5, atol=1e-5)


def test_gemm_epilogue_keeps_its_own_buffer():
    """A GEMM group's epilogue does not write over the residual it reads (measured up
    to 2x slower than into a buffer of its own)."""
    from kiln.ir import parse
    graph = parse(GEMM_RESIDUAL)
    PassManager("fuse").run(graph)
    fused = [n for n in graph.nodes if n.body is not None and n.attrs["kind"] == "contraction"]
    residual_group = next(n for n in fused if "h" in [v.name for v in n.inputs])
    assert residual_group.output.name not in inplace_candidates(graph)
