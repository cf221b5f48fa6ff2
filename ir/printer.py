"""The `.kir` printer: a `Graph` as text that `ir/parser.py` reads back exactly.

The grammar is written down in `ir/parser.py`. Attributes equal to their
schema default are left out; the parser fills them back in, so
`print_graph(parse(text)) == text` for any printed graph.
"""
from __future__ import annotations

import json
import math
from typing import Any

from . import registry
from .graph import Graph, Node, Value
from .types import TensorType


def format_type(t: TensorType) -> str:
    return str(t)


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def format_attr_value(kind: str, value: Any) -> str:
    if value is None:
        return "none"
    if kind == "int" or kind == "dim":
        return str(value)
    if kind == "float":
        return format_float(value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "str":
        return json.dumps(value)
    if kind == "dtype":
        return value.name
    if kind in ("ints", "dims"):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if kind == "floats":
        return "[" + ", ".join(format_float(v) for v in value) + "]"
    raise AssertionError(f"unknown attribute kind {kind}")


def _is_default(attr: registry.Attr, value: Any) -> bool:
    if attr.required:
        return False
    default = attr.default
    if attr.kind == "float" and isinstance(value, float) and isinstance(default, float):
        if math.isnan(value) or math.isnan(default):
            return math.isnan(value) and math.isnan(default)
        return value == default and math.copysign(1, value) == math.copysign(1, default)
    return type(value) is type(default) and value == default


def format_attrs(node: Node) -> str:
    """`{name=value, ...}` in schema order, defaults left out. A node the verifier
    rejects (unknown op or attribute, value of the wrong kind) still formats, so
    that the error can quote it; such text does not parse back."""
    opdef = registry.get_op(node.op) if registry.has_op(node.op) else None
    schema = opdef.attr_by_name if opdef is not None else {}
    parts = []
    for attr in schema.values():
        value = node.attrs.get(attr.name)
        if attr.name not in node.attrs or _is_default(attr, value):
            continue
        try:
            text = format_attr_value(attr.kind, value)
        except (TypeError, ValueError, AttributeError):
            text = repr(value)
        parts.append(f"{attr.name}={text}")
    parts += [f"{name}={value!r}" for name, value in node.attrs.items() if name not in schema]
    return " {" + ", ".join(parts) + "}" if parts else ""


def format_value_def(v: Value) -> str:
    return f"%{v.name}: {format_type(v.type)}"


def format_node(node: Node, *, locations: bool = True, indent: str = "") -> str:
    """The node's text; a fused node's body follows on the next lines, indented by
    two more spaces than `indent` (the node's own indentation)."""
    outs = ", ".join(format_value_def(v) for v in node.outputs)
    args = ", ".join(f"%{v.name}" for v in node.inputs)
    loc = f" loc({json.dumps(node.source)})" if locations and node.source is not None else ""
    body = ""
    if node.body is not None:
        body = " " + "\n".join(_graph_lines(node.body, locations, indent))
    return f"{outs} = {node.op}({args}){format_attrs(node)}{loc}{body}"


def _graph_lines(graph: Graph, locations: bool, indent: str) -> list[str]:
    inner = indent + "  "
    lines = [f"graph {graph.name}({', '.join(format_value_def(v) for v in graph.inputs)}) {{"]
    lines += [inner + format_node(n, locations=locations, indent=inner) for n in graph.nodes]
    lines.append(inner + "return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append(indent + "}")
    return lines


def print_graph(graph: Graph, *, locations: bool = True) -> str:
    """The graph's `.kir` text (ends with a newline)."""
    return "\n".join(_graph_lines(graph, locations, "")) + "\n"
