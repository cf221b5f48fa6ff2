"""The `fused` op: a node whose body is a subgraph — text round trip, verifier rules,
and the interpreter running the body."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import ParseError, VerifyError
from kiln.ir import Graph, graphs_equal, interpret, parse, print_graph, verify
from kiln.ir.dtypes import dtype
from kiln.ir.types import TensorType
from kiln.testing import assert_roundtrip

TESTED_OPS = {"fused"}
F32 = dtype("f32")

FUSED_MLP = """\
graph mlp(%x: f32[batch, 8]) {
  %w: f32[4, 8] = constant() {ref="w"}
  %b: f32[4] = constant() {ref="b"}
  %out: f32[batch, 4] = fused(%x, %w, %b) {kind="contraction"} loc("model.py:3") graph linear_group(%x: f32[batch, 8], %w: f32[4, 8], %b: f32[4]) {
    %linear: f32[batch, 4] = linear(%x, %w, %b)
    %relu: f32[batch, 4] = relu(%linear) loc("model.py:4")
    return %relu
  }
  return %out
}
"""


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((4, 8)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32)}


def build_fused(kind: str = "contraction") -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", TensorType(("batch", 8), F32))
    w = weights()
    wv, bv = g.add_constant("w", w["w"]), g.add_constant("b", w["b"])
    body = Graph("linear_group")
    args = [body.add_input(v.name, v.type) for v in (x, wv, bv)]
    lin = body.add_node("linear", args).output
    body.set_outputs([body.add_node("relu", [lin]).output])
    node = g.add_node("fused", [x, wv, bv], {"kind": kind}, body=body, output_names=["out"])
    g.set_outputs([node.output])
    return g


def test_fused_text_round_trips():
    assert_roundtrip(FUSED_MLP, constants=weights())
    g = parse(FUSED_MLP, weights())
    assert g.nodes[2].body is not None and [n.op for n in g.nodes[2].body.nodes] == ["linear", "relu"]
    assert g.nodes[2].body.nodes[1].source == "model.py:4"


def test_built_and_parsed_fused_graphs_are_equal():
    built = build_fused()
    verify(built)
    parsed = parse(print_graph(built), built.constants)
    assert graphs_equal(built, parsed)


def test_interpreter_runs_the_body():
    g = build_fused()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    w = g.constants
    expected = np.maximum(x @ w["w"].T + w["b"], 0)
    np.testing.assert_allclose(interpret(g, [x])[0], expected, rtol=1e-6, atol=1e-6)


def test_graphs_with_different_bodies_differ():
    a, b = build_fused(), build_fused()
    relu = b.nodes[-1].body.nodes[-1]
    relu.op = "sigmoid"
    assert not graphs_equal(a, b)


def test_fused_node_needs_a_body():
    g = Graph("g")
    x = g.add_input("x", TensorType((2,), F32))
    with pytest.raises(VerifyError, match="takes a body graph"):
        g.add_node("fused", [x], {})
    with pytest.raises(VerifyError, match="takes no body graph"):
        g.add_node("relu", [x], body=Graph("b"))


def test_verify_rejects_a_body_with_other_input_types():
    g = build_fused()
    g.nodes[-1].body.inputs[0].type = TensorType(("batch", 9), F32)
    with pytest.raises(VerifyError, match=r"\[body\]"):
        verify(g)


def test_verify_rejects_constants_inside_a_body():
    g = build_fused()
    body = g.nodes[-1].body
    body.add_constant("c", np.ones(4, np.float32))
    with pytest.raises(VerifyError, match="constant node"):
        verify(g)


def test_verify_names_the_broken_body_node():
    g = build_fused()
    body = g.nodes[-1].body
    body.nodes[1].outputs[0].type = TensorType(("batch", 5), F32)
    with pytest.raises(VerifyError, match=r"its body is invalid.*\[types\]"):
        verify(g)


def test_parse_requires_the_body():
    text = FUSED_MLP.replace(' graph linear_group(%x: f32[batch, 8], %w: f32[4, 8], %b: f32[4]) {\n'
                             '    %linear: f32[batch, 4] = linear(%x, %w, %b)\n'
                             '    %relu: f32[batch, 4] = relu(%linear) loc("model.py:4")\n'
                             '    return %relu\n  }', "")
    with pytest.raises(ParseError, match="expected the body graph of 'fused'") as e:
        parse(text, weights())
    assert e.value.line == 5


def test_body_scope_does_not_see_outer_values():
    text = FUSED_MLP.replace("linear(%x, %w, %b)", "linear(%x, %w, %bias)")
    with pytest.raises(ParseError, match="%bias is used before it is defined"):
        parse(text, weights())
