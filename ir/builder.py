"""`GraphBuilder`: write kiln graphs by hand, in tests and in the fuzzer.

    b = GraphBuilder("mlp")
    x = b.input("x", tensor("f32", "batch", 784))
    w = b.constant("w", np.zeros((256, 784), np.float32))
    y = b.relu(b.linear(x, w))          # any registered op, by name
    graph = b.build(y)                  # sets the outputs and verifies

Every op in the registry is a method: `b.<op>(*inputs, name=None, **attrs)`
returns the output `Value` (a tuple for multi-output ops).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import registry
from .graph import Graph, Value
from .types import TensorType
from .verify import verify


class GraphBuilder:
    def __init__(self, name: str = "main"):
        self.graph = Graph(name)

    def input(self, name: str, type: TensorType) -> Value:
        return self.graph.add_input(name, type)

    def constant(self, name: str, array: np.ndarray) -> Value:
        return self.graph.add_constant(name, array)

    def op(self, op: str, *inputs: Value, name: str | None = None, source: str | None = None,
           **attrs: Any) -> Value | tuple[Value, ...]:
        node = self.graph.add_node(op, inputs, attrs, name=name, source=source)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def __getattr__(self, op: str):
        if op.startswith("_") or not registry.has_op(op):
            raise AttributeError(f"GraphBuilder has no method {op!r} and no op {op!r} is registered")
        return lambda *inputs, **kw: self.op(op, *inputs, **kw)

    def build(self, *outputs: Value) -> Graph:
        self.graph.set_outputs(outputs)
        verify(self.graph)
        return self.graph
