"""Element dtypes (kiln.ir.dtypes) and TensorType (kiln.ir.types)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from kiln.ir import TensorType, dtype, tensor
from kiln.ir import dtypes as D


# --- dtypes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("short, long, bits, kind, np_dtype", [
    ("f32", "float32", 32, "float", np.float32),
    ("f16", "float16", 16, "float", np.float16),
    ("bf16", "bfloat16", 16, "float", ml_dtypes.bfloat16),
    ("f64", "float64", 64, "float", np.float64),
    ("i8", "int8", 8, "int", np.int8),
    ("u8", "uint8", 8, "uint", np.uint8),
    ("i16", "int16", 16, "int", np.int16),
    ("i32", "int32", 32, "int", np.int32),
    ("i64", "int64", 64, "int", np.int64),
    ("bool", "bool", 8, "bool", np.bool_),
])
def test_dtype_table(short, long, bits, kind, np_dtype):
    d = dtype(short)
    assert d is dtype(long)                  # the module constants are the only instances
    assert (d.name, d.long_name, d.bits, d.kind) == (short, long, bits, kind)
    assert d.numpy == np.dtype(np_dtype)
    assert dtype(np.dtype(np_dtype)) is d    # and back from NumPy
    assert not d.packed
    assert repr(d) == long


def test_bfloat16_is_a_float_held_by_ml_dtypes():
    assert D.bfloat16.is_float and not D.bfloat16.is_integer
    assert dtype(ml_dtypes.bfloat16) is D.bfloat16
    assert D.from_numpy(np.zeros(2, ml_dtypes.bfloat16)) is D.bfloat16


def test_int4_is_packed_storage():
    i4 = dtype("int4")
    assert i4 is dtype("i4") is D.int4
    assert i4.packed and i4.bits == 4 and i4.is_integer
    assert i4.numpy == np.dtype(np.uint8)         # two nibbles per byte
    # uint8 arrays are u8, never int4: packing is a type, not a guess
    assert dtype(np.uint8) is D.uint8
    assert D.from_numpy(np.zeros(2, np.uint8)) is D.uint8


def test_kind_predicates():
    assert D.float32.is_float and not D.float32.is_integer and not D.float32.is_bool
    assert D.int8.is_integer and D.uint8.is_integer and not D.int8.is_float
    assert D.bool_.is_bool and not D.bool_.is_integer


def test_dtype_from_python_types():
    assert dtype(float) is D.float64
    assert dtype(bool) is D.bool_
    assert dtype(D.int32) is D.int32


@pytest.mark.parametrize("bad", ["f33", "complex64", np.complex64])
def test_unknown_dtype_lists_the_known_ones(bad):
    with pytest.raises(KeyError, match="unknown dtype .*kiln knows: float32, float16, bfloat16"):
        dtype(bad)


@pytest.mark.parametrize("a, b, expected", [
    ("f32", "f32", "f32"),
    ("f16", "bf16", "f32"),     # no common 16-bit type: torch goes to float32
    ("i64", "f16", "f16"),      # a float beats any integer
    ("bool", "i8", "i8"),
    ("i8", "u8", "i16"),
    ("i32", "i64", "i64"),
    ("f32", "f64", "f64"),
])
def test_promote(a, b, expected):
    assert D.promote(dtype(a), dtype(b)) is dtype(expected)
    assert D.promote(dtype(b), dtype(a)) is dtype(expected)


# --- TensorType --------------------------------------------------------------------------------
def test_tensor_type_prints_and_compares():
    t = tensor("f32", "batch", 784)
    assert str(t) == repr(t) == "f32[batch, 784]"
    assert t == TensorType(("batch", 784), D.float32)
    assert hash(t) == hash(TensorType(("batch", 784), "float32"))
    assert t.rank == 2 and not t.is_static and t.symbols == {"batch"}
    assert str(tensor("bf16")) == "bf16[]" and tensor("bf16").rank == 0
    assert tensor("i4", 8, 16).dtype is D.int4


def test_dims_are_canonical():
    assert tensor("f32", "seq*batch", "3*4").shape == ("batch*seq", 12)
    assert tensor("f32", "seq*batch") == tensor("f32", "batch*seq")
    assert tensor("f32", np.int64(3)).shape == (3,)
    assert type(tensor("f32", np.int64(3)).shape[0]) is int


@pytest.mark.parametrize("bad, message", [
    (-1, "dim -1 is negative"),
    (2.5, "not a dim: 2.5"),
    (True, "not a dim: True"),
    (None, "not a dim: None"),
    ("a.b", "not a dim expression"),
])
def test_bad_dims(bad, message):
    with pytest.raises(ValueError, match=message):
        tensor("f32", 2, bad)


def test_with_shape_and_dtype_return_self_when_unchanged():
    t = tensor("f32", "n", 3)
    assert t.with_shape(("n", 3)) is t
    assert t.with_dtype(D.float32) is t
    assert t.with_shape((3, "n")) == tensor("f32", 3, "n")
    assert t.with_dtype(D.float16) == tensor("f16", "n", 3)


def test_concrete_shape():
    t = tensor("f32", "n", "2*n + 1", 4)
    assert t.concrete_shape({"n": 3}) == (3, 7, 4)
    with pytest.raises(KeyError, match="'n'"):
        t.concrete_shape({})


def test_static_type():
    t = tensor("i64", 2, 3)
    assert t.is_static and t.symbols == set()
