"""kiln `Graph` -> ONNX `ModelProto` (default domain, opset `EXPORT_OPSET`).

    export_onnx(graph) -> ModelProto
      -> every node's op must have an entry in `EXPORTERS`: one UnsupportedOpsError
         lists all that do not (and every node whose attributes have no ONNX form,
         e.g. a symbolic reshape target)
      -> graph inputs keep their symbolic dims as `dim_param`s
      -> constants become initializers; each node becomes one or more ONNX nodes
      -> onnx.checker.check_model

Ops kiln has and ONNX lacks as one op (silu, rms_norm, linear, attention, ...) are
exported as their ONNX compositions.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedOpsError
from ..ir import Graph, Node, Value
from ..ir.ops.layout import BIG

EXPORT_OPSET = 21
IR_VERSION = 10     # opset 21's IR version (ONNX Runtime reads up to 13)
_DTYPES = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
           "f64": TensorProto.DOUBLE, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
           "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
           "bool": TensorProto.BOOL}


class NotExportable(Exception):
    """A node whose op or attributes have no ONNX form."""


class Emitter:
    """Builds the ONNX graph: fresh names, constant initializers, nodes."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def const(self, array, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values, hint: str = "i") -> str:
        return self.const(np.asarray(list(values), np.int64), hint)

    def scalar(self, value, like: Value, hint: str = "s") -> str:
        return self.const(np.asarray(value, like.type.dtype.numpy), hint)

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out


Rule = Callable[[Emitter, Node, list[str], str], None]
EXPORTERS: dict[str, Rule] = {}


def exporter(*ops: str) -> Callable[[Rule], Rule]:
    def add(fn: Rule) -> Rule:
        for op in ops:
            EXPORTERS[op] = fn
        return fn
    return add


def _one_to_one(onnx_op: str, **fixed) -> Rule:
    def rule(e: Emitter, node: Node, ins: list[str], out: str) -> None:
        e.node(onnx_op, ins, out, **fixed)
    return rule


for _kiln, _onnx in {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
                     "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin", "acos": "Acos",
                     "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "tanh": "Tanh",
                     "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf",
                     "sigmoid": "Sigmoid", "relu": "Relu", "abs": "Abs", "neg": "Neg",
                     "floor": "Floor", "ceil": "Ceil", "round": "Round", "sign": "Sign",
                     "isnan": "IsNaN", "isinf": "IsInf", "logical_not": "Not",
                     "hardswish": "HardSwish", "mish": "Mish",
                     "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
                     "maximum": "Max", "minimum": "Min", "eq": "Equal", "lt": "Less",
                     "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
                     "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor",
                     "where": "Where",
                     "matmul": "MatMul"}.items():
    EXPORTERS[_kiln] = _one_to_one(_onnx)


@exporter("bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not")
def _bitwise(e, node, ins, out):
    bool_op = {"bitwise_and": "And", "bitwise_or": "Or", "bitwise_xor": "Xor",
               "bitwise_not": "Not"}
    op = bool_op[node.op] if node.inputs[0].type.dtype.is_bool else \
        "Bitwise" + node.op.removeprefix("bitwise_").capitalize()
    e.node(op, ins, out)


@exporter("ne")
def _ne(e, node, ins, out):
    e.node("Not", [e.node("Equal", ins)], out)


@exporter("rsqrt")
def _rsqrt(e, node, ins, out):
    e.node("Reciprocal", [e.node("Sqrt", ins)], out)


@exporter("silu")
def _silu(e, node, ins, out):
    e.node("Mul", [ins[0], e.node("Sigmoid", ins)], out)


@exporter("gelu")
def _gelu(e, node, ins, out):
    x = ins[0]
    if node.attrs["approximate"] == "tanh":   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        v = node.inputs[0]
        cube = e.node("Mul", [x, e.node("Mul", [x, x])])
        inner = e.node("Mul", [e.scalar(math.sqrt(2 / math.pi), v),
                               e.node("Add", [x, e.node("Mul", [cube, e.scalar(0.044715, v)])])])
        half = e.node("Mul", [x, e.scalar(0.5, v)])
        e.node("Mul", [half, e.node("Add", [e.scalar(1, v), e.node("Tanh", [inner])])], out)
        return
    v = node.inputs[0]   # 0.5 x (1 + erf(x / sqrt 2))
    erf = e.node("Erf", [e.node("Div", [x, e.scalar(math.sqrt(2), v)])])
    e.node("Mul", [e.node("Mul", [x, e.scalar(0.5, v)]), e.node("Add", [erf, e.scalar(1, v)])], out)


@exporter("elu")
def _elu(e, node, ins, out):
    e.node("Elu", ins, out, alpha=node.attrs["alpha"])


@exporter("leaky_relu")
def _leaky_relu(e, node, ins, out):
    e.node("LeakyRelu", ins, out, alpha=node.attrs["negative_slope"])


@exporter("hardsigmoid")
def _hardsigmoid(e, node, ins, out):
    e.node("HardSigmoid", ins, out, alpha=1 / 6, beta=0.5)


@exporter("cast")
def _cast(e, node, ins, out):
    e.node("Cast", ins, out, to=_DTYPES[node.attrs["dtype"].name])


@exporter("clamp")
def _clamp(e, node, ins, out):
    v = node.inputs[0]
    lo, hi = node.attrs["min"], node.attrs["max"]
    e.node("Clip", [ins[0], e.scalar(lo, v) if lo is not None else "",
                    e.scalar(hi, v) if hi is not None else ""], out)


@exporter("concat")
def _concat(e, node, ins, out):
    e.node("Concat", ins, out, axis=node.attrs["axis"])


def _static(dims, node: Node) -> list[int]:
    if not all(isinstance(d, int) for d in dims):
        raise NotExportable(f"symbolic dims {list(dims)}")
    return list(dims)


@exporter("reshape")
def _reshape(e, node, ins, out):
    e.node("Reshape", [ins[0], e.ints(_static(node.attrs["shape"], node))], out)


@exporter("expand")
def _expand(e, node, ins, out):
    e.node("Expand", [ins[0], e.ints(_static(node.attrs["shape"], node))], out)


@exporter("transpose")
def _transpose(e, node, ins, out):
    e.node("Transpose", ins, out, perm=list(node.attrs["perm"]))


@exporter("squeeze", "unsqueeze")
def _squeeze(e, node, ins, out):
    e.node(node.op.capitalize(), [ins[0], e.ints(node.attrs["axes"])], out)


@exporter("slice")
def _slice(e, node, ins, out):
    a = node.attrs
    start, end = _static([a["start"], a["end"]], node)
    e.node("Slice", [ins[0], e.ints([start]), e.ints([min(end, BIG)]), e.ints([a["axis"]]),
                     e.ints([a["step"]])], out)


@exporter("flip")
def _flip(e, node, ins, out):
    axes = list(node.attrs["axes"])
    n = len(axes)
    e.node("Slice", [ins[0], e.ints([-1] * n), e.ints([-BIG] * n), e.ints(axes),
                     e.ints([-1] * n)], out)


@exporter("tile")
def _tile(e, node, ins, out):
    e.node("Tile", [ins[0], e.ints(node.attrs["repeats"])], out)


@exporter("pad")
def _pad(e, node, ins, out):
    a = node.attrs
    value = e.scalar(a["value"], node.inputs[0]) if a["mode"] == "constant" else ""
    e.node("Pad", [ins[0], e.ints(a["pads"]), value], out, mode=a["mode"])


@exporter("gather", "gather_elements")
def _gather(e, node, ins, out):
    op = "Gather" if node.op == "gather" else "GatherElements"
    e.node(op, ins, out, axis=node.attrs["axis"])


@exporter("index")
def _index(e, node, ins, out):
    if node.attrs["axis"] != 0:
        raise NotExportable(f"index from axis {node.attrs['axis']}")
    shape = _static(node.outputs[0].type.shape[:node.outputs[0].type.rank - (
        node.inputs[0].type.rank - len(ins) + 1)], node)   # the broadcast index shape
    stacked = [e.node("Unsqueeze", [e.node("Expand", [e.node("Cast", [i], to=TensorProto.INT64),
                                                      e.ints(shape)]), e.ints([-1])])
               for i in ins[1:]]
    e.node("GatherND", [ins[0], e.node("Concat", stacked, axis=-1)], out)


@exporter("triu", "tril")
def _triangle(e, node, ins, out):
    e.node("Trilu", [ins[0], e.const(np.asarray(node.attrs["diagonal"], np.int64))], out,
           upper=int(node.op == "triu"))


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin",
           "prod": "ReduceProd"}


@exporter(*_REDUCE)
def _reduce(e, node, ins, out):
    axes = list(node.attrs["axes"]) or list(range(node.inputs[0].type.rank))
    e.node(_REDUCE[node.op], [ins[0], e.ints(axes)], out, keepdims=int(node.attrs["keepdims"]))


@exporter("argmax", "argmin")
def _arg(e, node, ins, out):
    e.node("ArgMax" if node.op == "argmax" else "ArgMin", ins, out, axis=node.attrs["axis"],
           keepdims=int(node.attrs["keepdims"]))


@exporter("cumsum")
def _cumsum(e, node, ins, out):
    e.node("CumSum", [ins[0], e.const(np.asarray(node.attrs["axis"], np.int64))], out)


@exporter("softmax", "log_softmax")
def _softmax(e, node, ins, out):
    e.node("Softmax" if node.op == "softmax" else "LogSoftmax", ins, out,
           axis=node.attrs["axis"])


@exporter("layer_norm")
def _layer_norm(e, node, ins, out):
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    scale = ins[1] if len(ins) > 1 else e.const(np.ones(_static(x.type.shape[axis:], node),
                                                        x.type.dtype.numpy))
    e.node("LayerNormalization", [ins[0], scale] + ins[2:3], out, axis=axis,
           epsilon=node.attrs["eps"])


@exporter("rms_norm")
def _rms_norm(e, node, ins, out):
    x = node.inputs[0]
    axes = list(range(node.attrs["axis"] % x.type.rank, x.type.rank))
    ms = e.node("ReduceMean", [e.node("Mul", [ins[0], ins[0]]), e.ints(axes)], keepdims=1)
    inv = e.node("Reciprocal", [e.node("Sqrt", [e.node("Add", [ms, e.scalar(
        node.attrs["eps"], x)])])])
    y = e.node("Mul", [ins[0], inv], out if len(ins) == 1 else None)
    if len(ins) > 1:
        e.node("Mul", [y, ins[1]], out)


@exporter("batch_norm")
def _batch_norm(e, node, ins, out):
    x = node.inputs[0]
    c = _static([x.type.shape[1]], node)[0]
    scale = ins[3] if len(ins) > 3 else e.const(np.ones(c, x.type.dtype.numpy))
    bias = ins[4] if len(ins) > 4 else e.const(np.zeros(c, x.type.dtype.numpy))
    e.node("BatchNormalization", [ins[0], scale, bias, ins[1], ins[2]], out,
           epsilon=node.attrs["eps"])


@exporter("linear")
def _linear(e, node, ins, out):
    y = e.node("MatMul", [ins[0], e.node("Transpose", [ins[1]], perm=[1, 0])],
               out if len(ins) == 2 else None)
    if len(ins) == 3:
        e.node("Add", [y, ins[2]], out)


@exporter("conv")
def _conv(e, node, ins, out):
    a = node.attrs
    e.node("Conv", ins, out, strides=list(a["strides"]), pads=list(a["pads"]),
           dilations=list(a["dilations"]), group=a["groups"])


@exporter("max_pool")
def _max_pool(e, node, ins, out):
    a = node.attrs
    e.node("MaxPool", ins, out, kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
           pads=list(a["pads"]), dilations=list(a["dilations"]), ceil_mode=int(a["ceil_mode"]))


@exporter("avg_pool")
def _avg_pool(e, node, ins, out):
    a = node.attrs
    e.node("AveragePool", ins, out, kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
           pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]),
           count_include_pad=int(a["count_include_pad"]))


@exporter("adaptive_avg_pool")
def _adaptive_avg_pool(e, node, ins, out):
    x = node.inputs[0]
    sizes = _static(x.type.shape[2:], node)
    outs = list(node.attrs["output_size"])
    if all(o == 1 for o in outs):
        e.node("GlobalAveragePool", ins, out)
        return
    if any(s % o for s, o in zip(sizes, outs)):
        raise NotExportable(f"adaptive pooling of {sizes} to {outs} (uneven windows)")
    kernel = [s // o for s, o in zip(sizes, outs)]
    e.node("AveragePool", ins, out, kernel_shape=kernel, strides=kernel)


@exporter("scaled_dot_product_attention")
def _sdpa(e, node, ins, out):
    q = node.inputs[0]
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else \
        1 / math.sqrt(_static([q.type.shape[-1]], node)[0])
    rank = node.inputs[1].type.rank
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = e.node("Mul", [e.node("MatMul", [ins[0], e.node("Transpose", [ins[1]], perm=perm)]),
                            e.scalar(scale, q)])
    L, S = _static([q.type.shape[-2], node.inputs[1].type.shape[-2]], node)
    mask_name, mask = (ins[3], node.inputs[3]) if len(ins) > 3 else (None, None)
    if node.attrs["is_causal"]:
        mask_name, mask = e.const(np.tril(np.ones((L, S), bool))), None
    if mask_name is not None and (mask is None or mask.type.dtype.is_bool):
        scores = e.node("Where", [mask_name, scores, e.scalar(-np.inf, q)])
    elif mask_name is not None:
        scores = e.node("Add", [scores, mask_name])
    e.node("MatMul", [e.node("Softmax", [scores], axis=-1), ins[2]], out)


# --- the export ----------------------------------------------------------------------------
def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, _DTYPES[v.type.dtype.name],
                                         [d if isinstance(d, int) else str(d)
                                          for d in v.type.shape])


def unexportable(graph: Graph) -> dict[str, list[str]]:
    """Ops with no ONNX export, by op, with the nodes that use them."""
    out: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in EXPORTERS and node.op not in ("constant", "split", "full", "arange"):
            out.setdefault(node.op, []).append(node.format())
        if node.outputs and node.outputs[0].type.dtype.name not in _DTYPES:
            out.setdefault(f"{node.op} ({node.outputs[0].type.dtype!r})", []).append(node.format())
    return out


def export_onnx(graph: Graph, *, opset: int = EXPORT_OPSET) -> onnx.ModelProto:
    """The ONNX model of `graph`; UnsupportedOpsError lists every node that has none."""
    missing = unexportable(graph)
    e = Emitter()
    for node in graph.nodes:
        ins = [v.name for v in node.inputs]
        try:
            if node.op == "constant":
                array = np.ascontiguousarray(graph.constant_array(node))
                e.initializers.append(numpy_helper.from_array(array, node.outputs[0].name))
            elif node.op in ("full", "arange"):
                e.initializers.append(numpy_helper.from_array(
                    node.opdef.run_reference([], node.opdef.bind_attrs(node.attrs, {}))[0],
                    node.outputs[0].name))
            elif node.op == "split":
                e.nodes.append(helper.make_node(
                    "Split", [ins[0], e.ints(node.attrs["sizes"])],
                    [v.name for v in node.outputs], axis=node.attrs["axis"]))
            elif node.op in EXPORTERS:
                EXPORTERS[node.op](e, node, ins, node.outputs[0].name)
        except (NotExportable, KeyError) as err:
            missing.setdefault(f"{node.op}: {err}", []).append(node.format())
    if missing:
        raise UnsupportedOpsError(f"graph {graph.name} cannot be exported to ONNX", missing)
    onnx_graph = helper.make_graph(e.nodes, graph.name, [_value_info(v) for v in graph.inputs],
                                   [_value_info(v) for v in graph.outputs], e.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="kiln", ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def save_onnx(graph: Graph, path) -> onnx.ModelProto:
    model = export_onnx(graph)
    onnx.save_model(model, str(path))
    return model
