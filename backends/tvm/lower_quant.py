"""Lowering of the quantization ops: quantize/dequantize, requantize, integer conv/linear/matmul, rescaling
add/concat, integer mean (`qcc.ir.ops.quant`).

Bit-exact with the int64 references: every intermediate is int64, rounding is `(x + 2^(c-1)) >> c` (round
half up, arithmetic shift), saturation is explicit, and int32 accumulators wrap like the reference's astype.
Per-channel multipliers/shifts/zero points are tensors that broadcast against the data. Integer kernels here
favour clarity over speed; the schedule templates own performance.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx, topi

from qcc.backends.tvm.lower_base import LowerCtx, broadcast_index, cast, const, dtype_of, lowers, prod, shape64
from qcc.backends.tvm.lower_nn import matmul_te
from qcc.ir.graph import Node
from qcc.ir.ops.quant import INT_RANGES

I64 = "int64"


def i64(v: Any) -> Any:
    """A value as int64 (Python ints become constants)."""
    return const(int(v), I64) if isinstance(v, int) else cast(I64, v)


def round_shift(x: Any, c: Any) -> Any:
    """`(x + 2^(c-1)) >> c` for c > 0, `x << -c` otherwise (int64; c may be a tensor value)."""
    x, c = i64(x), i64(c)
    zero, one = const(0, I64), const(1, I64)
    right = tirx.max(c, zero)
    half = tirx.Select(c > zero, tirx.shift_left(one, tirx.max(right - one, zero)), zero)
    return tirx.Select(c > zero, tirx.shift_right(x + half, right), tirx.shift_left(x, tirx.max(-c, zero)))


def dyadic_scale(x: Any, b: Any, c: Any) -> Any:
    return round_shift(i64(x) * i64(b), c)


def clamp_to(x: Any, ir_dtype: str, tvm_dtype: str, lo: int | None = None, hi: int | None = None) -> Any:
    """Saturate int64 x to an IR integer dtype's range (intersected with [lo, hi]) and cast."""
    tlo, thi = INT_RANGES[ir_dtype]
    lo = tlo if lo is None else max(tlo, int(lo))
    hi = thi if hi is None else min(thi, int(hi))
    return cast(tvm_dtype, tirx.min(tirx.max(x, const(lo, I64)), const(hi, I64)))


def _out(ctx: LowerCtx, node: Node) -> tuple[str, str]:
    return node.outputs[0].dtype, ctx.out_dtype(node)


@lowers("quantize")
def _lower_quantize(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    ir_dt, dt = _out(ctx, node)
    limit = 2.0**62

    def f(x: Any, scale: Any, zp: Any) -> Any:
        # ONNX QuantizeLinear: x / scale in float32, rounded half to even; NaN -> 0, saturating.
        r = cast("float64", tirx.nearbyint(cast("float32", x) / cast("float32", scale)))
        r = tirx.Select(r != r, const(0.0, "float64"), r)
        r = tirx.min(tirx.max(r, const(-limit, "float64")), const(limit, "float64"))
        return clamp_to(cast(I64, r) + i64(zp), ir_dt, dt)

    return ctx.emit_map(node, f, *args)


@lowers("dequantize")
def _lower_dequantize(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    dt = ctx.out_dtype(node)
    out_shape = node.outputs[0].shape
    axis, group = node.attrs.get("axis"), node.attrs.get("group_size")

    def compute(q: te.Tensor, scale: te.Tensor, zp: te.Tensor, *gs: te.Tensor) -> te.Tensor:
        def body(*i: Any) -> Any:
            centered = i64(q(*i)) - i64(zp(*broadcast_index(zp, i)))
            if gs:
                gi = list(i)
                gi[axis] = tirx.floordiv(i[axis], const(int(group), dtype_of(i[axis])))
                centered = centered * i64(gs[0](*gi))
            y = cast("float32", centered) * cast("float32", scale(*broadcast_index(scale, i)))
            return cast(dt, y)

        return te.compute(shape64(out_shape), body, name="dequantize")

    return ctx.emit_te(node, compute, *args)


@lowers("requantize")
def _lower_requantize(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if ctx.device == "cpu":  # requantize of a VNNI template GEMM: one kernel, requantize in its epilogue
        from qcc.backends.tvm.kernels import int8_fuse

        if (fused := int8_fuse.try_fuse_requantize(ctx, node, args)) is not None:
            return fused
    ir_dt, dt = _out(ctx, node)
    a = node.attrs

    def f(acc: Any, b: Any, c: Any) -> Any:
        y = dyadic_scale(i64(acc) - i64(int(a["input_zero_point"])), b, c) + i64(int(a["zero_point"]))
        return clamp_to(y, ir_dt, dt, a["min"], a["max"])

    return ctx.emit_map(node, f, *args)


def _centered(t: te.Tensor, zp: int, name: str) -> te.Tensor:
    return te.compute(t.shape, lambda *i: i64(t(*i)) - const(int(zp), I64), name=name)


def _try_int8_template(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr | None:
    """The AVX-512 VNNI template for qconv2d / qlinear (kernels/int8.py), or None to use the generic rule."""
    from qcc.backends.tvm.kernels import int8_fuse

    return int8_fuse.try_lower(ctx, node, args)


@lowers("qconv2d")
def _lower_qconv2d(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if (fast := _try_int8_template(ctx, node, args)) is not None:
        return fast
    a = node.attrs
    stride, padding = tuple(a["stride"]), tuple(a["padding"])
    dilation, groups = tuple(a["dilation"]), int(a["groups"])

    def compute(x: te.Tensor, w: te.Tensor, *bias: te.Tensor) -> te.Tensor:
        # Padding cells hold the real value 0, so pad the centered input (x - zx), as the reference does.
        xs, ws = _centered(x, a["x_zero_point"], "x_centered"), _centered(w, a["w_zero_point"], "w_centered")
        if groups == 1:
            y = topi.nn.conv2d_nchw(xs, ws, stride, padding, dilation, out_dtype=I64)
        else:
            y = topi.nn.group_conv2d_nchw(xs, ws, stride, padding, dilation, groups, out_dtype=I64)
        return te.compute(y.shape, lambda n, o, h, v: cast("int32", y[n, o, h, v] + (i64(bias[0][o]) if bias
                                                                                      else const(0, I64))),
                          name="qconv2d")

    return ctx.emit_te(node, compute, *args)


@lowers("qlinear")
def _lower_qlinear(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if (fast := _try_int8_template(ctx, node, args)) is not None:
        return fast
    a = node.attrs
    out_shape = node.outputs[0].shape
    k_extent = node.inputs[1].shape[1]
    group = a["group_size"]

    def compute(x: te.Tensor, w: te.Tensor, *rest: te.Tensor) -> te.Tensor:
        bias = rest[0] if rest else None
        gs = rest[1] if len(rest) > 1 else None
        zx, zw = const(int(a["x_zero_point"]), I64), const(int(a["w_zero_point"]), I64)
        k = te.reduce_axis((0, k_extent), name="k")

        def body(*i: Any) -> Any:
            o = i[-1]
            prod_ = (i64(x[tuple(i[:-1]) + (k,)]) - zx) * (i64(w[o, k]) - zw)
            if gs is not None:  # VS-Quant: sum_g gs[o, g] * dot_g == sum_k gs[o, k // G] * x_k * w_k (exact)
                prod_ = prod_ * i64(gs[o, tirx.floordiv(k.var, const(int(group), dtype_of(k.var)))])
            return te.sum(prod_, axis=k)

        y = te.compute(shape64(out_shape), body, name="qlinear_acc")
        return te.compute(y.shape, lambda *i: cast("int32", y(*i) + (i64(bias[i[-1]]) if bias is not None
                                                                     else const(0, I64))), name="qlinear")

    return ctx.emit_te(node, compute, *args)


@lowers("qmatmul")
def _lower_qmatmul(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    from qcc.backends.tvm.kernels import int8_matmul

    if (fast := int8_matmul.try_lower(ctx, node, args)) is not None:
        return fast
    a = node.attrs
    a_shape, b_shape, out_shape = node.inputs[0].shape, node.inputs[1].shape, node.outputs[0].shape

    def compute(x: te.Tensor, y: te.Tensor) -> te.Tensor:
        xs, ys = _centered(x, a["a_zero_point"], "a_centered"), _centered(y, a["b_zero_point"], "b_centered")
        acc = matmul_te(xs, ys, a_shape, b_shape, out_shape, I64)
        return te.compute(acc.shape, lambda *i: cast("int32", acc(*i)), name="qmatmul")

    return ctx.emit_te(node, compute, *args)


@lowers("qadd")
def _lower_qadd(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if ctx.device == "cpu":  # qadd(requantize(VNNI conv), residual): one kernel, both in the conv's epilogue
        from qcc.backends.tvm.kernels import int8_fuse

        if (fused := int8_fuse.try_fuse_qadd(ctx, node, args)) is not None:
            return fused
    ir_dt, dt = _out(ctx, node)
    a = node.attrs

    def f(x: Any, y: Any) -> Any:
        acc = (i64(x) - i64(int(a["a_zero_point"]))) * i64(int(a["a_multiplier"])) \
            + (i64(y) - i64(int(a["b_zero_point"]))) * i64(int(a["b_multiplier"]))
        return clamp_to(round_shift(acc, i64(int(a["shift"]))) + i64(int(a["zero_point"])), ir_dt, dt,
                        a["min"], a["max"])

    return ctx.emit_map(node, f, *args)


@lowers("qconcat")
def _lower_qconcat(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    ir_dt, dt = _out(ctx, node)
    a = node.attrs
    axis, zp = int(a["axis"]), int(a["zero_point"])

    def rescale(x: te.Tensor, m: int, sh: int, z: int, n: int) -> te.Tensor:
        return te.compute(x.shape, lambda *i: dyadic_scale(i64(x(*i)) - i64(int(z)), i64(int(m)), i64(int(sh)))
                          + i64(zp), name=f"rescale{n}")

    def compute(*xs: te.Tensor) -> te.Tensor:
        parts = [rescale(x, m, sh, z, n)
                 for n, (x, m, sh, z) in enumerate(zip(xs, a["multipliers"], a["shifts"], a["input_zero_points"]))]
        cat = topi.concatenate(parts, axis)
        return te.compute(cat.shape, lambda *i: clamp_to(cat(*i), ir_dt, dt), name="qconcat")

    return ctx.emit_te(node, compute, *args)


@lowers("qmean")
def _lower_qmean(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    from qcc.backends.tvm.lower_nn import _reduce_compute

    axes, keepdims = tuple(node.attrs["axes"]), bool(node.attrs["keepdims"])
    shape = node.inputs[0].shape
    n = max(prod(shape[ax] for ax in (axes or range(len(shape)))), 1)
    dt = ctx.out_dtype(node)

    def compute(x: te.Tensor) -> te.Tensor:
        s = _reduce_compute(x, axes, keepdims, lambda v, r: te.sum(i64(v), axis=r), "sum")
        # (s + n // 2) // n with floor division, as the reference.
        return te.compute(s.shape, lambda *i: cast(dt, tirx.floordiv(s(*i) + const(n // 2, I64), const(n, I64))),
                          name="qmean")

    return ctx.emit_te(node, compute, args[0])
