"""Layout ops: move or select data without arithmetic — reshape, transpose,
slice, concat, split, expand, squeeze/unsqueeze, flip, tile, pad, gather,
gather_elements, index (advanced indexing), and the triangle masks triu/tril."""
from __future__ import annotations

import numpy as np

from .. import symbolic
from ..dtypes import int32, int64
from ..registry import LAYOUT, VIEW, Attr, OpDef, Operand, register, type_error
from ..types import TensorType
from .common import broadcast_shapes, normalize_axes, normalize_axis, same_dtype

X = Operand("x")


def _reshape_infer(x: TensorType, *, shape) -> TensorType:
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise type_error(f"shape {list(shape)} has a negative dim (kiln reshapes are explicit; "
                         "resolve -1 when building the node)")
    if not symbolic.equal(symbolic.product(x.shape), symbolic.product(shape)):
        raise type_error(f"cannot reshape {list(x.shape)} "
                         f"({symbolic.product(x.shape)} elements) to {list(shape)} "
                         f"({symbolic.product(shape)} elements)")
    return x.with_shape(shape)


register(OpDef("reshape", (X,), _reshape_infer, lambda x, *, shape: x.reshape(shape),
               (Attr("shape", "dims"),), {LAYOUT, VIEW}))


def _transpose_infer(x: TensorType, *, perm) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise type_error(f"perm {list(perm)} is not a permutation of {x.rank} axes")
    return x.with_shape(tuple(x.shape[p] for p in perm))


register(OpDef("transpose", (X,), _transpose_infer, lambda x, *, perm: np.transpose(x, perm),
               (Attr("perm", "ints"),), {LAYOUT}))

BIG = 2 ** 62  # an `end` at or past this means "to the end of the axis"


def _slice_len(size: symbolic.Dim, start: symbolic.Dim, end: symbolic.Dim, step: int
               ) -> symbolic.Dim:
    if all(isinstance(v, int) for v in (size, start, end)):
        return len(range(*slice(start, end, step).indices(size)))  # type: ignore[arg-type]
    # symbolic: resolve negatives and open ends against the size, assume in range
    def resolve(v: symbolic.Dim) -> symbolic.Dim:
        if isinstance(v, int) and v >= BIG:
            return size
        if isinstance(v, int) and v < 0:
            return symbolic.add(size, v)
        return v
    s, e = resolve(start), resolve(end)
    if isinstance(s, int) and isinstance(e, int):
        return max(0, -(-(e - s) // step))
    return symbolic.ceildiv(symbolic.sub(e, s), step)


def _slice_infer(x: TensorType, *, axis, start, end, step) -> TensorType:
    a = normalize_axis(axis, x.rank)
    if step <= 0:
        raise type_error(f"step must be positive, got {step} (use flip for reversal)")
    shape = list(x.shape)
    shape[a] = _slice_len(x.shape[a], start, end, step)
    return x.with_shape(tuple(shape))


def _slice_ref(x: np.ndarray, *, axis, start, end, step) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, min(end, BIG), step)
    return x[tuple(index)]


register(OpDef("slice", (X,), _slice_infer, _slice_ref,
               (Attr("axis", "int"), Attr("start", "dim", 0), Attr("end", "dim", BIG),
                Attr("step", "int", 1)), {LAYOUT},
               doc="Python slicing x[start:end:step] along one axis; negatives count from the end"))


def _concat_infer(*xs: TensorType, axis) -> TensorType:
    dtype = same_dtype(xs)
    rank = xs[0].rank
    a = normalize_axis(axis, rank)
    for t in xs:
        if t.rank != rank or any(not symbolic.equal(d, e) for i, (d, e) in
                                 enumerate(zip(t.shape, xs[0].shape)) if i != a):
            raise type_error(f"inputs {[list(t.shape) for t in xs]} differ outside axis {axis}")
    shape = list(xs[0].shape)
    for t in xs[1:]:
        shape[a] = symbolic.add(shape[a], t.shape[a])
    return TensorType(tuple(shape), dtype)


register(OpDef("concat", (Operand("xs", variadic=True),), _concat_infer,
               lambda *xs, axis: np.concatenate(xs, axis=axis), (Attr("axis", "int"),), {LAYOUT}))


def _split_infer(x: TensorType, *, axis, sizes) -> tuple[TensorType, ...]:
    a = normalize_axis(axis, x.rank)
    if any(s < 0 for s in sizes) or not sizes:
        raise type_error(f"sizes {list(sizes)} must be non-negative and not empty")
    if not symbolic.equal(sum(sizes), x.shape[a]):
        raise type_error(f"sizes {list(sizes)} do not add up to axis {axis}'s {x.shape[a]}")
    return tuple(x.with_shape(x.shape[:a] + (s,) + x.shape[a + 1:]) for s in sizes)


register(OpDef("split", (X,), _split_infer,
               lambda x, *, axis, sizes: tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis)),
               (Attr("axis", "int"), Attr("sizes", "ints")), {LAYOUT}, num_outputs=-1,
               doc="one output per entry of sizes"))


def _expand_infer(x: TensorType, *, shape) -> TensorType:
    if len(shape) < x.rank:
        raise type_error(f"cannot expand rank {x.rank} to rank {len(shape)}")
    out = broadcast_shapes(x.shape, shape)
    if not all(symbolic.equal(o, s) for o, s in zip(out, shape)):
        raise type_error(f"cannot expand {list(x.shape)} to {list(shape)}")
    return x.with_shape(tuple(shape))


register(OpDef("expand", (X,), _expand_infer,
               lambda x, *, shape: np.broadcast_to(x, shape).copy(),
               (Attr("shape", "dims"),), {LAYOUT}, doc="broadcast to shape"))


def _squeeze_infer(x: TensorType, *, axes) -> TensorType:
    ax = normalize_axes(axes, x.rank)
    for a in ax:
        if x.shape[a] != 1:
            raise type_error(f"axis {a} has size {x.shape[a]}, not 1")
    return x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in ax))


register(OpDef("squeeze", (X,), _squeeze_infer,
               lambda x, *, axes: np.squeeze(x, axis=tuple(axes)), (Attr("axes", "ints"),),
               {LAYOUT, VIEW}))


def _unsqueeze_infer(x: TensorType, *, axes) -> TensorType:
    rank = x.rank + len(axes)
    ax = normalize_axes(axes, rank)
    dims = iter(x.shape)
    return x.with_shape(tuple(1 if i in ax else next(dims) for i in range(rank)))


register(OpDef("unsqueeze", (X,), _unsqueeze_infer,
               lambda x, *, axes: np.expand_dims(x, tuple(axes)), (Attr("axes", "ints"),),
               {LAYOUT, VIEW}, doc="axes index the output"))


def _flip_infer(x: TensorType, *, axes) -> TensorType:
    normalize_axes(axes, x.rank)
    return x


register(OpDef("flip", (X,), _flip_infer, lambda x, *, axes: np.array(np.flip(x, tuple(axes))),
               (Attr("axes", "ints"),), {LAYOUT}))


def _tile_infer(x: TensorType, *, repeats) -> TensorType:
    if len(repeats) != x.rank or any(r < 0 for r in repeats):
        raise type_error(f"repeats {list(repeats)} must give one non-negative count per axis")
    return x.with_shape(tuple(symbolic.mul(d, r) for d, r in zip(x.shape, repeats)))


register(OpDef("tile", (X,), _tile_infer, lambda x, *, repeats: np.tile(x, repeats),
               (Attr("repeats", "ints"),), {LAYOUT}))


def _pad_infer(x: TensorType, *, pads, mode, value) -> TensorType:
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise type_error(f"pads {list(pads)} must hold {2 * x.rank} non-negative values "
                         "(all begins, then all ends)")
    if mode == "constant" and x.dtype.is_integer and not x.dtype.packed:
        info = np.iinfo(x.dtype.numpy)
        if not info.min <= value <= info.max:
            raise type_error(f"pad value {value:g} does not fit {x.dtype!r}")
    r = x.rank
    for i, d in enumerate(x.shape):
        if not isinstance(d, int) or not pads[i] + pads[i + r]:
            continue
        if mode == "reflect" and max(pads[i], pads[i + r]) >= d:
            raise type_error(f"reflect pads {list(pads)} must be less than the size {d} of "
                             f"axis {i}")
        if mode == "edge" and d == 0:
            raise type_error(f"edge-padding axis {i} of {x}: an empty axis has no edge")
    return x.with_shape(tuple(symbolic.add(d, pads[i] + pads[i + r]) for i, d in enumerate(x.shape)))


def _pad_ref(x: np.ndarray, *, pads, mode, value) -> np.ndarray:
    r = x.ndim
    widths = [(pads[i], pads[i + r]) for i in range(r)]
    if r == 0:
        return x.copy()
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, widths, mode=mode)


register(OpDef("pad", (X,), _pad_infer, _pad_ref,
               (Attr("pads", "ints"), Attr("mode", "str", "constant",
                                           choices=("constant", "reflect", "edge")),
                Attr("value", "float", 0.0)), {LAYOUT},
               doc="pads = [begin_0, ..., begin_n, end_0, ..., end_n] (ONNX order)"))


def _index_check(indices: TensorType) -> None:
    if indices.dtype not in (int32, int64):
        raise type_error(f"indices must be int32 or int64, got {indices.dtype!r}")


def _gather_infer(x: TensorType, indices: TensorType, *, axis) -> TensorType:
    _index_check(indices)
    a = normalize_axis(axis, x.rank)
    return x.with_shape(x.shape[:a] + indices.shape + x.shape[a + 1:])


def _gather_ref(x: np.ndarray, indices: np.ndarray, *, axis) -> np.ndarray:
    size = x.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"index out of range [{-size}, {size}) on axis {axis}")
    return np.asarray(np.take(x, indices, axis=axis))


register(OpDef("gather", (X, Operand("indices")), _gather_infer, _gather_ref,
               (Attr("axis", "int", 0),), {LAYOUT},
               doc="np.take: out = x[..., indices, ...] along axis (embedding, index_select)"))


def _gather_elements_infer(x: TensorType, indices: TensorType, *, axis) -> TensorType:
    _index_check(indices)
    a = normalize_axis(axis, x.rank)
    if indices.rank != x.rank:
        raise type_error(f"indices rank {indices.rank} must equal input rank {x.rank}")
    for i, (n, m) in enumerate(zip(indices.shape, x.shape)):
        if i != a and isinstance(n, int) and isinstance(m, int) and n > m:
            raise type_error(f"indices {indices} are larger than input {x} on axis {i} "
                             f"(only axis {axis} may be)")
    return x.with_shape(indices.shape)


def _gather_elements_ref(x: np.ndarray, indices: np.ndarray, *, axis) -> np.ndarray:
    size = x.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"index out of range [{-size}, {size}) on axis {axis}")
    # as torch.gather: outside `axis`, indices may be smaller than x and read its leading part
    x = x[tuple(slice(None) if i == axis % x.ndim else slice(0, n)
                for i, n in enumerate(indices.shape))]
    return np.take_along_axis(x, np.where(indices < 0, indices + size, indices), axis=axis)


register(OpDef("gather_elements", (X, Operand("indices")), _gather_elements_infer,
               _gather_elements_ref, (Attr("axis", "int", 0),), {LAYOUT},
               doc="torch.gather / ONNX GatherElements"))


def _index_infer(x: TensorType, *indices: TensorType, axis) -> TensorType:
    for t in indices:
        _index_check(t)
    if axis < 0 or axis + len(indices) > x.rank:
        raise type_error(f"{len(indices)} index tensor(s) from axis {axis} "
                         f"do not fit rank {x.rank}")
    shape = broadcast_shapes(*(t.shape for t in indices))
    return x.with_shape(x.shape[:axis] + shape + x.shape[axis + len(indices):])


def _index_ref(x: np.ndarray, *indices: np.ndarray, axis) -> np.ndarray:
    for i, idx in enumerate(indices):
        size = x.shape[axis + i]
        if idx.size and (idx.min() < -size or idx.max() >= size):
            raise IndexError(f"index out of range [{-size}, {size}) on axis {axis + i}")
    return np.asarray(x[(slice(None),) * axis + tuple(indices)])


register(OpDef("index", (X, Operand("indices", variadic=True)), _index_infer, _index_ref,
               (Attr("axis", "int", 0),), {LAYOUT},
               doc="NumPy advanced indexing x[(:,) * axis, i0, i1, ...]: the index tensors "
                   "broadcast together and their shape replaces the indexed axes"))


def _triangle_infer(x: TensorType, *, diagonal) -> TensorType:
    if x.rank < 2:
        raise type_error(f"input must have rank >= 2, got {x.rank}")
    return x


register(OpDef("triu", (X,), _triangle_infer,
               lambda x, *, diagonal: np.triu(x, diagonal), (Attr("diagonal", "int", 0),), {LAYOUT},
               doc="keep elements on and above the diagonal of the last two axes"))
register(OpDef("tril", (X,), _triangle_infer,
               lambda x, *, diagonal: np.tril(x, diagonal), (Attr("diagonal", "int", 0),), {LAYOUT},
               doc="keep elements on and below the diagonal of the last two axes"))
