"""The kiln graph: `Value`s in SSA form, `Node`s that apply registered ops, and
the `Graph` that orders them and owns the constant (weight) table.

A two-layer MLP imported from torch prints as (see `print_graph`):

    graph mlp(%x: f32[batch, 784]) {
      %fc1.weight: f32[256, 784] = constant() {ref="fc1.weight"}
      %fc1.bias: f32[256] = constant() {ref="fc1.bias"}
      %linear: f32[batch, 256] = linear(%x, %fc1.weight, %fc1.bias)
      %relu: f32[batch, 256] = relu(%linear)
      return %relu
    }

Every value is produced by exactly one node or is a graph input. Weights live in
`Graph.constants` (name -> NumPy array, held by reference, never copied into the
text); a `constant` node names its table entry with its `ref` attribute.
Only `Graph` methods edit use-lists: `add_node`, `replace_all_uses_with`,
`erase_node`, `set_outputs`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import TypeInferenceError, VerifyError
from . import registry
from .dtypes import from_numpy
from .types import TensorType

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]*$")
GRAPH_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(eq=False)
class Value:
    """An SSA value: a graph input or one output of one node."""
    name: str
    type: TensorType
    producer: "Node | None" = None   # None for graph inputs
    users: list["Node"] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One application of a registered op: `outputs = op(inputs) {attrs}`.

    `source` is where the op came from (a torch source line, an ONNX node name),
    quoted in errors and printed as `loc("...")`. `body` is the subgraph of a fused
    group (`fused` op, see `ir/ops/fused.py`): its inputs are this node's inputs and
    its outputs this node's outputs.
    """
    op: str
    inputs: tuple[Value, ...]
    attrs: dict[str, Any]
    outputs: tuple[Value, ...] = ()
    source: str | None = None
    body: "Graph | None" = None

    @property
    def opdef(self) -> registry.OpDef:
        return registry.get_op(self.op)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise VerifyError(f"node {self.format()} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def format(self) -> str:
        """The node's `.kir` line (without location)."""
        from .printer import format_node
        return format_node(self, locations=False)

    def __repr__(self) -> str:
        return f"<Node {self.format()}>"


class Graph:
    """Ordered nodes over SSA values, named inputs and outputs, and a constant table."""

    def __init__(self, name: str = "main"):
        if not GRAPH_NAME_PATTERN.match(name):
            raise VerifyError(f"invalid graph name {name!r}: use letters, digits and '_', "
                              "not starting with a digit", rule="graph-name")
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, np.ndarray] = {}
        self._names: set[str] = set()

    # --- naming ----------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        """A fresh value name from `hint`: `add`, then `add_1`, `add_2`, ..."""
        return self._fresh(hint, self._names)

    @staticmethod
    def _fresh(hint: str, taken: set[str] | frozenset[str]) -> str:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", hint).lstrip(".") or "v"
        if base not in taken:
            return base
        match = re.fullmatch(r"(.*)_(\d+)", base)
        stem, i = (match.group(1), int(match.group(2))) if match else (base, 0)
        while f"{stem}_{i + 1}" in taken:
            i += 1
        return f"{stem}_{i + 1}"

    def _claim(self, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise VerifyError(f"invalid value name {name!r}: use letters, digits, '_' and '.'",
                              rule="value-name")
        if name in self._names:
            raise VerifyError(f"value name %{name} is already defined", rule="unique-names")
        self._names.add(name)
        return name

    # --- building --------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self._claim(name), type)
        self.inputs.append(value)
        return value

    def add_constant(self, name: str, array: np.ndarray, *, value_name: str | None = None,
                     source: str | None = None) -> Value:
        """Store `array` (by reference) under `name` and add the `constant` node that reads it.

        Its value is named `value_name` exactly, or `name` made unique."""
        if name in self.constants:
            raise VerifyError(f"constant {name!r} already exists", rule="unique-constants")
        array = np.asarray(array)
        self.constants[name] = array
        node = Node("constant", (), {"ref": name}, source=source)
        out = Value(self._claim(value_name or self.unique_name(name)),
                    TensorType(tuple(array.shape), from_numpy(array)), node)
        node.outputs = (out,)
        self.nodes.append(node)
        return out

    def add_node(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Any] | None = None,
                 *, name: str | None = None, output_types: Sequence[TensorType] | None = None,
                 output_names: Sequence[str] | None = None, source: str | None = None,
                 index: int | None = None, body: "Graph | None" = None) -> Node:
        """Append (or insert at `index`) a node; output types are inferred unless given
        (a node with a `body` has its body's output types).

        Output names are `output_names` exactly, or come from `name` (default: the op
        name) made unique.
        """
        opdef = registry.get_op(op)
        if op == "constant":
            raise VerifyError("use Graph.add_constant to add a constant", rule="constant-table")
        for v in inputs:
            if not isinstance(v, Value):
                raise TypeInferenceError(f"op '{op}': input {v!r} is not a kiln Value")
        attrs = opdef.normalize_attrs(attrs or {})
        if (body is not None) != (registry.HAS_BODY in opdef.traits):
            raise VerifyError(f"op '{op}' " + ("takes a body graph" if body is None else
                                               "takes no body graph"), rule="body")
        if output_types is None:
            output_types = (body_types([v.type for v in inputs], body) if body is not None
                            else opdef.infer_types([v.type for v in inputs], attrs))
        node = Node(op, tuple(inputs), attrs, source=source, body=body)
        hint = name or op
        if output_names is None:  # fresh names, also distinct from each other
            taken = set(self._names)
            output_names = []
            for i in range(len(output_types)):
                output_names.append(self._fresh(hint if i == 0 else f"{hint}_{i}", taken))
                taken.add(output_names[-1])
        if len(output_names) != len(output_types):
            raise VerifyError(f"op '{op}' has {len(output_types)} outputs, "
                              f"got {len(output_names)} names", rule="types")
        outs = [Value(self._claim(n), t, node) for n, t in zip(output_names, output_types)]
        node.outputs = tuple(outs)
        for v in inputs:
            if node not in v.users:  # add(%x, %x): one user, read twice
                v.users.append(node)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def set_outputs(self, outputs: Iterable[Value]) -> None:
        self.outputs = list(outputs)

    # --- editing ---------------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Make every user of `old` (and the graph outputs) use `new` instead."""
        if old is new:
            return
        for user in old.users:
            user.inputs = tuple(new if v is old else v for v in user.inputs)
            if user not in new.users:
                new.users.append(user)
        old.users.clear()
        self.outputs = [new if v is old else v for v in self.outputs]

    def rename(self, value: Value, name: str) -> None:
        """Give `value` (of this graph) the free name `name`."""
        if value.name == name:
            return
        self._claim(name)
        self._names.discard(value.name)
        value.name = name

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for out in node.outputs:
            if out.users or any(out is o for o in self.outputs):
                raise VerifyError(f"cannot erase {node.format()}: %{out.name} is still used",
                                  node=node.format(), rule="erase-used")
        self.nodes.remove(node)
        for v in node.inputs:
            if node in v.users:
                v.users.remove(node)
        for out in node.outputs:
            self._names.discard(out.name)
        if node.op == "constant" and not any(
                n.op == "constant" and n.attrs["ref"] == node.attrs["ref"] for n in self.nodes):
            self.constants.pop(node.attrs["ref"], None)

    # --- queries ---------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(f"no value %{name} in graph {self.name}")

    def constant_array(self, node: Node) -> np.ndarray:
        return self.constants[node.attrs["ref"]]

    @property
    def symbols(self) -> set[str]:
        """The symbolic dims of the graph's inputs."""
        return set().union(*(v.type.symbols for v in self.inputs)) if self.inputs else set()

    def __repr__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    __str__ = __repr__


def body_types(input_types: Sequence[TensorType], body: Graph) -> tuple[TensorType, ...]:
    """The output types of a node with `body` on inputs of `input_types`: the body's
    output types, once its inputs are seen to match (same count, same types)."""
    declared = [v.type for v in body.inputs]
    if list(input_types) != declared:
        raise TypeInferenceError(f"body graph {body.name} takes {declared}, "
                                 f"the node gives it {list(input_types)}")
    return tuple(v.type for v in body.outputs)


def attr_key(value: Any) -> Any:
    """An attribute value for comparison: NaN equals NaN, -0.0 differs from 0.0."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, tuple):
        return tuple(attr_key(v) for v in value)
    return value


def graphs_equal(a: Graph, b: Graph, *, compare_constants: bool = True) -> bool:
    """Structural equality: same names, types, ops, attributes, sources, and
    (optionally) constant arrays equal element for element."""
    def sig(g: Graph) -> tuple:
        return (g.name,
                tuple((v.name, v.type) for v in g.inputs),
                tuple((n.op, tuple(v.name for v in n.inputs),
                       tuple(sorted((k, attr_key(v)) for k, v in n.attrs.items())),
                       tuple((v.name, v.type) for v in n.outputs), n.source,
                       sig(n.body) if n.body is not None else None) for n in g.nodes),
                tuple(v.name for v in g.outputs))
    if sig(a) != sig(b):
        return False
    if not compare_constants:
        return True
    if a.constants.keys() != b.constants.keys():
        return False
    return all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
               for x, y in ((a.constants[k], b.constants[k]) for k in a.constants))
