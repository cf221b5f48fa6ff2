"""The Graph: value naming, use-lists kept by Graph methods, editing, equality."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import TypeInferenceError, VerifyError
from kiln.ir import Graph, graphs_equal, tensor, verify

F4 = tensor("f32", 4)


def users(value):
    return [n.outputs[0].name for n in value.users]


@pytest.fixture
def g():
    graph = Graph("g")
    graph.add_input("x", F4)
    return graph


# --- names -----------------------------------------------------------------------------------
def test_names_are_made_unique_with_a_suffix(g):
    x = g.inputs[0]
    a = g.add_node("add", [x, x]).output
    b = g.add_node("add", [a, x]).output
    c = g.add_node("add", [b, x]).output
    assert [a.name, b.name, c.name] == ["add", "add_1", "add_2"]


def test_unique_name_continues_a_numbered_hint(g):
    g.add_node("relu", [g.inputs[0]], name="h_1")
    assert g.unique_name("h_1") == "h_2"
    assert g.unique_name("h") == "h"


def test_unique_name_sanitizes_the_hint(g):
    assert g.unique_name("layer[0]/conv") == "layer_0__conv"
    assert g.unique_name(".hidden") == "hidden"
    assert g.unique_name("") == "v"


def test_multi_output_names_are_distinct(g):
    x = g.inputs[0]
    first = g.add_node("split", [x], {"axis": 0, "sizes": [2, 2]})
    second = g.add_node("split", [x], {"axis": 0, "sizes": [1, 3]})
    names = [v.name for v in first.outputs + second.outputs]
    assert names == ["split", "split_1", "split_2", "split_3"]
    g.set_outputs(first.outputs + second.outputs)
    verify(g)


def test_explicit_names_are_kept_or_refused(g):
    node = g.add_node("relu", [g.inputs[0]], output_names=["encoder.act"])
    assert node.output.name == "encoder.act"
    with pytest.raises(VerifyError, match=r"value name %encoder.act is already defined") as info:
        g.add_node("relu", [g.inputs[0]], output_names=["encoder.act"])
    assert info.value.rule == "unique-names"
    with pytest.raises(VerifyError, match="invalid value name 'a b'") as info:
        g.add_input("a b", F4)
    assert info.value.rule == "value-name"


@pytest.mark.parametrize("name", ["my-model", "1st", "a.b", "", "main graph"])
def test_graph_names_must_parse(name):
    with pytest.raises(VerifyError, match=f"invalid graph name {name!r}") as info:
        Graph(name)
    assert info.value.rule == "graph-name"


def test_name_is_free_again_after_erase(g):
    node = g.add_node("relu", [g.inputs[0]])
    g.erase_node(node)
    assert g.add_node("relu", [g.inputs[0]]).output.name == "relu"


# --- use-lists -------------------------------------------------------------------------------
def test_add_node_records_users(g):
    x = g.inputs[0]
    r = g.add_node("relu", [x]).output
    s = g.add_node("add", [x, r]).output
    assert users(x) == ["relu", "add"]
    assert users(r) == ["add"]
    assert s.producer.inputs == (x, r)


def test_an_input_read_twice_has_one_user(g):
    x = g.inputs[0]
    node = g.add_node("add", [x, x])
    assert x.users == [node]
    g.set_outputs([node.output])
    verify(g)
    g.set_outputs([x])
    g.erase_node(node)
    assert x.users == []


def test_replace_all_uses_with(g):
    x = g.inputs[0]
    a = g.add_node("relu", [x]).output
    b = g.add_node("neg", [x]).output
    c = g.add_node("mul", [a, a]).output
    d = g.add_node("add", [a, b]).output
    g.set_outputs([a, d])
    g.replace_all_uses_with(a, b)
    assert c.producer.inputs == (b, b) and d.producer.inputs == (b, b)
    assert a.users == []
    assert sorted(users(b)) == ["add", "mul"]
    assert g.outputs == [b, d]        # graph outputs follow too
    verify(g)


def test_replace_all_uses_with_itself_changes_nothing(g):
    x = g.inputs[0]
    a = g.add_node("relu", [x]).output
    n = g.add_node("neg", [a]).output
    g.set_outputs([n])
    g.replace_all_uses_with(a, a)
    assert users(a) == ["neg"]
    verify(g)


def test_erase_node_updates_users_and_names(g):
    x = g.inputs[0]
    a = g.add_node("relu", [x]).output
    dead = g.add_node("neg", [a])
    g.set_outputs([a])
    g.erase_node(dead)
    assert a.users == [] and dead not in g.nodes
    assert "neg" not in [v.name for v in g.values()]
    verify(g)


def test_erase_of_a_used_node_fails(g):
    x = g.inputs[0]
    a = g.add_node("relu", [x])
    n = g.add_node("neg", [a.output])
    g.set_outputs([n.output])
    with pytest.raises(VerifyError, match=r"cannot erase %relu: f32\[4\] = relu\(%x\): "
                                          r"%relu is still used") as info:
        g.erase_node(a)
    assert info.value.rule == "erase-used"
    assert info.value.node == "%relu: f32[4] = relu(%x)"
    assert a in g.nodes and users(a.output) == ["neg"]


def test_erase_of_a_graph_output_fails(g):
    a = g.add_node("relu", [g.inputs[0]])
    g.set_outputs([a.output])
    with pytest.raises(VerifyError, match="still used"):
        g.erase_node(a)


def test_erasing_the_last_reader_of_a_constant_drops_its_array(g):
    w = g.add_constant("w", np.ones(4, np.float32))
    assert g.constants.keys() == {"w"} and w.name == "w"
    g.set_outputs([g.inputs[0]])
    g.erase_node(w.producer)
    assert g.constants == {}


# --- building --------------------------------------------------------------------------------
def test_add_node_infers_and_fills_default_attributes(g):
    node = g.add_node("softmax", [g.inputs[0]])
    assert node.attrs == {"axis": -1}
    assert node.output.type == F4


def test_add_node_at_an_index(g):
    x = g.inputs[0]
    last = g.add_node("relu", [x])
    first = g.add_node("neg", [x], index=0)
    assert g.nodes == [first, last]


def test_add_node_refuses_bad_input(g):
    with pytest.raises(VerifyError, match="unknown op 'frobnicate'"):
        g.add_node("frobnicate", [g.inputs[0]])
    with pytest.raises(TypeInferenceError, match="is not a kiln Value"):
        g.add_node("relu", ["x"])
    with pytest.raises(VerifyError, match="use Graph.add_constant"):
        g.add_node("constant", [], {"ref": "w"})
    with pytest.raises(TypeInferenceError, match=r"op 'relu' takes 1 input\(s\) \(x\), got 2"):
        g.add_node("relu", [g.inputs[0], g.inputs[0]])
    with pytest.raises(VerifyError, match="has 2 outputs, got 1 names"):
        g.add_node("split", [g.inputs[0]], {"axis": 0, "sizes": [2, 2]}, output_names=["a"])
    assert g.nodes == []


def test_add_constant_holds_the_array_by_reference(g):
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    v = g.add_constant("table", array)
    assert g.constants["table"] is array
    assert v.type == tensor("i64", 2, 3)
    assert g.constant_array(v.producer) is array
    with pytest.raises(VerifyError, match="constant 'table' already exists"):
        g.add_constant("table", array)


def test_node_output_needs_exactly_one_output(g):
    node = g.add_node("split", [g.inputs[0]], {"axis": 0, "sizes": [2, 2]})
    with pytest.raises(VerifyError, match="has 2 outputs, not one"):
        node.output


# --- queries and equality ---------------------------------------------------------------------
def test_value_lookup_and_symbols():
    graph = Graph()
    graph.add_input("x", tensor("f32", "batch", "seq"))
    graph.add_input("y", tensor("f32", 3))
    assert graph.value("y") is graph.inputs[1]
    assert graph.symbols == {"batch", "seq"}
    with pytest.raises(KeyError, match="no value %z in graph main"):
        graph.value("z")


def test_repr_is_the_printed_graph(g):
    g.set_outputs([g.add_node("relu", [g.inputs[0]]).output])
    assert repr(g) == str(g) == "graph g(%x: f32[4]) {\n  %relu: f32[4] = relu(%x)\n  return %relu\n}\n"


def _pad_graph(value, weight):
    graph = Graph()
    x = graph.add_input("x", F4)
    w = graph.add_constant("w", weight)
    p = graph.add_node("pad", [x], {"pads": [1, 0], "value": value}).output
    graph.set_outputs([p, w])
    return graph


def test_graphs_equal():
    w = np.array([1.0, np.nan], np.float32)
    assert graphs_equal(_pad_graph(1.0, w), _pad_graph(1.0, w.copy()))
    assert graphs_equal(_pad_graph(float("nan"), w), _pad_graph(float("nan"), w))  # NaN == NaN
    assert not graphs_equal(_pad_graph(0.0, w), _pad_graph(-0.0, w))
    assert not graphs_equal(_pad_graph(1.0, w), _pad_graph(2.0, w))
    other = np.array([1.0, 2.0], np.float32)
    assert not graphs_equal(_pad_graph(1.0, w), _pad_graph(1.0, other))
    assert graphs_equal(_pad_graph(1.0, w), _pad_graph(1.0, other), compare_constants=False)
    assert not graphs_equal(_pad_graph(1.0, w), _pad_graph(1.0, w.astype(np.float64)),
                            compare_constants=False)   # the constant's type differs
