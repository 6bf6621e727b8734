"""TensorType, QuantParams and the dtype tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qcc.ir.parser import parse_type
from qcc.ir.printer import format_type
from qcc.ir.types import (
    FLOAT_DTYPES,
    INT_DTYPES,
    NUMPY_DTYPES,
    QuantParams,
    TensorType,
    dtype_from_numpy,
    numpy_dtype,
)


def test_dtype_sets_partition_the_table():
    assert FLOAT_DTYPES | INT_DTYPES | {"bool"} == set(NUMPY_DTYPES)
    assert not FLOAT_DTYPES & INT_DTYPES


@pytest.mark.parametrize("dtype", sorted(NUMPY_DTYPES))
def test_numpy_dtype_round_trip(dtype):
    np_dt = numpy_dtype(dtype)
    assert isinstance(np_dt, np.dtype)
    # Sub-byte integers live in byte containers, so they map back to the container's dtype.
    back = {"i4": "i8", "u4": "u8"}.get(dtype, dtype)
    assert dtype_from_numpy(np_dt) == back


def test_dtype_from_numpy_rejects_unknown():
    with pytest.raises(ValueError, match="no IR equivalent"):
        dtype_from_numpy(np.complex64)
    with pytest.raises(ValueError, match="no IR equivalent"):
        dtype_from_numpy(np.uint16)


def test_tensor_type_properties():
    t = TensorType((2, 3, 4), "f32")
    assert t.rank == 3 and t.size == 24 and t.is_float
    assert TensorType((), "i8").size == 1 and TensorType((), "i8").rank == 0
    assert TensorType((0, 5), "bool").size == 0
    assert not TensorType((1,), "i64").is_float


def test_tensor_type_validates():
    with pytest.raises(ValueError, match="unknown dtype"):
        TensorType((2,), "float32")
    with pytest.raises(ValueError, match="non-negative ints"):
        TensorType((2, -1), "f32")
    with pytest.raises(ValueError, match="non-negative ints"):
        TensorType((2.0,), "f32")  # type: ignore[arg-type]


def test_tensor_type_is_frozen_hashable_and_compares_by_value():
    q = QuantParams((0.5,), (0,), 8)
    a, b = TensorType((2, 2), "i8", q), TensorType((2, 2), "i8", QuantParams((0.5,), (0,), 8))
    assert a == b and hash(a) == hash(b)
    assert a != TensorType((2, 2), "i8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.shape = (4,)  # type: ignore[misc]


def test_with_shape_and_with_dtype_drop_quant():
    q = QuantParams((0.1, 0.2), (0, 1), 4, signed=False, axis=0)
    t = TensorType((2, 3), "u4", q)
    assert t.with_shape([3, 2]) == TensorType((3, 2), "u4")  # type: ignore[arg-type]
    assert t.with_dtype("i32") == TensorType((2, 3), "i32")
    assert isinstance(t.with_shape(np.array([6])).shape[0], int)  # numpy ints normalised


def test_of_array():
    assert TensorType.of(np.zeros((2, 3), np.float16)) == TensorType((2, 3), "f16")
    assert TensorType.of(np.array(True)) == TensorType((), "bool")
    with pytest.raises(ValueError):
        TensorType.of(np.zeros(2, np.complex128))


@pytest.mark.parametrize("t,text", [
    (TensorType((1, 3, 8, 8), "f32"), "f32[1,3,8,8]"),
    (TensorType((), "i64"), "i64[]"),
    (TensorType((4,), "i8", QuantParams((0.5,), (-3,), 8)), "i8[4]{scale=(0.5,), zp=(-3,), bits=8}"),
    (TensorType((2, 4), "u4", QuantParams((0.25, 1.5), (1, 2), 4, signed=False, axis=0, group_size=2)),
     "u4[2,4]{scale=(0.25, 1.5), zp=(1, 2), bits=4, signed=False, axis=0, group_size=2}"),
])
def test_type_text_round_trip(t, text):
    assert format_type(t) == str(t) == text
    assert parse_type(text) == t
