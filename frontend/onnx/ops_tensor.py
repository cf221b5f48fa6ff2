"""ONNX tensor ops -> kiln layout and creation ops: Constant, Shape, Size,
ConstantOfShape, Range, EyeLike, Reshape, Flatten, Transpose, Squeeze, Unsqueeze,
Concat, Split, Slice, Expand, Tile, Pad, Gather, GatherElements, Trilu,
DepthToSpace and SpaceToDepth. Their shape-like inputs must be static (see importer)."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...ir import Value, symbolic
from ...ir.ops.common import broadcast_shapes
from ...ir.ops.layout import BIG
from .importer import NodeContext, Unsupported, converter, to_kiln_dtype


def _static_shape(x: Value, what: str) -> tuple[int, ...]:
    if not x.type.is_static:
        raise Unsupported(f"{what} of a tensor with symbolic dims {x.type}")
    return tuple(x.type.shape)  # type: ignore[return-value]


# --- creation ------------------------------------------------------------------------------
@converter("Constant", attrs=["value", "value_float", "value_floats", "value_int", "value_ints",
                              "value_string", "value_strings", "sparse_value"])
def _constant(ctx: NodeContext):
    if "value" in ctx.attrs:
        t = ctx.attrs["value"]
        to_kiln_dtype(t.data_type)
        array = numpy_helper.to_array(t)
    elif "value_float" in ctx.attrs:
        array = np.asarray(ctx.attrs["value_float"], np.float32)
    elif "value_floats" in ctx.attrs:
        array = np.asarray(ctx.attrs["value_floats"], np.float32)
    elif "value_int" in ctx.attrs:
        array = np.asarray(ctx.attrs["value_int"], np.int64)
    elif "value_ints" in ctx.attrs:
        array = np.asarray(ctx.attrs["value_ints"], np.int64)
    else:
        raise Unsupported(f"a {sorted(ctx.attrs)} constant (strings, sparse tensors)")
    return [ctx.const(array, ctx.node.output[0])]


@converter("Shape", attrs=["start", "end"])
def _shape(ctx: NodeContext):
    shape = _static_shape(ctx.input(0), "Shape")
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return [ctx.const(np.asarray(shape[slice(start, end)], np.int64))]


@converter("Size")
def _size(ctx: NodeContext):
    return [ctx.const(np.asarray(int(np.prod(_static_shape(ctx.input(0), "Size"))), np.int64))]


@converter("ConstantOfShape", attrs=["value"])
def _constant_of_shape(ctx: NodeContext):
    shape = tuple(ctx.static_ints(0, "shape"))
    value = ctx.attrs.get("value")
    if value is None:
        fill, dtype = 0.0, "f32"
    else:
        array = numpy_helper.to_array(value).reshape(-1)
        dtype = to_kiln_dtype(value.data_type)
        fill = array[0].item()
    return [ctx.emit("full", shape=shape, value=float(fill), dtype=dtype)]


@converter("Range")
def _range(ctx: NodeContext):
    start, limit, delta = (ctx.static(i, n) for i, n in enumerate(("start", "limit", "delta")))
    dtype = ctx.input(0).type.dtype
    count = max(int(np.ceil((limit - start) / delta)), 0)
    values = (start + np.arange(count) * delta).astype(dtype.numpy)  # ONNX's own definition
    return [ctx.const(values)]


@converter("EyeLike", attrs=["dtype", "k"])
def _eye_like(ctx: NodeContext):
    x = ctx.input(0)
    n, m = _static_shape(x, "EyeLike")
    dtype = to_kiln_dtype(ctx.attr("dtype")) if "dtype" in ctx.attrs else x.type.dtype
    return [ctx.const(np.eye(n, m, ctx.attr("k", 0), dtype=dtype.numpy))]


# --- reshaping -----------------------------------------------------------------------------
def onnx_reshape_dims(in_shape, shape: list[int], allowzero: bool) -> tuple:
    """ONNX's target shape with 0 (copy the input dim) and -1 (infer) resolved."""
    out: list = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise Unsupported(f"shape {shape}: 0 at axis {i} past the input's rank")
            out.append(in_shape[i])
        else:
            out.append(d)
    if out.count(-1) > 1:
        raise Unsupported(f"shape {shape} has more than one -1")
    if -1 in out:
        known = symbolic.product([d for d in out if d != -1])
        total = symbolic.product(in_shape)
        if known == 0:
            raise Unsupported(f"shape {shape}: -1 beside a zero dim is ambiguous")
        out[out.index(-1)] = symbolic.floordiv(total, known)
    return tuple(out)


@converter("Reshape", attrs=["allowzero"])
def _reshape(ctx: NodeContext):
    x = ctx.input(0)
    shape = onnx_reshape_dims(x.type.shape, ctx.static_ints(1, "shape"),
                              bool(ctx.attr("allowzero", 0)))
    return [ctx.emit("reshape", x, shape=shape)]


@converter("Flatten", attrs=["axis"])
def _flatten(ctx: NodeContext):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1)
    axis = axis % x.type.rank if axis < 0 else axis
    shape = (symbolic.product(x.type.shape[:axis]), symbolic.product(x.type.shape[axis:]))
    return [ctx.emit("reshape", x, shape=shape)]


@converter("Transpose", attrs=["perm"])
def _transpose(ctx: NodeContext):
    x = ctx.input(0)
    perm = ctx.attr("perm") or list(reversed(range(x.type.rank)))
    return [ctx.emit("transpose", x, perm=[p % x.type.rank for p in perm])]


@converter("Squeeze", attrs=["axes"])
def _squeeze(ctx: NodeContext):
    x = ctx.input(0)
    axes = ctx.static_ints(1, "axes") if ctx.num_inputs > 1 else ctx.attr("axes")
    if axes is None:
        _static_shape(x, "Squeeze without axes")
        axes = [i for i, d in enumerate(x.type.shape) if d == 1]
    return [ctx.emit("squeeze", x, axes=axes)]


@converter("Unsqueeze", attrs=["axes"])
def _unsqueeze(ctx: NodeContext):
    x = ctx.input(0)
    axes = ctx.static_ints(1, "axes") if ctx.num_inputs > 1 else ctx.attr("axes")
    return [ctx.emit("unsqueeze", x, axes=axes)]


@converter("Concat", attrs=["axis"])
def _concat(ctx: NodeContext):
    xs = [x for x in ctx.inputs()]
    axis = ctx.attr("axis")
    nonempty = [x for x in xs if not (isinstance(x.type.shape[axis], int)
                                      and x.type.shape[axis] == 0)] if xs[0].type.rank else xs
    xs = nonempty or xs[:1]
    return [xs[0] if len(xs) == 1 else ctx.emit("concat", *xs, axis=axis)]


@converter("Split", attrs=["axis", "num_outputs", "split"])
def _split(ctx: NodeContext):
    x = ctx.input(0)
    axis = ctx.attr("axis", 0) % x.type.rank
    size = x.type.shape[axis]
    sizes = ctx.static_ints(1, "split") if ctx.has_input(1) else ctx.attr("split")
    if not sizes:
        if not isinstance(size, int):
            raise Unsupported("an even Split of a symbolic axis")
        n = ctx.attr("num_outputs") or len(ctx.node.output)
        chunk = -(-size // n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    outs = ctx.emit("split", x, axis=axis, sizes=sizes)
    return list(outs) if isinstance(outs, tuple) else [outs]


def _python_slice(size, start: int, end: int, step: int):
    """ONNX Slice's start/end (clamped like Python slicing) for one axis."""
    if isinstance(size, int):
        first, stop, step = slice(start, end, step).indices(size)
        return first, stop, step
    if step < 0:
        raise Unsupported(f"a negative step on the symbolic axis {size}")
    if start < 0 or end < 0 and end > -BIG:
        raise Unsupported(f"negative start/end on the symbolic axis {size}")
    return start, min(end, BIG), step


@converter("Slice", attrs=["starts", "ends", "axes"])
def _slice(ctx: NodeContext):
    x = ctx.input(0)
    if ctx.num_inputs > 1:
        starts, ends = ctx.static_ints(1, "starts"), ctx.static_ints(2, "ends")
        axes, steps = ctx.static_ints(3, "axes"), ctx.static_ints(4, "steps")
    else:   # opset 1-9 attributes
        starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    out = x
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.type.rank
        size = out.type.shape[axis]
        if step == 0:
            raise Unsupported("a zero step")
        first, stop, step = _python_slice(size, start, end, step)
        if step > 0:
            if (first, stop, step) != (0, size, 1):
                out = ctx.emit("slice", out, axis=axis, start=first, end=stop, step=step)
            continue
        picked = range(first, stop, step)            # descending indices
        out = ctx.emit("flip", out, axes=(axis,))
        if len(picked) == 0:
            out = ctx.emit("slice", out, axis=axis, start=0, end=0, step=1)
        else:
            out = ctx.emit("slice", out, axis=axis, start=size - 1 - picked[0],
                           end=size - picked[-1], step=-step)
    return [out]


@converter("Expand")
def _expand(ctx: NodeContext):
    x = ctx.input(0)
    shape = tuple(ctx.static_ints(1, "shape"))
    target = broadcast_shapes(x.type.shape, shape)   # ONNX Expand broadcasts both ways
    return [x if target == x.type.shape else ctx.emit("expand", x, shape=target)]


@converter("Tile")
def _tile(ctx: NodeContext):
    return [ctx.emit("tile", ctx.input(0), repeats=ctx.static_ints(1, "repeats"))]


@converter("Pad", attrs=["mode", "pads", "value"])
def _pad(ctx: NodeContext):
    x = ctx.input(0)
    rank = x.type.rank
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode {mode!r}")
    pads = ctx.static_ints(1, "pads") if ctx.num_inputs > 1 else ctx.attr("pads")
    value = ctx.static(2, "constant_value")
    value = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) else \
        float(ctx.attr("value", 0.0))
    axes = ctx.static_ints(3, "axes")
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    out = x
    for a in range(rank):   # negative pads crop
        lo, hi = full[a], full[a + rank]
        if lo < 0 or hi < 0:
            size = out.type.shape[a]
            if not isinstance(size, int):
                raise Unsupported("negative pads on a symbolic axis")
            out = ctx.emit("slice", out, axis=a, start=max(-lo, 0), end=size - max(-hi, 0))
    full = [max(p, 0) for p in full]
    if any(full):
        out = ctx.emit("pad", out, pads=full, mode=mode, value=value)
    return [out]


@converter("Gather", attrs=["axis"])
def _gather(ctx: NodeContext):
    return [ctx.emit("gather", ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))]


@converter("GatherElements", attrs=["axis"])
def _gather_elements(ctx: NodeContext):
    return [ctx.emit("gather_elements", ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))]


@converter("Trilu", attrs=["upper"])
def _trilu(ctx: NodeContext):
    k = ctx.static_ints(1, "k")
    op = "triu" if ctx.attr("upper", 1) else "tril"
    return [ctx.emit(op, ctx.input(0), diagonal=k[0] if k else 0)]


@converter("DepthToSpace", attrs=["blocksize", "mode"])
def _depth_to_space(ctx: NodeContext):
    x = ctx.input(0)
    b, mode = ctx.attr("blocksize"), ctx.attr("mode", "DCR")
    n, c, h, w = x.type.shape
    if mode == "DCR":
        y = ctx.emit("reshape", x, shape=(n, b, b, symbolic.floordiv(c, b * b), h, w))
        y = ctx.emit("transpose", y, perm=(0, 3, 4, 1, 5, 2))
    else:
        y = ctx.emit("reshape", x, shape=(n, symbolic.floordiv(c, b * b), b, b, h, w))
        y = ctx.emit("transpose", y, perm=(0, 1, 4, 2, 5, 3))
    shape = (n, symbolic.floordiv(c, b * b), symbolic.mul(h, b), symbolic.mul(w, b))
    return [ctx.emit("reshape", y, shape=shape)]


@converter("SpaceToDepth", attrs=["blocksize"])
def _space_to_depth(ctx: NodeContext):
    x = ctx.input(0)
    b = ctx.attr("blocksize")
    n, c, h, w = x.type.shape
    hb, wb = symbolic.floordiv(h, b), symbolic.floordiv(w, b)
    y = ctx.emit("reshape", x, shape=(n, c, hb, b, wb, b))
    y = ctx.emit("transpose", y, perm=(0, 3, 5, 1, 2, 4))
    return [ctx.emit("reshape", y, shape=(n, symbolic.mul(c, b * b), hb, wb))]
