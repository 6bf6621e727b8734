"""ONNX upsampling converters written with the IR's existing ops.

- Resize is separable and linear in its input, so each resized axis is a constant interpolation matrix:
  nearest becomes a `gather`, linear and cubic a `matmul` (weights computed here for the concrete shapes).
- ConvTranspose is a stride-1 `conv2d` over the zero-stuffed input with the flipped, transposed kernel.
- DepthToSpace / SpaceToDepth are reshape + transpose.
"""

from __future__ import annotations

import numpy as np

from qcc.frontends.onnx_ops import NodeContext, Operand, Unsupported, converter, np_dtype, shape_of
from qcc.frontends.onnx_ops_nn import _pads, _spatial, _to_2d
from qcc.frontends.onnx_ops_shape import reshape, transpose


# -- Resize -----------------------------------------------------------------------------------------------------
def _source_coords(ctx: NodeContext, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """The input coordinate each output index samples (ONNX coordinate_transformation_mode)."""
    x = np.arange(n_out, dtype=np.float64)
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    raise Unsupported(f"with coordinate_transformation_mode={mode!r}")


def _nearest_index(ctx: NodeContext, src: np.ndarray, n_in: int) -> np.ndarray:
    mode = ctx.attr("nearest_mode", "round_prefer_floor")
    frac = src - np.floor(src)
    if mode == "round_prefer_floor":
        idx = np.where(frac == 0.5, np.floor(src), np.round(src))
    elif mode == "round_prefer_ceil":
        idx = np.where(frac == 0.5, np.ceil(src), np.round(src))
    elif mode in ("floor", "ceil"):
        idx = np.floor(src) if mode == "floor" else np.ceil(src)
    else:
        raise ctx.error(f"unknown nearest_mode {mode!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _weights(ctx: NodeContext, src: np.ndarray, n_in: int, mode: str) -> np.ndarray:
    """[n_out, n_in] interpolation matrix of linear or cubic resampling."""
    m = np.zeros((len(src), n_in))
    rows = np.arange(len(src))
    if mode == "linear":
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        np.add.at(m, (rows, lo), 1 - (src - lo))
        np.add.at(m, (rows, hi), src - lo)
        return m
    a = ctx.attr("cubic_coeff_a", -0.75)
    base = np.floor(src).astype(np.int64)
    t = src - base
    for k, d in zip(range(-1, 3), (t + 1, t, 1 - t, 2 - t)):
        # Keys' cubic kernel, |d| <= 1 and 1 < |d| < 2 branches.
        w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
        idx = base + k
        inside = (idx >= 0) & (idx < n_in)
        if ctx.attr("exclude_outside", 0):
            w = np.where(inside, w, 0.0)
        np.add.at(m, (rows, np.clip(idx, 0, n_in - 1)), w)
    if ctx.attr("exclude_outside", 0):
        m /= m.sum(axis=1, keepdims=True)
    return m


@converter("Resize")
def _resize(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    rank = len(shape)
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.error(f"unknown mode {mode!r}")
    if ctx.attr("antialias", 0) or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported("with antialias or keep_aspect_ratio_policy")
    axes = ctx.attr("axes", tuple(range(rank)))
    axes = tuple(a % rank for a in axes)
    scales, sizes = ctx.const(2, "Resize scales"), ctx.const(3, "Resize sizes")
    if sizes is not None and sizes.size:
        outs = {a: int(s) for a, s in zip(axes, sizes.reshape(-1))}
        factors = {a: outs[a] / shape[a] for a in axes}
    elif scales is not None and scales.size:
        factors = {a: float(s) for a, s in zip(axes, scales.reshape(-1))}
        # float32 arithmetic, as ONNX Runtime computes the output extent
        outs = {a: int(np.floor(np.float32(shape[a]) * np.float32(factors[a]))) for a in axes}
    else:
        raise ctx.error("neither scales nor sizes")
    y = x
    for a in axes:
        n_in, n_out = shape[a], outs[a]
        if n_in == n_out and factors[a] == 1.0:
            continue
        src = _source_coords(ctx, n_in, n_out, factors[a])
        if mode == "nearest":
            y = ctx.emit("gather", [y, _nearest_index(ctx, src, n_in)], axis=a)
            continue
        m = _weights(ctx, src, n_in, mode).astype(np_dtype(x))
        if a == rank - 1:
            y = ctx.emit("matmul", [y, np.ascontiguousarray(m.T)])
        elif a == rank - 2:
            y = ctx.emit("matmul", [m, y])
        else:  # bring the axis last, interpolate, put it back
            perm = tuple(i for i in range(rank) if i != a) + (a,)
            y = ctx.emit("matmul", [transpose(ctx, y, perm), np.ascontiguousarray(m.T)])
            y = transpose(ctx, y, tuple(int(i) for i in np.argsort(perm)))
    return [y]


# -- ConvTranspose ----------------------------------------------------------------------------------------------
@converter("ConvTranspose")
def _conv_transpose(ctx: NodeContext) -> list[Operand]:
    x, w, b = ctx.x(0), ctx.x(1), ctx.input(2)
    n = _spatial(ctx, x)
    size, (cin, cout_g, *kernel) = shape_of(x)[2:], shape_of(w)
    g = ctx.attr("group", 1)
    strides, dil = ctx.attr("strides", (1,) * n), ctx.attr("dilations", (1,) * n)
    out_pad = ctx.attr("output_padding", (0,) * n)
    full = [st * (s - 1) + op + (k - 1) * d + 1 for s, st, op, k, d in zip(size, strides, out_pad, kernel, dil)]
    target = ctx.attr("output_shape")
    auto = ctx.attr("auto_pad", "NOTSET")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = tuple(s * st for s, st in zip(size, strides))
    if target is not None:
        target = tuple(target)[-n:]
        totals = [f - t for f, t in zip(full, target)]
        upper = auto == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        ends = [t - t // 2 if upper else t // 2 for t in totals]
    else:
        begins, ends = _pads(ctx, size, kernel, strides, dil)
    # Zero-stuff: [.., H, W] -> [.., H, 1, W, 1] -> pad to [.., H, sh, W, sw] -> [.., H*sh, W*sw] -> trim.
    x2, size2 = _to_2d(ctx, x, n), (1,) * (2 - n) + tuple(size)
    st2, d2 = (1,) * (2 - n) + tuple(strides), (1,) * (2 - n) + tuple(dil)
    if any(s > 1 for s in st2):
        nb, c = shape_of(x)[:2]
        y = ctx.emit("unsqueeze", [x2], axes=(3, 5))
        y = ctx.emit("pad", [y], pads=(0,) * 6 + (0, 0, 0, st2[0] - 1, 0, st2[1] - 1), mode="constant", value=0.0)
        y = reshape(ctx, y, (nb, c, size2[0] * st2[0], size2[1] * st2[1]))
        x2 = ctx.emit("slice", [y], starts=(0, 0), ends=tuple((s - 1) * st + 1 for s, st in zip(size2, st2)),
                      axes=(2, 3), steps=(1, 1))
    # Weight [Cin, Cout/g, kh, kw] -> [Cout, Cin/g, kh, kw], spatially flipped.
    k2 = (1,) * (2 - n) + tuple(kernel)
    wt = reshape(ctx, w, (g, cin // g, cout_g) + k2)
    wt = reshape(ctx, transpose(ctx, wt, (0, 2, 1, 3, 4)), (g * cout_g, cin // g) + k2)
    for axis in (2, 3):
        if k2[axis - 2] > 1:
            wt = ctx.emit("gather", [wt, np.arange(k2[axis - 2] - 1, -1, -1, dtype=np.int64)], axis=axis)
    b2 = (0,) * (2 - n) + tuple(begins)
    e2 = (0,) * (2 - n) + tuple(ends)
    op2 = (0,) * (2 - n) + tuple(out_pad)
    lead = [d * (k - 1) - p for d, k, p in zip(d2, k2, b2)]
    trail = [d * (k - 1) - p + o for d, k, p, o in zip(d2, k2, e2, op2)]
    pad = (max(lead[0], 0), max(lead[1], 0), max(trail[0], 0), max(trail[1], 0))
    y = ctx.emit("conv2d", [x2, wt] + ([b] if b is not None else []), stride=(1, 1), padding=pad, dilation=d2,
                 groups=g)
    crop = [max(-v, 0) for v in lead], [max(-v, 0) for v in trail]
    if any(crop[0]) or any(crop[1]):
        h, wd = shape_of(y)[2:]
        y = ctx.emit("slice", [y], starts=tuple(crop[0]), ends=(h - crop[1][0], wd - crop[1][1]), axes=(2, 3),
                     steps=(1, 1))
    return [ctx.emit("squeeze", [y], axes=(2,)) if n == 1 else y]


# -- DepthToSpace / SpaceToDepth -------------------------------------------------------------------------------
@converter("DepthToSpace", "SpaceToDepth")
def _depth_space(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    if len(shape_of(x)) != 4:
        raise ctx.error("expects an NCHW input")
    nb, c, h, w = shape_of(x)
    bs = ctx.attr("blocksize")
    if ctx.op_type == "SpaceToDepth":
        y = reshape(ctx, x, (nb, c, h // bs, bs, w // bs, bs))
        return [reshape(ctx, transpose(ctx, y, (0, 3, 5, 1, 2, 4)), (nb, c * bs * bs, h // bs, w // bs))]
    if ctx.attr("mode", "DCR") == "DCR":
        y = transpose(ctx, reshape(ctx, x, (nb, bs, bs, c // (bs * bs), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = transpose(ctx, reshape(ctx, x, (nb, c // (bs * bs), bs, bs, h, w)), (0, 1, 4, 2, 5, 3))
    return [reshape(ctx, y, (nb, c // (bs * bs), h * bs, w * bs))]
