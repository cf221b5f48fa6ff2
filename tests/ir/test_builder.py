"""GraphBuilder: every registered op is a method; build() sets outputs and verifies."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import InterpretError, TypeInferenceError, VerifyError
from kiln.ir import GraphBuilder, all_ops, interpret, print_graph, tensor


def test_builds_the_docstring_mlp():
    b = GraphBuilder("mlp")
    x = b.input("x", tensor("f32", "batch", 784))
    w = b.constant("w", np.zeros((256, 784), np.float32))
    y = b.relu(b.linear(x, w))
    graph = b.build(y)
    assert print_graph(graph) == (
        "graph mlp(%x: f32[batch, 784]) {\n"
        "  %w: f32[256, 784] = constant() {ref=\"w\"}\n"
        "  %linear: f32[batch, 256] = linear(%x, %w)\n"
        "  %relu: f32[batch, 256] = relu(%linear)\n"
        "  return %relu\n"
        "}\n")
    out, = interpret(graph, [np.ones((3, 784), np.float32)])
    assert out.shape == (3, 256) and not out.any()


def test_every_registered_op_is_a_method():
    b = GraphBuilder()
    for name in all_ops():
        assert callable(getattr(b, name)), name


def test_unknown_op_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no method 'frobnicate' and no op 'frobnicate'"):
        GraphBuilder().frobnicate
    with pytest.raises(AttributeError):
        GraphBuilder()._private


def test_attributes_name_and_source():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", 2, 3))
    t = b.transpose(x, perm=[1, 0], name="xt", source="model.py:7")
    assert t.name == "xt" and t.type == tensor("f32", 3, 2)
    assert t.producer.source == "model.py:7"
    assert t.producer.attrs == {"perm": (1, 0)}   # lists are normalized to tuples


def test_multi_output_op_returns_a_tuple():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", 6))
    parts = b.split(x, axis=0, sizes=[1, 2, 3])
    assert isinstance(parts, tuple) and [p.type.shape for p in parts] == [(1,), (2,), (3,)]
    graph = b.build(*parts)
    assert graph.outputs == list(parts)


def test_op_by_name():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", 2))
    y = b.op("mul", x, x, name="sq")
    assert y.name == "sq" and y.producer.op == "mul"


def test_bad_attributes_are_refused_when_the_node_is_made():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", 2, 3))
    with pytest.raises(TypeInferenceError, match=r"op 'softmax' has no attribute\(s\) \['dim'\]; "
                                                 "it takes: axis"):
        b.softmax(x, dim=1)
    with pytest.raises(TypeInferenceError, match="op 'transpose' requires attribute 'perm'"):
        b.transpose(x)
    with pytest.raises(TypeInferenceError, match="op 'softmax' attribute 'axis': expected int"):
        b.softmax(x, axis="1")
    with pytest.raises(TypeInferenceError, match="'approximate': 'erf' is not one of"):
        b.gelu(x, approximate="erf")
    with pytest.raises(TypeInferenceError, match="op 'reshape' attribute 'shape': expected dims"):
        b.reshape(x, shape="batch")   # a string is not a list of dims


def test_type_errors_name_the_op():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", 2, 3))
    i = b.input("i", tensor("i64", 2, 3))
    with pytest.raises(TypeInferenceError, match=r"op 'add': inputs must share one dtype"):
        b.add(x, i)
    with pytest.raises(TypeInferenceError, match=r"op 'matmul': contracted dims differ"):
        b.matmul(x, x)


def test_build_verifies():
    b = GraphBuilder()
    b.input("x", tensor("f32", 2))
    with pytest.raises(VerifyError, match="the graph has no outputs"):
        b.build()


def test_interpreting_a_symbol_no_input_binds():
    b = GraphBuilder()
    x = b.input("x", tensor("f32", "2*n"))            # n appears only inside an expression
    graph = b.build(b.relu(x))
    with pytest.raises(InterpretError) as info:
        interpret(graph, [np.zeros(4, np.float32)])
    assert str(info.value) == ("input %x: dim '2*n' needs values for symbol(s) ['n']; no input "
                               "binds it alone (bind each symbol by an axis of its own)")
    b = GraphBuilder()
    b.input("x", tensor("f32", 2))
    graph = b.build(b.arange(end="seq"))
    with pytest.raises(InterpretError, match=r"^while executing %arange: i64\[seq\] = "
                                             r"arange\(\) \{end=seq\}: dim 'seq' needs values "
                                             r"for symbol\(s\) \['seq'\], which no graph input "
                                             r"binds$"):
        interpret(graph, [np.zeros(2, np.float32)])
