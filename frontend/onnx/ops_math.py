"""ONNX elementwise and reduction ops -> kiln: unary math and activations, binary
arithmetic, comparisons and logic (ONNX broadcasting is kiln's), variadic Sum/Max/
Min/Mean, Clip, Cast, the Reduce* family, ArgMax/ArgMin, CumSum, Softmax, Hardmax."""
from __future__ import annotations

import numpy as np

from ...ir import Value
from .importer import NodeContext, Unsupported, converter, to_kiln_dtype

# --- unary ---------------------------------------------------------------------------------
_UNARY = {"Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
          "Reciprocal": "reciprocal", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin",
          "Acos": "acos", "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Tanh": "tanh",
          "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh", "Erf": "erf",
          "Sigmoid": "sigmoid", "Relu": "relu", "Sign": "sign", "Floor": "floor",
          "Ceil": "ceil", "Round": "round", "IsNaN": "isnan", "Not": "logical_not",
          "BitwiseNot": "bitwise_not", "Mish": "mish"}


@converter(*_UNARY)
def _unary(ctx: NodeContext):
    return [ctx.emit(_UNARY[ctx.op], ctx.input(0))]


@converter("Identity")
def _identity(ctx: NodeContext):
    x = ctx.input(0)
    return [x]


@converter("Softplus")
def _softplus(ctx: NodeContext):
    x = ctx.input(0)   # log(1 + exp(x)); kiln's threshold 20 only returns x where that rounds to x
    return [ctx.emit("softplus", x, beta=1.0, threshold=20.0 if x.type.dtype.bits >= 32 else 10.0)]


@converter("Elu", attrs=["alpha"])
def _elu(ctx: NodeContext):
    return [ctx.emit("elu", ctx.input(0), alpha=ctx.attr("alpha", 1.0))]


@converter("LeakyRelu", attrs=["alpha"])
def _leaky_relu(ctx: NodeContext):
    return [ctx.emit("leaky_relu", ctx.input(0), negative_slope=ctx.attr("alpha", 0.01))]


@converter("Gelu", attrs=["approximate"])
def _gelu(ctx: NodeContext):
    return [ctx.emit("gelu", ctx.input(0), approximate=ctx.attr("approximate", "none"))]


@converter("HardSigmoid", attrs=["alpha", "beta"])
def _hard_sigmoid(ctx: NodeContext):
    x = ctx.input(0)   # max(0, min(1, alpha * x + beta))
    y = ctx.emit("add", ctx.emit("mul", x, ctx.scalar(ctx.attr("alpha", 0.2), x)),
                 ctx.scalar(ctx.attr("beta", 0.5), x))
    return [ctx.emit("clamp", y, min=0.0, max=1.0)]


@converter("HardSwish")
def _hard_swish(ctx: NodeContext):
    return [ctx.emit("hardswish", ctx.input(0))]


@converter("Selu", attrs=["alpha", "gamma"])
def _selu(ctx: NodeContext):
    x = ctx.input(0)
    alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), \
        ctx.attr("gamma", 1.05070102214813232421875)
    return [ctx.emit("mul", ctx.emit("elu", x, alpha=alpha), ctx.scalar(gamma, x))]


@converter("Celu", attrs=["alpha"])
def _celu(ctx: NodeContext):
    x, alpha = ctx.input(0), ctx.attr("alpha", 1.0)   # max(0,x) + min(0, alpha*(exp(x/alpha)-1))
    scaled = ctx.emit("div", x, ctx.scalar(alpha, x))
    return [ctx.emit("mul", ctx.emit("elu", scaled, alpha=1.0), ctx.scalar(alpha, x))]


@converter("ThresholdedRelu", attrs=["alpha"])
def _thresholded_relu(ctx: NodeContext):
    x = ctx.input(0)
    keep = ctx.emit("gt", x, ctx.scalar(ctx.attr("alpha", 1.0), x))
    return [ctx.emit("where", keep, x, ctx.scalar(0, x))]


@converter("Softsign")
def _softsign(ctx: NodeContext):
    x = ctx.input(0)
    return [ctx.emit("div", x, ctx.emit("add", ctx.emit("abs", x), ctx.scalar(1, x)))]


@converter("Swish", attrs=["alpha"])
def _swish(ctx: NodeContext):
    x = ctx.input(0)
    alpha = ctx.attr("alpha", 1.0)
    if alpha == 1.0:
        return [ctx.emit("silu", x)]
    return [ctx.emit("mul", x, ctx.emit("sigmoid", ctx.emit("mul", x, ctx.scalar(alpha, x))))]


@converter("Shrink", attrs=["bias", "lambd"])
def _shrink(ctx: NodeContext):
    x = ctx.input(0)
    bias, lambd = ctx.attr("bias", 0.0), ctx.attr("lambd", 0.5)
    low = ctx.emit("lt", x, ctx.scalar(-lambd, x))
    high = ctx.emit("gt", x, ctx.scalar(lambd, x))
    zero = ctx.scalar(0, x)
    y = ctx.emit("where", high, ctx.emit("sub", x, ctx.scalar(bias, x)), zero)
    return [ctx.emit("where", low, ctx.emit("add", x, ctx.scalar(bias, x)), y)]


@converter("PRelu")
def _prelu(ctx: NodeContext):
    x, slope = ctx.input(0), ctx.input(1)
    negative = ctx.emit("lt", x, ctx.scalar(0, x))
    return [ctx.emit("where", negative, ctx.emit("mul", x, slope), x)]


@converter("IsInf", attrs=["detect_negative", "detect_positive"])
def _isinf(ctx: NodeContext):
    x = ctx.input(0)
    neg, pos = ctx.attr("detect_negative", 1), ctx.attr("detect_positive", 1)
    inf = ctx.emit("isinf", x)
    if neg and pos:
        return [inf]
    if not neg and not pos:
        return [ctx.emit("logical_and", inf, ctx.emit("ne", x, x))]   # all False
    side = ctx.emit("gt" if pos else "lt", x, ctx.scalar(0, x))
    return [ctx.emit("logical_and", inf, side)]


@converter("Dropout", attrs=["seed"])
def _dropout(ctx: NodeContext):
    x = ctx.input(0)
    training = ctx.static(2, "training_mode")
    if training is not None and bool(np.asarray(training)):
        raise Unsupported("training_mode=True (random dropout) is not supported")
    outs: list[Value | None] = [x]
    if ctx.wants_output(1):
        outs.append(ctx.emit("full", shape=x.type.shape, value=1.0, dtype="bool"))
    return outs


# --- binary --------------------------------------------------------------------------------
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "eq",
           "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge",
           "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
           "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor"}


@converter(*_BINARY)
def _binary(ctx: NodeContext):
    return [ctx.emit(_BINARY[ctx.op], ctx.input(0), ctx.input(1))]


@converter("Pow")
def _pow(ctx: NodeContext):
    x, y = ctx.input(0), ctx.input(1)
    if y.type.dtype != x.type.dtype:    # ONNX lets the exponent have its own type
        if x.type.dtype.is_integer and y.type.dtype.is_float:
            raise Unsupported(f"an integer base {x.type.dtype!r} with a float exponent")
        y = ctx.emit("cast", y, dtype=x.type.dtype)
    return [ctx.emit("pow", x, y)]


@converter("Mod", attrs=["fmod"])
def _mod(ctx: NodeContext):
    fmod = ctx.attr("fmod", 0)
    a, b = ctx.input(0), ctx.input(1)
    if not fmod and a.type.dtype.is_float:
        raise Unsupported("fmod=0 on floats is invalid ONNX")
    return [ctx.emit("fmod" if fmod else "remainder", a, b)]


@converter("Where")
def _where(ctx: NodeContext):
    return [ctx.emit("where", ctx.input(0), ctx.input(1), ctx.input(2))]


_VARIADIC = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}


@converter(*_VARIADIC)
def _variadic(ctx: NodeContext):
    xs = ctx.inputs()
    out = xs[0]
    if len(xs) == 1:    # broadcasting of one input is itself
        out = ctx.emit("expand", out, shape=out.type.shape) if ctx.op == "Mean" else out
    for x in xs[1:]:
        out = ctx.emit(_VARIADIC[ctx.op], out, x)
    if ctx.op == "Mean":
        out = ctx.emit("div", out, ctx.scalar(len(xs), out))
    return [out]


@converter("Clip")
def _clip(ctx: NodeContext):
    x = ctx.input(0)
    out = x
    for i, op in ((1, "maximum"), (2, "minimum")):
        bound = ctx.optional_input(i)
        if bound is not None:
            out = ctx.emit(op, out, bound)
    if x.type.dtype.is_float and out is not x:   # NaN stays NaN (maximum/minimum propagate it)
        out = ctx.emit("where", ctx.emit("isnan", x), x, out)
    return [out]


@converter("Cast", attrs=["to", "saturate", "round_mode"])
def _cast(ctx: NodeContext):
    return [_cast_to(ctx, ctx.input(0), to_kiln_dtype(ctx.attr("to")))]


@converter("CastLike", attrs=["saturate", "round_mode"])
def _cast_like(ctx: NodeContext):
    return [_cast_to(ctx, ctx.input(0), ctx.input(1).type.dtype)]


def _cast_to(ctx: NodeContext, x: Value, dtype) -> Value:
    return x if x.type.dtype == dtype else ctx.emit("cast", x, dtype=dtype)


# --- reductions ----------------------------------------------------------------------------
def _reduce_axes(ctx: NodeContext, x: Value) -> tuple[int, ...] | None:
    """The axes of a Reduce* node (input 1 or attribute); None = reduce nothing."""
    axes = ctx.static_ints(1, "axes") if ctx.num_inputs > 1 else None
    if axes is None:
        axes = ctx.attr("axes")
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return tuple(range(x.type.rank))
    return tuple(a % x.type.rank if x.type.rank else a for a in axes)


def _reduce(ctx: NodeContext, op: str, x: Value) -> Value | None:
    axes = _reduce_axes(ctx, x)
    if axes is None:
        return None
    keep = bool(ctx.attr("keepdims", 1))
    if x.type.rank == 0:
        return ctx.emit(op, x, axes=(), keepdims=keep)
    return ctx.emit(op, x, axes=axes, keepdims=keep)


_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod"}
REDUCE_ATTRS = ["axes", "keepdims", "noop_with_empty_axes"]


@converter(*_REDUCE, attrs=REDUCE_ATTRS)
def _reduce_simple(ctx: NodeContext):
    x = ctx.input(0)
    op = _REDUCE[ctx.op]
    if x.type.dtype.is_bool and op in ("max", "min"):
        op = "any" if op == "max" else "all"
    out = _reduce(ctx, op, x)
    return [x if out is None else out]


@converter("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
           attrs=REDUCE_ATTRS)
def _reduce_composite(ctx: NodeContext):
    x = ctx.input(0)
    pre = {"ReduceL1": "abs", "ReduceL2": "square", "ReduceSumSquare": "square",
           "ReduceLogSum": None, "ReduceLogSumExp": "exp"}[ctx.op]
    y = x
    if pre == "square":
        y = ctx.emit("mul", x, x)
    elif pre:
        y = ctx.emit(pre, x)
    s = _reduce(ctx, "sum", y)
    if s is None:   # noop: the elementwise part alone
        s = y
    post = {"ReduceL2": "sqrt", "ReduceLogSum": "log", "ReduceLogSumExp": "log"}.get(ctx.op)
    return [ctx.emit(post, s) if post else s]


@converter("ArgMax", "ArgMin", attrs=["axis", "keepdims", "select_last_index"])
def _arg(ctx: NodeContext):
    x = ctx.input(0)
    op = "argmax" if ctx.op == "ArgMax" else "argmin"
    axis = ctx.attr("axis", 0) % max(x.type.rank, 1)
    keep = bool(ctx.attr("keepdims", 1))
    if not ctx.attr("select_last_index", 0):
        return [ctx.emit(op, x, axis=axis, keepdims=keep)]
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise Unsupported("select_last_index on a symbolic axis")
    first = ctx.emit(op, ctx.emit("flip", x, axes=(axis,)), axis=axis, keepdims=keep)
    return [ctx.emit("sub", ctx.const(np.asarray(size - 1, np.int64)), first)]


@converter("CumSum", attrs=["exclusive", "reverse"])
def _cumsum(ctx: NodeContext):
    x = ctx.input(0)
    axis = int(np.asarray(ctx.static(1, "axis")).reshape(-1)[0]) % x.type.rank
    y = ctx.emit("flip", x, axes=(axis,)) if ctx.attr("reverse", 0) else x
    out = ctx.emit("cumsum", y, axis=axis)
    if ctx.attr("exclusive", 0):
        out = ctx.emit("sub", out, y)
    if ctx.attr("reverse", 0):
        out = ctx.emit("flip", out, axes=(axis,))
    return [out]


@converter("Softmax", "LogSoftmax", attrs=["axis"])
def _softmax(ctx: NodeContext):
    op = "softmax" if ctx.op == "Softmax" else "log_softmax"
    return [ctx.emit(op, ctx.input(0), axis=ctx.attr("axis", -1))]


@converter("Hardmax", attrs=["axis"])
def _hardmax(ctx: NodeContext):
    x = ctx.input(0)
    axis = ctx.attr("axis", -1) % x.type.rank
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise Unsupported("Hardmax over a symbolic axis")
    index = ctx.emit("argmax", x, axis=axis, keepdims=True)
    positions = ctx.const(np.arange(size, dtype=np.int64).reshape(
        (size,) + (1,) * (x.type.rank - axis - 1)))
    return [ctx.emit("cast", ctx.emit("eq", index, positions), dtype=x.type.dtype)]
