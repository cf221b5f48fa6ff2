"""ONNX neural-network ops -> kiln: MatMul, Gemm, Conv, MaxPool, AveragePool, the
global pools, the normalizations (Batch/Instance/Group/Layer/RMS/Lp/MeanVariance)
and Attention (onto `scaled_dot_product_attention`)."""
from __future__ import annotations

import math

import numpy as np

from ...ir import Value, symbolic
from ...ir.ops.common import window_out_dim
from .importer import NodeContext, Unsupported, converter


@converter("MatMul")
def _matmul(ctx: NodeContext):
    return [ctx.emit("matmul", ctx.input(0), ctx.input(1))]


@converter("Gemm", attrs=["alpha", "beta", "transA", "transB"])
def _gemm(ctx: NodeContext):
    a, b, c = ctx.input(0), ctx.input(1), ctx.optional_input(2)
    if ctx.attr("transA", 0):
        a = ctx.emit("transpose", a, perm=(1, 0))
    if ctx.attr("transB", 0):
        b = ctx.emit("transpose", b, perm=(1, 0))
    y = ctx.emit("matmul", a, b)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if alpha != 1.0:
        y = ctx.emit("mul", y, ctx.scalar(alpha, y))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.emit("mul", c, ctx.scalar(beta, c))
        y = ctx.emit("add", y, c)
    return [y]


# --- windows -------------------------------------------------------------------------------
def _window(ctx: NodeContext, x: Value, kernel: list[int], *, dilations=None
            ) -> tuple[list[int], list[int], list[int]]:
    """(strides, pads, dilations) of a Conv/Pool node, auto_pad resolved."""
    sp = len(kernel)
    strides = list(ctx.attr("strides") or [1] * sp)
    dil = list(dilations or ctx.attr("dilations") or [1] * sp)
    pads = list(ctx.attr("pads") or [0] * (2 * sp))
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * sp)
        for i in range(sp):
            size = x.type.shape[2 + i]
            if not isinstance(size, int):
                raise Unsupported(f"auto_pad={auto} on the symbolic dim {size}")
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + sp] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={auto!r}")
    return strides, pads, dil


@converter("Conv", attrs=["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"])
def _conv(ctx: NodeContext):
    x, w, b = ctx.input(0), ctx.input(1), ctx.optional_input(2)
    kernel = list(w.type.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        raise Unsupported("a symbolic kernel size")
    strides, pads, dil = _window(ctx, x, kernel)
    args = (x, w) + ((b,) if b is not None else ())
    return [ctx.emit("conv", *args, strides=strides, pads=pads, dilations=dil,
                     groups=ctx.attr("group", 1))]


@converter("MaxPool", attrs=["auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                             "storage_order", "strides"])
def _max_pool(ctx: NodeContext):
    if ctx.wants_output(1):
        raise Unsupported("the Indices output")
    x = ctx.input(0)
    kernel = list(ctx.attr("kernel_shape"))
    strides, pads, dil = _window(ctx, x, kernel)
    return [ctx.emit("max_pool", x, kernel=kernel, strides=strides, pads=pads,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)), dilations=dil)]


@converter("AveragePool", attrs=["auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                 "kernel_shape", "pads", "strides"])
def _avg_pool(ctx: NodeContext):
    x = ctx.input(0)
    kernel = list(ctx.attr("kernel_shape"))
    strides, pads, dil = _window(ctx, x, kernel)
    if any(d != 1 for d in dil):
        return [_dilated_avg_pool(ctx, x, kernel, strides, pads, dil)]
    return [ctx.emit("avg_pool", x, kernel=kernel, strides=strides, pads=pads,
                     ceil_mode=bool(ctx.attr("ceil_mode", 0)),
                     count_include_pad=bool(ctx.attr("count_include_pad", 0)))]


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: NodeContext):
    x = ctx.input(0)
    op = "mean" if ctx.op == "GlobalAveragePool" else "max"
    return [ctx.emit(op, x, axes=tuple(range(2, x.type.rank)), keepdims=True)]


# --- normalizations ------------------------------------------------------------------------
@converter("BatchNormalization", attrs=["epsilon", "momentum", "training_mode"])
def _batch_norm(ctx: NodeContext):
    if ctx.attr("training_mode", 0) or ctx.num_outputs > 1:
        raise Unsupported("training_mode (batch statistics and running-stat outputs)")
    x, scale, bias, mean, var = (ctx.input(i) for i in range(5))
    return [ctx.emit("batch_norm", x, mean, var, scale, bias, eps=ctx.attr("epsilon", 1e-5))]


@converter("InstanceNormalization", attrs=["epsilon"])
def _instance_norm(ctx: NodeContext):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    c = x.type.shape[1]
    if not isinstance(c, int):
        raise Unsupported("a symbolic channel count")
    return [ctx.emit("group_norm", x, scale, bias, num_groups=c, eps=ctx.attr("epsilon", 1e-5))]


@converter("GroupNormalization", attrs=["epsilon", "num_groups", "stash_type"])
def _group_norm(ctx: NodeContext):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    if scale.type.shape != (x.type.shape[1],):
        raise Unsupported(f"scale of shape {list(scale.type.shape)} (per group, opset < 21)")
    return [ctx.emit("group_norm", x, scale, bias, num_groups=ctx.attr("num_groups"),
                     eps=ctx.attr("epsilon", 1e-5))]


def _affine(ctx: NodeContext, y: Value, scale: Value | None, bias: Value | None) -> Value:
    if scale is not None:
        y = ctx.emit("mul", y, scale)
    if bias is not None:
        y = ctx.emit("add", y, bias)
    return y


@converter("LayerNormalization", attrs=["axis", "epsilon", "stash_type"])
def _layer_norm(ctx: NodeContext):
    x = ctx.input(0)
    if ctx.num_outputs > 1:
        return _layer_norm_with_stats(ctx, x)
    y = ctx.emit("layer_norm", x, axis=ctx.attr("axis", -1), eps=ctx.attr("epsilon", 1e-5))
    return [_affine(ctx, y, ctx.input(1), ctx.optional_input(2))]


def _layer_norm_with_stats(ctx: NodeContext, x: Value) -> list[Value]:
    """Y, Mean and InvStdDev, the statistics in the stash type (float32 unless
    stash_type says double)."""
    stash = {1: "f32", 11: "f64"}.get(ctx.attr("stash_type", 1))
    if stash is None:
        raise Unsupported(f"stash_type {ctx.attr('stash_type')}")
    axis = ctx.attr("axis", -1) % x.type.rank
    axes = tuple(range(axis, x.type.rank))
    xs = x if x.type.dtype.name == stash else ctx.emit("cast", x, dtype=stash)
    mean = ctx.emit("mean", xs, axes=axes, keepdims=True)
    centered = ctx.emit("sub", xs, mean)
    var = ctx.emit("mean", ctx.emit("mul", centered, centered), axes=axes, keepdims=True)
    inv = ctx.emit("reciprocal", ctx.emit("sqrt", ctx.emit(
        "add", var, ctx.scalar(ctx.attr("epsilon", 1e-5), var))))
    y = ctx.emit("mul", centered, inv)
    if y.type.dtype != x.type.dtype:
        y = ctx.emit("cast", y, dtype=x.type.dtype)
    return [_affine(ctx, y, ctx.input(1), ctx.optional_input(2)), mean, inv]


@converter("RMSNormalization", attrs=["axis", "epsilon", "stash_type"])
def _rms_norm(ctx: NodeContext):
    x = ctx.input(0)
    y = ctx.emit("rms_norm", x, axis=ctx.attr("axis", -1), eps=ctx.attr("epsilon", 1e-5))
    return [_affine(ctx, y, ctx.input(1), None)]


@converter("LpNormalization", attrs=["axis", "p"])
def _lp_norm(ctx: NodeContext):
    x = ctx.input(0)
    axis, p = ctx.attr("axis", -1) % x.type.rank, ctx.attr("p", 2)
    if p == 1:
        norm = ctx.emit("sum", ctx.emit("abs", x), axes=(axis,), keepdims=True)
    elif p == 2:
        norm = ctx.emit("sqrt", ctx.emit("sum", ctx.emit("mul", x, x), axes=(axis,),
                                         keepdims=True))
    else:
        raise Unsupported(f"p={p}")
    zero = ctx.emit("eq", norm, ctx.scalar(0, norm))   # ONNX: a zero norm gives 0
    safe = ctx.emit("where", zero, ctx.scalar(1, norm), norm)
    return [ctx.emit("where", zero, ctx.scalar(0, x), ctx.emit("div", x, safe))]


@converter("MeanVarianceNormalization", attrs=["axes"])
def _mvn(ctx: NodeContext):
    x = ctx.input(0)
    axes = tuple(a % x.type.rank for a in (ctx.attr("axes") or [0, 2, 3]))
    mean = ctx.emit("mean", x, axes=axes, keepdims=True)
    centered = ctx.emit("sub", x, mean)
    var = ctx.emit("mean", ctx.emit("mul", centered, centered), axes=axes, keepdims=True)
    std = ctx.emit("sqrt", ctx.emit("add", var, ctx.scalar(1e-9, var)))
    return [ctx.emit("div", centered, std)]


# --- attention -----------------------------------------------------------------------------
def _heads(ctx: NodeContext, x: Value, heads: int | None, what: str) -> Value:
    """A 3-D [B, S, heads*D] input as 4-D [B, heads, S, D]."""
    if x.type.rank == 4:
        return x
    if not heads:
        raise Unsupported(f"3-D {what} without its num_heads attribute")
    b, s, hd = x.type.shape
    y = ctx.emit("reshape", x, shape=(b, s, heads, symbolic.floordiv(hd, heads)))
    return ctx.emit("transpose", y, perm=(0, 2, 1, 3))


@converter("Attention", attrs=["is_causal", "kv_num_heads", "q_num_heads", "scale",
                               "softcap", "qk_matmul_output_mode", "softmax_precision",
                               "left_window_size", "right_window_size"])
def _attention(ctx: NodeContext):
    q3 = ctx.input(0)
    q = _heads(ctx, q3, ctx.attr("q_num_heads"), "Q")
    k = _heads(ctx, ctx.input(1), ctx.attr("kv_num_heads"), "K")
    v = _heads(ctx, ctx.input(2), ctx.attr("kv_num_heads"), "V")
    if ctx.has_input(4) != ctx.has_input(5):
        raise Unsupported("past_key without past_value (or the reverse)")
    if ctx.has_input(4):
        k = ctx.emit("concat", ctx.input(4), k, axis=2)
        v = ctx.emit("concat", ctx.input(5), v, axis=2)
    hq, hk = q.type.shape[1], k.type.shape[1]
    if not (isinstance(hq, int) and isinstance(hk, int)):
        raise Unsupported("symbolic head counts")
    plain = not (ctx.attr("softcap", 0.0) or ctx.attr("qk_matmul_output_mode", 0)
                 or ctx.wants_output(3) or ctx.has_input(4) or ctx.has_input(6)
                 or ctx.attr("left_window_size", -1) >= 0
                 or ctx.attr("right_window_size", -1) >= 0
                 or ctx.attr("softmax_precision") not in (None, 1))
    kh, vh = (_repeat_heads(ctx, t, hq // hk) if hq != hk else t for t in (k, v))
    if plain:
        y, scores = _sdpa(ctx, q, kh, vh), None
    else:
        y, scores = _attention_decomposed(ctx, q, kh, vh)
    if q3.type.rank == 3:
        b, h, s, d = y.type.shape
        y = ctx.emit("reshape", ctx.emit("transpose", y, perm=(0, 2, 1, 3)),
                     shape=(b, s, symbolic.mul(h, d)))
    return [y, k, v, scores]


def _sdpa(ctx: NodeContext, q: Value, k: Value, v: Value) -> Value:
    """Attention without caches or extra outputs: kiln's fused attention op."""
    mask = ctx.optional_input(3)
    causal = bool(ctx.attr("is_causal", 0))
    L, S = q.type.shape[2], k.type.shape[2]
    if mask is not None and mask.type.shape[-1] != S:
        mask = _pad_mask(ctx, mask, S)
    if causal and mask is not None:
        if not (isinstance(L, int) and isinstance(S, int)):
            raise Unsupported("is_causal with a mask on symbolic lengths")
        keep = ctx.const(np.tril(np.ones((L, S), bool)))
        if mask.type.dtype.is_bool:
            mask = ctx.emit("logical_and", mask, keep)
        else:
            mask = ctx.emit("where", keep, mask, ctx.scalar(-np.inf, mask))
        causal = False
    if mask is not None and not mask.type.dtype.is_bool and mask.type.dtype != q.type.dtype:
        raise Unsupported(f"a {mask.type.dtype!r} mask on {q.type.dtype!r} inputs")
    args = (q, k, v) + ((mask,) if mask is not None else ())
    return ctx.emit("scaled_dot_product_attention", *args, is_causal=causal,
                    scale=ctx.attr("scale"))


def _pad_mask(ctx: NodeContext, mask: Value, kv_len) -> Value:
    """A mask shorter than the keys (opset 24+) masks the missing positions out."""
    have = mask.type.shape[-1]
    if not (isinstance(have, int) and isinstance(kv_len, int)):
        raise Unsupported("a mask shorter than the symbolic key length")
    rank = mask.type.rank
    pads = [0] * (2 * rank)
    pads[2 * rank - 1] = kv_len - have
    fill = 0.0 if mask.type.dtype.is_bool else -np.inf
    return ctx.emit("pad", mask, pads=pads, mode="constant", value=fill)


def _attention_bias(ctx: NodeContext, q: Value, L: int, S: int) -> tuple[Value | None, np.ndarray]:
    """(the mask input as an additive bias, or None; the static additive bias of
    is_causal, the sliding window and nonpad_kv_seqlen, [B or 1, 1, L, S])."""
    dtype = q.type.dtype.numpy
    mask = ctx.optional_input(3)
    bias = None
    if mask is not None:
        if mask.type.shape[-1] != S:
            mask = _pad_mask(ctx, mask, S)
        if mask.type.dtype.is_bool:
            mask = ctx.emit("where", mask, ctx.scalar(0.0, q), ctx.scalar(-np.inf, q))
        elif mask.type.dtype != q.type.dtype:
            raise Unsupported(f"a {mask.type.dtype!r} mask on {q.type.dtype!r} inputs")
        bias = mask
    nonpad = ctx.static_ints(6, "nonpad_kv_seqlen")
    past = ctx.input(4).type.shape[2] if ctx.has_input(4) else 0
    if not isinstance(past, int):
        raise Unsupported("a symbolic past length")
    offsets = (np.asarray(nonpad).reshape(-1, 1, 1) - L) if nonpad is not None else \
        np.asarray(past).reshape(1, 1, 1)
    diff = np.arange(L).reshape(1, L, 1) + offsets - np.arange(S).reshape(1, 1, S)
    allowed = np.ones(diff.shape, bool)
    if ctx.attr("is_causal", 0):
        allowed &= diff >= 0
    left, right = ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    if nonpad is not None:
        allowed &= np.arange(S).reshape(1, 1, S) < np.asarray(nonpad).reshape(-1, 1, 1)
    static = np.where(allowed, 0.0, -np.inf).astype(dtype)[:, None]
    return bias, static


def _attention_decomposed(ctx: NodeContext, q: Value, k: Value, v: Value
                          ) -> tuple[Value, Value]:
    """ONNX Attention step by step (softcap, windows, caches, nonpad lengths and the
    qk_matmul_output output): (output [B, H, L, Dv], the requested QK output)."""
    L, S = q.type.shape[2], k.type.shape[2]
    if not (isinstance(L, int) and isinstance(S, int)):
        raise Unsupported("symbolic sequence lengths")
    scale = ctx.attr("scale")
    scale = 1 / math.sqrt(q.type.shape[3]) if scale is None else scale
    root = ctx.scalar(math.sqrt(scale), q)    # ONNX scales Q and K by sqrt(scale) each
    kt = ctx.emit("transpose", ctx.emit("mul", k, root), perm=(0, 1, 3, 2))
    scores = ctx.emit("matmul", ctx.emit("mul", q, root), kt)
    softcap = ctx.attr("softcap", 0.0)
    if softcap > 0:
        cap = ctx.scalar(softcap, scores)
        scores = ctx.emit("mul", ctx.emit("tanh", ctx.emit("div", scores, cap)), cap)
    mask, static = _attention_bias(ctx, q, L, S)
    biased = ctx.emit("add", scores, ctx.const(static))
    if mask is not None:
        biased = ctx.emit("add", biased, mask)
    mode = ctx.attr("qk_matmul_output_mode", 0)
    if mode not in (0, 1, 2, 3):
        raise Unsupported(f"qk_matmul_output_mode {mode}")
    precision = ctx.attr("softmax_precision")
    logits = biased
    if precision is not None:
        from .importer import to_kiln_dtype
        want = to_kiln_dtype(precision)
        if not want.is_float:
            raise Unsupported(f"softmax_precision {want!r}")
        if want != biased.type.dtype:
            logits = ctx.emit("cast", biased, dtype=want)
    probs = ctx.emit("softmax", logits, axis=-1)
    # a row with every key masked out gives zeros (ONNX), not the softmax's NaNs
    if mask is None:
        dead = np.isneginf(static.max(axis=-1, keepdims=True))
        if dead.any():
            probs = ctx.emit("where", ctx.const(dead), ctx.scalar(0.0, probs), probs)
    else:
        full = ctx.emit("add", mask, ctx.const(static))
        dead = ctx.emit("eq", ctx.emit("max", full, axes=(-1 % full.type.rank,), keepdims=True),
                        ctx.scalar(-np.inf, full))
        probs = ctx.emit("where", dead, ctx.scalar(0.0, probs), probs)
    if probs.type.dtype != q.type.dtype:
        probs = ctx.emit("cast", probs, dtype=q.type.dtype)
    out = {0: scores, 1: scores, 2: biased, 3: probs}[mode]
    return ctx.emit("matmul", probs, v), out


def _repeat_heads(ctx: NodeContext, t: Value, n: int) -> Value:
    b, h, s, d = t.type.shape
    y = ctx.emit("unsqueeze", t, axes=(2,))
    y = ctx.emit("expand", y, shape=(b, h, n, s, d))
    return ctx.emit("reshape", y, shape=(b, h * n, s, d))


# --- losses --------------------------------------------------------------------------------
def nll_loss(ctx: NodeContext, logp: Value, target: Value, weight: Value | None) -> Value:
    """ONNX NegativeLogLikelihoodLoss on log-probabilities [N, C, d...]."""
    reduction = ctx.attr("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise Unsupported(f"reduction {reduction!r}")
    ignore = ctx.attrs.get("ignore_index")
    index, valid = target, None
    if ignore is not None:
        valid = ctx.emit("ne", target, ctx.scalar(ignore, target))
        index = ctx.emit("where", valid, target, ctx.scalar(0, target))
    picked = ctx.emit("gather_elements", logp, ctx.emit("unsqueeze", index, axes=(1,)), axis=1)
    loss = ctx.emit("neg", ctx.emit("squeeze", picked, axes=(1,)))
    w = ctx.emit("gather", weight, index, axis=0) if weight is not None else None
    if valid is not None:
        mask = ctx.emit("cast", valid, dtype=logp.type.dtype)
        w = mask if w is None else ctx.emit("mul", w, mask)
    if w is not None:
        loss = ctx.emit("mul", loss, w)
    if reduction == "none":
        return loss
    total = ctx.emit("sum", loss, axes=(), keepdims=False)
    if reduction == "sum":
        return total
    if w is None:
        return ctx.emit("mean", loss, axes=(), keepdims=False)
    return ctx.emit("div", total, ctx.emit("sum", w, axes=(), keepdims=False))


@converter("NegativeLogLikelihoodLoss", attrs=["ignore_index", "reduction"])
def _nll_loss(ctx: NodeContext):
    return [nll_loss(ctx, ctx.input(0), ctx.input(1), ctx.optional_input(2))]


@converter("SoftmaxCrossEntropyLoss", attrs=["ignore_index", "reduction"])
def _softmax_cross_entropy(ctx: NodeContext):
    logp = ctx.emit("log_softmax", ctx.input(0), axis=1)
    return [nll_loss(ctx, logp, ctx.input(1), ctx.optional_input(2)), logp]


# --- transposed convolution and the remaining pools ---------------------------------------
def _transpose_pads(ctx: NodeContext, x: Value, kernel: list[int], strides: list[int],
                    dil: list[int], out_pad: list[int]) -> list[int]:
    """ConvTranspose's begin-then-end pads: given, or from output_shape / auto_pad."""
    sp = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto!r}")
    pads = ctx.attr("pads")
    output_shape = ctx.attr("output_shape")
    if pads is not None and output_shape is None or \
            output_shape is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        return list(pads or [0] * (2 * sp))
    sizes = x.type.shape[2:]
    if not all(isinstance(s, int) for s in sizes):
        raise Unsupported("output_shape/auto_pad on symbolic spatial dims")
    want = list(output_shape)[-sp:] if output_shape is not None else \
        [s * st for s, st in zip(sizes, strides)]
    begins, ends = [], []
    for i in range(sp):
        total = strides[i] * (sizes[i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] + 1 - want[i]
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _spread(ctx: NodeContext, x: Value, axis: int, stride: int) -> Value:
    """Insert stride - 1 zeros between neighbours along `axis` (static size)."""
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise Unsupported(f"a stride on the symbolic dim {size}")
    y = ctx.emit("unsqueeze", x, axes=(axis + 1,))
    pads = [0] * (2 * y.type.rank)
    pads[y.type.rank + axis + 1] = stride - 1
    y = ctx.emit("pad", y, pads=pads, mode="constant", value=0.0)
    shape = list(x.type.shape)
    shape[axis] = size * stride
    y = ctx.emit("reshape", y, shape=tuple(shape))
    return ctx.emit("slice", y, axis=axis, start=0, end=(size - 1) * stride + 1)


@converter("ConvTranspose", attrs=["auto_pad", "dilations", "group", "kernel_shape",
                                   "output_padding", "output_shape", "pads", "strides"])
def _conv_transpose(ctx: NodeContext):
    """A stride-1 conv of the zero-spread, padded input with the flipped, transposed kernel."""
    x, w, b = ctx.input(0), ctx.input(1), ctx.optional_input(2)
    kernel = list(w.type.shape[2:])
    c_in, c_out_g = w.type.shape[:2]
    if not all(isinstance(k, int) for k in kernel + [c_in, c_out_g]):
        raise Unsupported("a symbolic kernel shape")
    sp = len(kernel)
    groups = ctx.attr("group", 1)
    strides = list(ctx.attr("strides") or [1] * sp)
    dil = list(ctx.attr("dilations") or [1] * sp)
    out_pad = list(ctx.attr("output_padding") or [0] * sp)
    pads = _transpose_pads(ctx, x, kernel, strides, dil, out_pad)
    y = x
    for i in range(sp):
        if strides[i] > 1:
            y = _spread(ctx, y, 2 + i, strides[i])
    full = [0] * (2 * y.type.rank)
    for i in range(sp):
        lo = dil[i] * (kernel[i] - 1) - pads[i]
        hi = dil[i] * (kernel[i] - 1) - pads[sp + i] + out_pad[i]
        if lo < 0 or hi < 0:   # more padding than the kernel covers: crop instead
            size = y.type.shape[2 + i]
            y = ctx.emit("slice", y, axis=2 + i, start=max(-lo, 0),
                         end=symbolic.sub(size, max(-hi, 0)))
        full[2 + i], full[y.type.rank + 2 + i] = max(lo, 0), max(hi, 0)
    if any(full):
        y = ctx.emit("pad", y, pads=full, mode="constant", value=0.0)
    # [C_in, C_out/g, k...] -> [C_out, C_in/g, k...], spatially flipped
    wk = ctx.emit("reshape", w, shape=(groups, c_in // groups, c_out_g, *kernel))
    wk = ctx.emit("transpose", wk, perm=(0, 2, 1, *range(3, 3 + sp)))
    wk = ctx.emit("reshape", wk, shape=(groups * c_out_g, c_in // groups, *kernel))
    wk = ctx.emit("flip", wk, axes=tuple(range(2, 2 + sp)))
    args = (y, wk) + ((b,) if b is not None else ())
    return [ctx.emit("conv", *args, strides=[1] * sp, pads=[0] * (2 * sp), dilations=dil,
                     groups=groups)]


def _window_sum(ctx: NodeContext, x: Value, kernel: list[int], strides: list[int],
                pads: list[int], dil: list[int], ceil_mode: bool) -> tuple[Value, list[int]]:
    """Per-channel sums over each pooling window (a depthwise conv with a ones kernel),
    zero padding included; ceil_mode as extra end padding. Also the pads used."""
    channels = x.type.shape[1]
    if not isinstance(channels, int):
        raise Unsupported("a symbolic channel count")
    sp = len(kernel)
    pads = list(pads)
    if ceil_mode:
        for i in range(sp):
            size = x.type.shape[2 + i]
            if not isinstance(size, int):
                raise Unsupported("ceil_mode on a symbolic dim")
            out = window_out_dim(size, kernel[i], strides[i], pads[i], pads[sp + i], dil[i], True)
            need = (out - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1
            pads[sp + i] = max(pads[sp + i], need - size - pads[i])
    ones = ctx.const(np.ones((channels, 1, *kernel), x.type.dtype.numpy))
    return ctx.emit("conv", x, ones, strides=strides, pads=pads, dilations=dil,
                    groups=channels), pads


@converter("LpPool", attrs=["auto_pad", "ceil_mode", "dilations", "kernel_shape", "p", "pads",
                            "strides"])
def _lp_pool(ctx: NodeContext):
    x = ctx.input(0)
    kernel = list(ctx.attr("kernel_shape"))
    strides, pads, dil = _window(ctx, x, kernel)
    p = ctx.attr("p", 2)
    powered = ctx.emit("abs", x) if p == 1 else ctx.emit("mul", x, x) if p == 2 else \
        ctx.emit("pow", ctx.emit("abs", x), ctx.scalar(float(p), x))
    total, _ = _window_sum(ctx, powered, kernel, strides, pads, dil,
                           bool(ctx.attr("ceil_mode", 0)))
    if p == 1:
        return [total]
    if p == 2:
        return [ctx.emit("sqrt", total)]
    return [ctx.emit("pow", total, ctx.scalar(1.0 / p, total))]


def _window_counts(size: int, out: int, kernel: int, stride: int, lo: int, hi: int,
                   dil: int, include_pad: bool) -> np.ndarray:
    """How many taps of each output window along one axis average over."""
    taps = np.arange(out)[:, None] * stride - lo + np.arange(kernel)[None, :] * dil
    first, last = (-lo, size + hi) if include_pad else (0, size)
    return ((taps >= first) & (taps < last)).sum(axis=1)


def _dilated_avg_pool(ctx: NodeContext, x: Value, kernel: list[int], strides: list[int],
                      pads: list[int], dil: list[int]) -> Value:
    """AveragePool with dilations: window sums divided by each window's tap count."""
    sp = len(kernel)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    total, _ = _window_sum(ctx, x, kernel, strides, pads, dil, ceil_mode)
    counts = np.ones(())
    for i in range(sp):
        size, out = x.type.shape[2 + i], total.type.shape[2 + i]
        if not isinstance(size, int):
            raise Unsupported("dilations on a symbolic dim")
        counts = np.multiply.outer(counts, _window_counts(
            size, out, kernel[i], strides[i], pads[i], pads[sp + i], dil[i],
            bool(ctx.attr("count_include_pad", 0))))
    counts = counts.reshape((1, 1) + counts.shape)
    return ctx.emit("div", total, ctx.const(counts.astype(x.type.dtype.numpy)))
