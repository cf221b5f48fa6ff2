"""The ONNX importer: an `.onnx` file or a `ModelProto` becomes a kiln `Graph`.

    import_model(path_or_model_proto, input_values=None)
      -> load: a file without its external data (weights stay on disk), or a ModelProto
      -> check the opsets: the default domain at most OPSET (newer: FrontendError),
         no domain kiln does not implement; convert older models to OPSET with
         onnx.version_converter, then onnx.shape_inference
      -> list every node kiln cannot import (unknown op type, domain, subgraph
         control flow) at once: UnsupportedOpsError
      -> graph inputs: each `dim_param` becomes a kiln symbol, an unnamed dim a fresh one
      -> initializers: `Graph.add_constant` by reference (external data is memory-mapped,
         never read into memory; a missing file is a FrontendError naming it)
      -> each node -> its converter in `CONVERTERS` (kiln ops and compositions of them);
         converters raise `Unsupported` for attribute values kiln does not implement,
         and every such node is collected and reported together at the end
      -> outputs, verify

Values a converter needs as static attributes (Reshape's shape, Slice's starts, ...)
must be known at import time: an initializer, a `Constant`, a small computation on
those (folded through the ops' NumPy references), or a graph input whose value the
caller binds with `input_values` (the backend does this). Imports onnx and kiln.ir only.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import FrontendError, KilnError, TypeInferenceError, UnsupportedOpsError
from ...ir import Graph, TensorType, Value, dtype as kiln_dtype, verify
from ...ir import registry
from ...ir.dtypes import DType

OPSET = 28                  # the default-domain opset the converters implement
DEFAULT_DOMAINS = ("", "ai.onnx")
FOLD_LIMIT = 1 << 16        # fold known values through references up to this many elements
SUBGRAPH_OPS = ("If", "Loop", "Scan", "SequenceMap")

_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16", TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "f64", TensorProto.INT8: "i8", TensorProto.UINT8: "u8",
    TensorProto.INT16: "i16", TensorProto.INT32: "i32", TensorProto.INT64: "i64",
    TensorProto.BOOL: "bool"}
ONNX_DTYPES: dict[str, int] = {v: k for k, v in _DTYPES.items()}


class Unsupported(Exception):
    """Raised by a converter: this node uses something kiln does not implement."""


def to_kiln_dtype(onnx_type: int) -> DType:
    if onnx_type not in _DTYPES:
        name = TensorProto.DataType.Name(onnx_type) if onnx_type in \
            TensorProto.DataType.values() else str(onnx_type)
        raise Unsupported(f"dtype {name}")
    return kiln_dtype(_DTYPES[onnx_type])


# --- converters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Converter:
    """How one ONNX op type becomes kiln nodes; `attrs` lists every attribute it reads
    (a node with any other attribute is unsupported rather than silently misread)."""
    fn: Callable[["NodeContext"], Sequence[Value | None]]
    attrs: frozenset[str]


CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str, attrs: Sequence[str] = ()) -> Callable:
    def add(fn: Callable) -> Callable:
        for op in op_types:
            assert op not in CONVERTERS, f"ONNX op {op} has two converters"
            CONVERTERS[op] = Converter(fn, frozenset(attrs))
        return fn
    return add


def supported_op_types() -> frozenset[str]:
    return frozenset(CONVERTERS)


# --- per-node context ---------------------------------------------------------------------
@dataclass
class Importer:
    graph: Graph
    values: dict[str, Value] = field(default_factory=dict)      # ONNX name -> kiln value
    known: dict[int, np.ndarray] = field(default_factory=dict)  # id(Value) -> its array
    poisoned: set[str] = field(default_factory=set)             # outputs of failed nodes
    input_names: dict[int, str] = field(default_factory=dict)   # id(graph input) -> ONNX name


class NodeContext:
    """What a converter sees: the node's inputs, attributes, static input values, and
    `emit` to add kiln nodes (tagged with the ONNX node as their source)."""

    def __init__(self, importer: Importer, node: onnx.NodeProto, source: str):
        self.importer, self.node, self.source = importer, node, source
        self.graph = importer.graph
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.op = node.op_type

    # inputs
    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def input(self, i: int) -> Value:
        if not self.has_input(i):
            raise Unsupported(f"input {i} is missing")
        return self.importer.values[self.node.input[i]]

    def optional_input(self, i: int) -> Value | None:
        return self.input(i) if self.has_input(i) else None

    def inputs(self) -> list[Value]:
        return [self.input(i) for i in range(self.num_inputs) if self.has_input(i)]

    def value_of(self, v: Value) -> np.ndarray | None:
        return self.importer.known.get(id(v))

    def static(self, i: int, what: str) -> np.ndarray | None:
        """The value of input `i` (None when the optional input is absent); raises
        Unsupported when it is not known at import time."""
        if not self.has_input(i):
            return None
        array = self.value_of(self.input(i))
        if array is None:
            raise Unsupported(f"input {i} ({what}, %{self.node.input[i]}) must be known at import "
                              "time: an initializer, a Constant or a bound input")
        return array

    def static_ints(self, i: int, what: str) -> list[int] | None:
        array = self.static(i, what)
        return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]

    # attributes
    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    # outputs
    @property
    def num_outputs(self) -> int:
        return sum(1 for o in self.node.output if o)

    def wants_output(self, i: int) -> bool:
        return i < len(self.node.output) and self.node.output[i] != ""

    # building
    def emit(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Any:
        node = self.graph.add_node(op, inputs, attrs, name=name or self._hint(),
                                   source=self.source)
        self._fold(node)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def const(self, array: np.ndarray, name: str | None = None) -> Value:
        array = np.asarray(array)
        ref = self.graph.unique_name(name or f"{self._hint()}_const")
        while ref in self.graph.constants:
            ref = self.graph.unique_name(ref + "_1")
        value = self.graph.add_constant(ref, array, source=self.source)
        self.importer.known[id(value)] = array
        return value

    def scalar(self, value: float | int | bool, like: Value) -> Value:
        """A rank-0 constant of `like`'s dtype."""
        return self.const(np.asarray(value).astype(like.type.dtype.numpy))

    def _hint(self) -> str:
        out = next((o for o in self.node.output if o), self.op.lower())
        return out

    def _fold(self, node) -> None:
        known = self.importer.known
        if not all(id(v) in known for v in node.inputs):
            return
        sizes = [known[id(v)].size for v in node.inputs]
        if sum(sizes) > FOLD_LIMIT or not all(o.type.is_static for o in node.outputs) or \
                sum(math.prod(o.type.shape) for o in node.outputs) > FOLD_LIMIT:
            return
        try:
            with np.errstate(all="ignore"):
                results = node.opdef.run_reference([known[id(v)] for v in node.inputs],
                                                   node.attrs)
        except Exception:  # noqa: BLE001  not foldable (e.g. integer division by zero)
            return         # the node stays in the graph and fails, if ever, when it runs
        for out, array in zip(node.outputs, results):
            known[id(out)] = np.asarray(array)


# --- loading ------------------------------------------------------------------------------
def load_model_proto(model: "str | os.PathLike | onnx.ModelProto") -> tuple[onnx.ModelProto, str,
                                                                             Path | None]:
    """(ModelProto without external data loaded, a name for errors, its directory)."""
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>", None
    path = Path(model)
    if not path.exists():
        raise FrontendError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  protobuf raises DecodeError and others
        raise FrontendError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") \
            from None
    if not proto.HasField("graph") or not (proto.graph.node or proto.graph.output):
        raise FrontendError(f"{path}: not a readable ONNX model (no graph: the file is "
                            "truncated or not ONNX)")
    return proto, str(path), path.parent


def _opset_versions(proto: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}


def _check_opsets(proto: onnx.ModelProto, where: str) -> None:
    versions = _opset_versions(proto)
    if versions.get("", 0) > OPSET:
        raise FrontendError(f"{where}: opset {versions['']} of the default ONNX domain is newer "
                            f"than kiln supports (up to opset {OPSET}); export the model at "
                            f"opset {OPSET} or lower")


def _convert_version(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    version = _opset_versions(proto).get("")
    if version is None or version >= OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, OPSET)
    except Exception as e:  # noqa: BLE001  the converter raises RuntimeError/ValueError
        raise FrontendError(f"{where}: converting opset {version} to opset {OPSET} with "
                            f"onnx.version_converter failed: {str(e).splitlines()[0]}") from None


def _node_place(node: onnx.NodeProto, index: int, where: str) -> str:
    name = node.name or f"#{index}"
    outs = ", ".join(o for o in node.output if o)
    return f"node {name!r} ({node.op_type} -> {outs}) in {where}"


def _unsupported_nodes(graph: onnx.GraphProto, where: str) -> dict[str, list[str]]:
    """Nodes no converter exists for, by op (domain-qualified outside the default domain)."""
    found: dict[str, list[str]] = {}
    for i, node in enumerate(graph.node):
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        if domain:
            key = f"{domain}::{node.op_type} (domain {domain!r} is not implemented by kiln)"
        elif node.op_type in SUBGRAPH_OPS:
            key = f"{node.op_type} (subgraph control flow: kiln IR has no subgraphs)"
        elif node.op_type not in CONVERTERS:
            key = node.op_type
        else:
            continue
        found.setdefault(key, []).append(_node_place(node, i, where))
    return found


# --- tensors ------------------------------------------------------------------------------
def tensor_to_array(t: TensorProto, base_dir: Path | None, where: str) -> np.ndarray:
    """An initializer's array: external data memory-mapped, raw data viewed, not copied."""
    dtype = to_kiln_dtype(t.data_type).numpy
    shape = tuple(t.dims)
    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if base_dir is None:
            raise FrontendError(f"{where}: initializer {t.name!r} keeps its data in the external "
                                f"file {info.get('location')!r}; load the model from its path "
                                "so kiln can find the file")
        file = base_dir / info["location"]
        if not file.exists():
            raise FrontendError(f"{where}: initializer {t.name!r}: external data file {file} "
                                "does not exist")
        offset = int(info.get("offset", 0))
        count = math.prod(shape)
        need = offset + count * dtype.itemsize
        if file.stat().st_size < need:
            raise FrontendError(f"{where}: initializer {t.name!r}: external data file {file} "
                                f"has {file.stat().st_size} bytes, needs {need}")
        if count == 0:
            return np.zeros(shape, dtype)
        return np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=shape)
    if t.raw_data and dtype.byteorder in "=|<":
        return np.frombuffer(t.raw_data, dtype=dtype).reshape(shape)
    return onnx.numpy_helper.to_array(t).astype(dtype, copy=False)


# --- the import ---------------------------------------------------------------------------
def _graph_name(proto: onnx.ModelProto) -> str:
    import re
    name = re.sub(r"[^A-Za-z0-9_]", "_", proto.graph.name or "main")
    return name if re.match(r"^[A-Za-z_]", name) else f"g_{name}"


def _input_type(vi: onnx.ValueInfoProto, symbols: dict[str, str], where: str) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise Unsupported(f"input {vi.name!r} is not a tensor (sequences, maps and optionals "
                          "are not supported)")
    dims: list[int | str] = []
    for axis, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            raw = d.dim_param or f"{vi.name}_{axis}"
            import re
            sym = re.sub(r"[^A-Za-z0-9_]", "_", raw)
            sym = sym if re.match(r"^[A-Za-z_]", sym) else f"d_{sym}"
            dims.append(symbols.setdefault(raw, sym))
    if not tt.HasField("shape"):
        raise Unsupported(f"input {vi.name!r} has no shape (kiln needs each input's rank)")
    return TensorType(tuple(dims), to_kiln_dtype(tt.elem_type))


def import_model(model: "str | os.PathLike | onnx.ModelProto",
                 input_values: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Import an ONNX model (a path or a ModelProto) as a kiln graph.

    `input_values` binds graph inputs to known arrays: an input that ops need only as
    a static value (a shape, axes, pads) is folded away; other inputs stay inputs.
    """
    return import_with_names(model, input_values)[0]


def import_with_names(model: "str | os.PathLike | onnx.ModelProto",
                      input_values: Mapping[str, np.ndarray] | None = None
                      ) -> tuple[Graph, list[str]]:
    """`import_model`, plus the ONNX name of each of the graph's inputs, in order."""
    proto, where, base_dir = load_model_proto(model)
    _check_opsets(proto, where)
    missing = _unsupported_nodes(proto.graph, where)
    if missing:
        raise UnsupportedOpsError(f"{where}: ONNX model {proto.graph.name or ''}".rstrip(),
                                  missing)
    external = {t.name: t for t in proto.graph.initializer    # the converters may drop the
                if t.data_location == TensorProto.EXTERNAL}     # external-data references
    proto = _convert_version(proto, where)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"{where}: ONNX shape inference failed: {e}") from None
    importer = Importer(Graph(_graph_name(proto)))
    unsupported: dict[str, list[str]] = {}
    _import_inputs(proto, importer, input_values or {}, base_dir, where, unsupported, external)
    for index, node in enumerate(proto.graph.node):
        _convert_node(importer, node, index, where, unsupported)
    outputs = []
    for vi in proto.graph.output:
        if vi.name in importer.poisoned or vi.name not in importer.values:
            if not unsupported:
                unsupported.setdefault("output", []).append(f"{vi.name!r} is never produced")
            continue
        outputs.append(importer.values[vi.name])
    if unsupported:
        raise UnsupportedOpsError(f"{where}: ONNX model {proto.graph.name or ''}".rstrip(),
                                  unsupported)
    graph = importer.graph
    graph.set_outputs(outputs)
    _drop_bound_inputs(graph, set(input_values or {}), importer)
    verify(graph)
    return graph, [importer.input_names[id(v)] for v in graph.inputs]


def _import_inputs(proto: onnx.ModelProto, importer: Importer, input_values: Mapping[str, Any],
                   base_dir: Path | None, where: str, unsupported: dict[str, list[str]],
                   external: Mapping[str, TensorProto]) -> None:
    graph = importer.graph
    initializers = {t.name for t in proto.graph.initializer}
    symbols: dict[str, str] = {}
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        try:
            value = graph.add_input(graph.unique_name(vi.name), _input_type(vi, symbols, where))
        except Unsupported as e:
            unsupported.setdefault(f"graph input: {e}", []).append(where)
            importer.poisoned.add(vi.name)
            continue
        importer.values[vi.name] = value
        importer.input_names[id(value)] = vi.name
        if vi.name in input_values:
            importer.known[id(value)] = np.asarray(input_values[vi.name])
    for t in proto.graph.initializer:
        try:
            array = tensor_to_array(external.get(t.name, t), base_dir, where)
        except Unsupported as e:
            unsupported.setdefault(f"initializer: {e}", []).append(f"{t.name!r} in {where}")
            importer.poisoned.add(t.name)
            continue
        value = graph.add_constant(graph.unique_name(t.name), array, source=f"initializer {t.name}")
        importer.values[t.name] = value
        importer.known[id(value)] = array


def _drop_bound_inputs(graph: Graph, bound: set[str], importer: Importer) -> None:
    """Remove bound graph inputs that only served as static values (now unused)."""
    graph.inputs = [v for v in graph.inputs if v.users or v in graph.outputs
                    or importer.input_names[id(v)] not in bound]


def _convert_node(importer: Importer, node: onnx.NodeProto, index: int, where: str,
                  unsupported: dict[str, list[str]]) -> None:
    place = _node_place(node, index, where)
    if any(name in importer.poisoned for name in node.input if name):
        importer.poisoned.update(o for o in node.output if o)
        return
    conv = CONVERTERS[node.op_type]
    source = f"{node.op_type} {node.name or '#' + str(index)}"
    ctx = NodeContext(importer, node, source)
    try:
        extra = sorted(set(ctx.attrs) - conv.attrs)
        if extra:
            raise Unsupported(f"attribute(s) {extra} not implemented")
        outs = list(conv.fn(ctx))
        for i, name in enumerate(node.output):
            if not name:
                continue
            if i >= len(outs) or outs[i] is None:
                raise Unsupported(f"output {i} ({name}) is not implemented")
            importer.values[name] = outs[i]
    except Unsupported as e:
        unsupported.setdefault(f"{node.op_type}: {e}", []).append(place)
        importer.poisoned.update(o for o in node.output if o)
    except (TypeInferenceError, KilnError) as e:  # kiln's ops reject these inputs
        message = str(e).splitlines()[0]
        unsupported.setdefault(f"{node.op_type}: kiln cannot represent it ({message})",
                               []).append(place)
        importer.poisoned.update(o for o in node.output if o)
