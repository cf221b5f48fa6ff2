"""Contractions and windowed ops: matmul, linear, conv (1-3 spatial dims; also with
weights packed at compile time; in blocked channels `conv_nchwc`, and `conv_winograd` for
3 x 3 kernels), max/avg pooling, adaptive average pooling, and scaled dot-product
attention."""
from __future__ import annotations

import math

import numpy as np

from .. import symbolic
from ..registry import CONTRACTION, REDUCTION, Attr, OpDef, Operand, register, type_error
from ..types import TensorType
from .common import (as_dtype, broadcast_shapes, ieee, is_float_array, same_dtype, widen,
                     window_out_dim)

A, B, X = Operand("a"), Operand("b"), Operand("x")


def _matmul_infer(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype([a, b])
    if dtype.is_bool or dtype.packed or a.rank == 0 or b.rank == 0:
        raise type_error(f"matmul needs numeric inputs of rank >= 1, got {a} and {b}")
    a_shape = (1,) + a.shape if a.rank == 1 else a.shape
    b_shape = b.shape + (1,) if b.rank == 1 else b.shape
    if not symbolic.equal(a_shape[-1], b_shape[-2]):
        raise type_error(f"contracted dims differ: {a} @ {b}")
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    out = batch + ((a_shape[-2],) if a.rank > 1 else ()) + ((b_shape[-1],) if b.rank > 1 else ())
    return TensorType(out, dtype)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":  # wraps around in the input dtype, as torch
        return as_dtype(np.matmul(a.astype(np.int64), b.astype(np.int64)), a.dtype)
    return as_dtype(np.matmul(widen(a), widen(b)), a.dtype)


register(OpDef("matmul", (A, B), _matmul_infer, _matmul, (), {CONTRACTION},
               doc="np.matmul: batch dims broadcast; rank-1 operands as in NumPy"))


def _linear_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None) -> TensorType:
    dtype = same_dtype([x, weight] + ([bias] if bias else []))
    if not dtype.is_float or x.rank < 1 or weight.rank != 2:
        raise type_error(f"linear needs float x of rank >= 1 and a 2-D weight, got {x}, {weight}")
    if not symbolic.equal(x.shape[-1], weight.shape[1]):
        raise type_error(f"x's last dim {x.shape[-1]} != weight's in-features {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise type_error(f"bias shape {list(bias.shape)} != [{weight.shape[0]}]")
    return TensorType(x.shape[:-1] + (weight.shape[0],), dtype)


def _linear(x, weight, bias=None):
    y = widen(x) @ widen(weight).T
    if bias is not None:
        y = y + widen(bias)
    return as_dtype(y, x.dtype)


register(OpDef("linear", (X, Operand("weight"), Operand("bias", optional=True)), _linear_infer,
               _linear, (), {CONTRACTION}, doc="x @ weight.T + bias; weight is [out, in]"))


# --- weights packed at compile time (passes/pack.py) -----------------------------------------
def pack_panels(w: np.ndarray, panel: int) -> np.ndarray:
    """A weight matrix w[n, k] as column panels: packed[p, k, j] = w[p*panel + j, k], the
    last panel zero-padded: [ceil(n/panel), k, panel], contiguous. A GEMM kernel reads
    one panel's k-th row (`panel` output features) as whole vectors."""
    n, k = w.shape
    panels = -(-n // panel)
    padded = np.zeros((panels * panel, k), w.dtype)
    padded[:n] = w
    return np.ascontiguousarray(padded.reshape(panels, panel, k).transpose(0, 2, 1))


def unpack_panels(packed: np.ndarray, n: int) -> np.ndarray:
    """The inverse of `pack_panels`: w[n, k]."""
    panels, k, panel = packed.shape
    return packed.transpose(0, 2, 1).reshape(panels * panel, k)[:n]


def _check_panels(packed: TensorType, rows: symbolic.Dim, k: symbolic.Dim, what: str) -> None:
    if packed.rank != 3 or not all(isinstance(d, int) for d in packed.shape):
        raise type_error(f"{what}: the packed weight must be a static [panels, k, panel] "
                         f"tensor, got {packed}")
    panels, pk, panel = packed.shape
    if not isinstance(rows, int) or rows <= 0 or not (panels - 1) * panel < rows <= panels * panel:
        raise type_error(f"{what}: {rows} output features do not fill {panels} panels of {panel}")
    if not symbolic.equal(pk, k):
        raise type_error(f"{what}: the packed weight's reduction length {pk} != the input's {k}")


def _linear_packed_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                         out_features) -> TensorType:
    dtype = same_dtype([x, weight] + ([bias] if bias else []))
    if not dtype.is_float or x.rank < 1:
        raise type_error(f"linear_packed needs float x of rank >= 1, got {x}")
    _check_panels(weight, out_features, x.shape[-1], "linear_packed")
    if bias is not None and bias.shape != (out_features,):
        raise type_error(f"bias shape {list(bias.shape)} != [{out_features}]")
    return TensorType(x.shape[:-1] + (out_features,), dtype)


def _linear_packed(x, weight, bias=None, *, out_features):
    return _linear(x, unpack_panels(weight, out_features), bias)


register(OpDef("linear_packed", (X, Operand("weight"), Operand("bias", optional=True)),
               _linear_packed_infer, _linear_packed,
               (Attr("out_features", "int", doc="N: the packed weight's real rows"),),
               {CONTRACTION},
               doc="linear(x, W, bias) with W [N, K] given as `pack_panels(W, panel)`: "
                   "[ceil(N/panel), K, panel], packed at compile time"))


def _conv_packed_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                       out_channels, kernel, strides, pads, dilations) -> TensorType:
    if x.rank != len(kernel) + 2 or not kernel:
        raise type_error(f"conv_packed: x {x} must have rank {len(kernel) + 2} for kernel "
                         f"{list(kernel)}")
    _check_panels(weight, out_channels, symbolic.mul(x.shape[1], math.prod(kernel)),
                  "conv_packed")
    shape = (out_channels, x.shape[1], *kernel)
    return _conv_infer(x, TensorType(shape, weight.dtype), bias, strides=strides, pads=pads,
                       dilations=dilations, groups=1)


def _conv_packed(x, weight, bias=None, *, out_channels, kernel, strides, pads, dilations):
    w = unpack_panels(weight, out_channels).reshape(out_channels, x.shape[1], *kernel)
    return _conv(x, w, bias, strides=strides, pads=pads, dilations=dilations, groups=1)


register(OpDef("conv_packed", (X, Operand("weight"), Operand("bias", optional=True)),
               _conv_packed_infer, _conv_packed,
               (Attr("out_channels", "int"), Attr("kernel", "ints"), Attr("strides", "ints"),
                Attr("pads", "ints", doc="begins then ends"), Attr("dilations", "ints")),
               {CONTRACTION},
               doc="conv with one group whose weight W [C_out, C_in, *kernel] is given as "
                   "`pack_panels(W.reshape(C_out, -1), panel)`, packed at compile time"))


def _window_attrs(spatial: int, what: str, **lists) -> None:
    for name, values in lists.items():
        want = 2 * spatial if name == "pads" else spatial
        if len(values) != want:
            raise type_error(f"{what}: {name} {list(values)} must have {want} entries "
                             f"for {spatial} spatial dims")
        if name != "pads" and any(v <= 0 for v in values):
            raise type_error(f"{what}: {name} {list(values)} must be positive")
        if name == "pads" and any(v < 0 for v in values):
            raise type_error(f"{what}: pads {list(values)} must be non-negative")


def _conv_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                strides, pads, dilations, groups) -> TensorType:
    dtype = same_dtype([x, weight] + ([bias] if bias else []))
    spatial = weight.rank - 2
    if not dtype.is_float or spatial < 1 or x.rank != weight.rank:
        raise type_error(f"conv needs float x and weight of equal rank >= 3, got {x}, {weight}")
    _window_attrs(spatial, "conv", strides=strides, pads=pads, dilations=dilations)
    c_in, c_out = x.shape[1], weight.shape[0]
    if groups <= 0 or not symbolic.equal(symbolic.mul(weight.shape[1], groups), c_in):
        raise type_error(f"weight's {weight.shape[1]} in-channels x {groups} groups "
                         f"!= input channels {c_in}")
    if isinstance(c_out, int) and c_out % groups:
        raise type_error(f"{c_out} out-channels do not split into {groups} groups")
    if bias is not None and bias.shape != (c_out,):
        raise type_error(f"bias shape {list(bias.shape)} != [{c_out}]")
    out = tuple(window_out_dim(x.shape[2 + i], weight.shape[2 + i], strides[i], pads[i],
                               pads[i + spatial], dilations[i]) for i in range(spatial))
    return TensorType((x.shape[0], c_out) + out, dtype)


def _windows(x: np.ndarray, kernel, strides, dilations, out_shape) -> np.ndarray:
    """A strided view [N, C, *out, *kernel] of an already padded x."""
    n, c = x.shape[:2]
    s = x.strides
    spatial = len(kernel)
    shape = (n, c) + tuple(out_shape) + tuple(kernel)
    strides_ = s[:2] + tuple(s[2 + i] * strides[i] for i in range(spatial)) + \
        tuple(s[2 + i] * dilations[i] for i in range(spatial))
    return np.lib.stride_tricks.as_strided(x, shape, strides_, writeable=False)


def _conv(x, weight, bias=None, *, strides, pads, dilations, groups):
    spatial = weight.ndim - 2
    xw, ww = widen(x), widen(weight)
    xp = np.pad(xw, [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)])
    k = weight.shape[2:]
    out_shape = [(xp.shape[2 + i] - dilations[i] * (k[i] - 1) - 1) // strides[i] + 1
                 for i in range(spatial)]
    win = _windows(xp, k, strides, dilations, out_shape)          # N, C, *out, *k
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    cg, og = c_in // groups, c_out // groups
    outs = []
    letters = "defgh"[:spatial]
    klet = "xyz"[:spatial]
    for g in range(groups):
        wg = win[:, g * cg:(g + 1) * cg]
        kg = ww[g * og:(g + 1) * og]
        outs.append(np.einsum(f"nc{letters}{klet},oc{klet}->no{letters}", wg, kg, optimize=True))
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    if bias is not None:
        y = y + widen(bias).reshape((1, -1) + (1,) * spatial)
    return as_dtype(y, x.dtype)


register(OpDef("conv", (X, Operand("weight"), Operand("bias", optional=True)), _conv_infer, _conv,
               (Attr("strides", "ints"), Attr("pads", "ints", doc="begins then ends"),
                Attr("dilations", "ints"), Attr("groups", "int", 1)), {CONTRACTION},
               doc="N-d convolution (cross-correlation); weight [C_out, C_in/groups, *kernel]"))


# --- blocked channels (NCHWc): the layout passes/layout.py gives conv chains -------------------
def block_channels(x: np.ndarray, cb: int) -> np.ndarray:
    """Activations [N, C, *spatial] as channel blocks [N, C/cb, *spatial, cb]:
    out[n, cB, ..., ci] = x[n, cB*cb + ci, ...]; C must be a multiple of cb."""
    n, c = x.shape[:2]
    if cb <= 0 or c % cb:
        raise type_error(f"block_channels: {c} channels do not split into blocks of {cb}")
    blocked = x.reshape(n, c // cb, cb, *x.shape[2:])
    return np.ascontiguousarray(np.moveaxis(blocked, 2, -1))


def unblock_channels(x: np.ndarray) -> np.ndarray:
    """The inverse of `block_channels`: [N, C/cb, *spatial, cb] -> [N, C, *spatial]."""
    n, blocks, cb = x.shape[0], x.shape[1], x.shape[-1]
    return np.ascontiguousarray(np.moveaxis(x, -1, 2)).reshape(n, blocks * cb, *x.shape[2:-1])


def block_weight(w: np.ndarray, cb: int, ob: int) -> np.ndarray:
    """A conv weight [O, C, *kernel] as `conv_nchwc` reads it, [O/ob, C/cb, *kernel, cb, ob]:
    out[oB, cB, k.., ci, oi] = w[oB*ob + oi, cB*cb + ci, k..]; O and C must be multiples
    of ob and cb."""
    o, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    if ob <= 0 or cb <= 0 or o % ob or c % cb:
        raise type_error(f"block_weight: a weight of {o} out- and {c} in-channels does not "
                         f"split into blocks of {ob} and {cb}")
    sp = len(kernel)
    blocked = w.reshape(o // ob, ob, c // cb, cb, *kernel)         # oB, oi, cB, ci, k..
    order = (0, 2, *range(4, 4 + sp), 3, 1)                       # oB, cB, k.., ci, oi
    return np.ascontiguousarray(blocked.transpose(order))


def unblock_weight(w: np.ndarray) -> np.ndarray:
    """The inverse of `block_weight`: [O/ob, C/cb, *kernel, cb, ob] -> [O, C, *kernel]."""
    sp = w.ndim - 4
    o_blocks, c_blocks, cb, ob = w.shape[0], w.shape[1], w.shape[-2], w.shape[-1]
    order = (0, w.ndim - 1, 1, w.ndim - 2, *range(2, 2 + sp))      # oB, oi, cB, ci, k..
    return w.transpose(order).reshape(o_blocks * ob, c_blocks * cb, *w.shape[2:2 + sp])


def _conv_nchwc_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                      strides, pads, dilations) -> TensorType:
    dtype = same_dtype([x, weight] + ([bias] if bias else []))
    spatial = weight.rank - 4
    if not dtype.is_float or spatial < 1 or x.rank != spatial + 3:
        raise type_error(f"conv_nchwc needs float x [N, C/cb, *spatial, cb] and weight "
                         f"[O/ob, C/cb, *kernel, cb, ob] with rank(x) = rank(weight) - 1 >= 4, "
                         f"got {x}, {weight}")
    _window_attrs(spatial, "conv_nchwc", strides=strides, pads=pads, dilations=dilations)
    if not symbolic.equal(weight.shape[1], x.shape[1]):
        raise type_error(f"conv_nchwc: weight's {weight.shape[1]} in-channel blocks != x's "
                         f"{x.shape[1]}")
    if not symbolic.equal(weight.shape[-2], x.shape[-1]):
        raise type_error(f"conv_nchwc: weight's in-channel block {weight.shape[-2]} != x's "
                         f"channel block {x.shape[-1]}")
    o_blocks, ob = weight.shape[0], weight.shape[-1]
    if bias is not None and bias.shape != (o_blocks, ob):
        raise type_error(f"conv_nchwc: bias shape {list(bias.shape)} != [{o_blocks}, {ob}]")
    kernel = weight.shape[2:2 + spatial]
    if not all(isinstance(k, int) for k in kernel):
        raise type_error(f"conv_nchwc: the kernel's spatial size {list(kernel)} must be static")
    out = tuple(window_out_dim(x.shape[2 + i], kernel[i], strides[i], pads[i],
                               pads[i + spatial], dilations[i]) for i in range(spatial))
    return TensorType((x.shape[0], o_blocks) + out + (ob,), dtype)


def _conv_nchwc(x, weight, bias=None, *, strides, pads, dilations):
    y = _conv(unblock_channels(x), unblock_weight(weight),
              None if bias is None else bias.reshape(-1), strides=strides, pads=pads,
              dilations=dilations, groups=1)
    return block_channels(y, weight.shape[-1])


register(OpDef("conv_nchwc", (X, Operand("weight"), Operand("bias", optional=True)),
               _conv_nchwc_infer, _conv_nchwc,
               (Attr("strides", "ints"), Attr("pads", "ints", doc="begins then ends"),
                Attr("dilations", "ints")), {CONTRACTION},
               doc="conv (one group) in blocked channels: x [N, C/cb, *spatial, cb], weight "
                   "[O/ob, C/cb, *kernel, cb, ob] (`block_weight`), bias [O/ob, ob] -> "
                   "[N, O/ob, *out, ob]; equal to conv on the unblocked tensors"))



# --- Winograd convolution F(m x m, 3 x 3) in blocked channels (Lavin & Gray, 2016) ------------
def winograd_matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(tile x tile, 3 x 3), float64, for tile 2 (interpolation points
    0, +-1) or 4 (0, +-1, +-2): an (tile + 2)^2 input tile d and a 3 x 3 filter g give
    the tile x tile outputs A^T [(G g G^T) * (B^T d B)] A."""
    if tile == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif tile == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
              [0, 1, -1, 8, -8, 1]]
    else:
        raise type_error(f"Winograd tiles are 2 or 4 outputs wide, got {tile}")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def winograd_weight(w: np.ndarray, tile: int, cb: int, ob: int) -> np.ndarray:
    """A 3 x 3 conv weight [O, C, 3, 3] as `conv_winograd` reads it: U = G w G^T per
    (out, in) channel pair, blocked [a, a, O/ob, C/cb, cb, ob] (a = tile + 2), in w's
    dtype (computed in float64)."""
    o, c = w.shape[:2]
    if w.shape[2:] != (3, 3) or ob <= 0 or cb <= 0 or o % ob or c % cb:
        raise type_error(f"winograd_weight: needs a [O, C, 3, 3] weight with O, C multiples "
                         f"of {ob}, {cb}, got {list(w.shape)}")
    _, g, _ = winograd_matrices(tile)
    a = tile + 2
    u = np.einsum("ik,ockl,jl->ijoc", g, w.astype(np.float64), g)
    u = u.reshape(a, a, o // ob, ob, c // cb, cb).transpose(0, 1, 2, 4, 5, 3)
    return np.ascontiguousarray(u.astype(w.dtype))


def _conv_winograd_infer(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                         tile, pads) -> TensorType:
    dtype = same_dtype([x, weight] + ([bias] if bias else []))
    a = tile + 2
    if tile not in (2, 4):
        raise type_error(f"conv_winograd: tile={tile}, expected 2 or 4")
    if not dtype.is_float or x.rank != 5 or weight.rank != 6 or weight.shape[:2] != (a, a):
        raise type_error(f"conv_winograd with tile={tile} needs float x [N, C/cb, H, W, cb] "
                         f"and weight [{a}, {a}, O/ob, C/cb, cb, ob], got {x}, {weight}")
    _window_attrs(2, "conv_winograd", pads=pads)
    if not symbolic.equal(weight.shape[3], x.shape[1]) or \
            not symbolic.equal(weight.shape[4], x.shape[4]):
        raise type_error(f"conv_winograd: weight {weight} does not read x {x}'s channel "
                         "blocks")
    o_blocks, ob = weight.shape[2], weight.shape[5]
    if bias is not None and bias.shape != (o_blocks, ob):
        raise type_error(f"conv_winograd: bias shape {list(bias.shape)} != [{o_blocks}, {ob}]")
    out = tuple(window_out_dim(x.shape[2 + i], 3, 1, pads[i], pads[i + 2], 1) for i in range(2))
    return TensorType((x.shape[0], o_blocks) + out + (ob,), dtype)


def _conv_winograd(x, weight, bias=None, *, tile, pads):
    bt, _, at = winograd_matrices(tile)
    a = tile + 2
    n, c_blocks, h, w, cb = x.shape
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    th, tw = -(-oh // tile), -(-ow // tile)
    xp = np.zeros((n, c_blocks, th * tile + 2, tw * tile + 2, cb), np.float64)  # >= padded x
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = widen(x)
    d = np.lib.stride_tricks.sliding_window_view(xp, (a, a), axis=(2, 3))[:, :, ::tile, ::tile]
    v = np.einsum("ir,ncpqkrs,js->ijncpqk", bt, d, bt, optimize=True)
    m = np.einsum("ijncpqk,ijockl->ijnopql", v, widen(weight), optimize=True)
    y = np.einsum("ri,ijnopql,sj->noprqsl", at, m, at, optimize=True)
    y = y.reshape(n, m.shape[3], th * tile, tw * tile, -1)[:, :, :oh, :ow]
    if bias is not None:
        y = y + widen(bias)[None, :, None, None, :]
    return as_dtype(y, x.dtype)


register(OpDef("conv_winograd", (X, Operand("weight"), Operand("bias", optional=True)),
               _conv_winograd_infer, _conv_winograd,
               (Attr("tile", "int", doc="outputs per tile side: F(tile x tile, 3 x 3)"),
                Attr("pads", "ints", doc="begins then ends")), {CONTRACTION},
               doc="3 x 3 conv (stride 1, one group) by Winograd's minimal filtering, in "
                   "blocked channels: x [N, C/cb, H, W, cb], weight [a, a, O/ob, C/cb, cb, ob] "
                   "(`winograd_weight`, a = tile + 2), bias [O/ob, ob]; equal to conv_nchwc "
                   "with the 3 x 3 weight up to rounding"))

def _pool_infer(x: TensorType, *, kernel, strides, pads, ceil_mode, dilations=None,
                **_) -> TensorType:
    spatial = len(kernel)
    if x.rank != spatial + 2 or x.dtype.is_bool or x.dtype.packed:
        raise type_error(f"pooling with a {spatial}-d kernel needs a numeric rank-{spatial + 2} "
                         f"input, got {x}")
    dil = dilations or (1,) * spatial
    _window_attrs(spatial, "pool", kernel=kernel, strides=strides, pads=pads, dilations=dil)
    for i in range(spatial):
        if pads[i] > kernel[i] // 2 or pads[i + spatial] > kernel[i] // 2:
            raise type_error(f"pads {list(pads)} exceed half the kernel {list(kernel)}")
    out = tuple(window_out_dim(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + spatial],
                               dil[i], ceil_mode) for i in range(spatial))
    return x.with_shape(x.shape[:2] + out)


def _pool_out_shape(x, kernel, strides, pads, dilations, ceil_mode):
    sp = len(kernel)
    return [int(window_out_dim(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + sp],
                               dilations[i], ceil_mode)) for i in range(sp)]


@ieee()
def _max_pool(x, *, kernel, strides, pads, dilations, ceil_mode):
    sp = len(kernel)
    out_shape = _pool_out_shape(x, kernel, strides, pads, dilations, ceil_mode)
    fill = -np.inf if is_float_array(x) else np.iinfo(x.dtype).min
    # pad the end far enough for ceil_mode's partial windows
    extra = [max(0, (out_shape[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + pads[i] + pads[i + sp])) for i in range(sp)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + sp] + extra[i]) for i in range(sp)],
                constant_values=np.asarray(fill).astype(x.dtype))
    win = _windows(xp, kernel, strides, dilations, out_shape)
    return win.max(axis=tuple(range(2 + sp, 2 + 2 * sp)))


@ieee()
def _avg_pool(x, *, kernel, strides, pads, ceil_mode, count_include_pad):
    sp = len(kernel)
    ones = (1,) * sp
    out_shape = _pool_out_shape(x, kernel, strides, pads, ones, ceil_mode)
    extra = [max(0, (out_shape[i] - 1) * strides[i] + kernel[i]
                 - (x.shape[2 + i] + pads[i] + pads[i + sp])) for i in range(sp)]
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + sp] + extra[i]) for i in range(sp)]
    xw = widen(x)
    total = _windows(np.pad(xw, widths), kernel, strides, ones, out_shape).sum(
        axis=tuple(range(2 + sp, 2 + 2 * sp)))
    # divisor: window cells inside the input (and inside the padding, if counted)
    inside = np.pad(np.ones((1, 1) + x.shape[2:], xw.dtype), [(0, 0), (0, 0)] +
                    [(pads[i], pads[i + sp]) for i in range(sp)], constant_values=1.0 if
                    count_include_pad else 0.0)
    inside = np.pad(inside, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    count = _windows(inside, kernel, strides, ones, out_shape).sum(
        axis=tuple(range(2 + sp, 2 + 2 * sp)))
    return as_dtype(total / count, x.dtype)


POOL_ATTRS = (Attr("kernel", "ints"), Attr("strides", "ints"), Attr("pads", "ints"),
              Attr("ceil_mode", "bool", False))
register(OpDef("max_pool", (X,), _pool_infer, _max_pool, POOL_ATTRS + (Attr("dilations", "ints"),),
               {REDUCTION}, doc="N-d max pooling; padding never wins the max"))
register(OpDef("avg_pool", (X,), _pool_infer, _avg_pool,
               POOL_ATTRS + (Attr("count_include_pad", "bool", True),), {REDUCTION},
               doc="N-d average pooling"))


def _adaptive_infer(x: TensorType, *, output_size) -> TensorType:
    sp = len(output_size)
    if x.rank != sp + 2 or not x.dtype.is_float or any(o <= 0 for o in output_size):
        raise type_error(f"adaptive pooling to {list(output_size)} needs a float rank-{sp + 2} "
                         f"input, got {x}")
    return x.with_shape(x.shape[:2] + tuple(output_size))


@ieee()
def _adaptive_avg_pool(x, *, output_size):
    xw = widen(x)
    out = xw
    for i, o in enumerate(output_size):
        axis = 2 + i
        n = x.shape[axis]
        pieces = []
        for j in range(o):
            start, end = (j * n) // o, -(-((j + 1) * n) // o)
            pieces.append(np.take(out, range(start, end), axis=axis).mean(axis=axis, keepdims=True))
        out = np.concatenate(pieces, axis=axis)
    return as_dtype(out, x.dtype)


register(OpDef("adaptive_avg_pool", (X,), _adaptive_infer, _adaptive_avg_pool,
               (Attr("output_size", "ints"),), {REDUCTION},
               doc="torch's adaptive average pooling: window j spans [floor(jn/o), ceil((j+1)n/o))"))


def _sdpa_infer(q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None = None, *,
                is_causal, scale) -> TensorType:
    dtype = same_dtype([q, k, v])
    if not dtype.is_float or min(q.rank, k.rank, v.rank) < 2:
        raise type_error(f"attention needs float q, k, v of rank >= 2, got {q}, {k}, {v}")
    if not symbolic.equal(q.shape[-1], k.shape[-1]) or not symbolic.equal(k.shape[-2], v.shape[-2]):
        raise type_error(f"q {q}, k {k}, v {v}: q/k head dims or k/v lengths differ")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if mask is not None:
        if not (mask.dtype.is_bool or mask.dtype == dtype):
            raise type_error(f"mask must be bool or {dtype!r}, got {mask.dtype!r}")
        scores = batch + (q.shape[-2], k.shape[-2])
        if mask.rank > len(scores) or not all(
                symbolic.equal(d, e) for d, e in zip(broadcast_shapes(mask.shape, scores), scores)):
            raise type_error(f"mask shape {list(mask.shape)} must broadcast to the scores' "
                             f"{list(scores)} without enlarging them")
        if is_causal:
            raise type_error("give either a mask or is_causal, not both")
    return TensorType(batch + (q.shape[-2], v.shape[-1]), dtype)


def _sdpa(q, k, v, mask=None, *, is_causal, scale):
    qw, kw, vw = widen(q), widen(k), widen(v)
    s = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    scores = (qw @ np.swapaxes(kw, -1, -2)) * np.asarray(s, qw.dtype)
    L, S = q.shape[-2], k.shape[-2]
    if is_causal:
        mask = np.tril(np.ones((L, S), bool))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + widen(mask)
    m = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)  # S may be 0
    with np.errstate(invalid="ignore"):
        e = np.exp(scores - np.where(np.isfinite(m), m, 0))
    denom = np.sum(e, axis=-1, keepdims=True)
    p = e / np.where(denom == 0, 1, denom)  # a fully masked row attends to nothing: 0, as torch
    return as_dtype(p @ vw, q.dtype)


register(OpDef("scaled_dot_product_attention",
               (Operand("q"), Operand("k"), Operand("v"), Operand("mask", optional=True)),
               _sdpa_infer, _sdpa,
               (Attr("is_causal", "bool", False), Attr("scale", "float", None, optional=True)),
               {CONTRACTION},
               doc="softmax(q k^T * scale + mask) v; a bool mask keeps True; scale defaults to "
                   "1/sqrt(head_dim); a fully masked row (or no keys) gives 0, as torch"))
