"""aten -> IR converters for reductions, softmax, normalization, convolution, pooling and matmul."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from qcc.frontends.torch_ops import (
    MISSING,
    ConvertContext,
    Converter,
    Unsupported,
    as_bool,
    converts,
    norm_dim,
    norm_dims,
)
from qcc.ir.graph import Value


# -- reductions -----------------------------------------------------------------------------------------
def _reduce(op: str) -> Converter:
    def convert(ctx: ConvertContext, x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Value:
        v = ctx.value(x, ctx.out_dtype)  # applies `dtype=` and torch's int -> int64 accumulation for sums
        return ctx.emit(op, [v], axes=norm_dims(dim, len(v.shape)), keepdims=bool(keepdim))

    return convert


for _names, _ir in (
    (("sum.dim_IntList", "sum"), "reduce_sum"),
    (("mean.dim", "mean"), "reduce_mean"),
    (("amax", "max"), "reduce_max"),
    (("amin", "min"), "reduce_min"),
    (("prod.dim_int", "prod"), "reduce_prod"),
):
    converts(*_names)(_reduce(_ir))


def _value_and_index(reduce_op: str, arg_op: str) -> Converter:
    def convert(ctx: ConvertContext, x: Value, dim: int, keepdim: bool = False) -> tuple[Value, Value]:
        axis = norm_dim(dim, len(x.shape))
        values = ctx.emit(reduce_op, [x], axes=(axis,), keepdims=bool(keepdim))
        return values, ctx.emit(arg_op, [x], axis=axis, keepdims=bool(keepdim))

    return convert


converts("max.dim")(_value_and_index("reduce_max", "argmax"))
converts("min.dim")(_value_and_index("reduce_min", "argmin"))


def _arg(op: str) -> Converter:
    def convert(ctx: ConvertContext, x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
        if dim is None:  # over the flattened tensor
            flat = ctx.emit("reshape", [x], shape=(math.prod(x.shape),))
            y = ctx.emit(op, [flat], axis=0, keepdims=False)
            return ctx.emit("reshape", [y], shape=ctx.out_shape)
        return ctx.emit(op, [x], axis=norm_dim(dim, len(x.shape)), keepdims=bool(keepdim))

    return convert


converts("argmax")(_arg("argmax"))
converts("argmin")(_arg("argmin"))


def _bool_reduce(op: str) -> Converter:
    def convert(ctx: ConvertContext, x: Any, dim: Any = None, keepdim: bool = False) -> Value:
        v = as_bool(ctx, x)
        return ctx.emit(op, [v], axes=norm_dims(dim, len(v.shape)), keepdims=bool(keepdim))

    return convert


converts("any", "any.dim", "any.dims")(_bool_reduce("reduce_max"))
converts("all", "all.dim", "all.dims")(_bool_reduce("reduce_min"))


def _variance(ctx: ConvertContext, x: Value, dim: Any, correction: Any, keepdim: bool) -> Value:
    axes = norm_dims(dim, len(x.shape))
    n = math.prod(x.shape[a] for a in axes) if axes else 1
    mean = ctx.emit("reduce_mean", [x], axes=axes, keepdims=True)
    d = ctx.emit("sub", [x, mean])
    ss = ctx.emit("reduce_sum", [ctx.emit("mul", [d, d])], axes=axes, keepdims=bool(keepdim))
    c = 1 if correction is None else correction
    return ctx.emit("div", [ss, ctx.scalar(n - c, ss)])


@converts("var.correction")
def _var(ctx: ConvertContext, x: Value, dim: Any = None, correction: Any = None, keepdim: bool = False) -> Value:
    return _variance(ctx, x, dim, correction, keepdim)


@converts("std.correction")
def _std(ctx: ConvertContext, x: Value, dim: Any = None, correction: Any = None, keepdim: bool = False) -> Value:
    return ctx.emit("sqrt", [_variance(ctx, x, dim, correction, keepdim)])


@converts("linalg_vector_norm")
def _vector_norm(ctx: ConvertContext, x: Any, ord: float = 2, dim: Any = None, keepdim: bool = False,
                 dtype: Any = None) -> Value:
    v = ctx.value(x, ctx.out_dtype)
    axes, kd = norm_dims(dim, len(v.shape)), bool(keepdim)
    a = ctx.emit("abs", [v])
    if ord == 2:
        return ctx.emit("sqrt", [ctx.emit("reduce_sum", [ctx.emit("mul", [v, v])], axes=axes, keepdims=kd)])
    if ord == 1:
        return ctx.emit("reduce_sum", [a], axes=axes, keepdims=kd)
    if ord in (math.inf, -math.inf):
        return ctx.emit("reduce_max" if ord > 0 else "reduce_min", [a], axes=axes, keepdims=kd)
    if ord == 0:
        raise Unsupported("vector norm of order 0")
    s = ctx.emit("reduce_sum", [ctx.emit("pow", [a, ctx.scalar(ord, a)])], axes=axes, keepdims=kd)
    return ctx.emit("pow", [s, ctx.scalar(1.0 / ord, s)])


# -- softmax and normalization ----------------------------------------------------------------------------
def _softmax(op: str) -> Converter:
    def convert(ctx: ConvertContext, x: Any, dim: int, *_: Any, **__: Any) -> Value:  # dtype: from the meta
        v = ctx.value(x, ctx.out_dtype)
        return ctx.emit(op, [v], axis=norm_dim(dim, len(v.shape)))

    return convert


converts("softmax.int", "_softmax")(_softmax("softmax"))
converts("log_softmax.int", "_log_softmax")(_softmax("log_softmax"))


def _affine_params(ctx: ConvertContext, x: Value, shape: Sequence[int], weight: Any, bias: Any) -> list[Value]:
    w = ctx.value(weight, x.dtype) if weight is not None else ctx.const(np.ones(shape), x.dtype, f"{ctx.name}_weight")
    b = ctx.value(bias, x.dtype) if bias is not None else ctx.const(np.zeros(shape), x.dtype, f"{ctx.name}_bias")
    return [w, b]


@converts("layer_norm", "native_layer_norm")
def _layer_norm(ctx: ConvertContext, x: Value, normalized_shape: Sequence[int], weight: Any = None,
                bias: Any = None, eps: float = 1e-5, cudnn_enable: bool = True) -> Any:
    shape = tuple(int(d) for d in normalized_shape)
    axis = len(x.shape) - len(shape)
    y = ctx.emit("layer_norm", [x, *_affine_params(ctx, x, shape, weight, bias)], axis=axis, eps=float(eps))
    return (y, MISSING, MISSING) if "native" in str(ctx.node.target) else y


def _batch_norm(ctx: ConvertContext, x: Value, weight: Any, bias: Any, mean: Any, var: Any, eps: float) -> tuple:
    if mean is None or var is None:
        raise Unsupported("batch norm without running statistics")
    c = x.shape[1]
    w, b = _affine_params(ctx, x, (c,), weight, bias)
    y = ctx.emit("batch_norm", [x, w, b, ctx.value(mean, x.dtype), ctx.value(var, x.dtype)], eps=float(eps))
    return y, MISSING, MISSING


@converts("_native_batch_norm_legit_no_training")
def _bn_no_training(ctx: ConvertContext, x: Value, weight: Any, bias: Any, running_mean: Any, running_var: Any,
                    momentum: float, eps: float) -> tuple:
    return _batch_norm(ctx, x, weight, bias, running_mean, running_var, eps)


def _per_channel(ctx: ConvertContext, v: Value, rank: int) -> Value:
    return ctx.emit("reshape", [v], shape=(v.shape[0],) + (1,) * (rank - 2))


def _batch_stats_norm(ctx: ConvertContext, x: Value, weight: Any, bias: Any, eps: float) -> tuple:
    """Normalization with the statistics of the batch itself (instance norm, track_running_stats=False)."""
    rank = len(x.shape)
    axes = tuple(a for a in range(rank) if a != 1)
    d = ctx.emit("sub", [x, ctx.emit("reduce_mean", [x], axes=axes, keepdims=True)])
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [d, d])], axes=axes, keepdims=True)  # biased, as torch
    y = ctx.emit("mul", [d, ctx.emit("rsqrt", [ctx.emit("add", [var, ctx.scalar(eps, var)])])])
    if weight is not None:
        y = ctx.emit("mul", [y, _per_channel(ctx, ctx.value(weight, x.dtype), rank)])
    if bias is not None:
        y = ctx.emit("add", [y, _per_channel(ctx, ctx.value(bias, x.dtype), rank)])
    return y, MISSING, MISSING


@converts("native_batch_norm", "_native_batch_norm_legit")
def _bn(ctx: ConvertContext, x: Value, weight: Any, bias: Any, running_mean: Any, running_var: Any,
        training: bool, momentum: float, eps: float) -> tuple:
    # The model is exported in eval mode, so training=True only comes from modules that always use batch
    # statistics (track_running_stats=False); the running-statistics update is not part of the result.
    if training:
        return _batch_stats_norm(ctx, x, weight, bias, eps)
    return _batch_norm(ctx, x, weight, bias, running_mean, running_var, eps)


@converts("_native_batch_norm_legit.no_stats")
def _bn_no_stats(ctx: ConvertContext, x: Value, weight: Any, bias: Any, training: bool, momentum: float,
                 eps: float) -> tuple:
    if not training:
        raise Unsupported("batch norm without running statistics in inference mode")
    return _batch_stats_norm(ctx, x, weight, bias, eps)


@converts("native_group_norm")
def _group_norm(ctx: ConvertContext, x: Value, weight: Any, bias: Any, n: int, c: int, hxw: int, group: int,
                eps: float) -> tuple:
    # Normalizing each group is a layer norm over the last axis of x viewed as [N, G, C/G * HxW].
    inner = (c // group) * hxw
    xr = ctx.emit("reshape", [x], shape=(n, group, inner))
    ones, zeros = _affine_params(ctx, xr, (inner,), None, None)
    y = ctx.emit("reshape", [ctx.emit("layer_norm", [xr, ones, zeros], axis=2, eps=float(eps))], shape=x.shape)
    if weight is not None:
        y = ctx.emit("mul", [y, _per_channel(ctx, ctx.value(weight, y.dtype), len(x.shape))])
    if bias is not None:
        y = ctx.emit("add", [y, _per_channel(ctx, ctx.value(bias, y.dtype), len(x.shape))])
    return y, MISSING, MISSING


# -- convolution and pooling ---------------------------------------------------------------------------------
def _pair(v: Any, default: Sequence[int] | None = None) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        if default is None:
            raise Unsupported("missing window parameter")
        v = default
    if isinstance(v, int):
        return (v, v)
    v = [int(e) for e in v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


@converts("convolution")
def _convolution(ctx: ConvertContext, x: Value, w: Any, b: Any, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Value:
    if transposed:
        raise Unsupported("transposed convolution")
    rank = len(x.shape)
    wv = ctx.value(w, x.dtype)
    inputs = [x, wv] + ([ctx.value(b, x.dtype)] if b is not None else [])
    if rank == 3:  # conv1d as a conv2d over [N, C, 1, L]
        inputs[0] = ctx.emit("unsqueeze", [x], axes=(2,))
        inputs[1] = ctx.emit("unsqueeze", [wv], axes=(2,))
        s, p, d = (1, _pair(stride)[0]), (0, _pair(padding)[0]), (1, _pair(dilation)[0])
    elif rank == 4:
        s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    else:
        raise Unsupported(f"{rank - 2}-d convolution")
    y = ctx.emit("conv2d", inputs, stride=s, padding=(p[0], p[1], p[0], p[1]), dilation=d, groups=int(groups))
    return ctx.emit("squeeze", [y], axes=(2,)) if rank == 3 else y


def _pool_input(ctx: ConvertContext, x: Value) -> Value:
    if len(x.shape) == 3:  # unbatched [C, H, W]
        return ctx.emit("unsqueeze", [x], axes=(0,))
    if len(x.shape) != 4:
        raise Unsupported(f"2-d pooling of a rank-{len(x.shape)} tensor")
    return x


def _pool_output(ctx: ConvertContext, x: Value, y: Value) -> Value:
    return ctx.emit("squeeze", [y], axes=(0,)) if len(x.shape) == 3 else y


@converts("max_pool2d_with_indices", "max_pool2d")
def _max_pool(ctx: ConvertContext, x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              dilation: Any = 1, ceil_mode: bool = False) -> Any:
    k = _pair(kernel_size)
    (ph, pw) = _pair(padding)
    y = ctx.emit("max_pool2d", [_pool_input(ctx, x)], kernel=k, stride=_pair(stride, k), padding=(ph, pw, ph, pw),
                 dilation=_pair(dilation), ceil_mode=bool(ceil_mode))
    y = _pool_output(ctx, x, y)
    return (y, MISSING) if "indices" in str(ctx.node.target) else y


@converts("avg_pool2d")
def _avg_pool(ctx: ConvertContext, x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: Any = None) -> Value:
    if divisor_override is not None:
        raise Unsupported("avg_pool2d with divisor_override")
    k = _pair(kernel_size)
    (ph, pw) = _pair(padding)
    y = ctx.emit("avg_pool2d", [_pool_input(ctx, x)], kernel=k, stride=_pair(stride, k), padding=(ph, pw, ph, pw),
                 ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))
    return _pool_output(ctx, x, y)


@converts("_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d")
def _adaptive_pool(ctx: ConvertContext, x: Value, output_size: Any) -> Any:
    is_max = "max" in str(ctx.node.target)
    meta = ctx.out_meta(0) if is_max else ctx.out_meta()
    size = (int(meta.shape[-2]), int(meta.shape[-1]))  # torch resolved None entries already
    op = "adaptive_max_pool2d" if is_max else "adaptive_avg_pool2d"
    y = _pool_output(ctx, x, ctx.emit(op, [_pool_input(ctx, x)], output_size=size))
    return (y, MISSING) if is_max else y


# -- matmul -----------------------------------------------------------------------------------------------------
@converts("linear")
def _linear(ctx: ConvertContext, x: Value, weight: Any, bias: Any = None) -> Value:
    w = ctx.value(weight, x.dtype)
    if len(w.shape) != 2:
        raise Unsupported("linear with a non-2-D weight")
    return ctx.emit("linear", [x, w] + ([ctx.value(bias, x.dtype)] if bias is not None else []))


@converts("mm", "bmm", "matmul", "dot", "mv")
def _matmul(ctx: ConvertContext, a: Any, b: Any) -> Value:
    dt = ctx.out_dtype
    return ctx.emit("matmul", [ctx.value(a, dt), ctx.value(b, dt)])


@converts("addmm", "baddbmm", "addmv")
def _addmm(ctx: ConvertContext, bias: Any, a: Any, b: Any, beta: Any = 1, alpha: Any = 1) -> Value:
    dt = ctx.out_dtype
    y = ctx.emit("matmul", [ctx.value(a, dt), ctx.value(b, dt)])
    if alpha != 1:
        y = ctx.emit("mul", [y, ctx.scalar(alpha, y)])
    if beta == 0:  # torch ignores the bias entirely (even NaNs) when beta is 0
        return y
    c = ctx.value(bias, dt)
    if beta != 1:
        c = ctx.emit("mul", [c, ctx.scalar(beta, c)])
    return ctx.emit("add", [y, c])
