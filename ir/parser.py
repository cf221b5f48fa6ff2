"""The `.kir` parser, and `save`/`load` of a graph with its weights.

Grammar (EBNF; whitespace and newlines separate tokens; `#` starts a comment
that runs to the end of the line):

    graph      ::= "graph" NAME "(" [value-def ("," value-def)*] ")" "{" node* return "}"
    value-def  ::= VALUE ":" type
    type       ::= DTYPE "[" [dim ("," dim)*] "]"
    dim        ::= INT | EXPR                  (EXPR: an integer expression over symbols,
                                                e.g. batch*seq, floor((h - 1)/2) + 1)
    node       ::= value-def ("," value-def)* "=" OP "(" [VALUE ("," VALUE)*] ")" [attrs] [loc]
                   [graph]                     (the body: only, and always, for a fused node)
    attrs      ::= "{" attr ("," attr)* "}"
    attr       ::= NAME "=" attr-value         (the op's schema gives the kind)
    attr-value ::= INT | FLOAT | "true" | "false" | STRING | DTYPE | "none"
                 | "[" [attr-value ("," attr-value)*] "]" | dim
    loc        ::= "loc" "(" STRING ")"
    return     ::= "return" VALUE ("," VALUE)*
    VALUE      ::= "%" [A-Za-z0-9_.]+
    FLOAT      ::= a Python float literal | "inf" | "-inf" | "nan"
    STRING     ::= a JSON string

Weights are not in the text: a `constant` node's `ref` names an entry of the
constant table, which `load` reads from the `.safetensors` file beside the `.kir`
file. `print_graph(parse(text)) == text` for every printed graph.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import KilnError, ParseError
from . import registry, symbolic
from .dtypes import ALL_DTYPES, from_numpy
from .graph import Graph, Value, body_types
from .types import TensorType

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"%([A-Za-z0-9_][A-Za-z0-9_.]*)")
_INT = re.compile(r"-?\d+(?![\d.eE])")
_FLOAT = re.compile(r"-?(?:inf|nan|\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?)")
_SPACE = re.compile(r"(?:\s|#[^\n]*)+")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
_DTYPES = {d.name: d for d in ALL_DTYPES}


class _Parser:
    def __init__(self, text: str, filename: str, constants: Mapping[str, np.ndarray] | None):
        self.text, self.filename, self.pos = text, filename, 0
        self.constants = constants
        self.graph: Graph | None = None
        self.scope: dict[str, Value] = {}

    # --- low level -------------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> ParseError:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        start = self.text.rfind("\n", 0, pos) + 1
        end = self.text.find("\n", pos)
        source_line = self.text[start:end if end >= 0 else len(self.text)]
        return ParseError(message, line=line, column=pos - start + 1, source_line=source_line,
                          filename=self.filename)

    def skip(self) -> None:
        m = _SPACE.match(self.text, self.pos)
        if m:
            self.pos = m.end()

    def peek(self, literal: str) -> bool:
        self.skip()
        return self.text.startswith(literal, self.pos)

    def parse_optional_literal(self, literal: str) -> bool:
        if self.peek(literal):
            self.pos += len(literal)
            return True
        return False

    def parse_optional_keyword(self, word: str) -> bool:
        """A keyword (graph, return, loc) not followed by more name characters."""
        self.skip()
        end = self.pos + len(word)
        if self.text.startswith(word, self.pos) and not _NAME_CHAR.match(self.text, end):
            self.pos = end
            return True
        return False

    def expect(self, literal: str, what: str | None = None) -> None:
        if not self.parse_optional_literal(literal):
            raise self.error(f"expected {what or repr(literal)}, found {self.found()}")

    def found(self) -> str:
        self.skip()
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos:self.pos + 12].split("\n")[0])

    def match(self, pattern: re.Pattern, what: str) -> re.Match:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}, found {self.found()}")
        self.pos = m.end()
        return m

    # --- rules -----------------------------------------------------------------------
    def parse_graph(self) -> Graph:
        """A whole `.kir` text: one graph, then nothing but whitespace and comments."""
        self.skip()
        start = self.pos
        if not self.parse_optional_keyword("graph"):
            raise self.error(f"expected 'graph' at the start of a .kir file, found {self.found()}")
        self.pos = start
        graph = self.parse_graph_def()
        self.skip()
        if self.pos != len(self.text):
            raise self.error(f"unexpected text after the graph: {self.found()}")
        return graph

    def parse_graph_def(self) -> Graph:
        """graph ::= "graph" NAME "(" [value-def ("," value-def)*] ")" "{" node* return "}"

        A body graph (of a fused node) has a scope of its own: it sees only its inputs."""
        if not self.parse_optional_keyword("graph"):
            raise self.error(f"expected 'graph', found {self.found()}")
        outer = self.graph, self.scope
        self.graph = graph = Graph(self.match(_NAME, "a graph name").group())
        self.scope = {}
        self.expect("(")
        if not self.parse_optional_literal(")"):
            while True:
                pos = self.skip() or self.pos
                name, type_ = self.parse_value_def()
                self.define(name, pos)
                self.scope[name] = graph.add_input(name, type_)
                if self.parse_optional_literal(")"):
                    break
                self.expect(",", "',' or ')' after a graph input")
        self.expect("{")
        while not self.parse_optional_keyword("return"):
            if self.peek("}") or self.pos >= len(self.text):
                raise self.error("expected a node or 'return' before the end of the graph")
            self.parse_node()
        outputs = [self.parse_use()]
        while self.parse_optional_literal(","):
            outputs.append(self.parse_use())
        graph.set_outputs(outputs)
        self.expect("}", "'}' after the return line")
        self.graph, self.scope = outer
        return graph

    def parse_value_def(self) -> tuple[str, TensorType]:
        """value-def ::= VALUE ":" type"""
        name = self.match(_VALUE, "a value name like %x").group(1)
        self.expect(":", "':' and a type after the value name")
        return name, self.parse_type()

    def parse_type(self) -> TensorType:
        """type ::= DTYPE "[" [dim ("," dim)*] "]" """
        self.skip()
        pos = self.pos
        name = self.match(_NAME, "a dtype (f32, i64, bool, ...)").group()
        if name not in _DTYPES:
            raise self.error(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}", pos)
        self.expect("[", "'[' and the shape")
        dims: list[symbolic.Dim] = []
        if not self.parse_optional_literal("]"):
            while True:
                self.skip()
                dim_pos = self.pos
                dims.append(self.parse_dim(stop=",]"))
                if isinstance(dims[-1], int) and dims[-1] < 0:
                    raise self.error(f"expected a dim >= 0, found {dims[-1]}", dim_pos)
                if self.parse_optional_literal("]"):
                    break
                self.expect(",", "',' or ']' in the shape")
        return TensorType(tuple(dims), _DTYPES[name])

    def parse_dim(self, stop: str) -> symbolic.Dim:
        """dim ::= INT | EXPR   (EXPR runs to the first `stop` character outside parentheses)"""
        self.skip()
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (c in stop or c == "\n"):
                break
            self.pos += 1
        raw = self.text[start:self.pos].strip()
        if not raw:
            raise self.error("expected a dim (an integer or a symbol expression)", start)
        if re.fullmatch(r"-?\d+", raw):
            return int(raw)
        try:
            return symbolic.canonical(raw)
        except (ValueError, TypeError) as e:
            raise self.error(str(e), start) from None

    def parse_use(self) -> Value:
        self.skip()
        pos = self.pos
        name = self.match(_VALUE, "a value like %x").group(1)
        if name not in self.scope:
            raise self.error(f"%{name} is used before it is defined", pos)
        return self.scope[name]

    def define(self, name: str, pos: int) -> None:
        if name in self.scope:
            raise self.error(f"%{name} is defined twice", pos)

    def parse_node(self) -> None:
        """node ::= value-def ("," value-def)* "=" OP "(" [VALUE ("," VALUE)*] ")" [attrs] [loc]
                  [graph]"""
        graph = self.graph
        assert graph is not None
        defs: list[tuple[str, TensorType, int]] = []
        while True:
            self.skip()
            pos = self.pos
            name, type_ = self.parse_value_def()
            self.define(name, pos)
            if any(name == d[0] for d in defs):
                raise self.error(f"%{name} is defined twice", pos)
            defs.append((name, type_, pos))
            if not self.parse_optional_literal(","):
                break
        self.expect("=", "'=' after the node's results")
        op_pos = self.skip() or self.pos
        op = self.match(_NAME, "an op name").group()
        if not registry.has_op(op):
            raise self.error(f"unknown op '{op}'", op_pos)
        opdef = registry.get_op(op)
        self.expect("(", f"'(' after op '{op}'")
        inputs: list[Value] = []
        if not self.parse_optional_literal(")"):
            while True:
                inputs.append(self.parse_use())
                if self.parse_optional_literal(")"):
                    break
                self.expect(",", "',' or ')' in the input list")
        attrs = self.parse_attrs(opdef) if self.peek("{") else {}
        source = None
        if self.parse_optional_keyword("loc"):
            self.expect("(")
            source = self.parse_string()
            self.expect(")")
        if op == "constant":
            if inputs:
                raise self.error("a constant takes no inputs", op_pos)
            self.add_constant(defs, attrs, source, op_pos)
            return
        body = None
        if registry.HAS_BODY in opdef.traits:
            self.skip()
            body_pos = self.pos
            if not self.peek("graph"):
                raise self.error(f"expected the body graph of '{op}' ('graph NAME(...) {{...}}'), "
                                 f"found {self.found()}")
            body = self.parse_graph_def()
        try:
            node_attrs = opdef.normalize_attrs(attrs)
            if body is None:
                inferred = opdef.infer_types([v.type for v in inputs], node_attrs)
            else:
                opdef.check_arity(len(inputs))
                inferred = body_types([v.type for v in inputs], body)
        except KilnError as e:
            raise self.error(str(e), op_pos if body is None else body_pos) from None
        declared = tuple(t for _, t, _ in defs)
        if declared != inferred:
            raise self.error(f"declared result type(s) {list(declared)} differ from what "
                             f"'{op}' infers: {list(inferred)}", defs[0][2])
        node = graph.add_node(op, inputs, node_attrs, output_types=declared,
                              output_names=[n for n, _, _ in defs], source=source, body=body)
        for v in node.outputs:
            self.scope[v.name] = v

    def add_constant(self, defs, attrs, source, pos) -> None:
        graph = self.graph
        assert graph is not None
        if len(defs) != 1 or set(attrs) != {"ref"}:
            raise self.error("a constant has one result and exactly the attribute 'ref'", pos)
        name, declared, def_pos = defs[0]
        ref = attrs["ref"]
        if self.constants is None or ref not in self.constants:
            raise self.error(f"no data for constant {ref!r}: weights live in the .safetensors "
                             "file beside the .kir file (or pass constants= to parse)", pos)
        array = self.constants[ref]
        actual = TensorType(tuple(array.shape), from_numpy(array))
        if actual != declared:
            raise self.error(f"constant {ref!r} is declared {declared} but its data is {actual}",
                             def_pos)
        if ref in graph.constants:
            raise self.error(f"constant {ref!r} is already read by another constant node", pos)
        value = graph.add_constant(ref, array, value_name=name, source=source)
        self.scope[name] = value

    def parse_attrs(self, opdef: registry.OpDef) -> dict[str, Any]:
        """attrs ::= "{" attr ("," attr)* "}"   attr ::= NAME "=" attr-value"""
        self.expect("{")
        attrs: dict[str, Any] = {}
        while True:
            pos = self.skip() or self.pos
            name = self.match(_NAME, "an attribute name").group()
            schema = opdef.attr_by_name.get(name)
            if schema is None:
                known = ", ".join(opdef.attr_by_name) or "none"
                raise self.error(f"op '{opdef.name}' has no attribute '{name}' (it takes: {known})",
                                 pos)
            if name in attrs:
                raise self.error(f"attribute '{name}' is given twice", pos)
            self.expect("=", f"'=' after attribute '{name}'")
            attrs[name] = self.parse_attr_value(schema)
            if self.parse_optional_literal("}"):
                return attrs
            self.expect(",", "',' or '}' in the attributes")

    def parse_attr_value(self, schema: registry.Attr) -> Any:
        self.skip()
        if schema.optional and self.text.startswith("none", self.pos):
            self.pos += 4
            return None
        kind = schema.kind
        if kind in ("ints", "floats", "dims"):
            self.expect("[", f"'[' to start the {kind} list of '{schema.name}'")
            items: list[Any] = []
            if not self.parse_optional_literal("]"):
                while True:
                    items.append(self.parse_scalar(kind[:-1], stop=",]"))
                    if self.parse_optional_literal("]"):
                        break
                    self.expect(",", "',' or ']' in the list")
            return tuple(items)
        return self.parse_scalar(kind, stop=",}")

    def parse_scalar(self, kind: str, stop: str) -> Any:
        if kind == "int":
            return int(self.match(_INT, "an integer").group())
        if kind == "float":
            self.skip()
            pos = self.pos
            m = _FLOAT.match(self.text, self.pos) or _INT.match(self.text, self.pos)
            if not m:
                raise self.error(f"expected a number, found {self.found()}", pos)
            self.pos = m.end()
            return float(m.group())
        if kind == "bool":
            word = self.match(re.compile(r"true|false"), "true or false").group()
            return word == "true"
        if kind == "str":
            return self.parse_string()
        if kind == "dtype":
            self.skip()
            pos = self.pos
            name = self.match(_NAME, "a dtype").group()
            if name not in _DTYPES:
                raise self.error(f"unknown dtype {name!r}", pos)
            return _DTYPES[name]
        if kind == "dim":
            return self.parse_dim(stop=stop)
        raise AssertionError(kind)

    def parse_string(self) -> str:
        self.skip()
        if not self.text.startswith('"', self.pos):
            raise self.error(f"expected a string, found {self.found()}")
        try:
            value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as e:  # e.msg ends in " at"; the caret shows where
            raise self.error(f"bad string: {e.msg.removesuffix(' at')} "
                             "(a string is a JSON string on one line)") from None
        self.pos = end
        return value


def parse(text: str, constants: Mapping[str, np.ndarray] | None = None, *,
          filename: str = "<kir>") -> Graph:
    """Parse `.kir` text into a Graph. `constants` maps each constant's `ref` to its array."""
    return _Parser(text, filename, constants).parse_graph()


# --- files: graph.kir + graph.safetensors ----------------------------------------------
def weights_path(kir_path: str | Path) -> Path:
    return Path(kir_path).with_suffix(".safetensors")


def save(graph: Graph, path: str | Path, *, locations: bool = True) -> None:
    """Write `path` (.kir text) and, if the graph has constants, the weights beside it."""
    from .printer import print_graph
    from .weights import save_weights
    path = Path(path)
    path.write_text(print_graph(graph, locations=locations), encoding="utf-8")
    if graph.constants:
        save_weights(graph.constants, weights_path(path))


def load(path: str | Path) -> Graph:
    """Read a `.kir` file and the `.safetensors` weights beside it (if any)."""
    from .weights import load_weights
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KilnError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise KilnError(f"cannot read {path}: not UTF-8 text (byte {e.start}); "
                        "is it a .kir file?") from None
    wpath = weights_path(path)
    constants = load_weights(wpath) if wpath.exists() else None
    return parse(text, constants, filename=str(path))


