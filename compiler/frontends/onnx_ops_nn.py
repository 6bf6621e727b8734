"""ONNX convolution, pooling, normalization, softmax and matrix-product converters.

1-D convolutions and pools run as 2-D ones over a unit height; 3-D ones are unsupported.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import numpy as np

from qcc.frontends.onnx_ops import (
    NodeContext,
    Operand,
    Unsupported,
    cast,
    converter,
    norm_axis,
    np_dtype,
    onnx_np_dtype,
    shape_of,
)
from qcc.frontends.onnx_ops_shape import reshape, transpose


def _spatial(ctx: NodeContext, x: Operand) -> int:
    rank = len(shape_of(x))
    if rank not in (3, 4):
        raise Unsupported(f"with a {rank - 2}-D spatial input")
    return rank - 2


def _pads(ctx: NodeContext, size: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis, resolving auto_pad."""
    n = len(size)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = ctx.attr("pads", (0,) * (2 * n))
        return list(pads[:n]), list(pads[n:])
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.error(f"unknown auto_pad {auto!r}")
    begins, ends = [], []
    for s, k, st, d in zip(size, kernel, strides, dilations):
        total = max((-(-s // st) - 1) * st + (k - 1) * d + 1 - s, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)  # SAME_UPPER puts the odd cell at the end
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins, ends


def _to_2d(ctx: NodeContext, x: Operand, n: int) -> Operand:
    return ctx.emit("unsqueeze", [x], axes=(2,)) if n == 1 else x


def _window_attrs(ctx: NodeContext, x: Operand, kernel: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """stride / padding / dilation of a 2-D op for a 1-D or 2-D ONNX window."""
    n = len(kernel)
    size = shape_of(x)[2:]
    strides = ctx.attr("strides", (1,) * n)
    dilations = ctx.attr("dilations", (1,) * n)
    begins, ends = _pads(ctx, size, kernel, strides, dilations)
    if n == 1:
        return {"stride": (1, strides[0]), "padding": (0, begins[0], 0, ends[0]), "dilation": (1, dilations[0])}
    return {"stride": tuple(strides), "padding": (begins[0], begins[1], ends[0], ends[1]),
            "dilation": tuple(dilations)}


@converter("Conv")
def _conv(ctx: NodeContext) -> list[Operand]:
    x, w, b = ctx.x(0), ctx.x(1), ctx.input(2)
    n = _spatial(ctx, x)
    kernel = ctx.attr("kernel_shape", shape_of(w)[2:])
    win = _window_attrs(ctx, x, kernel)
    operands = [_to_2d(ctx, x, n), _to_2d(ctx, w, n)] + ([b] if b is not None else [])
    y = ctx.emit("conv2d", operands, groups=ctx.attr("group", 1), **win)
    return [ctx.emit("squeeze", [y], axes=(2,)) if n == 1 else y]


@converter("MaxPool", "AveragePool")
def _pool(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    n = _spatial(ctx, x)
    if ctx.output_used(1):
        raise Unsupported("with the Indices output")
    kernel = ctx.attr("kernel_shape")
    win = _window_attrs(ctx, x, kernel)
    k2 = (1, kernel[0]) if n == 1 else tuple(kernel)
    ceil = bool(ctx.attr("ceil_mode", 0))
    x2 = _to_2d(ctx, x, n)
    if ctx.op_type == "MaxPool":
        y = ctx.emit("max_pool2d", [x2], kernel=k2, ceil_mode=ceil, **win)
    else:
        if any(d != 1 for d in win["dilation"]):
            raise Unsupported("with dilations")
        y = ctx.emit("avg_pool2d", [x2], kernel=k2, stride=win["stride"], padding=win["padding"], ceil_mode=ceil,
                     count_include_pad=bool(ctx.attr("count_include_pad", 0)))
    return [ctx.emit("squeeze", [y], axes=(2,)) if n == 1 else y]


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    rank = len(shape_of(x))
    mean = ctx.op_type == "GlobalAveragePool"
    if rank == 4:
        return [ctx.emit("adaptive_avg_pool2d" if mean else "adaptive_max_pool2d", [x], output_size=(1, 1))]
    return [ctx.emit("reduce_mean" if mean else "reduce_max", [x], axes=tuple(range(2, rank)), keepdims=True)]


# -- normalization --------------------------------------------------------------------------------------------------
@converter("BatchNormalization")
def _batch_norm(ctx: NodeContext) -> list[Operand]:
    if ctx.attr("training_mode", 0) or ctx.output_used(1) or ctx.output_used(2):
        raise Unsupported("in training mode")
    operands = [ctx.x(i) for i in range(5)]
    return [ctx.emit("batch_norm", operands, eps=ctx.attr("epsilon", 1e-5))]


@converter("InstanceNormalization")
def _instance_norm(ctx: NodeContext) -> list[Operand]:
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.x(2)
    shape = shape_of(x)
    axes = tuple(range(2, len(shape)))
    per_channel = (shape[1],) + (1,) * len(axes)
    d = ctx.emit("sub", [x, ctx.emit("reduce_mean", [x], axes=axes, keepdims=True)])
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [d, d])], axes=axes, keepdims=True)
    std = ctx.emit("sqrt", [ctx.emit("add", [var, ctx.scalar(ctx.attr("epsilon", 1e-5), x)])])
    y = ctx.emit("mul", [ctx.emit("div", [d, std]), reshape(ctx, scale, per_channel)])
    return [ctx.emit("add", [y, reshape(ctx, bias, per_channel)])]


@converter("GroupNormalization")
def _group_norm(ctx: NodeContext) -> list[Operand]:
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.x(2)
    shape = shape_of(x)
    g = ctx.attr("num_groups")
    if len(shape) < 3 or shape[1] % g:
        raise ctx.error(f"{g} groups do not divide the channels of {list(shape)}")
    xg = reshape(ctx, x, (shape[0], g, math.prod(shape[1:]) // g))
    d = ctx.emit("sub", [xg, ctx.emit("reduce_mean", [xg], axes=(2,), keepdims=True)])
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [d, d])], axes=(2,), keepdims=True)
    y = ctx.emit("div", [d, ctx.emit("sqrt", [ctx.emit("add", [var, ctx.scalar(ctx.attr("epsilon", 1e-5), x)])])])
    if ctx.opset < 21:  # opset 18: scale and bias per group
        y = ctx.emit("add", [ctx.emit("mul", [y, reshape(ctx, scale, (g, 1))]), reshape(ctx, bias, (g, 1))])
        return [reshape(ctx, y, shape)]
    per_channel = (shape[1],) + (1,) * (len(shape) - 2)
    y = ctx.emit("mul", [reshape(ctx, y, shape), reshape(ctx, scale, per_channel)])
    return [ctx.emit("add", [y, reshape(ctx, bias, per_channel)])]


@converter("LayerNormalization")
def _layer_norm(ctx: NodeContext) -> list[Operand]:
    if ctx.output_used(1) or ctx.output_used(2):
        raise Unsupported("with the Mean / InvStdDev outputs")
    x, scale, bias = ctx.x(0), ctx.x(1), ctx.input(2)
    shape = shape_of(x)
    axis = norm_axis(ctx, ctx.attr("axis", -1), len(shape))
    norm = shape[axis:]
    # The IR wants weight and bias of exactly the normalized shape; ONNX lets them broadcast.
    w = scale if shape_of(scale) == norm else ctx.emit("expand", [scale], shape=norm)
    if bias is None:
        bias = np.zeros(norm, np_dtype(x))
    b = bias if shape_of(bias) == norm else ctx.emit("expand", [bias], shape=norm)
    return [ctx.emit("layer_norm", [x, w, b], axis=axis, eps=ctx.attr("epsilon", 1e-5))]


@converter("Softmax", "LogSoftmax")
def _softmax(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    axis = norm_axis(ctx, ctx.attr("axis", -1), len(shape_of(x)))  # opset-13 semantics: one axis
    return [ctx.emit("softmax" if ctx.op_type == "Softmax" else "log_softmax", [x], axis=axis)]


# -- quantize / dequantize (float fake-quantization with IR ops) ------------------------------------------------
def _per_axis(ctx: NodeContext, p: Operand, x: Operand) -> Operand:
    """A per-axis scale or zero point reshaped to broadcast along `axis` of x."""
    rank = len(shape_of(x))
    if not shape_of(p) or math.prod(shape_of(p)) == 1:
        return reshape(ctx, p, ())
    if ctx.attr("block_size", 0):
        raise Unsupported("with blocked quantization")
    axis = norm_axis(ctx, ctx.attr("axis", 1), rank)
    return reshape(ctx, p, tuple(shape_of(p)[0] if i == axis else 1 for i in range(rank)))


@converter("QuantizeLinear")
def _quantize(ctx: NodeContext) -> list[Operand]:
    x, scale, zp = ctx.x(0), ctx.x(1), ctx.input(2)
    out = np_dtype(zp) if zp is not None else onnx_np_dtype(ctx, ctx.attr("output_dtype", 0) or 2)  # 2 = UINT8
    if out.kind not in "iu" or out.itemsize > 2:
        raise Unsupported(f"with output type {out}")
    info = np.iinfo(out)
    q = ctx.emit("round", [ctx.emit("div", [x, _per_axis(ctx, scale, x)])])  # round half to even, like ONNX
    if zp is not None:
        q = ctx.emit("add", [q, _per_axis(ctx, cast(ctx, zp, np_dtype(x)), x)])
    q = ctx.emit("clip", [q], min=float(info.min), max=float(info.max))
    return [cast(ctx, q, out)]


@converter("DequantizeLinear")
def _dequantize(ctx: NodeContext) -> list[Operand]:
    q, scale, zp = ctx.x(0), ctx.x(1), ctx.input(2)
    y = cast(ctx, q, np_dtype(scale))
    if zp is not None:
        y = ctx.emit("sub", [y, _per_axis(ctx, cast(ctx, zp, np_dtype(scale)), q)])
    return [ctx.emit("mul", [y, _per_axis(ctx, scale, q)])]


# -- matrix products ------------------------------------------------------------------------------------------------
@converter("MatMul")
def _matmul(ctx: NodeContext) -> list[Operand]:
    return [ctx.emit("matmul", [ctx.x(0), ctx.x(1)])]


@converter("Gemm")
def _gemm(ctx: NodeContext) -> list[Operand]:
    """alpha * A' @ B' + beta * C: a `linear` when B is a constant and C a per-column bias, else matmul ops."""
    a, b, c = ctx.x(0), ctx.x(1), ctx.input(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    if trans_a:
        a = transpose(ctx, a, (1, 0))
    n = shape_of(b)[0 if trans_b else 1]
    if isinstance(b, np.ndarray) and (c is None or isinstance(c, np.ndarray) and c.size in (1, n)):
        w = b if trans_b else np.ascontiguousarray(b.T)  # keeps the initializer (and its name) when it can
        if alpha != 1.0:
            w = (w * alpha).astype(b.dtype)
        operands = [a, w]
        if c is not None and beta != 0.0:
            bias = np.broadcast_to(c.reshape(-1), (n,)) * beta if beta != 1.0 or c.size != n else c.reshape(-1)
            operands.append(np.ascontiguousarray(bias, dtype=c.dtype))
        return [ctx.emit("linear", operands)]
    y = ctx.emit("matmul", [a, transpose(ctx, b, (1, 0)) if trans_b else b])
    if alpha != 1.0:
        y = ctx.emit("mul", [y, ctx.scalar(alpha, y)])
    if c is not None and beta != 0.0:
        y = ctx.emit("add", [y, c if beta == 1.0 else ctx.emit("mul", [c, ctx.scalar(beta, c)])])
    return [y]


@converter("Einsum")
def _einsum(ctx: NodeContext) -> list[Operand]:
    """Einsum of one or two operands without repeated letters: transposes, sums and one batched matmul."""
    xs = [x for x in ctx.inputs if x is not None]
    lhs, arrow, out = ctx.attr("equation").replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(xs) or not 1 <= len(xs) <= 2:
        raise Unsupported(f"with {len(xs)} operands")
    equation = ctx.attr("equation").replace(" ", "")
    # '...' becomes fresh letters, right-aligned so operands of equal rank share them.
    pool = "".join(ch for ch in string.ascii_letters if ch not in equation)
    counts = [len(shape_of(x)) - len(t.replace("...", "")) for t, x in zip(terms, xs)]
    if any(c < 0 for c in counts):
        raise ctx.error(f"equation {equation!r} does not fit the operand ranks")
    n_ell = max((c for t, c in zip(terms, counts) if "..." in t), default=0)
    ell = pool[:n_ell]
    terms = [t.replace("...", ell[n_ell - c:]) for t, c in zip(terms, counts)]
    if arrow:
        out = out.replace("...", ell)
    else:  # implicit output: ellipsis letters, then the letters seen once in alphabetical order
        seen = "".join(terms)
        out = ell + "".join(sorted(ch for ch in set(seen) if seen.count(ch) == 1 and ch not in ell))
    sizes: dict[str, int] = {}
    for t, x in zip(terms, xs):
        if len(set(t)) != len(t) or len(t) != len(shape_of(x)):
            raise Unsupported(f"with a repeated letter in equation {equation!r}")
        for ch, d in zip(t, shape_of(x)):
            if sizes.setdefault(ch, d) != d:
                raise Unsupported(f"with broadcast dimensions in equation {equation!r}")
    if any(ch not in sizes for ch in out) or len(set(out)) != len(out):
        raise ctx.error(f"bad equation {equation!r}")
    # Sum letters that appear in one operand only and not in the output.
    reduced = []
    for i, (t, x) in enumerate(zip(terms, xs)):
        others = "".join(terms[:i] + terms[i + 1:]) + out
        drop = tuple(j for j, ch in enumerate(t) if ch not in others)
        if drop:
            x = ctx.emit("reduce_sum", [x], axes=drop, keepdims=False)
            t = "".join(ch for ch in t if ch not in others)
        reduced.append((t, x))
    if len(reduced) == 1:
        t, x = reduced[0]
        return [transpose(ctx, x, tuple(t.index(ch) for ch in out))]
    (ta, a), (tb, b) = reduced
    batch = [ch for ch in out if ch in ta and ch in tb]
    contract = [ch for ch in ta if ch in tb and ch not in out]
    free_a = [ch for ch in ta if ch not in tb]
    free_b = [ch for ch in tb if ch not in ta]
    dim = lambda letters: math.prod(sizes[ch] for ch in letters)  # noqa: E731
    a = transpose(ctx, a, tuple(ta.index(ch) for ch in batch + free_a + contract))
    b = transpose(ctx, b, tuple(tb.index(ch) for ch in batch + contract + free_b))
    a = reshape(ctx, a, (dim(batch), dim(free_a), dim(contract)))
    b = reshape(ctx, b, (dim(batch), dim(contract), dim(free_b)))
    y: Operand = ctx.emit("matmul", [a, b])
    order = batch + free_a + free_b
    y = reshape(ctx, y, tuple(sizes[ch] for ch in order))
    return [transpose(ctx, y, tuple(order.index(ch) for ch in out))]

