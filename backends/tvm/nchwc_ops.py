"""Scheduled TE kernels for the cheap ops the layout pass keeps in NCHW[x]c (see layout.py).

Each returns a PrimFunc (float32, marked scheduled) over 5-D [N, C/x, H, W, x] buffers: elementwise maps
(relu, relu6, clip, hardswish, add, mul), max_pool2d (floor mode) and the global average pool
(reduce_mean over H, W with keepdims). The loops over (n, channel block, row) run in parallel and the x
lanes are vectorized. The padding channels past C hold finite values (0 in, 0 out for every op here except
a clip with a positive lower bound); the convolutions multiply them by zero weights, and the transform back
to NCHW drops them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tvm import s_tir, te, tirx

SCHEDULED = "tirx.is_scheduled"


def _unary(op: str, attrs: dict[str, Any]) -> Callable[[Any], Any]:
    if op == "relu":
        return lambda x: te.max(x, 0.0)
    if op == "relu6":
        return lambda x: te.min(te.max(x, 0.0), 6.0)
    if op == "hardswish":
        return lambda x: x * te.min(te.max(x + 3.0, 0.0), 6.0) * (1.0 / 6.0)
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        return lambda x: te.min(te.max(x, -3.4e38 if lo is None else float(lo)), 3.4e38 if hi is None else float(hi))
    raise ValueError(f"no NCHWc kernel for {op!r}")


def _finish(sch: s_tir.Schedule, block: str, lanes: int, reduce_loops: int = 0) -> Any:
    """Parallel over the outer three loops, the lane loop innermost and vectorized."""
    blk = sch.get_sblock(block)
    loops = sch.get_loops(blk)
    n, cb, h, w, v = loops[:5]
    red = loops[5:]
    if red:
        sch.reorder(n, cb, h, w, *red, v)
    sch.parallel(sch.fuse(n, cb, h))
    if int(sch.get(v).extent) % lanes == 0:
        _, vl = sch.split(v, [None, lanes])
        sch.vectorize(vl)
    if red:
        sch.decompose_reduction(blk, red[0])
    return sch.mod["main"].with_attr(SCHEDULED, True)


def elementwise(op: str, shape: Sequence[int], attrs: dict[str, Any], lanes: int) -> tirx.PrimFunc:
    """relu / relu6 / clip / hardswish of one 5-D tensor, or add / mul of two of the same shape."""
    shape = tuple(int(d) for d in shape)
    if op in ("add", "mul"):
        a = te.placeholder(shape, "float32", "a")
        b = te.placeholder(shape, "float32", "b")
        f = (lambda x, y: x + y) if op == "add" else (lambda x, y: x * y)
        y = te.compute(shape, lambda *i: f(a(*i), b(*i)), name="out")
        ins = [a, b]
    else:
        a = te.placeholder(shape, "float32", "a")
        g = _unary(op, attrs)
        y = te.compute(shape, lambda *i: g(a(*i)), name="out")
        ins = [a]
    return _finish(s_tir.Schedule(te.create_prim_func([*ins, y])), "out", lanes)


def max_pool(in_shape: Sequence[int], out_shape: Sequence[int], attrs: dict[str, Any], lanes: int) -> tirx.PrimFunc:
    """max_pool2d (ceil_mode False) on [N, C/x, H, W, x]; padding cells are -inf."""
    n, cb, h, w, x = (int(d) for d in in_shape)
    kh, kw = (int(k) for k in attrs["kernel"])
    sh, sw = (int(s) for s in attrs["stride"])
    dh, dw = (int(d) for d in attrs.get("dilation", (1, 1)))
    pt, pl = int(attrs.get("padding", (0, 0, 0, 0))[0]), int(attrs.get("padding", (0, 0, 0, 0))[1])
    a = te.placeholder((n, cb, h, w, x), "float32", "a")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")

    def body(b: Any, q: Any, i: Any, j: Any, v: Any) -> Any:
        y, z = i * sh - pt + rh * dh, j * sw - pl + rw * dw
        inside = te.all(y >= 0, y < h, z >= 0, z < w)
        val = a[b, q, te.min(te.max(y, 0), h - 1), te.min(te.max(z, 0), w - 1), v]
        return te.max(te.if_then_else(inside, val, tirx.min_value("float32")), axis=[rh, rw])

    out = te.compute(tuple(int(d) for d in out_shape), body, name="out")
    return _finish(s_tir.Schedule(te.create_prim_func([a, out])), "out", lanes)


def global_mean(in_shape: Sequence[int], lanes: int) -> tirx.PrimFunc:
    """reduce_mean over H and W with keepdims: [N, C/x, H, W, x] -> [N, C/x, 1, 1, x]."""
    n, cb, h, w, x = (int(d) for d in in_shape)
    a = te.placeholder((n, cb, h, w, x), "float32", "a")
    rh, rw = te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")
    scale = 1.0 / (h * w)
    out = te.compute((n, cb, 1, 1, x), lambda b, q, i, j, v: te.sum(a[b, q, i + rh, j + rw, v] * scale,
                                                                    axis=[rh, rw]), name="out")
    return _finish(s_tir.Schedule(te.create_prim_func([a, out])), "out", lanes)
