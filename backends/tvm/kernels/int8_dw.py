"""Channels-last int8 depthwise convolution (qconv2d with groups = C = O) for the int8 CNN chain.

Drop-in for the GEMM template in int8_fuse.py (same `pack_conv_weight` / `qconv2d_kernel` signatures, same
[B·OH·OW, O] output and epilogues from kernels/int8.py): a depthwise convolution has no reduction over channels,
so there is no GEMM to tensorize. Each output pixel sums its KH·KW taps for a vector of channels at a time (C is
the contiguous, vectorised axis of the NHWC input), output rows spread over the threads, and the epilogue
(bias, fused requantize, fused qadd) runs on the same vector: only the 8-bit result reaches memory.

Exactness. The input is copied once into a padded channels-last buffer whose padding cells hold the raw value
zx (the real value 0), so the tap loop has no conditions. The zero-point correction folds into the bias:
Σ (x − zx)·w + bias = Σ x·w + (bias − zx·Σ w), padded taps giving zx·w − zx·w = 0. `pack_conv_weight` computes the
folded bias in int64 and requires KH·KW·2^15 + |folded bias| < 2^31 (|x| ≤ 255, |w| ≤ 128), so no partial int32
sum overflows and the result equals the reference's int64 sum wrapped to int32. The weight zero point must be 0
(int8_fuse declines otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.backends.tvm.kernels.int8 import Requant, ResidualAdd, _ceil, _epilogue
from qcc.errors import BackendError

TAG = "dw"  # kernel-name tag in int8_fuse
MAX_TAPS = 49  # the window is unrolled into one sum expression (7×7 at most)
LANES = 16


def pack_conv_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None,
                     dilation: tuple[int, int] = (1, 1), isa: str = "vnni") -> tuple[np.ndarray, np.ndarray]:
    """Depthwise weight [C, 1, KH, KW] → [KH·KW, Cp] int8 (channels zero-padded to 16) and the int32 bias [Cp].
    Raises BackendError when the int32 sum could overflow or the window is too large to unroll."""
    c, one, kh, kw = w.shape
    if one != 1:
        raise BackendError("int8 depthwise: weight must be [C, 1, KH, KW]")
    if kh * kw > MAX_TAPS:
        raise BackendError(f"int8 depthwise: window {kh}x{kw} too large to unroll")
    cp = _ceil(c, LANES)
    b = np.zeros(cp, np.int64)
    if bias is not None:
        b[:c] = bias.astype(np.int64)
    b[:c] -= int(x_zero_point) * w.astype(np.int64).reshape(c, -1).sum(1)
    if kh * kw * 255 * 128 + int(np.abs(b).max()) >= 2**31:
        raise BackendError("int8 depthwise: the int32 accumulation could overflow")
    wp = np.zeros((kh * kw, cp), np.int8)
    wp[:, :c] = w.reshape(c, kh * kw).T
    return wp, b.astype(np.int32)


def qconv2d_kernel(x_shape: tuple[int, ...], x_dtype: str, w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   stride: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int], zx: int,
                   name: str = "qconv2d_dw", rq: Requant | None = None, x_layout: str = "NCHW",
                   add: ResidualAdd | None = None, isa: str = "vnni") -> Any:
    """Depthwise kernel: inputs (x in `x_layout`, W [KH·KW, Cp], bias [Cp][, requantize multiplier, shift][,
    residual]) → [B·OH·OW, C] (NHWC), the int32 accumulator or the requantized (and qadd-ed) tensor."""
    from tvm import s_tir, te, tirx

    if x_layout == "NHWC":
        b_, h, w, c = (int(d) for d in x_shape)
    else:
        b_, c, h, w = (int(d) for d in x_shape)
    _, _, kh, kw = (int(d) for d in w_shape)
    _, o, oh, ow = (int(d) for d in out_shape)
    if o != c:
        raise BackendError("int8 depthwise: needs one output channel per input channel")
    cp, m = _ceil(c, LANES), b_ * oh * ow
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = (int(p) for p in padding)
    dt_in = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder(tuple(int(d) for d in x_shape), dt_in, name="X")
    W = te.placeholder((kh * kw, cp), "int8", name="W")
    bias = te.placeholder((cp,), "int32", name="bias")
    extras, epi, _ = _epilogue(rq, cp, add, (m, o))

    def load(n: Any, y: Any, x: Any, ci: Any) -> Any:
        y, x = tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(x, 0), w - 1)
        return X[n, y, x, ci] if x_layout == "NHWC" else X[n, ci, y, x]

    # Padded channels-last copy, padding = zx (the real value 0; its taps cancel against the folded bias).
    Xp = te.compute((b_, h + pt + pb, w + pl + pr, c), lambda n, y, x, ci: tirx.if_then_else(
        tirx.all(y >= pt, y < pt + h, x >= pl, x < pl + w), load(n, y - pt, x - pl, ci), tirx.const(int(zx), dt_in)),
        name="Xp")

    def body(i: Any, ci: Any) -> Any:
        n, rem = i // (oh * ow), i % (oh * ow)
        y, x = rem // ow, rem % ow
        acc = bias[ci]
        for r in range(kh):
            for s in range(kw):
                acc = acc + Xp[n, y * sh + r * dh, x * sw + s * dw, ci].astype("int32") \
                    * W[r * kw + s, ci].astype("int32")
        return epi(acc, ci, i)

    out = te.compute((m, o), body, name="out")
    func = te.create_prim_func([X, W, bias, *extras, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    i, ci = sch.get_loops(sch.get_sblock("out"))
    io, _ = sch.split(i, [None, ow])  # one output row per parallel task
    sch.parallel(io)
    if o % LANES == 0:
        sch.vectorize(sch.split(ci, [None, LANES])[1])
    xp = sch.get_sblock("Xp")
    sch.parallel(sch.fuse(*sch.get_loops(xp)[:2]))
    if c % LANES == 0:
        sch.vectorize(sch.split(sch.get_loops(xp)[-1], [None, LANES])[1])
    return sch.mod["main"]
