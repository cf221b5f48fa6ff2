"""Canonicalization, one rule per test: `.kir` before and after (compared
structurally), the interpreter's results unchanged, and a second run changing
nothing (`check_rewrite`)."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.ir import dtype, interpret, parse
from kiln.passes import PassManager
from kiln.passes.simplify import lossless

from tests.passes.pass_testing import check_rewrite

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --- constant folding ------------------------------------------------------------------------
def test_fold_transpose_of_a_constant_into_the_constant():
    w = rand(3, 2)
    report = check_rewrite("constant_fold", """\
graph g(%x: f32[2, 3]) {
  %w: f32[3, 2] = constant() {ref="w"}
  %wt: f32[2, 3] = transpose(%w) {perm=[1, 0]}
  %y: f32[2, 3] = add(%x, %wt)
  return %y
}
""", """\
graph g(%x: f32[2, 3]) {
  %wt_1: f32[2, 3] = constant() {ref="wt"}
  %y: f32[2, 3] = add(%x, %wt_1)
  return %y
}
""", {"w": w})
    assert report.counts == {"constants_folded": 1, "dce": 2}


def test_fold_a_uniform_result_into_full():
    check_rewrite("constant_fold", """\
graph g(%x: f32[4]) {
  %a: f32[4] = full() {shape=[4], value=2.0}
  %b: f32[] = full() {shape=[], value=3.0}
  %c: f32[4] = mul(%a, %b)
  %y: f32[4] = add(%x, %c)
  return %y
}
""", """\
graph g(%x: f32[4]) {
  %c_1: f32[4] = full() {shape=[4], value=6.0}
  %y: f32[4] = add(%x, %c_1)
  return %y
}
""")


def test_fold_leaves_symbolic_results_and_inputs_alone():
    text = """\
graph g(%x: i64[n]) {
  %a: i64[n] = arange() {end=n}
  %one: i64[] = full() {shape=[], value=1.0, dtype=i64}
  %b: i64[n] = add(%a, %one)
  %y: i64[n] = mul(%x, %b)
  return %y
}
"""
    check_rewrite("constant_fold", text, text, bindings={"n": 5})


def test_fold_size_cap():
    text = """\
graph g(%x: f32[1024, 1024]) {
  %r: f32[1024] = constant() {ref="r"}
  %e: f32[1024, 1024] = expand(%r) {shape=[1024, 1024]}
  %y: f32[1024, 1024] = add(%x, %e)
  return %y
}
"""
    r = rand(1024)
    check_rewrite("constant_fold", text, text, {"r": r})   # 4 MiB result from 4 KiB: stays
    report = check_rewrite("constant_fold(limit_bytes=4194304)", text, """\
graph g(%x: f32[1024, 1024]) {
  %e_1: f32[1024, 1024] = constant() {ref="e"}
  %y: f32[1024, 1024] = add(%x, %e_1)
  return %y
}
""", {"r": r})
    assert report.counts["constants_folded"] == 1


# --- CSE and DCE -----------------------------------------------------------------------------
def test_cse_merges_equal_nodes_whatever_their_names():
    report = check_rewrite("cse", """\
graph g(%x: f32[4], %y: f32[4]) {
  %a: f32[4] = add(%x, %y)
  %b: f32[4] = add(%y, %x)
  %c: f32[4] = mul(%a, %b)
  %d: f32[4] = sub(%x, %y)
  %e: f32[4] = sub(%y, %x)
  %s0: f32[4] = softmax(%c) {axis=0}
  %s1: f32[4] = softmax(%c) {axis=-1}
  %s2: f32[4] = softmax(%c) {axis=0}
  %f: f32[4] = add(%d, %e)
  %h: f32[4] = add(%f, %s0)
  %i: f32[4] = add(%h, %s1)
  %j: f32[4] = add(%i, %s2)
  return %j
}
""", """\
graph g(%x: f32[4], %y: f32[4]) {
  %a: f32[4] = add(%x, %y)
  %c: f32[4] = mul(%a, %a)
  %d: f32[4] = sub(%x, %y)
  %e: f32[4] = sub(%y, %x)
  %s0: f32[4] = softmax(%c) {axis=0}
  %s1: f32[4] = softmax(%c) {axis=-1}
  %f: f32[4] = add(%d, %e)
  %h: f32[4] = add(%f, %s0)
  %i: f32[4] = add(%h, %s1)
  %j: f32[4] = add(%i, %s0)
  return %j
}
""")
    assert report.counts == {"nodes_merged": 2}


def test_cse_merges_equal_constants_and_their_users():
    w = rand(4)
    check_rewrite("cse", """\
graph g(%x: f32[4]) {
  %w1: f32[4] = constant() {ref="w1"}
  %w2: f32[4] = constant() {ref="w2"}
  %w3: f32[4] = constant() {ref="w3"}
  %a: f32[4] = mul(%x, %w1)
  %b: f32[4] = mul(%x, %w2)
  %c: f32[4] = mul(%x, %w3)
  %d: f32[4] = add(%a, %b)
  %y: f32[4] = add(%d, %c)
  return %y
}
""", """\
graph g(%x: f32[4]) {
  %w1: f32[4] = constant() {ref="w1"}
  %w3: f32[4] = constant() {ref="w3"}
  %a: f32[4] = mul(%x, %w1)
  %c: f32[4] = mul(%x, %w3)
  %d: f32[4] = add(%a, %a)
  %y: f32[4] = add(%d, %c)
  return %y
}
""", {"w1": w, "w2": w.copy(), "w3": w + 1})


def test_dce_removes_dead_nodes_and_their_weights():
    graph_text = """\
graph g(%x: f32[4], %unused: f32[2]) {
  %w: f32[4] = constant() {ref="w"}
  %dead: f32[4] = mul(%x, %w)
  %dead2: f32[4] = relu(%dead)
  %y: f32[4] = relu(%x)
  return %y
}
"""
    report = check_rewrite("dce", graph_text, """\
graph g(%x: f32[4], %unused: f32[2]) {
  %y: f32[4] = relu(%x)
  return %y
}
""", {"w": rand(4)})
    assert report.counts == {"nodes_removed": 3}
    graph = parse(graph_text, {"w": rand(4)})
    PassManager("dce").run(graph)
    assert graph.constants == {}


# --- algebraic simplification ----------------------------------------------------------------
@pytest.mark.parametrize("node, rule", [
    ("%y: f32[2, 3] = reshape(%x) {shape=[2, 3]}", "identity_layout"),
    ("%y: f32[2, 3] = expand(%x) {shape=[2, 3]}", "identity_layout"),
    ("%y: f32[2, 3] = cast(%x) {dtype=f32}", "identity_layout"),
    ("%y: f32[2, 3] = transpose(%x) {perm=[0, 1]}", "identity_transpose"),
    ("%y: f32[2, 3] = slice(%x) {axis=1, end=3}", "identity_slice"),
    ("%y: f32[2, 3] = pad(%x) {pads=[0, 0, 0, 0]}", "identity_pad"),
    ("%y: f32[2, 3] = concat(%x) {axis=0}", "identity_concat"),
])
def test_identity_ops_disappear(node, rule):
    report = check_rewrite("simplify", f"""\
graph g(%x: f32[2, 3]) {{
  {node}
  %z: f32[2, 3] = relu(%y)
  return %z
}}
""", """\
graph g(%x: f32[2, 3]) {
  %z: f32[2, 3] = relu(%x)
  return %z
}
""")
    assert report.counts[rule] == 1


@pytest.mark.parametrize("expr, rule", [
    ("mul(%x, %one)", "mul_one"), ("mul(%one, %x)", "mul_one"),
    ("add(%x, %zero)", "add_zero"), ("add(%zero, %x)", "add_zero"),
    ("sub(%x, %zero)", "sub_zero"), ("div(%x, %one)", "div_one"), ("pow(%x, %one)", "pow_one"),
])
def test_neutral_elements(expr, rule):
    report = check_rewrite("simplify", f"""\
graph g(%x: f32[2, 3]) {{
  %one: f32[3] = constant() {{ref="one"}}
  %zero: f32[] = full() {{shape=[], value=0.0}}
  %y: f32[2, 3] = {expr}
  return %y
}}
""", """\
graph g(%x: f32[2, 3]) {
  return %x
}
""", {"one": np.ones(3, np.float32)})
    assert report.counts[rule] == 1


@pytest.mark.parametrize("expr, out", [
    ("mul(%x, %one)", "f32[2, 3]"),     # broadcasting widens x: not an identity
    ("sub(%zero, %x)", "f32[3]"),       # 0 - x is -x
    ("mul(%x, %two)", "f32[3]"),
])
def test_non_neutral_operands_stay(expr, out):
    text = f"""\
graph g(%x: f32[3]) {{
  %one: f32[2, 3] = full() {{shape=[2, 3], value=1.0}}
  %two: f32[3] = full() {{shape=[3], value=2.0}}
  %zero: f32[] = full() {{shape=[], value=0.0}}
  %y: {out} = {expr}
  return %y
}}
"""
    expected = parse(text)
    PassManager("dce").run(expected)
    from kiln.ir import print_graph
    check_rewrite("simplify", text, print_graph(expected))


def test_view_chains_become_one_reshape():
    report = check_rewrite("simplify", """\
graph g(%x: f32[n]) {
  %a: f32[n, 1] = unsqueeze(%x) {axes=[1]}
  %b: f32[n, 1, 1] = unsqueeze(%a) {axes=[2]}
  %c: f32[1, n, 1, 1] = reshape(%b) {shape=[1, n, 1, 1]}
  %y: f32[1, n, 1, 1] = relu(%c)
  return %y
}
""", """\
graph g(%x: f32[n]) {
  %c_1: f32[1, n, 1, 1] = reshape(%x) {shape=[1, n, 1, 1]}
  %y: f32[1, n, 1, 1] = relu(%c_1)
  return %y
}
""", bindings={"n": 3})
    assert report.counts["view_of_view"] == 2


def test_reshape_of_reshape_back_to_the_input_is_nothing():
    check_rewrite("simplify", """\
graph g(%x: f32[2, 6]) {
  %a: f32[3, 4] = reshape(%x) {shape=[3, 4]}
  %b: f32[2, 6] = reshape(%a) {shape=[2, 6]}
  return %b
}
""", """\
graph g(%x: f32[2, 6]) {
  return %x
}
""")


def test_transpose_chains():
    check_rewrite("simplify", """\
graph g(%x: f32[2, 3, 4]) {
  %a: f32[3, 2, 4] = transpose(%x) {perm=[1, 0, 2]}
  %b: f32[4, 2, 3] = transpose(%a) {perm=[2, 1, 0]}
  %c: f32[2, 3, 4] = transpose(%b) {perm=[1, 2, 0]}
  %d: f32[3, 4, 2] = transpose(%c) {perm=[1, 2, 0]}
  return %d
}
""", """\
graph g(%x: f32[2, 3, 4]) {
  %d: f32[3, 4, 2] = transpose(%x) {perm=[1, 2, 0]}
  return %d
}
""")


def test_cast_chains_merge_only_when_the_inner_cast_is_lossless():
    check_rewrite("simplify", """\
graph g(%x: f16[4], %i: i32[4], %z: f32[4]) {
  %a: f32[4] = cast(%x) {dtype=f32}
  %b: f64[4] = cast(%a) {dtype=f64}
  %c: i64[4] = cast(%i) {dtype=i64}
  %d: i32[4] = cast(%c) {dtype=i32}
  %e: f16[4] = cast(%a) {dtype=f16}
  %lossy: f16[4] = cast(%z) {dtype=f16}
  %f: f64[4] = cast(%lossy) {dtype=f64}
  return %b, %d, %e, %f
}
""", """\
graph g(%x: f16[4], %i: i32[4], %z: f32[4]) {
  %b_1: f64[4] = cast(%x) {dtype=f64}
  %lossy: f16[4] = cast(%z) {dtype=f16}
  %f: f64[4] = cast(%lossy) {dtype=f64}
  return %b_1, %i, %x, %f
}
""")


@pytest.mark.parametrize("src, dst, expected", [
    ("bool", "i8", True), ("i8", "i16", True), ("u8", "i8", False), ("i32", "i64", True),
    ("i64", "i32", False), ("i16", "f16", False), ("i8", "f16", True), ("i32", "f32", False),
    ("i32", "f64", True), ("i64", "f64", False), ("f16", "f32", True), ("bf16", "f32", True),
    ("f16", "bf16", False), ("bf16", "f16", False), ("f32", "f64", True), ("f64", "f32", False),
    ("f32", "i64", False), ("i8", "bool", False),
])
def test_lossless(src, dst, expected):
    assert lossless(dtype(src), dtype(dst)) is expected


def test_matmul_with_a_transposed_weight_becomes_linear():
    check_rewrite("simplify", """\
graph g(%x: f32[b, 4], %w: f32[3, 4]) {
  %wt: f32[4, 3] = transpose(%w) {perm=[1, 0]}
  %y: f32[b, 3] = matmul(%x, %wt)
  return %y
}
""", """\
graph g(%x: f32[b, 4], %w: f32[3, 4]) {
  %y_1: f32[b, 3] = linear(%x, %w)
  return %y_1
}
""", bindings={"b": 5})


def test_matmul_with_a_constant_weight_becomes_linear_with_a_transposed_constant():
    w = rand(4, 3)
    check_rewrite("simplify", """\
graph g(%x: f32[2, b, 4]) {
  %w: f32[4, 3] = constant() {ref="w"}
  %y: f32[2, b, 3] = matmul(%x, %w)
  return %y
}
""", """\
graph g(%x: f32[2, b, 4]) {
  %w.T: f32[3, 4] = constant() {ref="w.T"}
  %y_1: f32[2, b, 3] = linear(%x, %w.T)
  return %y_1
}
""", {"w": w}, bindings={"b": 3})


def test_bias_add_and_reshapes_fold_into_linear():
    w, bias = rand(3, 4), rand(3)
    report = check_rewrite("simplify", """\
graph g(%x: f32[b, s, 4]) {
  %w: f32[3, 4] = constant() {ref="w"}
  %bias: f32[3] = constant() {ref="bias"}
  %flat: f32[b*s, 4] = reshape(%x) {shape=[b*s, 4]}
  %mm: f32[b*s, 3] = linear(%flat, %w)
  %add: f32[b*s, 3] = add(%bias, %mm)
  %y: f32[b, s, 3] = reshape(%add) {shape=[b, s, 3]}
  return %y
}
""", """\
graph g(%x: f32[b, s, 4]) {
  %w: f32[3, 4] = constant() {ref="w"}
  %bias: f32[3] = constant() {ref="bias"}
  %y_2: f32[b, s, 3] = linear(%x, %w, %bias)
  return %y_2
}
""", {"w": w, "bias": bias}, bindings={"b": 2, "s": 3})
    assert report.counts["linear_bias"] == 1 and report.counts["reshape_before_linear"] == 1


def test_bias_add_stays_when_the_linear_has_another_reader():
    text = """\
graph g(%x: f32[2, 4], %w: f32[3, 4], %bias: f32[3]) {
  %mm: f32[2, 3] = linear(%x, %w)
  %add: f32[2, 3] = add(%mm, %bias)
  %y: f32[2, 3] = mul(%add, %mm)
  return %y
}
"""
    check_rewrite("simplify", text, text)


# --- batch-norm folding ----------------------------------------------------------------------
BN_PARAMS = {"mean": rand(4), "var": np.abs(rand(4)) + 0.5, "gamma": rand(4), "beta": rand(4)}


def test_batch_norm_folds_into_conv():
    report = check_rewrite("fold_batch_norm", """\
graph g(%x: f32[n, 3, 8, 8]) {
  %w: f32[4, 3, 3, 3] = constant() {ref="w"}
  %cb: f32[4] = constant() {ref="cb"}
  %mean: f32[4] = constant() {ref="mean"}
  %var: f32[4] = constant() {ref="var"}
  %gamma: f32[4] = constant() {ref="gamma"}
  %beta: f32[4] = constant() {ref="beta"}
  %c: f32[n, 4, 8, 8] = conv(%x, %w, %cb) {strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]}
  %bn: f32[n, 4, 8, 8] = batch_norm(%c, %mean, %var, %gamma, %beta) {eps=0.001}
  return %bn
}
""", """\
graph g(%x: f32[n, 3, 8, 8]) {
  %w.bn: f32[4, 3, 3, 3] = constant() {ref="w.bn"}
  %w.bn_bias: f32[4] = constant() {ref="w.bn_bias"}
  %bn_1: f32[n, 4, 8, 8] = conv(%x, %w.bn, %w.bn_bias) {strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]}
  return %bn_1
}
""", {"w": rand(4, 3, 3, 3), "cb": rand(4), **BN_PARAMS}, bindings={"n": 2}, rtol=1e-4,
        atol=1e-5)
    assert report.counts["batch_norm_folded"] == 1


def test_batch_norm_without_affine_folds_into_a_2d_linear():
    check_rewrite("fold_batch_norm", """\
graph g(%x: f32[n, 5]) {
  %w: f32[4, 5] = constant() {ref="w"}
  %mean: f32[4] = constant() {ref="mean"}
  %var: f32[4] = constant() {ref="var"}
  %l: f32[n, 4] = linear(%x, %w)
  %bn: f32[n, 4] = batch_norm(%l, %mean, %var)
  return %bn
}
""", """\
graph g(%x: f32[n, 5]) {
  %w.bn: f32[4, 5] = constant() {ref="w.bn"}
  %w.bn_bias: f32[4] = constant() {ref="w.bn_bias"}
  %bn_1: f32[n, 4] = linear(%x, %w.bn, %w.bn_bias)
  return %bn_1
}
""", {"w": rand(4, 5), "mean": BN_PARAMS["mean"], "var": BN_PARAMS["var"]}, bindings={"n": 3},
        rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text", [
    # the conv's output has another reader: folding would compute the conv twice
    """\
graph g(%x: f32[1, 3, 4, 4]) {
  %w: f32[4, 3, 1, 1] = constant() {ref="w"}
  %mean: f32[4] = constant() {ref="mean"}
  %var: f32[4] = constant() {ref="var"}
  %c: f32[1, 4, 4, 4] = conv(%x, %w) {strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1]}
  %bn: f32[1, 4, 4, 4] = batch_norm(%c, %mean, %var)
  %y: f32[1, 4, 4, 4] = add(%bn, %c)
  return %y
}
""",
    # a 3-D linear: batch norm's axis 1 is not the linear's features
    """\
graph g(%x: f32[2, 4, 4]) {
  %w: f32[4, 4] = constant() {ref="w"}
  %mean: f32[4] = constant() {ref="mean"}
  %var: f32[4] = constant() {ref="var"}
  %l: f32[2, 4, 4] = linear(%x, %w)
  %bn: f32[2, 4, 4] = batch_norm(%l, %mean, %var)
  return %bn
}
""",
    # statistics are not constants
    """\
graph g(%x: f32[2, 4], %mean: f32[4]) {
  %w: f32[4, 4] = constant() {ref="w"}
  %var: f32[4] = constant() {ref="var"}
  %l: f32[2, 4] = linear(%x, %w)
  %bn: f32[2, 4] = batch_norm(%l, %mean, %var)
  return %bn
}
"""])
def test_batch_norm_stays(text):
    constants = {"w": rand(4, 3, 1, 1) if "conv" in text else rand(4, 4),
                 "mean": BN_PARAMS["mean"], "var": BN_PARAMS["var"]}
    check_rewrite("fold_batch_norm", text, text, {k: v for k, v in constants.items()
                                                  if f'ref="{k}"' in text})


# --- canonicalize: everything to a fixed point ----------------------------------------------
def test_canonicalize_combines_the_rules():
    w = rand(4, 3)
    report = check_rewrite("canonicalize", """\
graph g(%x: f32[b, 4]) {
  %w: f32[4, 3] = constant() {ref="w"}
  %w2: f32[4, 3] = constant() {ref="w2"}
  %t: f32[3, 4] = transpose(%w) {perm=[1, 0]}
  %tt: f32[4, 3] = transpose(%t) {perm=[1, 0]}
  %a: f32[b, 3] = matmul(%x, %tt)
  %b: f32[b, 3] = matmul(%x, %w2)
  %one: f32[] = full() {shape=[], value=1.0}
  %half: f32[] = full() {shape=[], value=0.5}
  %two: f32[] = full() {shape=[], value=2.0}
  %c: f32[] = mul(%half, %two)
  %s: f32[b, 3] = add(%a, %b)
  %y: f32[b, 3] = mul(%s, %c)
  %dead: f32[b, 3] = relu(%y)
  return %y
}
""", """\
graph g(%x: f32[b, 4]) {
  %t_1: f32[3, 4] = constant() {ref="t"}
  %a_1: f32[b, 3] = linear(%x, %t_1)
  %s: f32[b, 3] = add(%a_1, %a_1)
  return %s
}
""", {"w": w, "w2": w.copy()}, bindings={"b": 2})
    assert report.counts["cse"] >= 1 and report.counts["mul_one"] == 1


def test_cse_merges_equal_scalar_constants_and_keeps_different_ones():
    from kiln.compiler import copy_graph
    from kiln.passes.cse import eliminate_common_subexpressions
    graph = parse("""\
graph g(%x: f32[3]) {
  %a: f32[] = constant() {ref="a"}
  %b: f32[] = constant() {ref="b"}
  %c: f32[] = constant() {ref="c"}
  %p: f32[3] = mul(%x, %a)
  %q: f32[3] = mul(%x, %b)
  %r: f32[3] = mul(%x, %c)
  %s: f32[3] = add(%p, %q)
  %t: f32[3] = add(%s, %r)
  return %t
}
""", {"a": np.array(2.0, np.float32), "b": np.array(2.0, np.float32),
      "c": np.array(3.0, np.float32)})
    original = copy_graph(graph)
    assert eliminate_common_subexpressions(graph) == 2   # %b's constant, then %q
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(interpret(graph, [x])[0], interpret(original, [x])[0])
