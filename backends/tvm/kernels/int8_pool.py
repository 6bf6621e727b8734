"""Channels-last 8-bit max pooling for the int8 CNN chain (int8_fuse.py keeps template activations NHWC).

`max_pool2d` of an NHWC [B, H, W, C] int8 / uint8 tensor, written NHWC: each output pixel is the running max of
its KH·KW window, one vector of channels at a time (C is the contiguous, vectorised axis), output rows spread
over the threads. Cells outside the input (padding, ceil-mode overhang) never win: they read as the dtype's
lowest value, which is the max identity on the stored integers, exactly as the generic rule's `if_then_else`
with `lowest`, so the result is bit-identical to the NCHW reference (max is order-independent and exact).
"""

from __future__ import annotations

from typing import Any

from qcc.errors import BackendError

MAX_WINDOW = 64  # the window is unrolled into one max expression


def max_pool_nhwc_kernel(x_shape: tuple[int, ...], dtype: str, out_hw: tuple[int, int], kernel: tuple[int, int],
                         stride: tuple[int, int], padding: tuple[int, int, int, int],
                         dilation: tuple[int, int]) -> Any:
    """Scheduled PrimFunc (X [B, H, W, C], out [B, OH, OW, C]) of a max pool over an NHWC int8 / uint8 tensor;
    `dtype` is the TVM dtype ("int8" | "uint8"), `padding` (top, left, bottom, right)."""
    from tvm import s_tir, te, tirx

    if dtype not in ("int8", "uint8"):
        raise BackendError(f"int8 max pool: dtype {dtype} is not 8-bit")
    b_, h, w, c = (int(d) for d in x_shape)
    oh, ow = (int(d) for d in out_hw)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    pt, pl = int(padding[0]), int(padding[1])
    if kh * kw > MAX_WINDOW:
        raise BackendError(f"int8 max pool: window {kh}x{kw} too large to unroll")
    X = te.placeholder((b_, h, w, c), dtype, name="X")
    low = tirx.const(-128 if dtype == "int8" else 0, dtype)

    def body(n: Any, y: Any, x: Any, ci: Any) -> Any:
        best = None
        for r in range(kh):
            for q in range(kw):
                yy, xx = y * sh - pt + r * dh, x * sw - pl + q * dw
                inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
                v = tirx.if_then_else(inside, X[n, tirx.min(tirx.max(yy, 0), h - 1),
                                                tirx.min(tirx.max(xx, 0), w - 1), ci], low)
                best = v if best is None else tirx.max(best, v)
        return best

    out = te.compute((b_, oh, ow, c), body, name="max_pool2d_nhwc")
    sch = s_tir.Schedule(te.create_prim_func([X, out]))
    n, y, x, ci = sch.get_loops(sch.get_sblock("max_pool2d_nhwc"))
    sch.parallel(sch.fuse(n, y))
    lanes = next((v for v in (64, 32, 16) if c % v == 0), None)
    if lanes is not None:
        sch.vectorize(sch.split(ci, [None, lanes])[1])
    return sch.mod["main"]
