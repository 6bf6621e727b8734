"""Weight and activation quantization parameters: symmetric per-tensor / per-channel / per-vector weights
(HAWQV3 §2.1, VS-Quant §7), int32 biases, and activation (scale, zero point, dtype) from a calibrated range.

Weights are symmetric with the narrow range [−(2^(b−1)−1), 2^(b−1)−1]; the clip is max|w| (`minmax`) or the OCTAV
MSE-optimal clip (`mse`) per channel. Per-vector (VS-Quant) scales are two-level: an integer scale
s_q(v) ∈ [1, 2^M − 1] per vector of `group_size` weights along the reduction axis, and a float scale γ per output
channel, so the weight of vector v is γ·s_q(v)·q.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.errors import OptionError
from qcc.passes.quant.observers import octav_clip_rows

WEIGHT_METHODS = ("minmax", "mse")
MIN_SCALE = 1e-12  # a tensor of zeros still gets a positive scale


@dataclass
class QuantizedWeight:
    """An integer weight with its scale: real ≈ scale · [group_scale expanded ·] q.

    `scale` broadcasts against `q` (shape [O, 1, ...] per channel along `axis`, or ()); `group_scale` is
    [O, I / group_size] integers for per-vector weights (then `scale` is γ, [O, 1]).
    """

    q: np.ndarray
    scale: np.ndarray
    dtype: str
    bits: int
    axis: int | None
    group_size: int | None = None
    group_scale: np.ndarray | None = None

    @property
    def granularity(self) -> str:
        if self.group_size:
            return f"per-vector({self.group_size})"
        return "per-channel" if self.axis is not None else "per-tensor"

    @property
    def nbytes(self) -> int:
        """Storage: bits/8 per weight, plus 4 bytes per float scale and 1 per integer group scale."""
        data = (self.q.size * self.bits + 7) // 8
        extra = 0 if self.group_scale is None else self.group_scale.size
        return int(data + 4 * self.scale.size + extra)

    def dequantized(self) -> np.ndarray:
        real = self.q.astype(np.float64)
        if self.group_scale is not None and self.group_size:
            real = real * np.repeat(self.group_scale.astype(np.float64), self.group_size, axis=1)
        return real * self.scale.astype(np.float64)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _clip_rows(rows: np.ndarray, bits: int, method: str) -> np.ndarray:
    if method == "minmax":
        return np.abs(rows).max(axis=1)
    if method == "mse":
        return octav_clip_rows(rows, bits)
    raise OptionError(f"weight_method must be one of {list(WEIGHT_METHODS)}, got {method!r}")


def quantize_weight(w: np.ndarray, bits: int, axis: int | None, method: str = "mse",
                    group_size: int | None = None, group_scale_bits: int = 8) -> QuantizedWeight:
    """Symmetric quantization of float weights `w`: per channel along `axis` (None: per tensor), or per vector of
    `group_size` along the last axis of a 2-D weight (two-level VS-Quant scales with `group_scale_bits`)."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise OptionError(f"weight bits must be between 2 and 8, got {bits}")
    dtype = "i4" if bits <= 4 else "i8"
    qmax = _qmax(bits)
    w64 = np.asarray(w, np.float64)
    if group_size:
        if w64.ndim != 2 or w64.shape[1] % group_size:
            raise OptionError(f"group_size {group_size} needs a 2-D weight whose input size is a multiple of it, "
                              f"got {list(w64.shape)}")
        o, k = w64.shape
        vectors = w64.reshape(o * (k // group_size), group_size)
        s = (np.maximum(_clip_rows(vectors, bits, method), 0.0) / qmax).reshape(o, k // group_size)
        top = 2**group_scale_bits - 1
        gamma = np.maximum(s.max(axis=1, keepdims=True) / top, MIN_SCALE)
        sq = np.clip(np.floor(s / gamma + 0.5), 1, top).astype(np.int32)
        full = gamma * np.repeat(sq, group_size, axis=1)
        q = np.clip(np.rint(w64 / full), -qmax, qmax).astype(np.int8)
        return QuantizedWeight(q, gamma.astype(np.float32), dtype, bits, 0, group_size, sq)
    if axis is None:
        clip = _clip_rows(w64.reshape(1, -1), bits, method)
        scale = np.asarray(max(float(clip[0]) / qmax, MIN_SCALE), np.float64)
    else:
        rows = np.moveaxis(w64, axis, 0).reshape(w64.shape[axis], -1)
        clip = _clip_rows(rows, bits, method)
        shape = [1] * w64.ndim
        shape[axis] = -1
        scale = np.maximum(clip / qmax, MIN_SCALE).reshape(shape)
    scale32 = scale.astype(np.float32)  # the stored scale: quantize against exactly what dequantize multiplies
    q = np.clip(np.rint(w64 / scale32.astype(np.float64)), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(q, scale32, dtype, bits, axis)


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias at `scale` (= S_w·S_x per output channel), rounded half to even and saturated."""
    q = np.rint(np.asarray(b, np.float64) / np.asarray(scale, np.float64))
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor activation quantization: real = scale · (q − zero_point), q of IR dtype `dtype`."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def bits(self) -> int:
        return {"i4": 4, "u4": 4, "i8": 8, "u8": 8, "i16": 16, "i32": 32}[self.dtype]


def act_quant(lo: float, hi: float, bits: int = 8, unsigned: bool = False, symmetric: bool = True) -> ActQuant:
    """(scale, zero point, dtype) covering [lo, hi]: unsigned u8 [0, hi] for non-negative tensors, symmetric
    signed int, or (symmetric=False) u8 with a zero point over [min(lo, 0), max(hi, 0)]. 16 bits are always i16."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if bits == 16:
        return ActQuant(max(max(-lo, hi) / 32767.0, MIN_SCALE), 0, "i16")
    if bits not in (4, 8):
        raise OptionError(f"activation bits must be 4, 8 or 16, got {bits}")
    if unsigned:
        return ActQuant(max(hi / (2**bits - 1), MIN_SCALE), 0, "u8" if bits == 8 else "u4")
    if symmetric:
        return ActQuant(max(max(-lo, hi) / _qmax(bits), MIN_SCALE), 0, "i8" if bits == 8 else "i4")
    top = 2**bits - 1
    scale = max((hi - lo) / top, MIN_SCALE)
    zp = int(np.clip(np.floor(-lo / scale + 0.5), 0, top))
    return ActQuant(scale, zp, "u8" if bits == 8 else "u4")
