"""The ATen -> kiln conversion table of the torch frontend (`kiln.frontend.torch`).

`CONVERTERS` maps each ATen overload kiln imports to a small handler. A handler
gets an `Emitter` and the node's arguments bound to the overload's schema
(positional arguments in order, keyword-only ones by name, defaults filled in),
emits kiln nodes and returns the output `Value` (a tuple for multi-output ops).
Ops that are alike share one handler (`_unary("exp")`, `_binary("add")`).

This is a mapping, not a second op table: shapes, dtypes and semantics come from
kiln's registry, and the driver checks every result against the type torch
recorded. Handlers cast explicitly wherever torch promotes dtypes (kiln never
does), and raise `Unsupported` for an argument kiln does not implement. The `Emitter` and the
helpers the handlers share live in `aten_emit.py`. Imports torch and kiln.ir only.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import torch

from ..ir import Value, symbolic
from ..ir.dtypes import DType, bool_
from ..ir.ops.layout import BIG
from ..ir.symbolic import Dim
from .aten_emit import (Emitter, Unsupported, aten, normalize_axis, rank_of, require,
                        require_strided, to_kiln_dtype)

__all__ = ["CONVERTERS", "SKIPPED", "Emitter", "Unsupported", "to_kiln_dtype"]


# --- elementwise ---------------------------------------------------------------------------
def _unary(op: str, input_dtype: str | DType = "out", **attrs: str) -> Callable:
    """One kiln op of one input. `attrs` maps kiln attribute <- torch argument name;
    the input is cast to the output dtype ("out"), kept ("same"), or cast to a dtype."""
    def convert(cx: Emitter, x, *args, **kw):
        names = [a.name for a in cx.node.target._schema.arguments][1:]
        given = dict(zip(names, args)) | kw
        dtype = cx.out_dtype if input_dtype == "out" else None if input_dtype == "same" \
            else input_dtype
        return cx.emit(op, [cx.value(x, dtype)], **{k: given[t] for k, t in attrs.items()})
    return convert


def _binary(op: str, compute: str | DType = "out") -> Callable:
    """One kiln op of two inputs, both cast to the output dtype ("out"), to torch's
    promoted dtype ("promote", for comparisons) or to a given dtype."""
    def convert(cx: Emitter, a, b, alpha=1, **_):
        dtype = cx.out_dtype if compute == "out" else cx.result_dtype(a, b) \
            if compute == "promote" else compute
        x, y = cx.value(a, dtype), cx.value(b, dtype)
        if cx.number(alpha) != 1:
            y = cx.emit("mul", [y, cx.scalar(cx.number(alpha), dtype)], name=cx.aux("alpha"))
        return cx.emit(_BOOL_ARITH.get(op, op) if dtype == bool_ else op, [x, y])
    return convert


# torch's arithmetic on bools is logic; kiln's arithmetic ops take numbers only
_BOOL_ARITH = {"mul": "logical_and", "add": "logical_or", "maximum": "logical_or",
               "minimum": "logical_and"}


def _div(cx: Emitter, a, b, rounding_mode=None, **_):
    dtype = cx.out_dtype
    if rounding_mode is None or (rounding_mode == "trunc" and dtype.is_integer):
        return _binary("div")(cx, a, b)   # kiln's integer div truncates, as torch's "trunc"
    if rounding_mode == "floor":
        return _binary("floor_div")(cx, a, b)
    quotient = cx.emit("div", [cx.value(a, dtype), cx.value(b, dtype)], name=cx.aux("div"))
    return cx.emit("trunc", [quotient])


def _pow(cx: Emitter, a, b):
    return _binary("pow")(cx, a, b)


def _where(cx: Emitter, cond, a, b):
    dtype = cx.out_dtype
    return cx.emit("where", [cx.value(cond, bool_), cx.value(a, dtype), cx.value(b, dtype)])


def _clamp(cx: Emitter, x, lo=None, hi=None):
    dtype = cx.out_dtype
    v = cx.value(x, dtype)
    tensors = [isinstance(t, torch.fx.Node) and isinstance(t.meta.get("val"), torch.Tensor)
               for t in (lo, hi)]
    if not any(tensors):
        return cx.emit("clamp", [v], min=None if lo is None else cx.number(lo),
                       max=None if hi is None else cx.number(hi))
    if lo is not None:
        v = cx.emit("maximum", [v, cx.value(lo, dtype)], name=cx.aux("max") if hi is not None
                    else None)
    return v if hi is None else cx.emit("minimum", [v, cx.value(hi, dtype)])


def _clamp_min(cx: Emitter, x, lo):
    return _clamp(cx, x, lo, None)


def _clamp_max(cx: Emitter, x, hi):
    return _clamp(cx, x, None, hi)


def _elu(cx: Emitter, x, alpha=1.0, scale=1.0, input_scale=1.0):
    require(scale == 1 and input_scale == 1, "elu with scale or input_scale != 1")
    return cx.emit("elu", [cx.value(x, cx.out_dtype)], alpha=alpha)


def _to_copy(cx: Emitter, x, *_, **kw):
    """_to_copy, to (every overload) and type_as: a cast to the output dtype (kiln's
    tensors have one device and no memory format)."""
    require_strided(kw)
    return cx.cast(cx.value(x), cx.out_dtype, name=cx.node.name)


def _identity(cx: Emitter, x, *_, **kw):
    require_strided(kw)
    return cx.value(x)


def _dropout(cx: Emitter, x, p, train):
    """dropout and its feature/alpha variants: the identity when not training."""
    require(not train or cx.number(p) == 0, "dropout in training mode (call model.eval() first?)")
    return cx.value(x)


def _masked_fill(cx: Emitter, x, mask, value):
    return _where(cx, mask, value, x)


def _relu6(cx: Emitter, x):
    return _clamp(cx, x, 0, 6)


# --- creation ------------------------------------------------------------------------------
def _full(cx: Emitter, size, fill_value, *_, **kw):
    require_strided(kw)
    return cx.emit("full", [], shape=cx.out_shape(), value=float(cx.number(fill_value)),
                   dtype=cx.out_dtype)


def _filled(value: float) -> Callable:
    """A tensor of the output's shape and dtype holding `value` (zeros, ones_like,
    new_ones, ...; torch leaves an empty tensor's values undefined, kiln fills it with 0)."""
    def convert(cx: Emitter, *_, **kw):
        require_strided(kw)
        return cx.emit("full", [], shape=cx.out_shape(), value=value, dtype=cx.out_dtype)
    return convert


def _new_full(cx: Emitter, x, size, fill_value, **kw):
    return _full(cx, size, fill_value, **kw)


def _scalar_tensor(cx: Emitter, s, **kw):
    return _full(cx, [], s, **kw)


def _arange(cx: Emitter, start, end=None, step=1, **kw):
    require_strided(kw)
    if end is None:   # arange(end)
        start, end = 0, start
    values = [cx.number(a) if not isinstance(a, torch.fx.Node) else None for a in
              (start, end, step)]
    require(all(v is None or float(v).is_integer() for v in values),
            "arange with non-integer start, end or step")
    return cx.emit("arange", [], start=cx.dim(int(start) if values[0] is not None else start),
                   end=cx.dim(int(end) if values[1] is not None else end),
                   step=int(cx.number(step)), dtype=cx.out_dtype)


# --- reductions and normalizations ---------------------------------------------------------
def _dims(dim: Any) -> tuple[int, ...]:
    return () if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)


def _reduce(op: str) -> Callable:
    """sum/mean/prod/amax/amin/any/all over `dim` (none or [] = all axes)."""
    def convert(cx: Emitter, x, dim=None, keepdim=False, **kw):
        if op in ("any", "all"):
            r = cx.emit(op, [cx.value(x, bool_)], name=cx.aux(op), axes=_dims(dim),
                        keepdims=keepdim)
            return cx.cast(r, cx.out_dtype, name=cx.node.name)
        return cx.emit(op, [cx.value(x, cx.out_dtype)], axes=_dims(dim), keepdims=keepdim)
    return convert


def _reduce_all(op: str) -> Callable:
    return lambda cx, x, **kw: _reduce(op)(cx, x, None, False)


def _var(cx: Emitter, x, dim=None, correction=None, keepdim=False, name=None):
    c = 1 if correction is None else cx.number(correction)
    require(float(c).is_integer(), f"correction={c}")
    return cx.emit("var", [cx.value(x, cx.out_dtype)], name=name, axes=_dims(dim),
                   keepdims=keepdim, correction=int(c))


def _var_unbiased(cx: Emitter, x, dim=None, unbiased=True, keepdim=False, name=None):
    """var.dim and var.default: `unbiased` is correction 1 (else 0)."""
    return _var(cx, x, dim, int(unbiased), keepdim, name)


def _std(variance: Callable) -> Callable:
    """The std overload that goes with a var converter: the square root of its result."""
    def convert(cx: Emitter, *args, **kw):
        return cx.emit("sqrt", [variance(cx, *args, **kw, name=cx.aux("var"))])
    return convert


def _arg(op: str) -> Callable:
    def convert(cx: Emitter, x, dim=None, keepdim=False):
        v = cx.value(x)
        if dim is None:   # over the flattened tensor
            flat = cx.emit("reshape", [v], name=cx.aux("flatten"),
                           shape=(symbolic.product(v.type.shape),))
            r = cx.emit(op, [flat], name=cx.aux(op) if keepdim else None, axis=0)
            return cx.emit("reshape", [r], shape=(1,) * v.type.rank) if keepdim else r
        return cx.emit(op, [v], axis=dim, keepdims=keepdim)
    return convert


def _max_dim(op: str, arg_op: str) -> Callable:
    def convert(cx: Emitter, x, dim, keepdim=False):
        v = cx.value(x)
        values = cx.emit(op, [v], name=cx.aux("values"), axes=(dim,), keepdims=keepdim)
        return values, cx.emit(arg_op, [v], name=cx.aux("indices"), axis=dim, keepdims=keepdim)
    return convert


def _cumsum(cx: Emitter, x, dim, **kw):
    return cx.emit("cumsum", [cx.value(x, cx.out_dtype)], axis=dim)


def _softmax(op: str) -> Callable:
    def convert(cx: Emitter, x, dim, *_, **__):   # the output dtype says what to compute in
        return cx.emit(op, [cx.value(x, cx.out_dtype)], axis=dim)
    return convert


def _affine(cx: Emitter, x: Value, weight, bias, shape: tuple[Dim, ...]) -> list[Value]:
    """The optional weight and bias operands of a normalization (a bias without a
    weight gets a weight of ones)."""
    out = [] if weight is None and bias is None else [
        cx.value(weight) if weight is not None else
        cx.emit("full", [], name=cx.aux("ones"), shape=shape, value=1.0, dtype=x.type.dtype)]
    return out + ([cx.value(bias)] if bias is not None else [])


def _layer_norm(cx: Emitter, x, normalized_shape, weight=None, bias=None, eps=1e-5, *_):
    v = cx.value(x)
    axis = v.type.rank - len(normalized_shape)
    return cx.emit("layer_norm", [v] + _affine(cx, v, weight, bias, v.type.shape[axis:]),
                   axis=axis, eps=eps)


def _native_layer_norm(cx: Emitter, x, normalized_shape, weight, bias, eps):
    return (_layer_norm(cx, x, normalized_shape, weight, bias, eps),
            "its mean output", "its rstd output")


def _rms_norm(cx: Emitter, x, normalized_shape, weight=None, eps=None):
    v = cx.value(x)
    eps = torch.finfo(x.meta["val"].dtype).eps if eps is None else eps
    return cx.emit("rms_norm", [v] + ([cx.value(weight)] if weight is not None else []),
                   axis=v.type.rank - len(normalized_shape), eps=eps)


def _batch_norm(cx: Emitter, x, weight, bias, running_mean, running_var, momentum, eps):
    """_native_batch_norm_legit_no_training: the running statistics normalize."""
    v = cx.value(x)
    ins = [v, cx.value(running_mean), cx.value(running_var)]
    out = cx.emit("batch_norm", ins + _affine(cx, v, weight, bias, (v.type.shape[1],)), eps=eps)
    return out, "its save_mean output", "its save_invstd output"


def _batch_norm_eval(cx: Emitter, x, weight, bias, running_mean, running_var, training,
                     momentum, eps, cudnn_enabled):
    """batch_norm (the training IR's op): only with running statistics, not training."""
    require(not training and running_mean is not None and running_var is not None,
            "batch_norm in training mode (call model.eval() first?)")
    return _batch_norm(cx, x, weight, bias, running_mean, running_var, momentum, eps)[0]


def _group_norm(cx: Emitter, x, num_groups, weight=None, bias=None, eps=1e-5, *_):
    v = cx.value(x)
    return cx.emit("group_norm", [v] + _affine(cx, v, weight, bias, (v.type.shape[1],)),
                   num_groups=num_groups, eps=eps)


# --- contractions and windows --------------------------------------------------------------
def _matmul(cx: Emitter, a, b):
    return cx.emit("matmul", [cx.value(a), cx.value(b)])


def _linear(cx: Emitter, x, weight, bias=None):
    return cx.emit("linear", [cx.value(x), cx.value(weight)] +
                   ([cx.value(bias)] if bias is not None else []))


def _addmm(cx: Emitter, bias, a, b, beta=1, alpha=1):
    """beta * bias + alpha * (a @ b)  (addmm, baddbmm)"""
    dtype = cx.out_dtype
    product = cx.emit("matmul", [cx.value(a), cx.value(b)], name=cx.aux("matmul"))
    if cx.number(alpha) != 1:
        product = cx.emit("mul", [product, cx.scalar(cx.number(alpha), dtype)],
                          name=cx.aux("alpha"))
    if cx.number(beta) == 0:   # torch ignores bias (even NaN) when beta is 0
        return product
    c = cx.value(bias, dtype)
    if cx.number(beta) != 1:
        c = cx.emit("mul", [c, cx.scalar(cx.number(beta), dtype)], name=cx.aux("beta"))
    return cx.emit("add", [product, c])


def _spatial(values: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    values = values * n if len(values) == 1 else values
    require(len(values) == n, f"{what}={list(values)} for {n} spatial dims")
    return values


def _convolution(cx: Emitter, x, weight, bias, stride, padding, dilation, transposed,
                 output_padding, groups):
    require(not transposed, "transposed convolution")
    n = rank_of(x) - 2
    pads = _spatial(padding, n, "padding")
    return _conv_node(cx, cx.value(x), weight, bias, _spatial(stride, n, "stride"), pads + pads,
                      _spatial(dilation, n, "dilation"), groups)


def _conv_node(cx: Emitter, x: Value, weight, bias, strides, pads, dilations, groups,
               name: str | None = None) -> Value:
    return cx.emit("conv", [x, cx.value(weight)] + ([cx.value(bias)] if bias is not None else []),
                   name=name, strides=strides, pads=pads, dilations=dilations, groups=groups)


def _conv(cx: Emitter, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv1d/conv2d/conv3d: an input without a batch axis gets one; `padding` is a
    list, or "valid" or "same" (torch puts the odd one of a "same" pad at the end)."""
    n = rank_of(weight) - 2
    v = cx.value(x)
    batched = v.type.rank == n + 2
    if not batched:
        v = cx.emit("unsqueeze", [v], name=cx.aux("batch"), axes=(0,))
    dilations = _spatial(dilation, n, "dilation")
    if padding == "valid":
        pads = (0,) * (2 * n)
    elif padding == "same":
        kernel = weight.meta["val"].shape[2:]
        require(all(isinstance(k, int) for k in kernel), "padding='same' with a symbolic kernel")
        total = [d * (k - 1) for d, k in zip(dilations, kernel)]
        pads = tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    else:
        pads = _spatial(padding, n, "padding") * 2
    out = _conv_node(cx, v, weight, bias, _spatial(stride, n, "stride"), pads, dilations,
                     groups, name=None if batched else cx.aux("conv"))
    return out if batched else cx.emit("squeeze", [out], axes=(0,))


def _max_pool(cx: Emitter, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    n = rank_of(x) - 2
    kernel = _spatial(kernel_size, n, "kernel_size")
    pads = _spatial(padding, n, "padding")
    out = cx.emit("max_pool", [cx.value(x)], kernel=kernel,
                  strides=_spatial(stride or kernel, n, "stride"), pads=pads + pads,
                  dilations=_spatial(dilation, n, "dilation"), ceil_mode=ceil_mode)
    return out if isinstance(cx.meta, torch.Tensor) else (out, "its indices output")


def _avg_pool(cx: Emitter, x, kernel_size, stride=(), padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    require(divisor_override is None, f"divisor_override={divisor_override}")
    n = rank_of(x) - 2
    kernel = _spatial(kernel_size, n, "kernel_size")
    pads = _spatial(padding, n, "padding")
    return cx.emit("avg_pool", [cx.value(x)], kernel=kernel,
                   strides=_spatial(stride or kernel, n, "stride"), pads=pads + pads,
                   ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def _adaptive_avg_pool(cx: Emitter, x, output_size):
    return cx.emit("adaptive_avg_pool", [cx.value(x)], output_size=cx.out_shape()[2:])


def _sdpa(cx: Emitter, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    require(dropout_p == 0, f"dropout_p={dropout_p} (attention dropout only trains)")
    qv, kv, vv = cx.value(q), cx.value(k), cx.value(v)
    heads, kv_heads = qv.type.shape[-3:-2], kv.type.shape[-3:-2]
    if enable_gqa and heads != kv_heads:   # repeat each k/v head for its group of q heads
        require(qv.type.rank == 4 and all(isinstance(h, int) for h in heads + kv_heads),
                "grouped-query attention needs 4-d inputs with static head counts")
        rep = heads[0] // kv_heads[0]
        kv, vv = (_repeat_heads(cx, t, rep, name) for t, name in ((kv, "k"), (vv, "v")))
    mask = []
    if attn_mask is not None:
        m = cx.value(attn_mask)
        mask = [m if m.type.dtype == bool_ else cx.cast(m, qv.type.dtype)]
    return cx.emit("scaled_dot_product_attention", [qv, kv, vv] + mask, is_causal=is_causal,
                   scale=scale)


def _repeat_heads(cx: Emitter, t: Value, rep: int, name: str) -> Value:
    b, h, s, d = t.type.shape
    u = cx.emit("unsqueeze", [t], name=cx.aux(f"{name}_unsqueeze"), axes=(2,))
    e = cx.emit("expand", [u], name=cx.aux(f"{name}_expand"), shape=(b, h, rep, s, d))
    return cx.emit("reshape", [e], name=cx.aux(f"{name}_heads"), shape=(b, h * rep, s, d))


def _embedding(cx: Emitter, weight, indices, *_):
    return cx.emit("gather", [cx.value(weight), cx.value(indices)], axis=0)


# --- layout --------------------------------------------------------------------------------
def _reshape(cx: Emitter, x, *_):
    v = cx.value(x)
    shape = cx.out_shape()
    return v if shape == v.type.shape else cx.emit("reshape", [v], shape=shape)


def _expand(cx: Emitter, x, *_, **__):
    v = cx.value(x)
    shape = cx.out_shape()
    return v if shape == v.type.shape else cx.emit("expand", [v], shape=shape)


def _narrow(cx: Emitter, x, dim, start, length):
    """x[start:start + length] along dim; a negative start counts from the end."""
    first, size = cx.dim(start), cx.dim(length)
    end = symbolic.add(first, size)
    if isinstance(first, int) and first < 0 and end == 0:   # up to the end
        end = BIG
    return cx.emit("slice", [cx.value(x)], axis=normalize_axis(dim, rank_of(x)), start=first, end=end)


def _permute(cx: Emitter, x, dims):
    rank = rank_of(x)
    perm = tuple(normalize_axis(d, rank) for d in dims)
    return cx.value(x) if perm == tuple(range(rank)) else \
        cx.emit("transpose", [cx.value(x)], perm=perm)


def _transpose(cx: Emitter, x, dim0, dim1):
    perm = list(range(rank_of(x)))
    a, b = normalize_axis(dim0, len(perm)), normalize_axis(dim1, len(perm))
    perm[a], perm[b] = perm[b], perm[a]
    return _permute(cx, x, perm)


def _t(cx: Emitter, x):
    return _permute(cx, x, list(reversed(range(rank_of(x)))))


def _unsqueeze(cx: Emitter, x, dim):
    return cx.emit("unsqueeze", [cx.value(x)], axes=(normalize_axis(dim, rank_of(x) + 1),))


def _squeeze(cx: Emitter, x, dim=None):
    v = cx.value(x)
    rank = v.type.rank
    dims = range(rank) if dim is None else [normalize_axis(d, rank) for d in _dims(dim)]
    axes = tuple(d for d in dims if v.type.shape[d] == 1)  # torch skips dims that are not 1
    return cx.emit("squeeze", [v], axes=axes) if axes else v


def _slice(cx: Emitter, x, dim=0, start=None, end=None, step=1):
    v = cx.value(x)
    start = 0 if start is None else cx.dim(start)
    end = BIG if end is None else cx.dim(end)
    end = BIG if isinstance(end, int) and end >= BIG else end
    axis = normalize_axis(dim, v.type.rank)
    if start == 0 and step == 1 and (end == BIG or cx.out_shape()[axis] == v.type.shape[axis]):
        return v   # the whole axis (torch clamps an end past it)
    return cx.emit("slice", [v], axis=axis, start=start, end=end, step=step)


def _select(cx: Emitter, x, dim, index):
    v = cx.value(x)
    axis, start = normalize_axis(dim, v.type.rank), cx.dim(index)
    end = BIG if start == -1 else symbolic.add(start, 1)
    s = cx.emit("slice", [v], name=cx.aux("slice"), axis=axis, start=start, end=end)
    return cx.emit("squeeze", [s], axes=(axis,))


def _cat(cx: Emitter, tensors, dim=0):
    dtype = cx.out_dtype
    values = [cx.value(t, dtype) for t in tensors]
    return cx.emit("concat", values, axis=normalize_axis(dim, values[0].type.rank))


def _split(cx: Emitter, x, split_sizes, dim=0):
    v = cx.value(x)
    axis = normalize_axis(dim, v.type.rank)
    sizes = [cx.dim_of(t.shape[axis]) for t in cx.meta]
    if all(isinstance(s, int) for s in sizes):
        outs = cx.emit("split", [v], axis=axis, sizes=sizes)
        return outs if isinstance(outs, tuple) else (outs,)
    outs, start = [], 0
    for i, size in enumerate(sizes):   # symbolic sizes: one slice per piece
        end = symbolic.add(start, size)
        outs.append(cx.emit("slice", [v], name=f"{cx.node.name}_{i}", axis=axis, start=start,
                            end=end))
        start = end
    return tuple(outs)


def _unbind(cx: Emitter, x, dim=0):
    v = cx.value(x)
    axis = normalize_axis(dim, v.type.rank)
    pieces = cx.emit("split", [v], name=cx.aux("split"), axis=axis, sizes=[1] * len(cx.meta)) \
        if len(cx.meta) > 1 else (v,)
    return tuple(cx.emit("squeeze", [p], name=f"{cx.node.name}_{i}", axes=(axis,))
                 for i, p in enumerate(pieces))


def _stack(cx: Emitter, tensors, dim=0):
    dtype = cx.out_dtype
    axis = normalize_axis(dim, rank_of(tensors[0]) + 1)
    values = [cx.emit("unsqueeze", [cx.value(t, dtype)], name=cx.aux(f"unsqueeze_{i}"),
                      axes=(axis,)) for i, t in enumerate(tensors)]
    return cx.emit("concat", values, axis=axis)


def _diff(cx: Emitter, x, n=1, dim=-1, prepend=None, append=None):
    """n times x[1:] - x[:-1] along dim (logical xor for bools), after putting
    `prepend` before and `append` after x along dim."""
    axis = normalize_axis(dim, rank_of(x))
    v = cx.value(x)
    parts = [cx.value(t, v.type.dtype) for t in (prepend, x, append) if t is not None]
    if len(parts) > 1:
        v = cx.emit("concat", parts, name=cx.aux("concat"), axis=axis)
    op = "logical_xor" if v.type.dtype == bool_ else "sub"
    for i in range(n):
        last = i == n - 1
        later = cx.emit("slice", [v], name=cx.aux(f"later_{i}"), axis=axis, start=1, end=BIG)
        earlier = cx.emit("slice", [v], name=cx.aux(f"earlier_{i}"), axis=axis, start=0,
                          end=-1)
        v = cx.emit(op, [later, earlier], name=None if last else cx.aux(f"diff_{i}"))
    return v


def _constant_pad(cx: Emitter, x, pad, value=0):
    v = cx.value(x)
    rank = v.type.rank
    require(all(isinstance(p, int) and p >= 0 for p in pad), f"negative or symbolic pad {pad}")
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):   # torch lists (begin, end) pairs from the last axis back
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return cx.emit("pad", [v], pads=begins + ends, value=float(cx.number(value)))


def _flip(cx: Emitter, x, dims):
    return cx.emit("flip", [cx.value(x)], axes=tuple(normalize_axis(d, rank_of(x)) for d in dims))


def _tile(cx: Emitter, x, dims):
    """tile: repeat, with ones before `dims` when x has more axes."""
    return _repeat(cx, x, [1] * (rank_of(x) - len(dims)) + list(dims))


def _repeat(cx: Emitter, x, repeats):
    v = cx.value(x)
    extra = len(repeats) - v.type.rank
    if extra:
        v = cx.emit("reshape", [v], name=cx.aux("reshape"), shape=(1,) * extra + v.type.shape)
    return cx.emit("tile", [v], repeats=tuple(cx.number(r) for r in repeats))


def _gather(cx: Emitter, x, dim, index, sparse_grad=False):
    return cx.emit("gather_elements", [cx.value(x), cx.value(index)], axis=normalize_axis(dim, rank_of(x)))


def _index_select(cx: Emitter, x, dim, index):
    return cx.emit("gather", [cx.value(x), cx.value(index)], axis=normalize_axis(dim, rank_of(x)))


def _index(cx: Emitter, x, indices):
    v = cx.value(x)
    axes = [i for i, t in enumerate(indices) if t is not None]
    idx = [cx.value(indices[a]) for a in axes]
    require(all(t.type.dtype.is_integer for t in idx),
            "boolean mask indexing (its output size depends on the data)")
    if axes != list(range(axes[0], axes[0] + len(axes))):   # not adjacent: indexed axes go
        rest = [a for a in range(v.type.rank) if a not in axes]    # first, as in NumPy
        v = cx.emit("transpose", [v], name=cx.aux("transpose"), perm=tuple(axes + rest))
        axes = list(range(len(axes)))
    return cx.emit("index", [v] + idx, axis=axes[0])


def _triangle(op: str) -> Callable:
    return lambda cx, x, diagonal=0: cx.emit(op, [cx.value(x)], diagonal=diagonal)


# --- the table -----------------------------------------------------------------------------
def _getitem(cx: Emitter, items, index):
    item = cx.values[items][index]
    if isinstance(item, str):   # an output kiln does not produce
        raise Unsupported(f"uses {item}")
    return item


_UNARY = ["exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos",
                "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
                "erf", "sigmoid", "silu", "hardsigmoid", "hardswish", "mish", "neg", "abs", "relu",
                "sign", "floor", "ceil", "trunc"]
_ARITH = {"add": "add", "sub": "sub", "mul": "mul", "maximum": "maximum", "minimum": "minimum",
          "remainder": "remainder", "fmod": "fmod", "atan2": "atan2", "floor_divide": "floor_div",
          "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor",
          "__and__": "bitwise_and", "__or__": "bitwise_or", "__xor__": "bitwise_xor"}


def _overloads(name: str) -> list:
    """The tensor-tensor and tensor-scalar overloads of a binary ATen op (not the
    scalar-scalar ones, which are size arithmetic)."""
    packet = getattr(aten, name)
    ops = [getattr(packet, o) for o in ("default", "Tensor", "Scalar") if o in packet.overloads()]
    return [op for op in ops if str(op._schema.arguments[0].type) == "Tensor"]


CONVERTERS: dict[Any, Callable] = {
    operator.getitem: _getitem,
    # elementwise
    **{getattr(aten, n).default: _unary(n) for n in _UNARY},
    aten.round.default: _unary("round"),
    aten.gelu.default: _unary("gelu", approximate="approximate"),
    aten.leaky_relu.default: _unary("leaky_relu", negative_slope="negative_slope"),
    aten.softplus.default: _unary("softplus", beta="beta", threshold="threshold"),
    aten.elu.default: _elu,
    aten.isnan.default: _unary("isnan", "same"),
    aten.isinf.default: _unary("isinf", "same"),
    aten.logical_not.default: _unary("logical_not", bool_),
    aten.bitwise_not.default: _unary("bitwise_not", "same"),
    **{op: _binary(kiln_op) for n, kiln_op in _ARITH.items() for op in _overloads(n)},
    **{op: _binary(n, "promote") for n in ("eq", "ne", "lt", "le", "gt", "ge")
       for op in _overloads(n)},
    **{op: _binary(n, bool_) for n in ("logical_and", "logical_or", "logical_xor")
       for op in _overloads(n)},
    aten.div.Tensor: _div, aten.div.Scalar: _div, aten.div.Tensor_mode: _div,
    aten.div.Scalar_mode: _div,
    aten.pow.Tensor_Tensor: _pow, aten.pow.Tensor_Scalar: _pow, aten.pow.Scalar: _pow,
    aten.where.self: _where,
    aten.clamp.default: _clamp, aten.clamp.Tensor: _clamp,
    aten.clamp_min.default: _clamp_min, aten.clamp_max.default: _clamp_max,
    aten.hardtanh.default: _clamp, aten.relu6.default: _relu6,
    aten.clamp_min.Tensor: _clamp_min, aten.clamp_max.Tensor: _clamp_max,
    aten.masked_fill.Scalar: _masked_fill, aten.masked_fill.Tensor: _masked_fill,
    aten.where.ScalarOther: _where, aten.where.ScalarSelf: _where, aten.where.Scalar: _where,
    aten._to_copy.default: _to_copy, aten.type_as.default: _to_copy,
    **{getattr(aten.to, o): _to_copy for o in ("dtype", "dtype_layout", "device", "other")},
    **{op: _identity for op in (aten.clone.default, aten.alias.default, aten.detach.default,
                                aten.lift_fresh_copy.default, aten.contiguous.default)},
    **{getattr(aten, n).default: _dropout for n in ("dropout", "feature_dropout", "alpha_dropout",
                                                    "feature_alpha_dropout")},
    # creation
    aten.full.default: _full, aten.full_like.default: _full,
    aten.scalar_tensor.default: _scalar_tensor,
    aten.new_full.default: _new_full, aten.fill.Scalar: _full,
    **{op: _filled(0.0) for op in (aten.empty.memory_format, aten.empty_permuted.default,
                                   aten.empty_strided.default, aten.empty_like.default,
                                   aten.new_empty.default, aten.zeros.default,
                                   aten.zeros_like.default, aten.new_zeros.default)},
    **{op: _filled(1.0) for op in (aten.ones.default, aten.ones_like.default,
                                   aten.new_ones.default)},
    aten.arange.default: _arange, aten.arange.start: _arange, aten.arange.start_step: _arange,
    # reductions and normalizations
    **{getattr(aten, n).dim_IntList if n == "sum" else getattr(aten, n).dim: _reduce(n)
       for n in ("sum", "mean")},
    aten.sum.default: _reduce_all("sum"), aten.mean.default: _reduce_all("mean"),
    aten.prod.dim_int: _reduce("prod"), aten.prod.default: _reduce_all("prod"),
    aten.amax.default: _reduce("max"), aten.amin.default: _reduce("min"),
    aten.max.default: _reduce_all("max"), aten.min.default: _reduce_all("min"),
    aten.max.dim: _max_dim("max", "argmax"), aten.min.dim: _max_dim("min", "argmin"),
    aten.any.default: _reduce_all("any"), aten.any.dim: _reduce("any"),
    aten.any.dims: _reduce("any"), aten.all.default: _reduce_all("all"),
    aten.all.dim: _reduce("all"), aten.all.dims: _reduce("all"),
    aten.var.correction: _var, aten.var.dim: _var_unbiased, aten.var.default: _var_unbiased,
    aten.std.correction: _std(_var), aten.std.dim: _std(_var_unbiased),
    aten.std.default: _std(_var_unbiased),
    aten.argmax.default: _arg("argmax"), aten.argmin.default: _arg("argmin"),
    aten.cumsum.default: _cumsum,
    aten.softmax.int: _softmax("softmax"), aten._softmax.default: _softmax("softmax"),
    aten.log_softmax.int: _softmax("log_softmax"),
    aten._log_softmax.default: _softmax("log_softmax"),
    aten.layer_norm.default: _layer_norm, aten.native_layer_norm.default: _native_layer_norm,
    aten.rms_norm.default: _rms_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.batch_norm.default: _batch_norm_eval,
    aten.group_norm.default: _group_norm,
    # contractions and windows
    aten.linear.default: _linear, aten.matmul.default: _matmul, aten.mm.default: _matmul,
    aten.bmm.default: _matmul, aten.addmm.default: _addmm, aten.baddbmm.default: _addmm,
    aten.convolution.default: _convolution,
    **{getattr(aten, f"conv{n}d").default: _conv for n in (1, 2, 3)},
    **{getattr(aten, f"conv{n}d").padding: _conv for n in (1, 2, 3)},
    aten.max_pool1d.default: _max_pool, aten.max_pool2d_with_indices.default: _max_pool,
    aten.max_pool2d.default: _max_pool, aten.max_pool3d.default: _max_pool,
    aten.max_pool3d_with_indices.default: _max_pool,
    aten.avg_pool1d.default: _avg_pool, aten.avg_pool2d.default: _avg_pool,
    aten.avg_pool3d.default: _avg_pool,
    aten.adaptive_avg_pool1d.default: _adaptive_avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool3d.default: _adaptive_avg_pool,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.embedding.default: _embedding,
    # layout
    aten.view.default: _reshape, aten._unsafe_view.default: _reshape,
    aten.reshape.default: _reshape, aten.view_as.default: _reshape,
    aten.reshape_as.default: _reshape, aten.flatten.using_ints: _reshape,
    aten.unflatten.int: _reshape,
    aten.expand.default: _expand, aten.expand_as.default: _expand,
    aten.permute.default: _permute, aten.transpose.int: _transpose, aten.t.default: _t,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.default: _squeeze, aten.squeeze.dim: _squeeze, aten.squeeze.dims: _squeeze,
    aten.slice.Tensor: _slice, aten.select.int: _select, aten.narrow.default: _narrow,
    aten.cat.default: _cat, aten.stack.default: _stack,
    aten.split_with_sizes.default: _split, aten.split.Tensor: _split, aten.chunk.default: _split,
    aten.unbind.int: _unbind, aten.diff.default: _diff,
    aten.constant_pad_nd.default: _constant_pad,
    aten.flip.default: _flip, aten.repeat.default: _repeat, aten.tile.default: _tile,
    aten.gather.default: _gather, aten.index_select.default: _index_select,
    aten.index.Tensor: _index,
    aten.triu.default: _triangle("triu"), aten.tril.default: _triangle("tril"),
}

# Ops with no output kiln needs: torch's runtime checks of shapes and metadata.
SKIPPED = frozenset({aten._assert_tensor_metadata.default, aten._assert_scalar.default,
                     aten._assert_async.msg, aten.sym_constrain_range_for_size.default,
                     aten.sym_constrain_range.default})
