"""The `fuse` pass: one case per rule on hand-written graphs (before/after `.kir`,
same interpreter results, a second run changes nothing), fused groups compiled by
TVM against the interpreter, and every benchmark model fused and compared."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.compiler import compile as kiln_compile, copy_graph
from kiln.frontend.torch import import_model
from kiln.ir import example_inputs, interpret, parse
from kiln.passes import PassManager
from kiln.passes.fuse import dependency_graph, find_groups, kernel_count

from tests.models import MODELS
from tests.passes.pass_testing import assert_same_results, check_rewrite

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def test_elementwise_chain_with_broadcasting_is_one_group():
    report = check_rewrite("fuse", """\
graph g(%x: f32[batch, 4], %y: f32[4]) {
  %a: f32[batch, 4] = add(%x, %y)
  %b: f32[batch, 4] = relu(%a)
  %c: f32[batch, 4] = mul(%b, %x)
  return %c
}
""", """\
graph g(%x: f32[batch, 4], %y: f32[4]) {
  %c: f32[batch, 4] = fused(%x, %y) graph add_group(%x: f32[batch, 4], %y: f32[4]) {
    %a: f32[batch, 4] = add(%x, %y)
    %b: f32[batch, 4] = relu(%a)
    %c: f32[batch, 4] = mul(%b, %x)
    return %c
  }
  return %c
}
""", bindings={"batch": 3})
    assert report.counts["kernels_before"] == 3 and report.counts["kernels_after"] == 1


GEMM_EPILOGUE = """\
graph g(%x: f32[batch, 8], %r: f32[batch, 4]) {
  %w: f32[8, 4] = constant() {ref="w"}
  %b: f32[4] = constant() {ref="b"}
  %mm: f32[batch, 4] = matmul(%x, %w)
  %biased: f32[batch, 4] = add(%mm, %b)
  %act: f32[batch, 4] = gelu(%biased)
  %out: f32[batch, 4] = add(%act, %r)
  return %out
}
"""


def gemm_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((8, 4)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}


def test_gemm_bias_activation_residual_is_one_contraction_group():
    check_rewrite("fuse", GEMM_EPILOGUE, """\
graph g(%x: f32[batch, 8], %r: f32[batch, 4]) {
  %w: f32[8, 4] = constant() {ref="w"}
  %b: f32[4] = constant() {ref="b"}
  %out: f32[batch, 4] = fused(%x, %w, %b, %r) {kind="contraction"} graph matmul_group(%x: f32[batch, 8], %w: f32[8, 4], %b: f32[4], %r: f32[batch, 4]) {
    %mm: f32[batch, 4] = matmul(%x, %w)
    %biased: f32[batch, 4] = add(%mm, %b)
    %act: f32[batch, 4] = gelu(%biased)
    %out: f32[batch, 4] = add(%act, %r)
    return %out
  }
  return %out
}
""", gemm_weights(), bindings={"batch": 5})


def test_a_value_used_outside_stays_out_of_the_group():
    # %a is returned, so fusing it with %b would write it out anyway: no group
    text = """\
graph g(%x: f32[4]) {
  %a: f32[4] = exp(%x)
  %b: f32[4] = neg(%a)
  return %a, %b
}
"""
    check_rewrite("fuse", text, text)


def test_fan_out_inside_the_group_is_fused():
    # gelu written out: %x feeds three members, all inside one group
    report = check_rewrite("fuse", """\
graph g(%x: f32[8]) {
  %cube: f32[8] = mul(%x, %x)
  %cube_1: f32[8] = mul(%cube, %x)
  %inner: f32[8] = add(%x, %cube_1)
  %t: f32[8] = tanh(%inner)
  %out: f32[8] = mul(%x, %t)
  return %out
}
""", """\
graph g(%x: f32[8]) {
  %out: f32[8] = fused(%x) graph mul_group(%x: f32[8]) {
    %cube: f32[8] = mul(%x, %x)
    %cube_1: f32[8] = mul(%cube, %x)
    %inner: f32[8] = add(%x, %cube_1)
    %t: f32[8] = tanh(%inner)
    %out: f32[8] = mul(%x, %t)
    return %out
  }
  return %out
}
""")
    assert report.counts["nodes_fused"] == 5


def test_no_group_through_an_outside_path():
    # %c reads %t, computed outside from %a: fusing %c with %a would make a cycle
    graph = parse("""\
graph g(%x: f32[2, 3]) {
  %a: f32[2, 3] = exp(%x)
  %t: f32[2, 3] = flip(%a) {axes=[1]}
  %c: f32[2, 3] = add(%a, %t)
  %d: f32[2, 3] = relu(%c)
  return %d
}
""")
    groups = find_groups(graph)
    assert [[n.op for n in g.members] for g in groups] == [["add", "relu"]]


def test_an_anchor_is_never_duplicated():
    # two GEMMs feeding one add: the add joins one of them, the other GEMM stays its own
    graph = parse("""\
graph g(%x: f32[4, 8], %w: f32[8, 8], %v: f32[8, 8]) {
  %p: f32[4, 8] = matmul(%x, %w)
  %q: f32[4, 8] = matmul(%x, %v)
  %s: f32[4, 8] = add(%p, %q)
  return %s
}
""")
    original = copy_graph(graph)
    PassManager("fuse").run(graph)
    anchors = [m.op for n in graph.nodes for m in (n.body.nodes if n.body else [n])]
    assert anchors.count("matmul") == 2
    assert_same_results(original, graph)


RMS_NORM = """\
graph g(%x: f32[batch, 16], %w: f32[16]) {
  %two: f32[] = full() {shape=[], value=2.0}
  %eps: f32[] = full() {shape=[], value=1e-06}
  %sq: f32[batch, 16] = pow(%x, %two)
  %ms: f32[batch, 1] = mean(%sq) {axes=[-1], keepdims=true}
  %ms_eps: f32[batch, 1] = add(%ms, %eps)
  %r: f32[batch, 1] = rsqrt(%ms_eps)
  %n: f32[batch, 16] = mul(%x, %r)
  %out: f32[batch, 16] = mul(%w, %n)
  return %out
}
"""


def test_rms_norm_written_out_is_one_reduction_kernel():
    graph = parse(RMS_NORM)
    original = copy_graph(graph)
    [report] = PassManager("fuse").run(graph)
    fused = [n for n in graph.nodes if n.body is not None]
    assert len(fused) == 1 and fused[0].attrs["kind"] == "reduction"
    # the scalars move inside: the kernel reads immediates (pow(x, 2.0) compiles to x*x)
    assert [n.op for n in fused[0].body.nodes] == [
        "full", "full", "pow", "mean", "add", "rsqrt", "mul", "mul"]
    assert report.counts["kernels_after"] == 1 and len(graph.nodes) == 1
    compiled = kiln_compile(graph, passes="")
    assert compiled.report.kernel_calls == 1
    x = [np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32),
         np.random.default_rng(3).standard_normal(16).astype(np.float32)]
    np.testing.assert_allclose(compiled(*x)[0], interpret(original, x)[0], rtol=1e-5, atol=1e-6)


ATTENTION = """\
graph g(%q: f32[b, 2, 6, 8], %k: f32[b, 2, 6, 8], %v: f32[b, 2, 6, 8], %m: f32[b, 1, 6, 6]) {
  %scale: f32[] = constant() {ref="scale"}
  %kt: f32[b, 2, 8, 6] = transpose(%k) {perm=[0, 1, 3, 2]}
  %s: f32[b, 2, 6, 6] = matmul(%q, %kt)
  %ss: f32[b, 2, 6, 6] = div(%s, %scale)
  %sm: f32[b, 2, 6, 6] = add(%ss, %m)
  %p: f32[b, 2, 6, 6] = softmax(%sm) {axis=-1}
  %o: f32[b, 2, 6, 8] = matmul(%p, %v)
  return %o
}
"""


def test_attention_pattern_becomes_one_attention_kernel():
    constants = {"scale": np.array(np.sqrt(8.0), np.float32)}
    report = check_rewrite("fuse", ATTENTION, """\
graph g(%q: f32[b, 2, 6, 8], %k: f32[b, 2, 6, 8], %v: f32[b, 2, 6, 8], %m: f32[b, 1, 6, 6]) {
  %scale: f32[] = constant() {ref="scale"}
  %attention: f32[b, 2, 6, 8] = scaled_dot_product_attention(%q, %k, %v, %m) {scale=0.3535533966440824}
  return %attention
}
""", constants, bindings={"b": 2})
    assert report.counts["attention_rewritten"] == 1
    graph = parse(ATTENTION, constants)
    original = copy_graph(graph)
    PassManager("fuse").run(graph)
    inputs = example_inputs(graph, {"b": 3}, seed=4)
    np.testing.assert_allclose(kiln_compile(graph)(*inputs)[0], interpret(original, inputs)[0],
                               rtol=1e-5, atol=1e-6)


def test_max_group_bounds_the_group():
    graph = parse("""\
graph g(%x: f32[4]) {
  %a: f32[4] = exp(%x)
  %b: f32[4] = neg(%a)
  %c: f32[4] = relu(%b)
  %d: f32[4] = sigmoid(%c)
  return %d
}
""")
    PassManager("fuse(max_group=2)").run(graph)
    assert [len(n.body.nodes) for n in graph.nodes if n.body is not None] == [2, 2]


def test_gemm_epilogue_compiles_to_one_kernel_and_matches():
    graph = parse(GEMM_EPILOGUE, gemm_weights())
    original = copy_graph(graph)
    PassManager("fuse").run(graph)
    compiled = kiln_compile(graph)
    assert compiled.report.kernel_calls == 1
    for batch in (1, 7):
        inputs = example_inputs(graph, {"batch": batch}, seed=batch)
        np.testing.assert_allclose(compiled(*inputs)[0], interpret(original, inputs)[0],
                                   rtol=1e-5, atol=1e-5)


# --- the benchmark models -------------------------------------------------------------------
def _model(name: str):
    torch.manual_seed(0)
    build, make_inputs, dims, _ = MODELS[name]
    model = build().eval()
    return import_model(model, make_inputs(2, 8), dims)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_models_match_and_compile(name):
    original = _model(name)
    graph = copy_graph(original)
    reports = PassManager("canonicalize,fuse").run(graph)
    fuse = reports[-1]
    assert fuse.counts["kernels_after"] < fuse.counts["kernels_before"]
    assert all(n.body is None or len(n.body.nodes) >= 2 for n in graph.nodes)
    import networkx as nx
    assert nx.is_directed_acyclic_graph(dependency_graph(graph))
    bindings = {s: v for s, v in {"batch": 2, "seq": 8}.items() if s in original.symbols}
    assert_same_results(original, graph, bindings=bindings, rtol=1e-4, atol=2e-5)
    [again] = PassManager("fuse").run(graph)
    assert not again.changed
    compiled = kiln_compile(graph, passes="plan")     # as fused: one kernel per node
    assert compiled.report.kernel_calls == kernel_count(graph)
    for seed, size in enumerate([{"batch": 2, "seq": 8}, {"batch": 1, "seq": 5}]):
        bindings = {s: v for s, v in size.items() if s in original.symbols}
        inputs = example_inputs(original, bindings, seed=seed)
        if name != "resnet":   # token ids within the vocabulary
            inputs = [np.asarray(x % 100) for x in inputs]
        for got, want in zip(compiled(*inputs), interpret(original, inputs), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("text", [
    """\
graph g(%q: f32[2, 4, 16, 8], %k: f32[2, 4, 16, 8], %v: f32[2, 4, 16, 8]) {
  %a: f32[2, 4, 16, 8] = scaled_dot_product_attention(%q, %k, %v) {is_causal=true}
  %b: f32[2, 4, 16, 8] = relu(%a)
  %c: f32[2, 4, 16, 8] = mul(%b, %q)
  return %c
}
""", """\
graph g(%x: f32[batch, 8, 10, 10], %w: f32[16, 8, 3, 3], %bias: f32[16], %r: f32[batch, 16, 10, 10]) {
  %y: f32[batch, 16, 10, 10] = conv(%x, %w, %bias) {strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]}
  %z: f32[batch, 16, 10, 10] = add(%y, %r)
  %out: f32[batch, 16, 10, 10] = relu(%z)
  return %out
}
"""], ids=["attention", "conv"])
def test_anchor_with_epilogue_compiles_to_one_kernel(text):
    graph = parse(text)
    original = copy_graph(graph)
    PassManager("fuse").run(graph)
    [fused] = [n for n in graph.nodes if n.body is not None]
    assert fused.attrs["kind"] in ("attention", "contraction")
    compiled = kiln_compile(graph, passes="")
    assert compiled.report.kernel_calls == 1
    inputs = example_inputs(graph, {"batch": 2}, seed=5)
    np.testing.assert_allclose(compiled(*inputs)[0], interpret(original, inputs)[0],
                               rtol=1e-4, atol=1e-5)


def test_integer_division_stays_a_checked_kernel():
    # inside a group the divisor %d would be an intermediate the kernel cannot check
    text = """\
graph g(%x: i32[4], %y: i32[4]) {
  %d: i32[4] = sub(%y, %x)
  %q: i32[4] = floor_div(%x, %d)
  %out: i32[4] = neg(%q)
  return %out
}
"""
    graph = parse(text)
    PassManager("fuse").run(graph)
    assert [n.op for n in graph.nodes] == ["sub", "floor_div", "neg"]
    compiled = kiln_compile(graph, passes="")
    x = np.array([1, 2, 3, 4], np.int32)
    with pytest.raises(Exception, match="integer division by zero"):
        compiled(x, x.copy())
