"""The verifier: each rule of kiln/ir/verify.py, triggered by a deliberately broken
graph. Each case checks the error class, its `rule`, and the node it names."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from kiln.errors import VerifyError
from kiln.ir import Graph, GraphBuilder, Node, Value, parse, tensor, verify

F4 = tensor("f32", 4)


def small():
    """x -> relu -> neg -> output, with a constant w added in."""
    b = GraphBuilder("small")
    x = b.input("x", F4)
    w = b.constant("w", np.ones(4, np.float32))
    r = b.relu(x)
    n = b.neg(b.add(r, w))
    return b.build(n)


def node_named(graph: Graph, name: str) -> Node:
    return graph.value(name).producer


def check(graph: Graph, rule: str, message: str, node: str | None) -> VerifyError:
    with pytest.raises(VerifyError) as info:
        verify(graph)
    err = info.value
    assert type(err) is VerifyError
    assert err.rule == rule, str(err)
    assert f"graph {graph.name}: [{rule}] {message}" in str(err)
    assert err.node == node
    if node is not None:
        assert f"\n  at: {node}" in str(err)
    return err


def test_a_good_graph_verifies():
    assert verify(small()) is None


def test_op_registered():
    g = small()
    r = node_named(g, "relu")
    r.op = "relux"
    err = check(g, "op-registered", "unknown op 'relux'", "%relu: f32[4] = relux(%x)")
    assert "hint: check the spelling" in str(err)


def test_attrs_unknown_name():
    g = small()
    node_named(g, "relu").attrs["alpha"] = 0.5
    check(g, "attrs", "op 'relu' has no attribute(s) ['alpha']; it takes: none",
          "%relu: f32[4] = relu(%x) {alpha=0.5}")


def test_attrs_wrong_kind():
    b = GraphBuilder("t")
    x = b.input("x", tensor("f32", 2, 3))
    g = b.build(b.transpose(x, perm=[1, 0]))
    g.nodes[0].attrs["perm"] = 5              # an int where a list of ints belongs
    check(g, "attrs", "op 'transpose' attribute 'perm': expected ints, got 5",
          "%transpose: f32[3, 2] = transpose(%x) {perm=5}")


def test_attrs_missing_required():
    b = GraphBuilder("t")
    x = b.input("x", tensor("f32", 2, 3))
    g = b.build(b.transpose(x, perm=[1, 0]))
    del g.nodes[0].attrs["perm"]
    check(g, "attrs", "op 'transpose' requires attribute 'perm' (ints)",
          "%transpose: f32[3, 2] = transpose(%x)")


def test_attrs_not_in_normal_form():
    s = Graph("s")
    x = s.add_input("x", F4)
    node = s.add_node("softmax", [x])
    s.set_outputs(node.outputs)
    del node.attrs["axis"]                     # the default is no longer filled in
    err = check(s, "attrs", "attributes are not in normal form",
                "%softmax: f32[4] = softmax(%x)")
    assert "hint: build nodes with Graph.add_node" in str(err)


def test_arity():
    g = small()
    r = node_named(g, "relu")
    x = g.inputs[0]
    r.inputs = (x, x)
    check(g, "arity", "op 'relu' takes 1 input(s) (x), got 2", "%relu: f32[4] = relu(%x, %x)")


def test_arity_of_a_constant():
    g = small()
    w = node_named(g, "w")
    w.inputs = (g.inputs[0],)
    g.inputs[0].users.append(w)
    check(g, "arity", "op 'constant' takes 0 input(s) (), got 1",
          '%w: f32[4] = constant(%x) {ref="w"}')


def test_defined_before_use():
    g = small()
    relu, add = node_named(g, "relu"), node_named(g, "add")
    i, j = g.nodes.index(relu), g.nodes.index(add)
    g.nodes[i], g.nodes[j] = add, relu
    err = check(g, "defined-before-use", "%relu is used before it is defined",
                "%add: f32[4] = add(%relu, %w)")
    assert "nodes must be in topological order" in str(err)


def test_defined_before_use_value_of_another_graph():
    g = small()
    stranger = Value("y", F4)
    neg = node_named(g, "neg")
    neg.inputs = (stranger,)
    stranger.users.append(neg)
    err = check(g, "defined-before-use", "%y is used before it is defined",
                "%neg: f32[4] = neg(%y)")
    assert "check that it belongs to this graph" in str(err)


def test_single_def_same_value_twice():
    g = small()
    relu = node_named(g, "relu")
    g.nodes.insert(g.nodes.index(relu) + 1, relu)   # the same node listed twice
    check(g, "single-def", "%relu is defined twice", "%relu: f32[4] = relu(%x)")


def test_single_def_two_values_with_one_name():
    g = small()
    node_named(g, "neg").outputs[0].name = "relu"
    err = check(g, "single-def", "two values are named %relu", "%relu: f32[4] = neg(%add)")
    assert "value names are unique in a graph" in str(err)


def test_single_def_graph_input_with_a_producer():
    g = small()
    g.inputs[0].producer = node_named(g, "relu")
    check(g, "single-def", "graph input %x has a producer node", None)


def test_single_def_output_produced_by_another_node():
    g = small()
    relu, neg = node_named(g, "relu"), node_named(g, "neg")
    relu.outputs[0].producer = neg
    check(g, "single-def", "%relu's producer is another node", "%relu: f32[4] = relu(%x)")


def test_types_disagree_with_inference():
    g = small()
    relu = node_named(g, "relu")
    relu.outputs[0].type = tensor("f32", 5)
    check(g, "types", "output types [f32[5]] differ from inferred [f32[4]]",
          "%relu: f32[5] = relu(%x)")


def test_types_inference_refuses_the_inputs():
    b = GraphBuilder("two")
    x, y = b.input("x", F4), b.input("y", F4)
    g = b.build(b.add(x, y))
    g.inputs[1].type = tensor("i64", 4)
    check(g, "types", "op 'add': inputs must share one dtype, got [float32, int64]",
          "%add: f32[4] = add(%x, %y)")


def test_types_wrong_number_of_outputs():
    b = GraphBuilder("s")
    x = b.input("x", F4)
    first, second = b.split(x, axis=0, sizes=[2, 2])
    g = b.build(first)
    node = first.producer
    node.outputs = (first,)
    check(g, "types", "output types [f32[2]] differ from inferred [f32[2], f32[2]]",
          "%split: f32[2] = split(%x) {axis=0, sizes=[2, 2]}")


def test_types_node_names_its_source():
    g = small()
    relu = node_named(g, "relu")
    relu.source = "model.py:12 in forward"
    relu.outputs[0].type = tensor("f16", 4)
    err = check(g, "types", "output types [f16[4]] differ", "%relu: f16[4] = relu(%x)")
    assert "\n  from: model.py:12 in forward" in str(err)


def test_use_lists_missing_user():
    g = small()
    g.inputs[0].users.clear()
    err = check(g, "use-lists", "the users recorded for %x differ from the nodes that read it", None)
    assert "edit inputs only through Graph methods" in str(err)


def test_use_lists_stale_user():
    g = small()
    relu = node_named(g, "relu")
    relu.outputs[0].users.append(node_named(g, "neg"))   # neg does not read %relu
    check(g, "use-lists", "the users recorded for %relu differ", "%relu: f32[4] = relu(%x)")


def test_use_lists_input_edited_behind_the_graphs_back():
    g = small()
    node_named(g, "neg").inputs = (g.inputs[0],)       # users of %add and %x not updated
    check(g, "use-lists", "the users recorded for %x differ", None)


def test_constant_table_missing_entry():
    g = small()
    del g.constants["w"]
    err = check(g, "constant-table", "constant 'w' is not in the constant table",
                '%w: f32[4] = constant() {ref="w"}')
    assert "the .safetensors file beside it" in str(err)


def test_constant_table_array_no_longer_matches():
    g = small()
    g.constants["w"] = np.ones(5, np.float32)
    check(g, "constant-table", "output types [f32[4]] differ from the array's [f32[5]]",
          '%w: f32[4] = constant() {ref="w"}')


def test_outputs_none():
    g = small()
    g.set_outputs([])
    check(g, "outputs", "the graph has no outputs", None)


def test_outputs_not_defined():
    g = small()
    g.set_outputs([Value("ghost", F4)])
    check(g, "outputs", "output %ghost is not defined in the graph", None)


def test_graph_name():
    g = small()
    g.name = "my-model"                       # the text would not parse back
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert info.value.rule == "graph-name" and info.value.node is None
    assert str(info.value) == ("graph my-model: [graph-name] invalid graph name 'my-model'\n"
                               "  hint: use letters, digits and '_', not starting with a digit")


def test_every_documented_rule_is_tested():
    """The rule list in verify's docstring and the rules these tests trigger agree."""
    v = importlib.import_module("kiln.ir.verify")   # `kiln.ir.verify` is the function
    documented = {line.split()[0] for line in v.__doc__.split("Rules")[1].splitlines()[1:]
                  if line.startswith("  ") and line.split()}
    tested = {"op-registered", "attrs", "arity", "defined-before-use", "single-def", "types",
              "use-lists", "constant-table", "outputs", "graph-name", "body"}
    assert documented == tested


def test_body_rule_names_the_fused_node():
    body = parse("graph b(%x: f32[4]) {\n  %r: f32[4] = relu(%x)\n  return %r\n}\n")
    g = Graph("g")
    x = g.add_input("x", tensor("f32", 4))
    node = g.add_node("fused", [x], body=body)
    g.set_outputs(node.outputs)
    verify(g)
    body.inputs[0].type = tensor("f32", 5)
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert info.value.rule == "body" and "fused(%x)" in str(info.value)
