"""ONNX image ops -> kiln: Resize and CenterCropPad.

Resize is separable: along each resized axis every output element is a fixed
weighted sum of input elements (nearest, linear, cubic, antialiased or not), so an
axis becomes a matmul with an [out, in] weight matrix computed at import time from
ONNX's coordinate transformation and interpolation kernel (nearest: a gather, which
also serves integer tensors). tf_crop_and_resize's outside points become a `where`
with the extrapolation value. Shapes and scales must be static.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...ir import Value
from .importer import NodeContext, Unsupported, converter

_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                     "asymmetric", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@dataclass(frozen=True)
class ResizeSpec:
    """One Resize node's interpolation settings (ONNX attribute names)."""
    mode: str
    coordinate_mode: str
    nearest_mode: str
    cubic_a: float
    antialias: bool
    exclude_outside: bool


def _source_coordinate(spec: ResizeSpec, x: int, in_size: int, out_size: int, scale: float,
                       roi: tuple[float, float]) -> float | None:
    """Where output index `x` samples the input axis (None: outside the crop)."""
    out_width = scale * in_size
    mode = spec.coordinate_mode
    if mode == "align_corners":
        return 0.0 if out_width == 1 else x * (in_size - 1) / (out_width - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        pos = ((hi - lo) * (in_size - 1) / 2 if out_width == 1
               else x * (hi - lo) * (in_size - 1) / (out_width - 1)) + lo * (in_size - 1)
        return None if pos < 0 or pos > in_size - 1 else pos
    if mode == "pytorch_half_pixel":
        return -0.5 if out_width == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    adjustment = out_size / out_width   # half_pixel_symmetric
    return in_size / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5


def _coefficients(spec: ResizeSpec, ratio: float, scale: float) -> np.ndarray:
    """The interpolation kernel's weights for the taps around a source coordinate whose
    distance past the tap on its left is `ratio` (in (0, 1])."""
    if spec.mode == "nearest":
        if ratio == 1:
            return np.array([0.0, 1.0])
        pick_right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                      "floor": False, "ceil": True}[spec.nearest_mode]
        return np.array([0.0, 1.0] if pick_right else [1.0, 0.0])
    if spec.mode == "linear" and not spec.antialias:
        return np.array([1 - ratio, ratio])
    if spec.mode == "linear":
        scale = min(scale, 1.0)
        start = int(np.floor(-1 / scale) + 1)
        taps = (np.arange(start, 2 - start) - ratio) * scale
        weights = np.clip(1 - np.abs(taps), 0, 1)
        return weights / weights.sum()
    a = spec.cubic_a
    if not spec.antialias:
        r = ratio
        return np.array([((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                         ((a + 2) * r - (a + 3)) * r * r + 1,
                         ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                         ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a])
    scale = min(scale, 1.0)
    start = int(np.floor(-2 / scale) + 1)
    distances = np.abs([scale * (i - ratio) for i in range(start, 2 - start)])
    weights = np.where(distances <= 1, (a + 2) * distances ** 3 - (a + 3) * distances ** 2 + 1,
                       np.where(distances < 2, a * distances ** 3 - 5 * a * distances ** 2
                                + 8 * a * distances - 4 * a, 0.0))
    return weights / weights.sum()


def _taps(pos: float, n: int, in_size: int) -> np.ndarray:
    """The `n` tap indices nearest `pos` (ties to the smaller), on the input padded by
    ceil(n/2) edge copies each side; they may lie outside [0, in_size)."""
    pad = math.ceil(n / 2)
    centre, limit = pos + pad, in_size + 2 * pad
    lo = max(int(math.floor(centre)) - n, 0)
    candidates = range(lo, min(lo + 2 * n + 2, limit))
    chosen = sorted(sorted(candidates, key=lambda i: (abs(centre - i), i))[:n])
    return np.asarray(chosen) - pad


def resize_weights(spec: ResizeSpec, in_size: int, out_size: int, scale: float,
                   roi: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """([out_size, in_size] float64 weights, [out_size] bool: outside the crop)."""
    weights = np.zeros((out_size, in_size))
    outside = np.zeros(out_size, bool)
    for x in range(out_size):
        pos = _source_coordinate(spec, x, in_size, out_size, scale, roi)
        if pos is None:
            outside[x] = True
            continue
        left = math.floor(pos)
        ratio = 1.0 if pos == left else pos - left
        coeffs = _coefficients(spec, ratio, scale).astype(np.float64)
        taps = _taps(pos, len(coeffs), in_size)
        if spec.exclude_outside:
            coeffs = np.where((taps < 0) | (taps >= in_size), 0.0, coeffs)
            coeffs = coeffs / coeffs.sum()
        np.add.at(weights[x], np.clip(taps, 0, in_size - 1), coeffs)
    return weights, outside


def _resize_geometry(ctx: NodeContext, shape: tuple[int, ...]
                     ) -> tuple[list[int], list[float], list[tuple[float, float]]]:
    """(output sizes, scales, roi per axis) over all axes, as ONNX's reference derives them."""
    rank = len(shape)
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    scales_in = ctx.static(2, "scales")
    sizes_in = ctx.static_ints(3, "sizes")
    roi_in = ctx.static(1, "roi")
    roi = [(0.0, 1.0)] * rank
    if roi_in is not None and np.size(roi_in):
        flat = np.asarray(roi_in, np.float64).reshape(-1)
        for i, a in enumerate(axes):
            roi[a] = (float(flat[i]), float(flat[len(axes) + i]))
    sizes, scales = list(shape), [1.0] * rank
    if sizes_in:
        for a, size in zip(axes, sizes_in):
            sizes[a], scales[a] = size, size / shape[a]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            scale = pick(scales[a] for a in axes)
            for a in axes:
                scales[a], sizes[a] = scale, int(scale * shape[a] + 0.5)
    elif scales_in is not None and np.size(scales_in):
        for a, scale in zip(axes, np.asarray(scales_in, np.float64).reshape(-1)):
            scales[a], sizes[a] = float(scale), int(float(scale) * shape[a])
    else:
        raise Unsupported("neither scales nor sizes is given")
    return sizes, scales, roi


@converter("Resize", attrs=["antialias", "axes", "coordinate_transformation_mode",
                            "cubic_coeff_a", "exclude_outside", "extrapolation_value",
                            "keep_aspect_ratio_policy", "mode", "nearest_mode"])
def _resize(ctx: NodeContext):
    x = ctx.input(0)
    if not x.type.is_static:
        raise Unsupported(f"a tensor with symbolic dims {x.type}")
    spec = ResizeSpec(ctx.attr("mode", "nearest"),
                      ctx.attr("coordinate_transformation_mode", "half_pixel"),
                      ctx.attr("nearest_mode", "round_prefer_floor"),
                      float(ctx.attr("cubic_coeff_a", -0.75)), bool(ctx.attr("antialias", 0)),
                      bool(ctx.attr("exclude_outside", 0)))
    if spec.mode not in ("nearest", "linear", "cubic") or \
            spec.coordinate_mode not in _COORDINATE_MODES or \
            spec.nearest_mode not in _NEAREST_MODES:
        raise Unsupported(f"mode {spec.mode!r} with {spec.coordinate_mode!r} / "
                          f"{spec.nearest_mode!r}")
    if spec.mode == "nearest" and spec.antialias:
        raise Unsupported("antialias with mode 'nearest'")
    nearest = spec.mode == "nearest"
    if not nearest and not x.type.dtype.is_float:
        raise Unsupported(f"{spec.mode} interpolation of {x.type.dtype!r}")
    shape = tuple(x.type.shape)
    sizes, scales, roi = _resize_geometry(ctx, shape)
    y, outside_any = x, np.zeros([1] * len(shape), bool)
    for axis, (n_in, n_out) in enumerate(zip(shape, sizes)):
        identity = math.isclose(scales[axis], 1.0) and n_out == n_in and \
            math.isclose(roi[axis][0], 0.0) and math.isclose(roi[axis][1], 1.0)
        if identity:
            continue
        weights, outside = resize_weights(spec, n_in, n_out, scales[axis], roi[axis])
        y = (_gather_axis(ctx, y, weights, axis) if nearest
             else _contract_axis(ctx, y, weights, axis))
        if outside.any():
            view = [1] * len(shape)
            view[axis] = n_out
            outside_any = outside_any | outside.reshape(view)
    if outside_any.any():
        fill = ctx.scalar(ctx.attr("extrapolation_value", 0.0), y)
        y = ctx.emit("where", ctx.const(outside_any), fill, y)
    return [y]


def _gather_axis(ctx: NodeContext, x: Value, weights: np.ndarray, axis: int) -> Value:
    """Nearest: each output row has a single weight 1 at the input index it copies."""
    index = np.argmax(weights, axis=1).astype(np.int64)
    return ctx.emit("gather", x, ctx.const(index), axis=axis)


def _contract_axis(ctx: NodeContext, x: Value, weights: np.ndarray, axis: int) -> Value:
    """x with `axis` replaced by weights @ (that axis), as one matmul."""
    rank = x.type.rank
    dtype = x.type.dtype
    if axis == rank - 1:
        return ctx.emit("matmul", x, ctx.const(weights.T.astype(dtype.numpy)))
    if axis == rank - 2:
        return ctx.emit("matmul", ctx.const(weights.astype(dtype.numpy)), x)
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = ctx.emit("transpose", x, perm=perm)
    y = ctx.emit("matmul", moved, ctx.const(weights.T.astype(dtype.numpy)))
    back = [perm.index(a) for a in range(rank)]
    return ctx.emit("transpose", y, perm=back)


@converter("CenterCropPad", attrs=["axes"])
def _center_crop_pad(ctx: NodeContext):
    x = ctx.input(0)
    rank = x.type.rank
    target = ctx.static_ints(1, "shape")
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    y = x
    pads = [0] * (2 * rank)
    for a, want in zip(axes, target):
        size = x.type.shape[a]
        if not isinstance(size, int):
            raise Unsupported(f"a symbolic dim {size} on axis {a}")
        if want < size:     # crop: the extra element goes to the end
            start = (size - want) // 2
            y = ctx.emit("slice", y, axis=a, start=start, end=start + want)
        elif want > size:   # pad: the extra element goes to the end
            pads[a] = (want - size) // 2
            pads[a + rank] = want - size - pads[a]
    if any(pads):
        y = ctx.emit("pad", y, pads=pads, mode="constant", value=0.0)
    return [y]
