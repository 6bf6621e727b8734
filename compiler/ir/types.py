"""Tensor types of the IR: shape, dtype and optional quantization parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# IR dtype name -> NumPy dtype used by the interpreter. Sub-byte integers live in int8/uint8 containers.
NUMPY_DTYPES: dict[str, Any] = {
    "f64": np.float64,
    "f32": np.float32,
    "f16": np.float16,
    "i64": np.int64,
    "i32": np.int32,
    "i16": np.int16,
    "i8": np.int8,
    "u8": np.uint8,
    "i4": np.int8,
    "u4": np.uint8,
    "bool": np.bool_,
}
FLOAT_DTYPES = frozenset({"f64", "f32", "f16"})
INT_DTYPES = frozenset({"i64", "i32", "i16", "i8", "u8", "i4", "u4"})

_FROM_NUMPY = {
    np.dtype(np.float64): "f64",
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.int64): "i64",
    np.dtype(np.int32): "i32",
    np.dtype(np.int16): "i16",
    np.dtype(np.int8): "i8",
    np.dtype(np.uint8): "u8",
    np.dtype(np.bool_): "bool",
}


def dtype_from_numpy(dtype: Any) -> str:
    """The IR dtype name of a NumPy dtype; raises ValueError for dtypes the IR lacks."""
    try:
        return _FROM_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype)} has no IR equivalent") from None


def numpy_dtype(dtype: str) -> Any:
    """The NumPy dtype that holds values of IR dtype `dtype`."""
    return np.dtype(NUMPY_DTYPES[dtype])


@dataclass(frozen=True, slots=True)
class QuantParams:
    """Affine quantization parameters: real = scale * (q - zero_point).

    `scale`/`zero_point` are tuples (one entry per channel along `axis` when per-channel, or per
    group of `group_size` elements along `axis` for per-vector scales).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    bits: int
    signed: bool = True
    axis: int | None = None
    group_size: int | None = None


@dataclass(frozen=True, slots=True)
class TensorType:
    """Static tensor type: concrete shape, dtype name and optional quantization parameters."""

    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise ValueError(f"shape must be non-negative ints, got {self.shape!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(int(d) for d in shape), self.dtype, None)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype, None)

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        """The type of a NumPy array."""
        return TensorType(tuple(int(d) for d in array.shape), dtype_from_numpy(array.dtype))

    def __str__(self) -> str:
        from qcc.ir.printer import format_type

        return format_type(self)
