"""Lowering of pooling ops (NCHW): max/avg with padding, dilation, ceil mode; adaptive pools.

Windows are read through `if_then_else`, so cells outside the input (padding and the extra bottom/right
cells ceil mode adds) are never loaded. Output sizes come from the IR's type rule, so the kernel and the
interpreter agree by construction; the kernel reproduces the per-window divisor of the reference:
`count_include_pad` counts cells inside the declared padding, never the ceil-mode extra cells.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx

from qcc.backends.tvm.lower_base import LowerCtx, acc_dtype, cast, const, dtype_of, is_float, lowers, lowest
from qcc.ir.graph import Node
from qcc.ir.ops.pool import adaptive_bounds


def _window(node: Node) -> tuple[Any, ...]:
    a = node.attrs
    kh, kw = (int(k) for k in a["kernel"])
    sh, sw = (int(s) for s in a["stride"])
    dh, dw = (int(d) for d in a.get("dilation", (1, 1)))
    pt, pl, pb, pr = (int(p) for p in a.get("padding", (0, 0, 0, 0)))
    return kh, kw, sh, sw, dh, dw, pt, pl, pb, pr


def _i64(v: int) -> Any:
    return const(v, "int64")


@lowers("max_pool2d")
def _lower_max_pool(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if ctx.device == "cpu":  # 8-bit NHWC chain of the VNNI int8 template: stay channels-last
        from qcc.backends.tvm.kernels import int8_fuse

        if (fast := int8_fuse.try_max_pool(ctx, node, args)) is not None:
            return fast
    kh, kw, sh, sw, dh, dw, pt, pl, _, _ = _window(node)
    _, _, h, w = node.inputs[0].shape
    out_shape = node.outputs[0].shape

    def compute(x: te.Tensor) -> te.Tensor:
        rh = te.reduce_axis((0, kh), name="rh")
        rw = te.reduce_axis((0, kw), name="rw")

        def body(n: Any, c: Any, i: Any, j: Any) -> Any:
            y = i * _i64(sh) - _i64(pt) + cast("int64", rh.var) * _i64(dh)
            z = j * _i64(sw) - _i64(pl) + cast("int64", rw.var) * _i64(dw)
            inside = tirx.all(y >= _i64(0), y < _i64(h), z >= _i64(0), z < _i64(w))
            return te.max(tirx.if_then_else(inside, x[n, c, y, z], lowest(dtype_of(x))), axis=[rh, rw])

        return te.compute(out_shape, body, name="max_pool2d")

    return ctx.emit_te(node, compute, args[0])


@lowers("avg_pool2d")
def _lower_avg_pool(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    kh, kw, sh, sw, _, _, pt, pl, pb, pr = _window(node)
    include_pad = bool(node.attrs.get("count_include_pad", True))
    _, _, h, w = node.inputs[0].shape
    out_shape = node.outputs[0].shape

    def compute(x: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x)) if is_float(dtype_of(x)) else "int64"
        rh = te.reduce_axis((0, kh), name="rh")
        rw = te.reduce_axis((0, kw), name="rw")

        def window_sum(n: Any, c: Any, i: Any, j: Any) -> Any:
            y = i * _i64(sh) - _i64(pt) + cast("int64", rh.var)
            z = j * _i64(sw) - _i64(pl) + cast("int64", rw.var)
            inside = tirx.all(y >= _i64(0), y < _i64(h), z >= _i64(0), z < _i64(w))
            return te.sum(tirx.if_then_else(inside, cast(acc, x[n, c, y, z]), const(0, acc)), axis=[rh, rw])

        sums = te.compute(out_shape, window_sum, name="window_sum")

        def extent(start: Any, k: int, lo: int, hi: int) -> Any:
            # Cells of [start, start + k) inside [lo, hi).
            return tirx.max(tirx.min(start + _i64(k), _i64(hi)) - tirx.max(start, _i64(lo)), _i64(0))

        def out(n: Any, c: Any, i: Any, j: Any) -> Any:
            y0, z0 = i * _i64(sh) - _i64(pt), j * _i64(sw) - _i64(pl)
            if include_pad:
                cnt = extent(y0, kh, -pt, h + pb) * extent(z0, kw, -pl, w + pr)
            else:
                cnt = extent(y0, kh, 0, h) * extent(z0, kw, 0, w)
            s = sums[n, c, i, j]
            if is_float(acc):
                return cast(dtype_of(x), s / cast(acc, cnt))
            cnt = tirx.max(cnt, _i64(1))  # an empty window would trap; the reference has none
            return cast(dtype_of(x), tirx.floordiv(s + tirx.floordiv(cnt, _i64(2)), cnt))

        return te.compute(out_shape, out, name="avg_pool2d")

    return ctx.emit_te(node, compute, args[0])


@lowers("adaptive_avg_pool2d", "adaptive_max_pool2d")
def _lower_adaptive(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    _, _, h, w = node.inputs[0].shape
    oh, ow = (int(s) for s in node.attrs["output_size"])
    is_max = node.op == "adaptive_max_pool2d"
    # The widest window along each axis bounds the reduction; narrower windows are masked.
    kh = max(e - s for s, e in adaptive_bounds(h, oh))
    kw = max(e - s for s, e in adaptive_bounds(w, ow))

    def compute(x: te.Tensor) -> te.Tensor:
        if is_max:
            acc = dtype_of(x)
        else:
            acc = acc_dtype(dtype_of(x)) if is_float(dtype_of(x)) else "int64"
        rh = te.reduce_axis((0, kh), name="rh")
        rw = te.reduce_axis((0, kw), name="rw")

        def bounds(i: Any, size: int, out: int) -> tuple[Any, Any]:
            start = tirx.floordiv(i * _i64(size), _i64(out))
            end = tirx.floordiv((i + _i64(1)) * _i64(size) + _i64(out - 1), _i64(out))
            return start, end

        def body(n: Any, c: Any, i: Any, j: Any) -> Any:
            (y0, y1), (z0, z1) = bounds(i, h, oh), bounds(j, w, ow)
            y, z = y0 + cast("int64", rh.var), z0 + cast("int64", rw.var)
            inside = tirx.all(y < y1, z < z1)
            if is_max:
                return te.max(tirx.if_then_else(inside, x[n, c, y, z], lowest(acc)), axis=[rh, rw])
            return te.sum(tirx.if_then_else(inside, cast(acc, x[n, c, y, z]), const(0, acc)), axis=[rh, rw])

        red = te.compute(node.outputs[0].shape, body, name=node.op)
        if is_max:
            return red

        def mean(n: Any, c: Any, i: Any, j: Any) -> Any:
            (y0, y1), (z0, z1) = bounds(i, h, oh), bounds(j, w, ow)
            cnt = (y1 - y0) * (z1 - z0)
            if is_float(acc):
                return cast(dtype_of(x), red[n, c, i, j] / cast(acc, cnt))
            # NumPy: float64 mean stored into an integer array truncates toward zero.
            return cast(dtype_of(x), cast("float64", red[n, c, i, j]) / cast("float64", cnt))

        return te.compute(red.shape, mean, name="mean")

    return ctx.emit_te(node, compute, args[0])
