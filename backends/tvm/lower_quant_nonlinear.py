"""Lowering of the integer-only nonlinears (`qcc.ir.ops.quant_nonlinear`): isoftmax, shiftmax, igelu,
shiftgelu, ilayer_norm.

On CPU builds, softmax and layer norm over the last axis go to the integer-only row kernels of
kernels/int8_nonlinear.py (one parallel kernel per op, int32 where a range bound allows, a float-free digit
square root), and igelu computes in int32 when its range bound allows (the fuse pass chains it with the
following requantize). Everywhere else (CUDA, other axes) the rules below are bit-exact int64 TE mirroring
the references step by step. There the integer square roots are exact: `newton` is floor(sqrt(n)) (computed
from a float64 estimate, which is within one of the answer below 2^63, then corrected once each way — not yet
integer-only: a 32-step digit root, inlined by the CUDA schedule, grows exponentially), `ivit`
is I-ViT's ten fixed Newton steps from 2^16, one TE stage per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx

from qcc.backends.tvm.kernels import int8_matmul  # noqa: F401  (registers the fused qmatmul schedule)
from qcc.backends.tvm.kernels import int8_nonlinear as fast
from qcc.backends.tvm.lower_base import LowerCtx, cast, lowers, prod
from qcc.backends.tvm.lower_nn import _pin, _reduce_compute
from qcc.backends.tvm.lower_quant import I64, clamp_to, dyadic_scale, i64
from qcc.ir.graph import Node
from qcc.ir.ops import quant_nonlinear as ref

SHR, SHL = tirx.shift_right, tirx.shift_left


def _i_exp(x: Any, ln2: int, b: int, c: int, n: int, k: int) -> Any:
    """I-BERT i-exp of int64 x <= 0 (see quant_nonlinear.i_exp)."""
    x = tirx.max(x, i64(-n * ln2))
    z = tirx.floordiv(-x, i64(ln2))
    p = x + z * i64(ln2)
    poly = (p + i64(b)) * (p + i64(b)) + i64(c)
    return SHR(SHL(poly, i64(k)), z)


def _shift_exp(x: Any, one: int, n: int, k: int) -> Any:
    """I-ViT ShiftExp of int64 x <= 0 (see quant_nonlinear.shift_exp)."""
    x = x + SHR(x, i64(1)) - SHR(x, i64(4))
    x = tirx.max(x, i64(-n * one))
    z = tirx.floordiv(-x, i64(one))
    r = x + z * i64(one)
    e = SHR(r, i64(1)) + i64(one)
    return SHR(SHL(e, i64(k)), z)


def _row_view(node: Node) -> tuple[int, int]:
    """The [rows, n] view of a node's input reduced over its last axis."""
    shape = tuple(int(d) for d in node.inputs[0].shape)
    return prod(shape[:-1]), shape[-1]


def _emit_row_kernel(ctx: LowerCtx, node: Node, func: Any, args: list[relax.Expr], out_dtype: str) -> relax.Expr:
    """Call a row kernel (kernels/int8_nonlinear.py) on the [rows, n] view of args[0]; the op-shaped result."""
    from qcc.backends.tvm.schedules import OP_ATTR, OPS_ATTR, SCHEDULED_ATTR

    rows, n = _row_view(node)
    func = func.without_attr("global_symbol").with_attrs(
        {"op_pattern": 8, OP_ATTR: node.op, OPS_ATTR: [node.op], SCHEDULED_ATTR: True})
    gv = ctx.bb.add_func(func, node.op)
    ctx.kernel_ops.setdefault(gv.name_hint, node.op)
    x = ctx.bb.emit(relax.op.reshape(args[0], (rows, n)))
    var = ctx.bb.emit(relax.call_tir(gv, [x, *args[1:]], relax.TensorType((rows, n), out_dtype)))
    return ctx.bb.emit(relax.op.reshape(var, tuple(int(d) for d in node.outputs[0].shape)))


def _row_kernel_applies(ctx: LowerCtx, node: Node, axis: int) -> bool:
    """The fast row kernels serve CPU builds that emit Relax (not a fused group's TE), reducing the last axis
    of at least two elements, from an input of at most 32 bits."""
    x = node.inputs[0]
    return (ctx.device == "cpu" and not ctx.float16 and isinstance(ctx.bb, relax.BlockBuilder)
            and axis == len(x.shape) - 1 and int(x.shape[-1]) > 1 and x.dtype != "i64")


def _softmax_rule(exp: Any) -> Any:
    def rule(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
        axis = int(node.attrs["axis"])
        if _row_kernel_applies(ctx, node, axis):
            rows, n = _row_view(node)
            attrs = {k: int(v) for k, v in node.attrs.items() if k != "axis"}
            func = fast.softmax_kernel(rows, n, node.inputs[0].dtype, node.op, attrs)
            return _emit_row_kernel(ctx, node, func, args, "uint8")
        dt = ctx.out_dtype(node)
        attrs = {k: int(v) for k, v in node.attrs.items() if k != "axis"}
        shift = ref.SOFTMAX_NORM_BITS - ref.SOFTMAX_OUT_BITS

        def compute(x: te.Tensor) -> te.Tensor:
            mx = _reduce_compute(x, (axis,), True, lambda v, r: te.max(i64(v), axis=r), "max")
            e = te.compute(x.shape, lambda *i: exp(i64(x(*i)) - mx(*_pin(i, axis)), **attrs), name="exp")
            total = _reduce_compute(e, (axis,), True, lambda v, r: te.sum(v, axis=r), "sum")
            factor = te.compute(total.shape, lambda *i: tirx.floordiv(
                SHL(i64(1), i64(ref.SOFTMAX_NORM_BITS)), tirx.max(total(*i), i64(1))), name="factor")

            def out(*i: Any) -> Any:
                y = SHR(e(*i) * factor(*_pin(i, axis)) + SHL(i64(1), i64(shift - 1)), i64(shift))
                return clamp_to(y, "u8", dt)

            return te.compute(x.shape, out, name=node.op)

        return ctx.emit_te(node, compute, args[0])

    return rule


lowers("isoftmax")(_softmax_rule(_i_exp))
lowers("shiftmax")(_softmax_rule(_shift_exp))


@lowers("igelu")
def _lower_igelu(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    b, one, shift = (int(node.attrs[k]) for k in ("b", "one", "shift"))
    wt = fast.gelu_work_dtype(node.inputs[0].dtype, b, one)  # int32 where the range analysis allows

    def c(v: int) -> Any:
        return tirx.const(v, wt)

    def f(x: Any) -> Any:
        q = cast(wt, x)
        d = tirx.min(tirx.abs(q), c(b)) - c(b)
        sign = tirx.Select(q > c(0), c(1), tirx.Select(q < c(0), c(-1), c(0)))
        erf = sign * (c(one) - d * d)
        return cast("int32", q * SHR(c(one) + erf, c(shift)))

    return ctx.emit_map(node, f, args[0])


@lowers("shiftgelu")
def _lower_shiftgelu(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    one, n, k = (int(node.attrs[key]) for key in ("one", "n", "k"))
    e0 = int(ref.shift_exp(np.zeros((), np.int64), one, n, k))  # a compile-time constant

    def f(x: Any) -> Any:
        q = i64(x)
        e = _shift_exp(-tirx.abs(q), one, n, k)
        num = tirx.Select(q >= i64(0), i64(e0), e)
        den = i64(e0) + e
        sig = tirx.floordiv(SHL(num, i64(ref.SIGMOID_BITS)) + tirx.floordiv(den, i64(2)), den)
        return cast("int32", q * sig)

    return ctx.emit_map(node, f, args[0])


def _isqrt_newton(n: te.Tensor) -> te.Tensor:
    """Exact floor(sqrt(n)) for 0 <= n < 2^63.

    sqrt in float64 of n (itself rounded to 53 bits) is within ~1e-6 of the true root below 2^63, so its
    truncation is off by at most one, and only next to a perfect square: one correction each way is exact.
    (Two corrections each way gave identical results but made TVM's simplifier crawl on CUDA.)"""

    def body(*i: Any) -> Any:
        v = n(*i)
        r = cast(I64, tirx.sqrt(cast("float64", v)))
        # Compare by division: r*r and (r+1)^2 overflow int64 just below 2^63.
        r = tirx.Select(tirx.And(r > i64(0), tirx.floordiv(v, tirx.max(r, i64(1))) < r), r - i64(1), r)
        return tirx.Select(tirx.floordiv(v, r + i64(1)) >= r + i64(1), r + i64(1), r)

    return te.compute(n.shape, body, name="isqrt")


def _isqrt_ivit(n: te.Tensor) -> te.Tensor:
    def newton_step(k: te.Tensor) -> Any:
        return lambda *i: tirx.max(SHR(k(*i) + tirx.floordiv(n(*i), k(*i)), i64(1)), i64(1))

    k = te.compute(n.shape, lambda *i: i64(1 << 16), name="isqrt_k0")
    for step in range(10):
        k = te.compute(n.shape, newton_step(k), name=f"isqrt_k{step + 1}")
    return te.compute(n.shape, lambda *i: tirx.Select(n(*i) == i64(0), i64(0), k(*i)), name="isqrt")


@lowers("ilayer_norm")
def _lower_ilayer_norm(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    a = node.attrs
    axis = int(a["axis"])
    shape = node.inputs[0].shape
    axes = list(range(axis, len(shape)))
    count = prod(shape[axis:])
    ir_dt, dt = node.outputs[0].dtype, ctx.out_dtype(node)
    if axis == len(shape) - 1 and _row_kernel_applies(ctx, node, axis):
        params = tuple(ctx.dtype(v.dtype) for v in node.inputs[1:])
        from tvm.ir.expr import Constant

        shifts = args[2].value.numpy() if isinstance(args[2], Constant) else None
        func = fast.layer_norm_kernel(prod(shape[:-1]), count, node.inputs[0].dtype, params, a["sqrt"],
                                      int(a["zero_point"]), ir_dt,
                                      positive_shift=shifts is not None and bool((shifts >= 1).all()))
        return _emit_row_kernel(ctx, node, func, args, dt)

    def compute(x: te.Tensor, mult: te.Tensor, shift: te.Tensor, bias: te.Tensor) -> te.Tensor:
        total = _reduce_compute(x, axes, True, lambda v, r: te.sum(i64(v), axis=r), "sum")
        y = te.compute(x.shape, lambda *i: i64(count) * i64(x(*i)) - total(*_pin(i, axes)), name="centered")
        var = _reduce_compute(y, axes, True, lambda v, r: te.sum(v * v, axis=r), "var")
        root = _isqrt_newton(var) if a["sqrt"] == "newton" else _isqrt_ivit(var)
        factor = te.compute(var.shape, lambda *i: tirx.floordiv(SHL(i64(1), i64(31)), tirx.max(root(*i), i64(1))),
                            name="factor")

        def out(*i: Any) -> Any:
            normed = SHR(y(*i) * factor(*_pin(i, axes)), i64(1))
            ch = i[axis:]
            v = dyadic_scale(normed, mult(*ch), shift(*ch)) + i64(bias(*ch)) + i64(int(a["zero_point"]))
            return clamp_to(v, ir_dt, dt)

        return te.compute(x.shape, out, name="ilayer_norm")

    return ctx.emit_te(node, compute, *args)
