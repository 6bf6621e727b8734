"""Quantization ops: quantize / dequantize at the float boundary, and the integer ops of an integer-only graph.

Every integer reference computes exactly in int64 with explicit rounding and saturation (docs/ops.md, section
"Quantization"), so an integer graph is checked bit for bit. Scales, zero points, dyadic multipliers and shifts
that vary per channel are tensor inputs that broadcast against the data (shape [C, 1, 1] for NCHW channel 1,
[C] for the last axis); per-tensor integer constants are attributes. The integer nonlinears (I-BERT, I-ViT) are
in `qcc.ir.ops.quant_nonlinear`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.nn import _conv2d, _conv2d_type, _reduced_shape
from qcc.ir.ops.registry import REQUIRED, broadcast_shapes, check, register
from qcc.ir.types import FLOAT_DTYPES, NUMPY_DTYPES, TensorType

# The value range of each integer dtype (sub-byte types live in int8/uint8 containers).
INT_RANGES: dict[str, tuple[int, int]] = {
    "i4": (-8, 7), "u4": (0, 15), "i8": (-128, 127), "u8": (0, 255),
    "i16": (-(2**15), 2**15 - 1), "i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1),
}
QUANT_DTYPES = ("i4", "u4", "i8", "u8", "i16", "i32")  # what quantize / requantize may produce
ACT_DTYPES = frozenset({"i4", "u4", "i8", "u8", "i16"})  # integer activations
WEIGHT_DTYPES = frozenset({"i4", "u4", "i8", "u8", "i16"})
INT_INPUTS = frozenset({"i4", "u4", "i8", "u8", "i16", "i32", "i64"})


def clamp_to(x: np.ndarray, dtype: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Saturate int64 `x` to `dtype` (intersected with [lo, hi] when given) and cast."""
    tlo, thi = INT_RANGES[dtype]
    lo = tlo if lo is None else max(tlo, lo)
    hi = thi if hi is None else min(thi, hi)
    return np.clip(x, lo, hi).astype(NUMPY_DTYPES[dtype])


def round_shift(x: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """`(x + 2^(c−1)) >> c` in int64 (round half up); a shift c ≤ 0 is a left shift by −c (no rounding)."""
    x = np.asarray(x, np.int64)
    c = np.asarray(c, np.int64)
    right = np.maximum(c, 0)
    half = np.where(c > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    return np.where(c > 0, (x + half) >> right, np.left_shift(x, np.maximum(-c, 0)))


def dyadic_scale(x: np.ndarray, b: np.ndarray | int, c: np.ndarray | int) -> np.ndarray:
    """`(x·b + 2^(c−1)) >> c` in int64: x times the dyadic number b / 2^c, rounded half up."""
    return round_shift(np.asarray(x, np.int64) * np.asarray(b, np.int64), c)


def _check_dtype(dtype: Any, allowed: Sequence[str], what: str) -> None:
    check(dtype in allowed, f"{what} must be one of {list(allowed)}, got {dtype!r}")


def _check_int(t: TensorType, what: str, allowed: frozenset[str] = INT_INPUTS) -> None:
    check(t.dtype in allowed, f"{what} must be an integer tensor ({sorted(allowed)}), got {t.dtype}")


def _check_bcast(data: TensorType, other: TensorType, what: str) -> None:
    check(broadcast_shapes(data.shape, other.shape) == data.shape,
          f"{what} {list(other.shape)} must broadcast to the data shape {list(data.shape)}")


# -- quantize / dequantize -----------------------------------------------------------------------------------
def _quantize_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, scale, zp = ts
    check(x.dtype in FLOAT_DTYPES, f"quantize expects a float input, got {x.dtype}")
    check(scale.dtype in FLOAT_DTYPES, "quantize scale must be float")
    _check_int(zp, "quantize zero_point")
    _check_bcast(x, scale, "scale")
    _check_bcast(x, zp, "zero_point")
    _check_dtype(attrs["dtype"], QUANT_DTYPES, "quantize dtype")
    return [TensorType(x.shape, attrs["dtype"])]


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, dtype: str) -> np.ndarray:
    # As ONNX QuantizeLinear: x / scale in float32, rounded half to even, plus zero point, saturated.
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.rint(x.astype(np.float32) / scale.astype(np.float32)).astype(np.float64)
    r = np.nan_to_num(r, nan=0.0, posinf=2.0**62, neginf=-(2.0**62))
    q = np.clip(r, -(2.0**62), 2.0**62).astype(np.int64) + zero_point.astype(np.int64)
    return clamp_to(q, dtype)


register("quantize", _quantize_type, _quantize, num_inputs=(3, 3), attrs={"dtype": REQUIRED})


def expand_groups(gs: np.ndarray, axis: int, group_size: int, n: int) -> np.ndarray:
    """Repeat per-group values `group_size` times along `axis` and crop to length n."""
    return np.take(np.repeat(gs, group_size, axis=axis), np.arange(n), axis=axis)


def _dequantize_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, scale, zp = ts[:3]
    _check_int(q, "dequantize input")
    check(scale.dtype in FLOAT_DTYPES, "dequantize scale must be float")
    _check_int(zp, "dequantize zero_point")
    _check_bcast(q, scale, "scale")
    _check_bcast(q, zp, "zero_point")
    if len(ts) == 4:
        gs, axis, g = ts[3], attrs["axis"], attrs["group_size"]
        _check_int(gs, "dequantize group_scale")
        check(isinstance(g, int) and g > 0 and isinstance(axis, int) and 0 <= axis < q.rank,
              "a group_scale needs group_size > 0 and a valid axis")
        want = tuple(-(-d // g) if i == axis else d for i, d in enumerate(q.shape))
        check(gs.shape == want, f"group_scale must have shape {list(want)}, got {list(gs.shape)}")
    return [TensorType(q.shape, "f32")]


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, group_scale: np.ndarray | None = None,
                *, group_size: int | None, axis: int | None) -> np.ndarray:
    # (q − zp) [· group_scale] is exact in int64; one float32 multiply by the scale, as ONNX DequantizeLinear.
    centered = q.astype(np.int64) - zero_point.astype(np.int64)
    if group_scale is not None:
        assert group_size is not None and axis is not None
        centered = centered * expand_groups(group_scale.astype(np.int64), axis, group_size, q.shape[axis])
    return centered.astype(np.float32) * scale.astype(np.float32)


register("dequantize", _dequantize_type, _dequantize, num_inputs=(3, 4), attrs={"group_size": None, "axis": None})


# -- requantize -------------------------------------------------------------------------------------------------
def _requantize_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    acc, b, c = ts
    _check_int(acc, "requantize input")
    _check_int(b, "requantize multiplier", frozenset({"i32", "i64"}))
    _check_int(c, "requantize shift", frozenset({"i8", "i16", "i32", "i64"}))
    _check_bcast(acc, b, "multiplier")
    _check_bcast(acc, c, "shift")
    _check_dtype(attrs["dtype"], QUANT_DTYPES, "requantize dtype")
    return [TensorType(acc.shape, attrs["dtype"])]


def _requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, *, dtype: str, zero_point: int,
                input_zero_point: int, min: int | None, max: int | None) -> np.ndarray:
    y = dyadic_scale(acc.astype(np.int64) - input_zero_point, multiplier, shift) + zero_point
    return clamp_to(y, dtype, min, max)


_REQ_ATTRS = {"dtype": REQUIRED, "zero_point": 0, "min": None, "max": None}
register("requantize", _requantize_type, _requantize, num_inputs=(3, 3),
         attrs={**_REQ_ATTRS, "input_zero_point": 0})


# -- integer conv / linear / matmul (int32 accumulation) ---------------------------------------------------------
def _qconv2d_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _check_int(ts[0], "qconv2d input", ACT_DTYPES)
    _check_int(ts[1], "qconv2d weight", WEIGHT_DTYPES)
    if len(ts) == 3:
        check(ts[2].dtype == "i32", "qconv2d bias must be i32")
    out = _conv2d_type(ts, attrs)[0]
    return [TensorType(out.shape, "i32")]


def _qconv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *, x_zero_point: int,
             w_zero_point: int, **conv: Any) -> np.ndarray:
    # Padding cells hold the real value 0: pad (x − zx), not x.
    xs = x.astype(np.int64) - x_zero_point
    ws = w.astype(np.int64) - w_zero_point
    y = _conv2d(xs, ws, None if bias is None else bias.astype(np.int64), **conv)
    return y.astype(np.int32)  # int32 accumulator (wraps like int32 hardware)


register("qconv2d", _qconv2d_type, _qconv2d, num_inputs=(2, 3),
         attrs={"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1,
                "x_zero_point": 0, "w_zero_point": 0})


def _qlinear_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = ts[0], ts[1]
    _check_int(x, "qlinear input", ACT_DTYPES)
    _check_int(w, "qlinear weight", WEIGHT_DTYPES)
    check(w.rank == 2 and x.rank >= 1 and x.shape[-1] == w.shape[1],
          f"qlinear: x[..., {x.shape[-1] if x.rank else '?'}] with weight {list(w.shape)}")
    if len(ts) >= 3:
        check(ts[2].dtype == "i32" and ts[2].shape == (w.shape[0],), f"qlinear bias must be i32[{w.shape[0]}]")
    if len(ts) == 4:
        g = attrs["group_size"]
        check(isinstance(g, int) and g > 0 and w.shape[1] % g == 0,
              f"qlinear group_size {g} must divide the {w.shape[1]} input features")
        _check_int(ts[3], "qlinear group_scale")
        check(ts[3].shape == (w.shape[0], w.shape[1] // g), "qlinear group_scale must be [out, in / group_size]")
    return [TensorType(x.shape[:-1] + (w.shape[0],), "i32")]


def _qlinear(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, group_scale: np.ndarray | None = None,
             *, x_zero_point: int, w_zero_point: int, group_size: int | None) -> np.ndarray:
    xs = x.astype(np.int64) - x_zero_point
    ws = w.astype(np.int64) - w_zero_point
    if group_scale is None:
        y = np.matmul(xs, ws.T)
    else:  # VS-Quant: per-vector integer dot products, weighted by the integer per-vector scales
        assert group_size is not None
        o, k = ws.shape
        xg = xs.reshape(xs.shape[:-1] + (k // group_size, group_size))
        part = np.einsum("...gk,ogk->...og", xg, ws.reshape(o, k // group_size, group_size))
        y = (part * group_scale.astype(np.int64)).sum(-1)
    if bias is not None:
        y = y + bias.astype(np.int64)
    return np.asarray(y).astype(np.int32)


register("qlinear", _qlinear_type, _qlinear, num_inputs=(2, 4),
         attrs={"x_zero_point": 0, "w_zero_point": 0, "group_size": None})


def _qmatmul_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    a, b = ts
    _check_int(a, "qmatmul a", ACT_DTYPES)
    _check_int(b, "qmatmul b", ACT_DTYPES)
    from qcc.ir.ops.nn import matmul_shape  # from the shapes: an empty int8 matmul costs O(M·N·K)

    return [TensorType(matmul_shape(a.shape, b.shape), "i32")]


def _qmatmul(a: np.ndarray, b: np.ndarray, *, a_zero_point: int, b_zero_point: int) -> np.ndarray:
    y = np.matmul(a.astype(np.int64) - a_zero_point, b.astype(np.int64) - b_zero_point)
    return np.asarray(y).astype(np.int32)


register("qmatmul", _qmatmul_type, _qmatmul, num_inputs=(2, 2), attrs={"a_zero_point": 0, "b_zero_point": 0})


# -- rescaling add / concat, integer mean ---------------------------------------------------------------------------
def _qadd_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    a, b = ts
    _check_int(a, "qadd a", ACT_DTYPES | {"i32"})
    _check_int(b, "qadd b", ACT_DTYPES | {"i32"})
    _check_dtype(attrs["dtype"], QUANT_DTYPES, "qadd dtype")
    return [TensorType(broadcast_shapes(a.shape, b.shape), attrs["dtype"])]


def _qadd(a: np.ndarray, b: np.ndarray, *, a_multiplier: int, b_multiplier: int, shift: int, a_zero_point: int,
          b_zero_point: int, zero_point: int, dtype: str, min: int | None, max: int | None) -> np.ndarray:
    # Both inputs rescaled to the output scale with one shared shift, summed in int64, rounded once.
    acc = (a.astype(np.int64) - a_zero_point) * a_multiplier + (b.astype(np.int64) - b_zero_point) * b_multiplier
    return clamp_to(round_shift(acc, shift) + zero_point, dtype, min, max)


register("qadd", _qadd_type, _qadd, num_inputs=(2, 2),
         attrs={**_REQ_ATTRS, "a_multiplier": REQUIRED, "b_multiplier": REQUIRED, "shift": REQUIRED,
                "a_zero_point": 0, "b_zero_point": 0})


def _qconcat_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    n = len(ts)
    for key in ("multipliers", "shifts", "input_zero_points"):
        check(isinstance(attrs[key], tuple) and len(attrs[key]) == n, f"qconcat {key} needs one entry per input")
    for t in ts:
        _check_int(t, "qconcat input", ACT_DTYPES | {"i32"})
    _check_dtype(attrs["dtype"], QUANT_DTYPES, "qconcat dtype")
    axis = attrs["axis"]
    check(0 <= axis < ts[0].rank, f"qconcat axis {axis} out of range")
    for t in ts[1:]:
        check(t.rank == ts[0].rank and all(a == b for i, (a, b) in enumerate(zip(t.shape, ts[0].shape)) if i != axis),
              f"qconcat shapes {list(ts[0].shape)} and {list(t.shape)} differ off axis {axis}")
    shape = list(ts[0].shape)
    shape[axis] = sum(t.shape[axis] for t in ts)
    return [TensorType(tuple(shape), attrs["dtype"])]


def _qconcat(*xs: np.ndarray, axis: int, multipliers: tuple[int, ...], shifts: tuple[int, ...],
             input_zero_points: tuple[int, ...], zero_point: int, dtype: str) -> np.ndarray:
    parts = [dyadic_scale(x.astype(np.int64) - z, m, s) + zero_point
             for x, m, s, z in zip(xs, multipliers, shifts, input_zero_points)]
    return clamp_to(np.concatenate(parts, axis=axis), dtype)


register("qconcat", _qconcat_type, _qconcat, num_inputs=(1, None),
         attrs={"axis": REQUIRED, "multipliers": REQUIRED, "shifts": REQUIRED, "input_zero_points": REQUIRED,
                "zero_point": 0, "dtype": REQUIRED})


def _qmean_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _check_int(ts[0], "qmean input")
    return [ts[0].with_shape(_reduced_shape(ts[0].shape, tuple(attrs["axes"]), attrs["keepdims"]))]


def _qmean(x: np.ndarray, *, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    ax = tuple(axes) or tuple(range(x.ndim))
    n = int(np.prod([x.shape[a] for a in ax], dtype=np.int64))
    s = x.astype(np.int64).sum(axis=ax, keepdims=keepdims)
    # Integer division by the constant count, rounded half up; exact under a zero point (mean(x+z) = mean(x)+z).
    return np.asarray((s + n // 2) // max(n, 1)).astype(x.dtype)


register("qmean", _qmean_type, _qmean, attrs={"axes": (), "keepdims": False}, traits=("reduction",))
