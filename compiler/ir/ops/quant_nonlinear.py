"""Integer-only nonlinears: softmax, GELU and LayerNorm in the I-BERT (polynomial) and I-ViT (shift) flavours.

Each op takes integers at some input scale S and integer constants derived from S at compile time by the
realize-integer pass (attributes), and computes exactly in int64 (docs/ops.md, "Integer nonlinears"):

- `isoftmax` (I-BERT i-exp: exp(p) ≈ 0.3585(p + 1.353)² + 0.344 on (−ln2, 0], times 2^−z) and `shiftmax`
  (I-ViT ShiftExp: x·log2 e by shifts, 2^r ≈ 1 + r/2) share one normalization: a per-row integer factor
  ⌊2^62 / Σe⌋ and an output of u8 at scale 2^−8 (rounded, saturated at 255).
- `igelu` (I-BERT erf polynomial, int32 output at scale S·S_L·2^shift / 2) and `shiftgelu` (I-ViT x·σ(1.702x)
  with σ from ShiftExp and one integer division, int32 output at scale S·2^−14); a requantize follows either.
- `ilayer_norm`: exact integer centering (C·q − Σq), sum of squares, integer square root (Newton to the exact
  floor, or I-ViT's fixed ten iterations from 2^16), y·⌊2^31/std⌋/2 at scale √C/2^30, then a per-channel dyadic
  affine plus integer bias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.quant import ACT_DTYPES, INT_INPUTS, QUANT_DTYPES, clamp_to, dyadic_scale
from qcc.ir.ops.registry import REQUIRED, check, register
from qcc.ir.types import TensorType

SOFTMAX_OUT_BITS = 8  # softmax outputs are u8 at scale 2^-8
SOFTMAX_NORM_BITS = 62  # the per-row factor is floor(2^62 / sum)
SIGMOID_BITS = 14  # shiftgelu's sigmoid is an integer at scale 2^-14


def isqrt_newton(n: np.ndarray) -> np.ndarray:
    """Exact floor(sqrt(n)) of int64 n ≥ 0 by integer Newton iteration from above (I-BERT Alg. 4)."""
    n = np.asarray(n, np.int64)
    bits = np.zeros(n.shape, np.int64)
    m = n.copy()
    while np.any(m > 0):  # exact bit length, no float rounding
        bits += (m > 0).astype(np.int64)
        m >>= 1
    x = np.left_shift(np.int64(1), (bits + 1) // 2)  # 2^ceil(bits/2) ≥ sqrt(n)
    for _ in range(70):
        y = (x + n // np.maximum(x, 1)) >> 1
        done = (y >= x) | (n == 0)
        if np.all(done):
            break
        x = np.where(done, x, y)
    return np.where(n == 0, 0, x)


def isqrt_ivit(n: np.ndarray) -> np.ndarray:
    """I-ViT's integer square root: ten Newton steps k = (k + n // k) // 2 from k = 2^16 (exact to ±1 below 2^32)."""
    n = np.asarray(n, np.int64)
    k: np.ndarray = np.full(n.shape, 1 << 16, np.int64)
    for _ in range(10):
        k = np.maximum((k + n // k) >> 1, 1)
    return np.where(n == 0, 0, k)


def _row_normalize(e: np.ndarray, axis: int) -> np.ndarray:
    """u8 softmax at scale 2^-8 from non-negative int64 e: one integer division per row."""
    total = np.maximum(e.sum(axis=axis, keepdims=True), 1)
    factor = (np.int64(1) << SOFTMAX_NORM_BITS) // total
    shift = SOFTMAX_NORM_BITS - SOFTMAX_OUT_BITS
    out = (e * factor + (np.int64(1) << (shift - 1))) >> shift
    return clamp_to(out, "u8")


def i_exp(x: np.ndarray, ln2: int, b: int, c: int, n: int, k: int) -> np.ndarray:
    """I-BERT i-exp of int64 x ≤ 0: x = −z·ln2 + p, exp ≈ ((p + b)² + c) · 2^k >> z (units a·S²·2^−k)."""
    x = np.maximum(x, -n * ln2)
    z = (-x) // ln2
    p = x + z * ln2
    poly = (p + b) ** 2 + c
    return np.left_shift(poly, k) >> z


def shift_exp(x: np.ndarray, one: int, n: int, k: int) -> np.ndarray:
    """I-ViT ShiftExp of int64 x ≤ 0 at scale S (one = ⌊1/S⌋): 2^(x·log2e) with 2^r ≈ 1 + r/2, units S·2^−k."""
    x = x + (x >> 1) - (x >> 4)  # x · log2(e) ≈ x · 1.0111b
    x = np.maximum(x, -n * one)
    z = (-x) // one
    r = x + z * one  # in (−one, 0]
    e = (r >> 1) + one
    return np.left_shift(e, k) >> z


def _softmax_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype in INT_INPUTS, f"expects an integer input, got {ts[0].dtype}")
    check(0 <= attrs["axis"] < ts[0].rank, f"axis {attrs['axis']} out of range")
    for key in ("ln2", "one"):
        if key in attrs:
            check(isinstance(attrs[key], int) and attrs[key] > 0, f"{key} must be a positive int")
    check(0 <= attrs["k"] <= 40 and 0 < attrs["n"] <= 62, "k must be in [0, 40] and n in [1, 62]")
    return [TensorType(ts[0].shape, "u8")]


def _isoftmax(x: np.ndarray, *, axis: int, ln2: int, b: int, c: int, n: int, k: int) -> np.ndarray:
    q = x.astype(np.int64)
    return _row_normalize(i_exp(q - q.max(axis=axis, keepdims=True), ln2, b, c, n, k), axis)


def _shiftmax(x: np.ndarray, *, axis: int, one: int, n: int, k: int) -> np.ndarray:
    q = x.astype(np.int64)
    return _row_normalize(shift_exp(q - q.max(axis=axis, keepdims=True), one, n, k), axis)


register("isoftmax", _softmax_type, _isoftmax,
         attrs={"axis": REQUIRED, "ln2": REQUIRED, "b": REQUIRED, "c": REQUIRED, "n": 30, "k": 0})
register("shiftmax", _softmax_type, _shiftmax, attrs={"axis": REQUIRED, "one": REQUIRED, "n": 30, "k": 0})


def _gelu_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype in ACT_DTYPES, f"expects an integer activation (≤ 16 bits), got {ts[0].dtype}")
    for key in ("b", "one"):
        if key in attrs:
            check(isinstance(attrs[key], int) and attrs[key] > 0, f"{key} must be a positive int")
    return [TensorType(ts[0].shape, "i32")]


def _igelu(x: np.ndarray, *, b: int, one: int, shift: int) -> np.ndarray:
    # erf(x/√2) ≈ sgn·(1 − 0.2888·(min(|x'|, 1.769) − 1.769)²), integers at S' = S/√2: b = ⌊1.769/S'⌋,
    # one = ⌊1/S_L⌋ with S_L = 0.2888·S'²; gelu = x/2 · (1 + erf) = q·(one + erf_q) at scale S·S_L/2.
    q = x.astype(np.int64)
    poly = (np.minimum(np.abs(q), b) - b) ** 2
    erf = np.sign(q) * (one - poly)
    return (q * ((one + erf) >> shift)).astype(np.int32)


def _shiftgelu(x: np.ndarray, *, one: int, n: int, k: int) -> np.ndarray:
    # gelu(x) ≈ x·σ(1.702x); the integers q are read at scale S' = 1.702·S (one = ⌊1/S'⌋), so
    # σ = e0 / (e0 + e) for q ≥ 0 and e / (e0 + e) for q < 0 with e = ShiftExp(−|q|), e0 = ShiftExp(0).
    q = x.astype(np.int64)
    e = shift_exp(-np.abs(q), one, n, k)
    e0 = shift_exp(np.zeros((), np.int64), one, n, k)
    num = np.where(q >= 0, e0, e)
    den = e0 + e
    sig = ((num << SIGMOID_BITS) + den // 2) // den
    return (q * sig).astype(np.int32)


register("igelu", _gelu_type, _igelu, attrs={"b": REQUIRED, "one": REQUIRED, "shift": 0})
register("shiftgelu", _gelu_type, _shiftgelu, attrs={"one": REQUIRED, "n": 30, "k": 0})


def _ilayer_norm_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, mult, shift, bias = ts
    axis = attrs["axis"]
    check(x.dtype in INT_INPUTS - {"i64"}, f"expects an integer input, got {x.dtype}")
    check(0 <= axis < x.rank, f"axis {axis} out of range")
    norm = x.shape[axis:]
    for t, what in ((mult, "multiplier"), (shift, "shift"), (bias, "bias")):
        check(t.dtype in ("i32", "i64"), f"ilayer_norm {what} must be i32 or i64")
        check(t.shape == norm, f"ilayer_norm {what} must have shape {list(norm)}, got {list(t.shape)}")
    check(attrs["sqrt"] in ("newton", "ivit"), f"sqrt must be 'newton' or 'ivit', got {attrs['sqrt']!r}")
    check(attrs["dtype"] in QUANT_DTYPES, f"dtype must be one of {list(QUANT_DTYPES)}")
    return [TensorType(x.shape, attrs["dtype"])]


def _ilayer_norm(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, bias: np.ndarray, *, axis: int,
                 sqrt: str, zero_point: int, dtype: str) -> np.ndarray:
    axes = tuple(range(axis, x.ndim))
    count = int(np.prod(x.shape[axis:], dtype=np.int64))
    q = x.astype(np.int64)
    # Centered exactly, without rounding a mean: y = C·q − Σq = C·(q − μ), so y/√Σy² = (q − μ)/√(C·σ²).
    y = count * q - q.sum(axis=axes, keepdims=True)
    var = (y * y).sum(axis=axes, keepdims=True)  # must stay below 2^63: C³·(max q − min q)² < 2^63
    std = np.maximum(isqrt_newton(var) if sqrt == "newton" else isqrt_ivit(var), 1)
    factor = (np.int64(1) << 31) // std
    normed = (y * factor) >> 1  # ≈ (x − μ)/σ at scale √C / 2^30, |normed| ≤ 2^31
    out = dyadic_scale(normed, multiplier, shift) + bias.astype(np.int64) + zero_point
    return clamp_to(out, dtype)


register("ilayer_norm", _ilayer_norm_type, _ilayer_norm, num_inputs=(4, 4),
         attrs={"axis": REQUIRED, "sqrt": "newton", "zero_point": 0, "dtype": "i8"})
