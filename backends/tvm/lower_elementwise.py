"""Lowering of elementwise ops: unary math and activations, cast, broadcasting binary ops, comparisons, where.

Semantics follow the NumPy references of docs/ops.md: integer `div` truncates toward zero, integer `mod` is
floor mod, float `mod` has the divisor's sign (NumPy), `round` is half to even, `cast` truncates floats
toward zero and maps nonzero to True for bool. Integer division and modulo are guarded so that a zero
divisor (NumPy: 0 with a warning) or INT_MIN / -1 cannot raise SIGFPE inside a kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from qcc.backends.tvm.lower_base import (
    LowerCtx,
    cast,
    const,
    dtype_of,
    float_math,
    is_float,
    is_unsigned,
    lowers,
    parallel_loop,
    prod,
    shape64,
)
from qcc.ir.graph import Node

Scalar = Any  # a TIR PrimExpr


def _c(x: Scalar, v: Any) -> Scalar:
    """A constant of x's dtype."""
    return const(v, dtype_of(x))


def _ne(a: Scalar, b: Scalar) -> Scalar:
    """a != b; bools are compared as int8 (TVM 0.27's LLVM codegen emits an invalid fcmp for bool NE/EQ)."""
    if dtype_of(a) == "bool":
        a, b = cast("int8", a), cast("int8", b)
    return a != b


def _eq(a: Scalar, b: Scalar) -> Scalar:
    if dtype_of(a) == "bool":
        a, b = cast("int8", a), cast("int8", b)
    return a == b


def _sigmoid(x: Scalar) -> Scalar:
    return float_math(lambda v: _c(v, 1.0) / (_c(v, 1.0) + tirx.exp(-v)), x)


def _gelu(x: Scalar, approximate: str) -> Scalar:
    def f(v: Scalar) -> Scalar:
        if approximate == "tanh":
            inner = _c(v, math.sqrt(2.0 / math.pi)) * (v + _c(v, 0.044715) * v * v * v)
            return _c(v, 0.5) * v * (_c(v, 1.0) + tirx.tanh(inner))
        return _c(v, 0.5) * v * (_c(v, 1.0) + tirx.erf(v * _c(v, 1.0 / math.sqrt(2.0))))

    return float_math(f, x)


# name -> f(x, **attrs) on a float scalar.
FLOAT_UNARY: dict[str, Callable[..., Scalar]] = {
    "relu6": lambda x: tirx.min(tirx.max(x, _c(x, 0.0)), _c(x, 6.0)),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "hardswish": lambda x: x * tirx.min(tirx.max(x + _c(x, 3.0), _c(x, 0.0)), _c(x, 6.0)) / _c(x, 6.0),
    "hardsigmoid": lambda x, alpha, beta: tirx.min(tirx.max(_c(x, alpha) * x + _c(x, beta), _c(x, 0.0)),
                                                   _c(x, 1.0)),
    "tanh": lambda x: float_math(tirx.tanh, x),
    "exp": lambda x: float_math(tirx.exp, x),
    "log": lambda x: float_math(tirx.log, x),
    "sqrt": lambda x: float_math(tirx.sqrt, x),
    "rsqrt": lambda x: float_math(lambda v: _c(v, 1.0) / tirx.sqrt(v), x),
    "erf": lambda x: float_math(tirx.erf, x),
    "reciprocal": lambda x: _c(x, 1.0) / x,
    "sin": lambda x: float_math(tirx.sin, x),
    "cos": lambda x: float_math(tirx.cos, x),
    "floor": lambda x: float_math(tirx.floor, x),
    "ceil": lambda x: float_math(tirx.ceil, x),
    "round": lambda x: float_math(tirx.nearbyint, x),  # round-to-nearest-even in the default FP mode
    "gelu": _gelu,
    "elu": lambda x, alpha: tirx.Select(x > _c(x, 0.0), x,
                                        _c(x, alpha) * (float_math(tirx.exp, tirx.min(x, _c(x, 0.0))) - _c(x, 1.0))),
    "leaky_relu": lambda x, alpha: tirx.Select(x >= _c(x, 0.0), x, _c(x, alpha) * x),
}


def _unary_rule(fn: Callable[..., Scalar]) -> Callable[[LowerCtx, Node, list[relax.Expr]], relax.Expr]:
    def rule(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
        attrs = dict(node.attrs)
        return ctx.emit_map(node, lambda x: fn(x, **attrs), args[0])

    return rule


for _name, _fn in FLOAT_UNARY.items():
    lowers(_name)(_unary_rule(_fn))


def _relu(x: Scalar) -> Scalar:
    return tirx.max(x, _c(x, 0))


def _neg(x: Scalar) -> Scalar:
    return _c(x, 0) - x if is_unsigned(dtype_of(x)) else -x


def _abs(x: Scalar) -> Scalar:
    return x if is_unsigned(dtype_of(x)) else tirx.abs(x)


def _clip(x: Scalar, min: float | None, max: float | None) -> Scalar:
    """np.clip(x, lo, hi).astype(x.dtype): exact for integral bounds; fractional bounds on integer data
    go through float64 and truncate back like NumPy's astype."""
    if is_float(dtype_of(x)) or all(b is None or float(b).is_integer() for b in (min, max)):
        out = x
        if min is not None:
            out = tirx.max(out, _bound(dtype_of(x), min))
        if max is not None:
            out = tirx.min(out, _bound(dtype_of(x), max))
        return out
    v = cast("float64", x)
    if min is not None:
        v = tirx.max(v, const(float(min), "float64"))
    if max is not None:
        v = tirx.min(v, const(float(max), "float64"))
    return tirx.Cast(dtype_of(x), v)


def _bound(dtype: str, b: float) -> Scalar:
    if is_float(dtype):
        return const(float(b), dtype)
    lo, hi = int(tirx.min_value(dtype).value), int(tirx.max_value(dtype).value)
    return const(min(max(int(b), lo), hi), dtype)


lowers("relu")(_unary_rule(_relu))
lowers("neg")(_unary_rule(_neg))
lowers("abs")(_unary_rule(_abs))
lowers("clip")(_unary_rule(_clip))
lowers("logical_not")(_unary_rule(lambda x: tirx.Not(x)))


@lowers("cast")
def _lower_cast(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    out = ctx.out_dtype(node)

    def f(x: Scalar) -> Scalar:
        if out == "bool":
            return x if dtype_of(x) == "bool" else x != _c(x, 0)
        return cast(out, x)  # float -> int: fptosi truncates toward zero, like NumPy's astype

    return ctx.emit_map(node, f, args[0])


# -- binary ---------------------------------------------------------------------------------------
def _int_div(a: Scalar, b: Scalar) -> Scalar:
    if is_float(dtype_of(a)):
        return a / b
    safe = tirx.Select(b == _c(b, 0), _c(b, 1), b)
    q = tirx.truncdiv(a, safe)
    if not is_unsigned(dtype_of(a)):
        q = tirx.Select(b == _c(b, -1), _c(a, 0) - a, q)  # INT_MIN / -1 wraps, as in NumPy
    return tirx.Select(b == _c(b, 0), _c(a, 0), q)


def _mod(a: Scalar, b: Scalar) -> Scalar:
    if is_float(dtype_of(a)):
        # NumPy's float mod: fmod, then moved to the divisor's sign. LLVM has no fmod intrinsic in TVM, so
        # fmod is a - trunc(a / b) * b evaluated in float64, exact for f32/f16 operands of sane ratio.
        x, y = cast("float64", a), cast("float64", b)
        r = x - tirx.trunc(x / y) * y
        zero = _c(r, 0.0)
        fix = tirx.Or(tirx.And(r < zero, y > zero), tirx.And(r > zero, y < zero))
        return cast(dtype_of(a), tirx.Select(fix, r + y, r))
    bad = b == _c(b, 0)
    if not is_unsigned(dtype_of(a)):
        bad = tirx.Or(bad, b == _c(b, -1))  # x mod -1 == 0; avoids the INT_MIN / -1 trap
    safe = tirx.Select(bad, _c(b, 1), b)
    return tirx.Select(bad, _c(a, 0), tirx.floormod(a, safe))


def _pow(a: Scalar, b: Scalar) -> Scalar:
    return float_math(tirx.power, a, b)  # float only; integer pow has its own rule below


BINARY: dict[str, Callable[[Scalar, Scalar], Scalar]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": _int_div,
    "pow": _pow,
    "maximum": tirx.max,
    "minimum": tirx.min,
    "mod": _mod,
    "equal": _eq,
    "not_equal": _ne,
    "less": lambda a, b: a < b,
    "less_equal": lambda a, b: a <= b,
    "greater": lambda a, b: a > b,
    "greater_equal": lambda a, b: a >= b,
    "logical_and": tirx.And,
    "logical_or": tirx.Or,
    "logical_xor": _ne,
}


def _binary_rule(fn: Callable[[Scalar, Scalar], Scalar]) -> Callable[[LowerCtx, Node, list[relax.Expr]], relax.Expr]:
    def rule(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
        out = ctx.out_dtype(node)
        return ctx.emit_map(node, lambda a, b: cast(out, fn(a, b)), args[0], args[1])

    return rule


for _name, _fn2 in BINARY.items():
    if _name != "pow":
        lowers(_name)(_binary_rule(_fn2))


@lowers("pow")
def _lower_pow(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    out = ctx.out_dtype(node)
    if is_float(out):
        return ctx.emit_map(node, _pow, args[0], args[1])
    out_shape = node.outputs[0].shape
    in_shapes = [v.shape for v in node.inputs]
    total, device = prod(out_shape), ctx.device

    def flat_source(j: Any, shape: tuple[int, ...]) -> Any:
        """Flat index into a broadcast operand for flat output index j."""
        offset, rest = const(0, "int64"), cast("int64", j)
        src_stride = {}
        acc = 1
        for d in range(len(shape) - 1, -1, -1):
            src_stride[d] = acc
            acc *= shape[d]
        for d in range(len(out_shape) - 1, -1, -1):
            coord = rest % out_shape[d]
            rest = rest // out_shape[d]
            sd = d - (len(out_shape) - len(shape))
            if sd >= 0 and shape[sd] != 1:
                offset = offset + coord * src_stride[sd]
        return offset

    def gen(a_buf: Any, b_buf: Any, o_buf: Any) -> Any:
        # NumPy's integer pow: binary exponentiation with wrapping products, one loop step per exponent bit.
        a, b, o = (T.buffer_proxy(x) for x in (a_buf, b_buf, o_buf))
        bits = int(out.lstrip("uint"))
        with IRBuilder() as ib:
            with T.seq_scope():
                with parallel_loop(device, total) as j:
                    res = T.buffer_proxy(T.alloc_buffer([1], out, scope="local"))
                    base = T.buffer_proxy(T.alloc_buffer([1], out, scope="local"))
                    res[0] = const(1, out)
                    base[0] = a[flat_source(j, in_shapes[0])]
                    e = b[flat_source(j, in_shapes[1])]
                    with T.serial(0, bits) as k:
                        bit = tirx.bitwise_and(tirx.shift_right(e, cast(dtype_of(e), k)), const(1, dtype_of(e)))
                        with T.If(bit != const(0, dtype_of(e))):
                            with T.Then():
                                res[0] = res[0] * base[0]
                        base[0] = base[0] * base[0]
                    o[j] = res[0]
            return ib.get()

    def compute(a: te.Tensor, b: te.Tensor) -> te.Tensor:
        return te.extern([shape64(out_shape)], [a, b], lambda ins, outs: gen(ins[0], ins[1], outs[0]),
                         dtype=[out], name="pow")

    return ctx.emit_te(node, compute, args[0], args[1])


@lowers("where")
def _lower_where(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return ctx.emit_map(node, lambda c, a, b: tirx.Select(c, a, b), *args)
