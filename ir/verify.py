"""The verifier: checks that a `Graph` is well formed, and says how to fix it when not.

Rules (each error names the node and the rule):
  op-registered     every node's op is in the registry
  attrs             attributes match the op's schema (names, kinds, required)
  arity             the op accepts that many inputs
  defined-before-use every input is a graph input or an output of an earlier node
  single-def        every value is defined exactly once; names are unique
  types             stored output types equal what the op's inference gives
  use-lists         each value's users are exactly the nodes that read it
  constant-table    a constant node's `ref` exists and its array matches the type
  outputs           graph outputs are defined values; the graph has at least one
  graph-name        the graph's name is a NAME of the .kir grammar (so its text parses)
  body              a fused node's body is valid, takes its input types, has no constant/fused nodes
"""
from __future__ import annotations

from ..errors import KilnError, VerifyError
from . import registry
from .dtypes import from_numpy
from .graph import GRAPH_NAME_PATTERN, Graph, Node, Value, body_types
from .types import TensorType


def _fail(graph: Graph, node: Node | None, rule: str, message: str, hint: str = "") -> VerifyError:
    where = f"\n  at: {node.format()}" if node is not None else ""
    if node is not None and node.source:
        where += f"\n  from: {node.source}"
    hint = f"\n  hint: {hint}" if hint else ""
    return VerifyError(f"graph {graph.name}: [{rule}] {message}{where}{hint}",
                       node=node.format() if node is not None else None, rule=rule)


def verify(graph: Graph) -> None:
    """Raise `VerifyError` for the first broken rule; return None for a valid graph."""
    if not isinstance(graph.name, str) or not GRAPH_NAME_PATTERN.match(graph.name):
        raise _fail(graph, None, "graph-name", f"invalid graph name {graph.name!r}",
                    "use letters, digits and '_', not starting with a digit")
    defined: dict[int, Value] = {}
    names: set[str] = set()
    readers: dict[int, list[Node]] = {}

    def define(v: Value, node: Node | None) -> None:
        if id(v) in defined:
            raise _fail(graph, node, "single-def", f"%{v.name} is defined twice")
        if v.name in names:
            raise _fail(graph, node, "single-def", f"two values are named %{v.name}",
                        "rename one of them; value names are unique in a graph")
        defined[id(v)] = v
        names.add(v.name)
        readers[id(v)] = []

    for v in graph.inputs:
        define(v, None)
        if v.producer is not None:
            raise _fail(graph, None, "single-def", f"graph input %{v.name} has a producer node")

    for node in graph.nodes:
        if not registry.has_op(node.op):
            raise _fail(graph, node, "op-registered", f"unknown op '{node.op}'",
                        "check the spelling, or register the op in kiln/ir/ops")
        opdef = registry.get_op(node.op)
        try:
            opdef.check_arity(len(node.inputs))
        except KilnError as e:
            raise _fail(graph, node, "arity", str(e)) from None
        for v in node.inputs:
            if id(v) not in defined:
                raise _fail(graph, node, "defined-before-use",
                            f"%{v.name} is used before it is defined",
                            "nodes must be in topological order; define %"
                            f"{v.name} earlier, or check that it belongs to this graph")
            readers[id(v)].append(node)
        try:
            attrs = opdef.normalize_attrs(node.attrs)
        except KilnError as e:
            raise _fail(graph, node, "attrs", str(e)) from None
        if attrs != node.attrs:
            raise _fail(graph, node, "attrs", "attributes are not in normal form",
                        "build nodes with Graph.add_node, which fills defaults")
        if node.op == "constant":
            expected = _constant_type(graph, node)
        elif registry.HAS_BODY in opdef.traits or node.body is not None:
            expected = _body_types(graph, node)
        else:
            try:
                expected = opdef.infer_types([v.type for v in node.inputs], node.attrs)
            except KilnError as e:
                raise _fail(graph, node, "types", str(e)) from None
        actual = tuple(v.type for v in node.outputs)
        if actual != expected and node.op == "constant":
            raise _fail(graph, node, "constant-table",
                        f"output types {list(actual)} differ from the array's {list(expected)}",
                        f"the constant table entry {node.attrs['ref']!r} was replaced or reshaped")
        if actual != expected:
            raise _fail(graph, node, "types",
                        f"output types {list(actual)} differ from inferred {list(expected)}")
        for v in node.outputs:
            if v.producer is not node:
                raise _fail(graph, node, "single-def", f"%{v.name}'s producer is another node")
            define(v, node)

    if not graph.outputs:
        raise _fail(graph, None, "outputs", "the graph has no outputs")
    for v in graph.outputs:
        if id(v) not in defined:
            raise _fail(graph, None, "outputs", f"output %{v.name} is not defined in the graph")

    for key, v in defined.items():
        if sorted(map(id, v.users)) != sorted(set(map(id, readers[key]))):
            raise _fail(graph, v.producer, "use-lists",
                        f"the users recorded for %{v.name} differ from the nodes that read it",
                        "edit inputs only through Graph methods (replace_all_uses_with, ...)")


def _body_types(graph: Graph, node: Node) -> tuple[TensorType, ...]:
    body = node.body
    if body is None or registry.HAS_BODY not in registry.get_op(node.op).traits:
        raise _fail(graph, node, "body", f"op '{node.op}' " + (
            "needs a body graph" if body is None else "takes no body graph"))
    try:
        verify(body)
    except VerifyError as e:
        raise _fail(graph, node, "body", f"its body is invalid: {e}") from None
    nested = [n for n in body.nodes if n.op == "constant" or n.body is not None]
    if nested:
        raise _fail(graph, node, "body", f"its body holds {nested[0].op} node(s)",
                    "weights enter a fused group as inputs; fused groups do not nest")
    try:
        return body_types([v.type for v in node.inputs], body)
    except KilnError as e:
        raise _fail(graph, node, "body", str(e)) from None


def _constant_type(graph: Graph, node: Node) -> tuple[TensorType, ...]:
    ref = node.attrs["ref"]
    if ref not in graph.constants:
        raise _fail(graph, node, "constant-table", f"constant {ref!r} is not in the constant table",
                    "a .kir file's weights live in the .safetensors file beside it")
    array = graph.constants[ref]
    return (TensorType(tuple(array.shape), from_numpy(array)),)
