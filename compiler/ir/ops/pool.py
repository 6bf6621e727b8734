"""Pooling ops (NCHW): max / average with padding, dilation and ceil mode; adaptive pools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.nn import _windows, conv_out_size
from qcc.ir.ops.registry import REQUIRED, check, register
from qcc.ir.types import TensorType


def _pool_out(shape: tuple[int, ...], attrs: Mapping[str, Any]) -> tuple[int, int]:
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    pt, pl, pb, pr = attrs["padding"]
    oh = conv_out_size(shape[2], kh, sh, pt + pb, dh, attrs["ceil_mode"], pt)
    ow = conv_out_size(shape[3], kw, sw, pl + pr, dw, attrs["ceil_mode"], pl)
    return oh, ow


def _pool_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ts[0]
    check(x.rank == 4, "pooling expects [N, C, H, W]")
    oh, ow = _pool_out(x.shape, attrs)
    check(oh > 0 and ow > 0, "pooling output would be empty")
    return [x.with_shape(x.shape[:2] + (oh, ow))]


def _padded(x: np.ndarray, attrs: Mapping[str, Any], oh: int, ow: int, fill: float) -> np.ndarray:
    """x padded with `fill` on every side, including the extra bottom/right rows ceil mode reads."""
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    pt, pl, _, _ = attrs["padding"]
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    pb = max(need_h - pt - x.shape[2], 0)
    pr = max(need_w - pl - x.shape[3], 0)
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)


def _max_pool2d(x: np.ndarray, **attrs: Any) -> np.ndarray:
    oh, ow = _pool_out(x.shape, attrs)
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = _padded(x, attrs, oh, ow, lowest)
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    return _windows(xp, kh, kw, sh, sw, dh, dw, oh, ow).max(axis=(4, 5)).astype(x.dtype)


def _avg_pool2d(x: np.ndarray, **attrs: Any) -> np.ndarray:
    oh, ow = _pool_out(x.shape, attrs)
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    pt, pl, pb, pr = attrs["padding"]
    acc = np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64
    xp = _padded(x.astype(acc), attrs, oh, ow, 0)
    sums = _windows(xp, kh, kw, sh, sw, 1, 1, oh, ow).sum(axis=(4, 5))
    # The divisor counts the cells each window covers: padding counts only with count_include_pad,
    # and the extra ceil-mode cells never count (PyTorch semantics).
    ones = np.ones((1, 1) + x.shape[2:], acc)
    if attrs["count_include_pad"]:
        ones = np.pad(ones, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=1)
        ones = _padded(ones, {**attrs, "padding": (0, 0, 0, 0)}, oh, ow, 0)
    else:
        ones = _padded(ones, attrs, oh, ow, 0)
    counts = _windows(ones, kh, kw, sh, sw, 1, 1, oh, ow).sum(axis=(4, 5))
    if np.issubdtype(x.dtype, np.integer):
        return np.floor_divide(sums + counts // 2, counts).astype(x.dtype)
    return (sums / counts).astype(x.dtype)


_POOL = {"kernel": REQUIRED, "stride": REQUIRED, "padding": (0, 0, 0, 0), "ceil_mode": False}
register("max_pool2d", _pool_type, _max_pool2d, attrs={**_POOL, "dilation": (1, 1)})
register("avg_pool2d", _pool_type, _avg_pool2d, attrs={**_POOL, "count_include_pad": True})


def _adaptive_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ts[0]
    check(x.rank == 4, "adaptive pooling expects [N, C, H, W]")
    oh, ow = attrs["output_size"]
    return [x.with_shape(x.shape[:2] + (oh, ow))]


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive window [start, end) for each output index."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive(reduce: str) -> Any:
    def ref(x: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
        oh, ow = output_size
        acc = x.astype(np.float64) if reduce == "mean" and np.issubdtype(x.dtype, np.floating) else x
        out = np.empty(x.shape[:2] + (oh, ow), acc.dtype)
        for i, (h0, h1) in enumerate(adaptive_bounds(x.shape[2], oh)):
            for j, (w0, w1) in enumerate(adaptive_bounds(x.shape[3], ow)):
                win = acc[:, :, h0:h1, w0:w1]
                out[:, :, i, j] = win.mean(axis=(2, 3)) if reduce == "mean" else win.max(axis=(2, 3))
        return out.astype(x.dtype)

    return ref


register("adaptive_avg_pool2d", _adaptive_type, _adaptive("mean"), attrs={"output_size": REQUIRED})
register("adaptive_max_pool2d", _adaptive_type, _adaptive("max"), attrs={"output_size": REQUIRED})
