"""Reductions over axes (sum, mean, max, ..., argmax, cumsum) and the
normalizations built on them (softmax, log_softmax, layer_norm, rms_norm,
batch_norm, group_norm). Float math of half types runs in float32."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..dtypes import int64
from ..registry import REDUCTION, Attr, OpDef, Operand, register, type_error
from ..types import TensorType
from .common import (as_dtype, ieee, normalize_axes, normalize_axis, reduced_shape,
                     same_dtype, widen)

X = Operand("x")
AXES = Attr("axes", "ints", (), doc="axes to reduce; empty = all axes")
KEEPDIMS = Attr("keepdims", "bool", False)


def _axes(x_rank: int, axes: tuple[int, ...]) -> tuple[int, ...]:
    return normalize_axes(axes, x_rank) if axes else tuple(range(x_rank))


def _reduce_infer(kind: str, *, needs_elements: bool = False):
    """Inference of a reduction over `axes`; `needs_elements`: the op has no identity
    (max, min), so a reduced axis may not have size 0."""
    def infer(x: TensorType, *, axes, keepdims, **_) -> TensorType:
        if x.dtype.packed:
            raise type_error("cannot reduce packed int4")
        if kind == "float" and not x.dtype.is_float:
            raise type_error(f"input must be floating point, got {x.dtype!r}")
        if kind == "numeric" and x.dtype.is_bool:
            raise type_error("input must be numeric, got bool")
        if kind == "bool" and not x.dtype.is_bool:
            raise type_error(f"input must be bool, got {x.dtype!r}")
        ax = _axes(x.rank, axes)
        if needs_elements and any(x.shape[a] == 0 for a in ax):
            raise type_error(f"reducing {x} over axes {list(ax)}: an empty axis has no "
                             "maximum or minimum")
        return TensorType(reduced_shape(x.shape, ax, keepdims), x.dtype)
    return infer


def _reduce_ref(fn: Callable, *, wide: bool = False):
    def ref(x: np.ndarray, *, axes, keepdims, **attrs) -> np.ndarray:
        ax = _axes(x.ndim, axes)
        src = widen(x) if wide else x
        if ax and any(x.shape[a] == 0 for a in ax) and fn in (np.max, np.min):
            raise ValueError("max/min over an empty axis has no identity")
        with ieee():  # NaN/inf results (the mean of nothing, var) are the semantics
            return as_dtype(fn(src, axis=ax, keepdims=keepdims, **attrs), x.dtype)
    return ref


register(OpDef("sum", (X,), _reduce_infer("numeric"), _reduce_ref(np.sum, wide=True),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("prod", (X,), _reduce_infer("numeric"), _reduce_ref(np.prod, wide=True),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("mean", (X,), _reduce_infer("float"), _reduce_ref(np.mean, wide=True),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("max", (X,), _reduce_infer("numeric", needs_elements=True), _reduce_ref(np.max),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("min", (X,), _reduce_infer("numeric", needs_elements=True), _reduce_ref(np.min),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("any", (X,), _reduce_infer("bool"), _reduce_ref(np.any),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("all", (X,), _reduce_infer("bool"), _reduce_ref(np.all),
               (AXES, KEEPDIMS), {REDUCTION}))
register(OpDef("var", (X,), _reduce_infer("float"), _reduce_ref(np.var, wide=True),
               (AXES, KEEPDIMS, Attr("correction", "int", 0, doc="1 = unbiased")), {REDUCTION}))


def _arg_infer(x: TensorType, *, axis, keepdims) -> TensorType:
    if x.dtype.is_bool or x.dtype.packed:
        raise type_error(f"input must be numeric, got {x.dtype!r}")
    a = normalize_axis(axis, x.rank)
    if isinstance(x.shape[a], int) and x.shape[a] == 0:
        raise type_error(f"axis {axis} has size 0")
    return TensorType(reduced_shape(x.shape, (a,), keepdims), int64)


def _arg_ref(fn: Callable):
    def ref(x: np.ndarray, *, axis, keepdims) -> np.ndarray:
        return np.asarray(fn(x, axis=axis, keepdims=keepdims)).astype(np.int64)
    return ref


ARG_ATTRS = (Attr("axis", "int", 0), KEEPDIMS)
register(OpDef("argmax", (X,), _arg_infer, _arg_ref(np.argmax), ARG_ATTRS, {REDUCTION},
               doc="index of the first maximum"))
register(OpDef("argmin", (X,), _arg_infer, _arg_ref(np.argmin), ARG_ATTRS, {REDUCTION},
               doc="index of the first minimum"))


def _cumsum_infer(x: TensorType, *, axis) -> TensorType:
    if x.dtype.is_bool or x.dtype.packed:
        raise type_error(f"input must be numeric, got {x.dtype!r}")
    normalize_axis(axis, x.rank)
    return x


register(OpDef("cumsum", (X,), _cumsum_infer,  # half precision accumulates in float32
               lambda x, *, axis: as_dtype(np.cumsum(widen(x), axis=axis), x.dtype),
               (Attr("axis", "int"),), {REDUCTION}))


# --- normalizations --------------------------------------------------------------------
def _softmax_infer(x: TensorType, *, axis) -> TensorType:
    if not x.dtype.is_float:
        raise type_error(f"input must be floating point, got {x.dtype!r}")
    normalize_axis(axis, x.rank)
    return x


@ieee()
def _softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    w = widen(x)
    shifted = w - np.max(w, axis=axis, keepdims=True) if w.size else w
    e = np.exp(shifted)
    return as_dtype(e / np.sum(e, axis=axis, keepdims=True), x.dtype)


@ieee()
def _log_softmax(x: np.ndarray, *, axis: int) -> np.ndarray:
    w = widen(x)
    shifted = w - np.max(w, axis=axis, keepdims=True) if w.size else w
    return as_dtype(shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True)), x.dtype)


register(OpDef("softmax", (X,), _softmax_infer, _softmax, (Attr("axis", "int", -1),), {REDUCTION}))
register(OpDef("log_softmax", (X,), _softmax_infer, _log_softmax, (Attr("axis", "int", -1),),
               {REDUCTION}))

EPS = Attr("eps", "float", 1e-5)
NORM_AXIS = Attr("axis", "int", -1, doc="normalize over this axis and every later one")


def _norm_infer(x: TensorType, weight: TensorType | None = None, bias: TensorType | None = None,
                *, axis, **_) -> TensorType:
    if not x.dtype.is_float:
        raise type_error(f"input must be floating point, got {x.dtype!r}")
    a = normalize_axis(axis, x.rank)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        same_dtype([x, p], f"x and {name}")
        if p.shape != x.shape[a:]:
            raise type_error(f"{name} shape {list(p.shape)} must equal the normalized dims "
                             f"{list(x.shape[a:])}")
    return x


@ieee()
def _layer_norm(x, weight=None, bias=None, *, axis, eps):
    w = widen(x)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = np.mean(w, axis=axes, keepdims=True)
    var = np.mean(np.square(w - mean), axis=axes, keepdims=True)
    y = (w - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight.astype(y.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return as_dtype(y, x.dtype)


@ieee()
def _rms_norm(x, weight=None, *, axis, eps):
    w = widen(x)
    axes = tuple(range(axis % x.ndim, x.ndim))
    y = w / np.sqrt(np.mean(np.square(w), axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight.astype(y.dtype)
    return as_dtype(y, x.dtype)


register(OpDef("layer_norm", (X, Operand("weight", optional=True), Operand("bias", optional=True)),
               _norm_infer, _layer_norm, (NORM_AXIS, EPS), {REDUCTION}))
register(OpDef("rms_norm", (X, Operand("weight", optional=True)), _norm_infer, _rms_norm,
               (NORM_AXIS, Attr("eps", "float", 1e-6)), {REDUCTION},
               doc="x / sqrt(mean(x^2) + eps) * weight"))


def _batch_norm_infer(x, mean, var, weight=None, bias=None, *, eps) -> TensorType:
    if not x.dtype.is_float or x.rank < 2:
        raise type_error(f"input must be a floating-point tensor of rank >= 2, got {x}")
    for name, p in (("mean", mean), ("var", var), ("weight", weight), ("bias", bias)):
        if p is not None:
            same_dtype([x, p], f"x and {name}")
            if p.shape != (x.shape[1],):
                raise type_error(f"{name} must have shape [{x.shape[1]}] (channels), got "
                                 f"{list(p.shape)}")
    return x


@ieee()
def _batch_norm(x, mean, var, weight=None, bias=None, *, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    w = widen(x)
    f = w.dtype
    y = (w - mean.astype(f).reshape(shape)) / np.sqrt(var.astype(f).reshape(shape) + eps)
    if weight is not None:
        y = y * weight.astype(f).reshape(shape)
    if bias is not None:
        y = y + bias.astype(f).reshape(shape)
    return as_dtype(y, x.dtype)


register(OpDef("batch_norm", (X, Operand("mean"), Operand("var"), Operand("weight", optional=True),
                              Operand("bias", optional=True)),
               _batch_norm_infer, _batch_norm, (EPS,), {REDUCTION},
               doc="inference batch norm over channel axis 1 with running statistics"))


def _group_norm_infer(x, weight=None, bias=None, *, num_groups, eps) -> TensorType:
    if not x.dtype.is_float or x.rank < 2:
        raise type_error(f"input must be a floating-point tensor of rank >= 2, got {x}")
    c = x.shape[1]
    if isinstance(c, int) and (num_groups <= 0 or c % num_groups):
        raise type_error(f"{c} channels do not split into {num_groups} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            same_dtype([x, p], f"x and {name}")
            if p.shape != (c,):
                raise type_error(f"{name} must have shape [{c}], got {list(p.shape)}")
    return x


@ieee()
def _group_norm(x, weight=None, bias=None, *, num_groups, eps):
    w = widen(x)
    n, c = x.shape[:2]
    g = w.reshape(n, num_groups, x.size // max(n * num_groups, 1))  # no -1: n may be 0
    mean = g.mean(axis=2, keepdims=True)
    var = np.mean(np.square(g - mean), axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.astype(y.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.astype(y.dtype).reshape(shape)
    return as_dtype(y, x.dtype)


register(OpDef("group_norm", (X, Operand("weight", optional=True), Operand("bias", optional=True)),
               _group_norm_infer, _group_norm, (Attr("num_groups", "int"), EPS), {REDUCTION}))

