"""Segment softmax (float and integer) and the integer reciprocal square root of vertex degrees (quantized GNNs).

- ``segment_softmax(s [E, ...], index [E]) {num_segments}``: a softmax of each destination vertex's edges,
  ``exp(s − max_seg(s)[index]) / Σ_seg exp(...)[index]`` (GAT attention). The quantizer's input: the GNN
  quantization prep collapses the recognised exp / segment-sum / divide pattern into this one op.
- ``qsegment_softmax(s int, index) {num_segments, ln2, b, c, n, k}``: the same integer-only, as ``isoftmax``
  does it per row: subtract the segment max (exact), I-BERT i-exp of the (≤ 0) difference, an int64 segment
  sum, one integer factor ⌊2^62 / Σe⌋ per segment; output u8 at scale 2^−8 (rounded, saturated).
- ``irsqrt(d int) {bits}``: ``isqrt(⌊4^bits / max(d, 1)⌋)`` (exact floor square root), i32 ≈ 2^bits / √d, i.e.
  1/√d at scale 2^−bits: the GCN normalisation of an integer degree without float.

Segment ids wrap negatives and are clamped into [0, num_segments) as segment_csr does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.quant import INT_INPUTS, clamp_to
from qcc.ir.ops.quant_nonlinear import SOFTMAX_NORM_BITS, SOFTMAX_OUT_BITS, i_exp
from qcc.ir.ops.registry import REQUIRED, check, register
from qcc.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType

ISQRT_START_BITS = 16  # irsqrt's Newton iteration starts from 2^16 ≥ √(2^31)
ISQRT_STEPS = 24  # enough to reach the exact floor from 2^16 for every n < 2^31 (tested exhaustively on edges)
MAX_RSQRT_BITS = 15  # 4^15 = 2^30: the dividend fits int32


def segment_rows(index: np.ndarray, num_segments: int) -> np.ndarray:
    """Segment ids as int64, negatives wrapped and clamped into range (as lowered)."""
    i = index.astype(np.int64)
    return np.clip(np.where(i < 0, i + num_segments, i), 0, num_segments - 1)


def _softmax_type(ts: Sequence[TensorType], attrs: Mapping[str, Any], integer: bool) -> list[TensorType]:
    s, idx = ts
    n = attrs["num_segments"]
    check(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"num_segments must be a positive int, got {n!r}")
    check(idx.dtype in INT_DTYPES and idx.rank == 1, "the segment index must be a 1-D integer tensor")
    check(s.rank >= 1 and s.shape[0] == idx.shape[0], f"scores need {idx.shape[0]} rows (one per edge)")
    if integer:
        check(s.dtype in INT_INPUTS, f"qsegment_softmax needs integer scores, got {s.dtype}")
        return [TensorType(s.shape, "u8")]
    check(s.dtype in FLOAT_DTYPES, f"segment_softmax needs float scores, got {s.dtype}")
    return [TensorType(s.shape, s.dtype)]


def _segment_max(x: np.ndarray, rows: np.ndarray, n: int, low: Any) -> np.ndarray:
    m = np.full((n,) + x.shape[1:], low, x.dtype)
    np.maximum.at(m, rows, x)
    return m


def _segment_softmax(s: np.ndarray, index: np.ndarray, *, num_segments: int) -> np.ndarray:
    rows = segment_rows(index, num_segments)
    x = s.astype(np.float64)
    ex = np.exp(x - _segment_max(x, rows, num_segments, -np.inf)[rows])
    den = np.zeros((num_segments,) + s.shape[1:], np.float64)
    np.add.at(den, rows, ex)
    return (ex / den[rows]).astype(s.dtype)


def _qsegment_softmax(s: np.ndarray, index: np.ndarray, *, num_segments: int, ln2: int, b: int, c: int, n: int,
                      k: int) -> np.ndarray:
    rows = segment_rows(index, num_segments)
    x = s.astype(np.int64)
    e = i_exp(x - _segment_max(x, rows, num_segments, np.iinfo(np.int64).min)[rows], ln2, b, c, n, k)
    total = np.zeros((num_segments,) + s.shape[1:], np.int64)
    np.add.at(total, rows, e)
    factor = (np.int64(1) << SOFTMAX_NORM_BITS) // np.maximum(total, 1)
    shift = SOFTMAX_NORM_BITS - SOFTMAX_OUT_BITS
    return clamp_to((e * factor[rows] + (np.int64(1) << (shift - 1))) >> shift, "u8")


register("segment_softmax", lambda ts, a: _softmax_type(ts, a, False), _segment_softmax, num_inputs=(2, 2),
         attrs={"num_segments": REQUIRED})
register("qsegment_softmax", lambda ts, a: _softmax_type(ts, a, True), _qsegment_softmax, num_inputs=(2, 2),
         attrs={"num_segments": REQUIRED, "ln2": REQUIRED, "b": REQUIRED, "c": REQUIRED, "n": 30, "k": 0})


def isqrt_fixed(n: np.ndarray) -> np.ndarray:
    """floor(√n) for 0 ≤ n < 2^31: ISQRT_STEPS guarded Newton steps x ← min(x, (x + n // x) // 2) from 2^16."""
    n = np.asarray(n, np.int64)
    x: np.ndarray = np.full(n.shape, 1 << ISQRT_START_BITS, np.int64)
    for _ in range(ISQRT_STEPS):
        x = np.maximum(np.minimum(x, np.right_shift(x + np.floor_divide(n, x), 1)), 1)
    return np.where(n == 0, 0, x)


def _irsqrt_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (d,) = ts
    bits = attrs["bits"]
    check(d.dtype in INT_INPUTS, f"irsqrt needs an integer input, got {d.dtype}")
    check(isinstance(bits, int) and not isinstance(bits, bool) and 0 <= bits <= MAX_RSQRT_BITS,
          f"irsqrt bits must be an int in [0, {MAX_RSQRT_BITS}], got {bits!r}")
    return [TensorType(d.shape, "i32")]


def _irsqrt(d: np.ndarray, *, bits: int) -> np.ndarray:
    q = (np.int64(1) << (2 * bits)) // np.maximum(d.astype(np.int64), 1)
    return isqrt_fixed(q).astype(np.int32)


register("irsqrt", _irsqrt_type, _irsqrt, attrs={"bits": REQUIRED}, traits=("elementwise", "unary"))
