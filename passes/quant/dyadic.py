"""Dyadic numbers: a real scale ratio as an integer multiplier b and a shift c, ratio ≈ b / 2^c (HAWQV3).

`dyadic(ratio)` follows quantization.md §2.2: `ratio = m·2^e` with 0.5 ≤ |m| < 1 (frexp), `b = round_half_up(m·2^31)`,
`c = 31 − e`; when m·2^31 rounds up to 2^31 the pair becomes (2^30, c − 1) so b stays a 31-bit integer. Applying it
to an integer x is `(x·b + 2^(c−1)) >> c` in int64 (`qcc.ir.ops.quant.dyadic_scale`), which equals
`round_half_up(x·ratio)` exactly whenever x·ratio is not within |x|·2^(e−32) of a half-integer tie (|b/2^c − ratio|
≤ 2^(e−32)). Ratios too small to move any int32 accumulator become (0, 31): the result is then exactly 0.
Negative ratios give negative multipliers (used by LayerNorm with negative γ and by subtraction).
"""

from __future__ import annotations

import math

import numpy as np

from qcc.ir.ops.quant import dyadic_scale

MULT_BITS = 31
MAX_SHIFT = 62  # x·b + 2^(c−1) must stay inside int64 for |x| < 2^31


def dyadic(ratio: float | np.ndarray, bits: int = MULT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) int64 arrays with b / 2^c ≈ ratio elementwise; |b| < 2^bits. Raises ValueError on NaN/inf."""
    r = np.asarray(ratio, np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"dyadic: scale ratio must be finite, got {r[~np.isfinite(r)][:3].tolist()}")
    m, e = np.frexp(r)
    b = np.floor(m * 2.0**bits + 0.5).astype(np.int64)  # round half up (also for negative m)
    c = (bits - e).astype(np.int64)
    top = np.abs(b) == (1 << bits)
    b = np.where(top, np.sign(b) * (1 << (bits - 1)), b)
    c = np.where(top, c - 1, c)
    tiny = (c > MAX_SHIFT) | (b == 0)
    b = np.where(tiny, 0, b)
    c = np.where(tiny, bits, c)
    return b.astype(np.int64), c.astype(np.int64)


def dyadic_scalar(ratio: float, bits: int = MULT_BITS) -> tuple[int, int]:
    """`dyadic` of one ratio, as Python ints."""
    b, c = dyadic(float(ratio), bits)
    return int(b), int(c)


def shared_shift(ratios: list[float], bits: int = MULT_BITS) -> tuple[list[int], int]:
    """Multipliers [b_i] with one shared shift c so that b_i / 2^c ≈ ratio_i and every |b_i| < 2^bits.

    Used by qadd: both branches are rescaled to the output scale and rounded once after the sum. The shift is set
    by the largest ratio, so a ratio much smaller than it keeps fewer significant bits (it matters little there).
    """
    finite = [abs(r) for r in ratios if r != 0.0]
    if not finite:
        return [0] * len(ratios), bits
    e = max(math.frexp(r)[1] for r in finite)
    c = min(bits - e, MAX_SHIFT - 1)
    mults = [math.floor(r * 2.0**c + 0.5) for r in ratios]
    while any(abs(b) >= 1 << bits for b in mults):  # a ratio that rounded up to 2^bits
        c -= 1
        mults = [math.floor(r * 2.0**c + 0.5) for r in ratios]
    return mults, c


def apply_dyadic(x: np.ndarray, b: np.ndarray | int, c: np.ndarray | int) -> np.ndarray:
    """`(x·b + 2^(c−1)) >> c` in int64 (the requantize formula), elementwise with broadcasting."""
    return dyadic_scale(np.asarray(x, np.int64), b, c)


def round_half_up(x: np.ndarray) -> np.ndarray:
    """The float reference rounding that dyadic requantization implements: floor(x + 0.5)."""
    return np.floor(np.asarray(x, np.float64) + 0.5)
