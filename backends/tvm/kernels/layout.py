"""Packed activation layouts and the kernels that convert them.

NCHW[x]c ("NCHW16c" for x = 16): a tensor [N, C, H, W] stored as [N, ceil(C/x), H, W, x], channel c at block
c // x, lane c % x; the channels past C are zero. Convolutions read and write this layout so that a vector of
x output channels is one contiguous load/store; the layout pass keeps whole chains of convolutions in it and
inserts `layout_transform` kernels only at its boundaries.
"""

from __future__ import annotations

import numpy as np

from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, shape_str
from qcc.backends.tvm.kernels.params import Conv2dShape, DepthwiseParams
from qcc.errors import BackendError


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def nchwc_shape(shape: tuple[int, ...], block: int) -> tuple[int, int, int, int, int]:
    """[N, C, H, W] -> [N, ceil(C/block), H, W, block]."""
    n, c, h, w = shape
    return (n, _ceil(c, block), h, w, block)


def to_nchwc(x: np.ndarray, block: int) -> np.ndarray:
    """NumPy NCHW -> NCHW[block]c with zero channels appended."""
    n, c, h, w = x.shape
    cb = _ceil(c, block)
    xp = np.zeros((n, cb * block, h, w), np.float32)
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape(n, cb, block, h, w).transpose(0, 1, 3, 4, 2))


def from_nchwc(x: np.ndarray, channels: int) -> np.ndarray:
    """NumPy NCHW[x]c -> NCHW, dropping the padding channels."""
    n, cb, h, w, block = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * block, h, w)[:, :channels])


def layout_kernel(kind: str, shape: tuple[int, int, int, int], block: int, lanes: int = 16) -> Kernel:
    """A standalone transform of an activation [N, C, H, W] (`shape`, always the logical NCHW shape):
    kind "nchw_to_nchwc" (pads channels with zeros) or "nchwc_to_nchw" (drops them)."""
    from tvm import s_tir, te

    n, c, h, w = shape
    cb = _ceil(c, block)
    if kind == "nchw_to_nchwc":
        X = te.placeholder((n, c, h, w), "float32", "x")
        Y = te.compute((n, cb, h, w, block), lambda a, q, i, j, v: te.if_then_else(
            q * block + v < c, X[a, te.min(q * block + v, c - 1), i, j], 0.0), name="out")
        ins, outs = [ArgSpec("x", (n, c, h, w), "data", "NCHW")], ArgSpec("y", (n, cb, h, w, block), "output",
                                                                           f"NCHW{block}c")
    elif kind == "nchwc_to_nchw":
        X = te.placeholder((n, cb, h, w, block), "float32", "x")
        Y = te.compute((n, c, h, w), lambda a, q, i, j: X[a, q // block, i, j, q % block], name="out")
        ins, outs = [ArgSpec("x", (n, cb, h, w, block), "data", f"NCHW{block}c")], ArgSpec("y", (n, c, h, w),
                                                                                           "output", "NCHW")
    else:
        raise BackendError(f"unknown layout transform {kind!r}")
    func = te.create_prim_func([X, Y]).with_attr("global_symbol", f"qcc_{kind}_{shape_str(shape)}_{block}")
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("out")
    loops = sch.get_loops(blk)
    sch.parallel(sch.fuse(*loops[:3]))
    inner = loops[-1]
    if kind == "nchw_to_nchwc" and block % lanes == 0:
        _, vl = sch.split(inner, [None, lanes])
        sch.vectorize(vl)
    # Params carry only the vector width here; the workload is the logical conv-like shape.
    wl = Conv2dShape(n, c, h, w, c, 1, 1)
    return Kernel(kind, wl, DepthwiseParams(block, 1, lanes), (), sch.mod["main"], (*ins, outs))
