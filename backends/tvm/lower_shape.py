"""Lowering of data-movement ops: reshape, transpose, concat, split, slice, squeeze/unsqueeze, expand, pad,
tile, cumsum, gather, gather_elements.

Slices use Python's `slice.indices` to normalise start/stop/step exactly as NumPy does. Gather indices wrap
negatives like NumPy and are clamped into range, so an out-of-range index reads a valid element instead of
arbitrary memory (NumPy raises; a kernel cannot).
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx, topi

from qcc.backends.tvm.lower_base import LowerCtx, cast, const, dtype_of, lowers, shape64
from qcc.ir.graph import Node


@lowers("reshape", "squeeze", "unsqueeze")
def _lower_reshape(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    shape = list(node.outputs[0].shape)
    return ctx.emit_te(node, lambda x: topi.reshape(x, shape), args[0])


@lowers("transpose")
def _lower_transpose(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    perm = [int(p) for p in node.attrs["perm"]]
    return ctx.emit_te(node, lambda x: topi.transpose(x, perm), args[0])


@lowers("concat")
def _lower_concat(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    return ctx.emit_te(node, lambda *xs: topi.concatenate(list(xs), axis), *args)


@lowers("split")
def _lower_split(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> list[relax.Expr]:
    axis = int(node.attrs["axis"])
    sizes = [int(s) for s in node.attrs["sizes"]]
    if len(sizes) == 1:
        return [args[0]]
    points, acc = [], 0
    for s in sizes[:-1]:
        acc += s
        points.append(acc)
    tup = ctx.emit_te(node, lambda x: topi.split(x, points, axis), args[0])
    return [ctx.bb.emit(relax.TupleGetItem(tup, i)) for i in range(len(sizes))]


@lowers("slice")
def _lower_slice(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    in_shape = node.inputs[0].shape
    # axis -> (start, step) after NumPy's normalisation of the slice.
    plan: dict[int, tuple[int, int]] = {}
    for s, e, a, st in zip(node.attrs["starts"], node.attrs["ends"], node.attrs["axes"], node.attrs["steps"]):
        start, _, step = slice(int(s), int(e), int(st)).indices(in_shape[int(a)])
        plan[int(a)] = (start, step)

    def compute(x: te.Tensor) -> te.Tensor:
        def body(*i: Any) -> Any:
            src = []
            for d, v in enumerate(i):
                if d in plan:
                    start, step = plan[d]
                    src.append(const(start, dtype_of(v)) + v * const(step, dtype_of(v)))
                else:
                    src.append(v)
            return x[tuple(src)]

        return te.compute(shape64(node.outputs[0].shape), body, name="slice")

    return ctx.emit_te(node, compute, args[0])


@lowers("expand")
def _lower_expand(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    shape = list(node.outputs[0].shape)
    return ctx.emit_te(node, lambda x: topi.broadcast_to(x, shape), args[0])


@lowers("tile")
def _lower_tile(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    in_shape = node.inputs[0].shape

    def compute(x: te.Tensor) -> te.Tensor:
        return te.compute(shape64(node.outputs[0].shape),
                          lambda *i: x[tuple(tirx.floormod(v, const(n, dtype_of(v))) for v, n in zip(i, in_shape))],
                          name="tile")

    return ctx.emit_te(node, compute, args[0])


@lowers("pad")
def _lower_pad(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    in_shape = node.inputs[0].shape
    r = len(in_shape)
    pads = [int(p) for p in node.attrs["pads"]]
    mode, value = node.attrs.get("mode", "constant"), float(node.attrs.get("value", 0.0))
    # Negative pads crop first (ONNX); then pad the cropped extent m with max(pad, 0) on each side.
    crop_lo = [max(-pads[d], 0) for d in range(r)]
    m = [in_shape[d] - crop_lo[d] - max(-pads[d + r], 0) for d in range(r)]
    grow_lo = [max(pads[d], 0) for d in range(r)]

    def compute(x: te.Tensor) -> te.Tensor:
        def body(*i: Any) -> Any:
            src, inside = [], []
            for d, v in enumerate(i):
                dt = dtype_of(v)

                def c(k: int, dt: str = dt) -> Any:
                    return const(k, dt)

                q = v - c(grow_lo[d])  # position in the cropped array
                if mode == "edge":
                    q = tirx.min(tirx.max(q, c(0)), c(m[d] - 1))
                elif mode == "reflect":
                    period = 2 * (m[d] - 1)
                    if period == 0:
                        q = c(0)
                    else:
                        q = tirx.floormod(q, c(period))
                        q = tirx.Select(q >= c(m[d]), c(period) - q, q)
                else:
                    inside.append(tirx.all(q >= c(0), q < c(m[d])))
                    q = tirx.min(tirx.max(q, c(0)), c(max(m[d] - 1, 0)))
                src.append(q + c(crop_lo[d]))
            val = x[tuple(src)]
            if inside:
                return tirx.if_then_else(tirx.all(*inside), val, const(value, dtype_of(x)) if dtype_of(x) != "bool"
                                         else const(bool(value), "bool"))
            return val

        return te.compute(shape64(node.outputs[0].shape), body, name="pad")

    return ctx.emit_te(node, compute, args[0])


@lowers("cumsum")
def _lower_cumsum(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    out = ctx.out_dtype(node)
    if ctx.device == "cuda":
        from tvm.topi.gpu import cumsum as cumsum_impl
    else:
        cumsum_impl = topi.cumsum
    return ctx.emit_te(node, lambda x: cumsum_impl(x, axis=axis, dtype=out), args[0])


def _wrap_clamp(i: Any, n: int) -> Any:
    """NumPy index wrapping of negatives, then clamped into [0, n) (int64)."""
    i = cast("int64", i)
    i = tirx.Select(i < const(0, "int64"), i + const(n, "int64"), i)
    return tirx.min(tirx.max(i, const(0, "int64")), const(n - 1, "int64"))


@lowers("gather")
def _lower_gather(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    x_shape, idx_rank = node.inputs[0].shape, len(node.inputs[1].shape)

    def compute(x: te.Tensor, idx: te.Tensor) -> te.Tensor:
        def body(*o: Any) -> Any:
            pre, mid, post = o[:axis], o[axis:axis + idx_rank], o[axis + idx_rank:]
            k = _wrap_clamp(idx[tuple(mid)], x_shape[axis])
            return x[tuple(pre) + (k,) + tuple(post)]

        return te.compute(shape64(node.outputs[0].shape), body, name="gather")

    return ctx.emit_te(node, compute, *args)


@lowers("gather_elements")
def _lower_gather_elements(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    n = node.inputs[0].shape[axis]

    def compute(x: te.Tensor, idx: te.Tensor) -> te.Tensor:
        def body(*o: Any) -> Any:
            src = list(o)
            src[axis] = _wrap_clamp(idx(*o), n)
            return x[tuple(src)]

        return te.compute(shape64(node.outputs[0].shape), body, name="gather_elements")

    return ctx.emit_te(node, compute, *args)
