"""Lowering of reductions, softmax, normalization, conv2d, matmul and linear.

Float kernels accumulate in float32 when computing in float16 (`acc_dtype`); integer kernels compute in
their own dtype with wrapping arithmetic, which equals the references' int64-then-cast for sums and products
(modular arithmetic), except where a division follows (means), which accumulate in int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tvm import relax, te, tirx, topi

from qcc.backends.tvm.lower_base import (
    LowerCtx,
    acc_dtype,
    broadcast_index,
    cast,
    const,
    dtype_of,
    float_math,
    is_float,
    lowers,
    prod,
    shape64,
)
from qcc.ir.graph import Node


# -- reductions -----------------------------------------------------------------------------------
def _reduce_compute(x: te.Tensor, axes: Sequence[int], keepdims: bool, body: Any, name: str) -> te.Tensor:
    """Generic reduction: `body(x_indexed, raxes) -> PrimExpr`, output index mapped with/without kept dims."""
    shape = [int(d) for d in x.shape]
    axes = sorted(axes) if axes else list(range(len(shape)))
    # int64 extents: index variables then match Relax's int64 shapes without casts (TVM's reducer matching
    # for CUDA cross-thread argmax needs the bare index variable).
    raxes = {a: te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", shape[a])), name=f"r{a}")
             for a in axes}
    if keepdims:
        out_shape = shape64([1 if i in raxes else d for i, d in enumerate(shape)])
    else:
        out_shape = shape64([d for i, d in enumerate(shape) if i not in raxes])

    def fcompute(*idx: Any) -> Any:
        it = iter(idx)
        full = []
        for i in range(len(shape)):
            if i in raxes:
                if keepdims:
                    next(it)
                full.append(raxes[i])
            else:
                full.append(next(it))
        return body(x[tuple(full)], list(raxes.values()))

    return te.compute(out_shape, fcompute, name=name)


_prod_reducer = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")


@lowers("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")
def _lower_reduce(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    op = node.op.removeprefix("reduce_")
    axes, keepdims = tuple(node.attrs.get("axes", ())), bool(node.attrs.get("keepdims", False))
    shape = node.inputs[0].shape
    count = prod(shape[a] for a in (axes or range(len(shape))))
    out = ctx.out_dtype(node)

    def compute(x: te.Tensor) -> te.Tensor:
        dt = dtype_of(x)
        if dt == "bool":  # reduce 0/1 integers, then nonzero (NumPy's astype(bool))
            acc = "int64"
        elif op == "mean" and not is_float(dt):
            acc = "int64"
        elif op in ("sum", "mean", "prod"):
            acc = acc_dtype(dt)
        else:
            acc = dt
        reducer = {"sum": te.sum, "mean": te.sum, "prod": _prod_reducer, "max": te.max, "min": te.min}[op]
        red = _reduce_compute(x, axes, keepdims, lambda v, r: reducer(cast(acc, v), axis=r), node.op)
        if op == "mean":
            if is_float(acc):
                div = lambda v: v / const(float(count), acc)  # noqa: E731
            else:  # NumPy: float64 mean of the int64 sum, truncated back by astype
                div = lambda v: cast("float64", v) / const(float(count), "float64")  # noqa: E731
        else:
            div = lambda v: v  # noqa: E731
        if out == "bool":
            return te.compute(red.shape, lambda *i: div(red(*i)) != const(0, dtype_of(div(red(*i)))), name="nonzero")
        return te.compute(red.shape, lambda *i: cast(out, div(red(*i))), name="cast")

    return ctx.emit_te(node, compute, args[0])


def _arg_reducer(greater: bool) -> Any:
    """TOPI's argmax/argmin reducer, written exactly in the form TVM's reducer registry recognises (CUDA
    cross-thread reductions need that). Identity (-1, min/max value): a row whose best value *is* the
    identity value keeps index -1, which `_lower_arg` maps to 0, NumPy's answer for such a row."""

    def combine(lhs: Any, rhs: Any) -> Any:
        li, lv = lhs
        ri, rv = rhs
        better = lv > rv if greater else lv < rv
        keep = tirx.Or(better, tirx.And(lv == rv, li < ri))
        return tirx.Select(keep, li, ri), tirx.Select(better, lv, rv)

    def identity(ti: str, tv: str) -> Any:
        return tirx.const(-1, ti), tirx.min_value(tv) if greater else tirx.max_value(tv)

    return te.comm_reducer(combine, identity, name="argmax" if greater else "argmin")


_ARGMAX, _ARGMIN = _arg_reducer(True), _arg_reducer(False)


@lowers("argmax", "argmin")
def _lower_arg(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis, keepdims = int(node.attrs["axis"]), bool(node.attrs.get("keepdims", False))
    reducer = _ARGMAX if node.op == "argmax" else _ARGMIN

    def compute(x: te.Tensor) -> te.Tensor:
        def body(v: Any, r: list[Any]) -> Any:
            v = cast("int8", v) if dtype_of(x) == "bool" else v  # bool ==/!= miscompiles (see _ne)
            return reducer((r[0].var, v), axis=r)

        idx, _ = _reduce_compute(x, (axis,), keepdims, body, node.op)
        # Copy out so both reduction results stay intermediates (the shape dlight's reduction rules and
        # TOPI's argmax expect; otherwise the value buffer becomes a global allocation CUDA forbids).
        return te.compute(idx.shape, lambda *i: tirx.max(idx(*i), const(0, "int64")), name="index")

    return ctx.emit_te(node, compute, args[0])


# -- softmax / normalization ---------------------------------------------------------------------------
def _over_axis(shape: Sequence[Any], axis: int, name: str) -> tuple[Any, list[int]]:
    k = te.reduce_axis((0, int(shape[axis])), name=name)
    return k, [int(d) if i != axis else 1 for i, d in enumerate(shape)]


@lowers("softmax", "log_softmax")
def _lower_softmax(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    log = node.op == "log_softmax"

    def compute(x: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x))

        def at(i: Sequence[Any], k: Any) -> Any:
            return cast(acc, x[tuple(k if d == axis else v for d, v in enumerate(i))])

        k1, kept = _over_axis(x.shape, axis, "k1")
        mx = te.compute(kept, lambda *i: te.max(at(i, k1), axis=k1), name="max")
        k2, _ = _over_axis(x.shape, axis, "k2")
        sm = te.compute(kept, lambda *i: te.sum(float_math(tirx.exp, at(i, k2) - mx(*_pin(i, axis))), axis=k2),
                        name="sum")

        def out(*i: Any) -> Any:
            z = cast(acc, x(*i)) - mx(*_pin(i, axis))
            y = z - float_math(tirx.log, sm(*_pin(i, axis))) if log else float_math(tirx.exp, z) / sm(*_pin(i, axis))
            return cast(dtype_of(x), y)

        return te.compute(x.shape, out, name=node.op)

    return ctx.emit_te(node, compute, args[0])


def _pin(idx: Sequence[Any], axis: int | Sequence[int]) -> tuple[Any, ...]:
    axes = {axis} if isinstance(axis, int) else set(axis)
    return tuple(const(0, dtype_of(v)) if d in axes else v for d, v in enumerate(idx))


@lowers("layer_norm")
def _lower_layer_norm(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis, eps = int(node.attrs["axis"]), float(node.attrs.get("eps", 1e-5))
    shape = node.inputs[0].shape
    norm_axes = list(range(axis, len(shape)))
    n = prod(shape[axis:])

    def compute(x: te.Tensor, w: te.Tensor, b: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x))
        mean = _reduce_compute(x, norm_axes, True, lambda v, r: te.sum(cast(acc, v), axis=r), "sum")
        mean = te.compute(mean.shape, lambda *i: mean(*i) / const(float(n), acc), name="mean")
        sq = te.compute(x.shape, lambda *i: _sq(cast(acc, x(*i)) - mean(*_pin(i, norm_axes))), name="sq")
        var = _reduce_compute(sq, norm_axes, True, lambda v, r: te.sum(v, axis=r), "var")

        def out(*i: Any) -> Any:
            p = _pin(i, norm_axes)
            z = (cast(acc, x(*i)) - mean(*p)) / float_math(tirx.sqrt, var(*p) / const(float(n), acc)
                                                           + const(eps, acc))
            return cast(dtype_of(x), z * cast(acc, w(*i[axis:])) + cast(acc, b(*i[axis:])))

        return te.compute(x.shape, out, name="layer_norm")

    return ctx.emit_te(node, compute, *args)


def _sq(v: Any) -> Any:
    return v * v


@lowers("batch_norm")
def _lower_batch_norm(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    eps = float(node.attrs.get("eps", 1e-5))

    def compute(x: te.Tensor, w: te.Tensor, b: te.Tensor, mean: te.Tensor, var: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x))

        def out(*i: Any) -> Any:
            c = i[1]
            scale = cast(acc, w[c]) / float_math(tirx.sqrt, cast(acc, var[c]) + const(eps, acc))
            shift = cast(acc, b[c]) - cast(acc, mean[c]) * scale
            return cast(dtype_of(x), cast(acc, x(*i)) * scale + shift)

        return te.compute(x.shape, out, name="batch_norm")

    return ctx.emit_te(node, compute, *args)


# -- conv2d / matmul / linear ----------------------------------------------------------------------------
@lowers("conv2d")
def _lower_conv2d(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    stride = tuple(int(s) for s in node.attrs.get("stride", (1, 1)))
    padding = tuple(int(p) for p in node.attrs.get("padding", (0, 0, 0, 0)))
    dilation = tuple(int(d) for d in node.attrs.get("dilation", (1, 1)))
    groups = int(node.attrs.get("groups", 1))

    def compute(x: te.Tensor, w: te.Tensor, *bias: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x))
        if groups == 1:
            y = topi.nn.conv2d_nchw(x, w, stride, padding, dilation, out_dtype=acc)
        else:
            y = topi.nn.group_conv2d_nchw(x, w, stride, padding, dilation, groups, out_dtype=acc)
        if not bias and acc == dtype_of(x):
            return y
        return te.compute(y.shape, lambda n, o, h, v: cast(dtype_of(x), y[n, o, h, v] + (cast(acc, bias[0][o]) if bias
                                                                                     else const(0, acc))),
                          name="bias_add")

    return ctx.emit_te(node, compute, *args)


def matmul_te(a: te.Tensor, b: te.Tensor, a_shape: Sequence[int], b_shape: Sequence[int],
              out_shape: Sequence[int], acc: str) -> te.Tensor:
    """NumPy matmul (batch broadcasting, 1-D operands) of TE tensors, accumulated in `acc`."""
    a1, b1 = len(a_shape) == 1, len(b_shape) == 1
    k = te.reduce_axis((0, a_shape[-1]), name="k")
    # Output index -> (batch..., i, j); 1-D operands contribute no i / j.
    nb = len(out_shape) - (0 if a1 else 1) - (0 if b1 else 1)

    def body(*idx: Any) -> Any:
        batch, rest = idx[:nb], list(idx[nb:])
        i = None if a1 else rest.pop(0)
        j = None if b1 else rest.pop(0)
        if a1:
            av = a[k]
        else:
            ab = broadcast_index(_batch_view(a), batch) if len(a_shape) > 2 else []
            av = a[tuple(ab) + (i, k)]
        if b1:
            bv = b[k]
        else:
            bb = broadcast_index(_batch_view(b), batch) if len(b_shape) > 2 else []
            bv = b[tuple(bb) + (k, j)]
        return te.sum(cast(acc, av) * cast(acc, bv), axis=k)

    return te.compute(shape64(out_shape), body, name="matmul")


@lowers("matmul")
def _lower_matmul(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    a_shape, b_shape = node.inputs[0].shape, node.inputs[1].shape
    out_shape = node.outputs[0].shape

    def compute(a: te.Tensor, b: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(a))
        y = matmul_te(a, b, a_shape, b_shape, out_shape, acc)
        if acc == dtype_of(a):
            return y
        return te.compute(y.shape, lambda *i: cast(dtype_of(a), y(*i)), name="cast")

    return ctx.emit_te(node, compute, *args)


class _batch_view:  # noqa: N801 - a tiny adapter for broadcast_index
    """The batch dims of a matmul operand, shaped like a tensor for `broadcast_index`."""

    def __init__(self, t: te.Tensor) -> None:
        self.shape = t.shape[:-2]


@lowers("linear")
def _lower_linear(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    out_shape = node.outputs[0].shape
    k_extent = node.inputs[1].shape[1]

    def compute(x: te.Tensor, w: te.Tensor, *bias: te.Tensor) -> te.Tensor:
        acc = acc_dtype(dtype_of(x))
        k = te.reduce_axis((0, k_extent), name="k")
        y = te.compute(out_shape, lambda *i: te.sum(cast(acc, x[tuple(i[:-1]) + (k,)]) * cast(acc, w[i[-1], k]),
                                                    axis=k), name="linear")
        if not bias and acc == dtype_of(x):
            return y
        return te.compute(out_shape, lambda *i: cast(dtype_of(x), y(*i) + (cast(acc, bias[0][i[-1]]) if bias
                                                                      else const(0, acc))), name="bias_add")

    return ctx.emit_te(node, compute, *args)
