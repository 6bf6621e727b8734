"""Lowering side of the VNNI int8 template (kernels/int8.py): route qlinear / qconv2d to it, fuse the following
`requantize` into its epilogue, and keep convolution activations channels-last between template kernels.

The graph is lowered node by node, so a GEMM cannot see its consumers. Instead the GEMM rule emits the plain
int32 kernel and remembers how it was built (`_Gemm`, keyed by the Relax var it returned); when the requantize
rule then finds its input in that table it emits one kernel with the requantize in the epilogue. The int32 call
is left without users and Relax drops it (dead code) unless another consumer still reads the accumulator.

Convolutions write NHWC ([B·OH·OW, O]); the rule returns the NCHW view (reshape + permute_dims, the op's own
layout) and records the NHWC tensor behind it, so that a following template convolution reads the NHWC tensor
directly (the transposition is then dead too) while every other consumer sees NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import int8 as K
from qcc.errors import BackendError


@dataclass
class _Gemm:
    """How a template GEMM was emitted: enough to emit it again with a fused epilogue."""

    node: Any  # the qlinear / qconv2d Node
    x: Any  # Relax input (NHWC for a conv when x_layout says so)
    x_layout: str
    wp: np.ndarray
    bp: np.ndarray


@dataclass
class _State:
    gemms: dict[Any, _Gemm] = field(default_factory=dict)  # returned var -> its GEMM
    nhwc: dict[Any, Any] = field(default_factory=dict)  # NCHW var -> the NHWC var it is a view of


def _builds_relax(ctx: Any) -> bool:
    """Whether `ctx` emits Relax (a composing context of the fuse pass chains TE instead: not for templates)."""
    from tvm import relax

    return ctx.device == "cpu" and not ctx.float16 and isinstance(ctx.bb, relax.BlockBuilder)


def _state(ctx: Any) -> _State:
    st = ctx.__dict__.get("_qcc_int8")
    if st is None:
        st = ctx.__dict__["_qcc_int8"] = _State()
    return st


def _const(expr: Any) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def _emit(ctx: Any, g: _Gemm, rq: K.Requant | None) -> Any:
    """Emit the template kernel of `g` (with `rq` fused) and return the op-layout Relax value."""
    from tvm import relax

    node, a = g.node, g.node.attrs
    x_t = node.inputs[0]
    out_full = tuple(int(d) for d in node.outputs[0].shape)
    zx = int(a["x_zero_point"])
    extra = [] if rq is None else rq.arrays(len(g.bp))
    dt = "int32" if rq is None else ctx.dtype(rq.dtype)
    if node.op == "qlinear":
        n, k = node.inputs[1].shape
        m = int(np.prod(x_t.shape[:-1], dtype=np.int64))
        func = K.qlinear_kernel((m, k), x_t.dtype, n, zx, rq=rq)
        out_shape: tuple[int, ...] = (m, n)
    else:
        x_shape = tuple(int(d) for d in (relax_shape(g.x) if g.x_layout == "NHWC" else x_t.shape))
        func = K.qconv2d_kernel(x_shape, x_t.dtype, node.inputs[1].shape, out_full, tuple(a["stride"]),
                                tuple(a["padding"]), tuple(a["dilation"]), zx, rq=rq, x_layout=g.x_layout)
        out_shape = (out_full[0] * out_full[2] * out_full[3], out_full[1])
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": [node.op]})
    gv = ctx.bb.add_func(func, f"{node.op}_vnni" + ("" if rq is None else "_rq"))
    consts = [relax.const(g.wp, "int8"), relax.const(g.bp, "int32")]
    consts += [relax.const(e, str(e.dtype)) for e in extra]
    var = ctx.bb.emit(relax.call_tir(gv, [g.x, *consts], relax.TensorType(out_shape, dt)))
    ctx.kernel_ops.setdefault(gv.name_hint, node.op)
    if node.op == "qlinear":
        if out_shape != out_full:
            var = ctx.bb.emit(relax.op.reshape(var, out_full))
        return var
    b_, o, oh, ow = out_full
    nhwc = ctx.bb.emit(relax.op.reshape(var, (b_, oh, ow, o)))
    nchw = ctx.bb.emit(relax.op.permute_dims(nhwc, (0, 3, 1, 2)))
    _state(ctx).nhwc[nchw] = nhwc
    return nchw


def relax_shape(expr: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def try_lower(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Lower a qlinear / qconv2d node through the VNNI template and return its Relax value, or None when the
    template does not apply (then the caller uses the generic lowering): non-CPU device, no VNNI, weights that
    are not constant int8 with zero point 0, group-wise scales, grouped convolution, i16 activations."""
    from tvm import relax

    a = node.attrs
    x_t, w_t = node.inputs[0], node.inputs[1]
    if not _builds_relax(ctx) or not K.enabled():
        return None
    if x_t.dtype not in ("i8", "u8") or w_t.dtype not in ("i8", "i4") or int(a["w_zero_point"]) != 0:
        return None
    w = _const(args[1])
    bias = _const(args[2]) if len(args) > 2 else None
    if w is None or (len(args) > 2 and bias is None):
        return None
    zx = int(a["x_zero_point"])
    x, layout = args[0], "NCHW"
    try:
        if node.op == "qlinear":
            if len(args) > 3 or a.get("group_size") is not None:
                return None
            wp, bp = K.pack_weight(w.astype(np.int8), x_t.dtype, zx, bias)
            m, k = int(np.prod(x_t.shape[:-1], dtype=np.int64)), int(x_t.shape[-1])
            if len(x_t.shape) != 2:
                x = ctx.bb.emit(relax.op.reshape(args[0], (m, k)))
        elif node.op == "qconv2d":
            if int(a["groups"]) != 1:
                return None
            wp, bp = K.pack_conv_weight(w.astype(np.int8), x_t.dtype, zx, bias)
            nhwc = _state(ctx).nhwc.get(args[0])
            if nhwc is not None:
                x, layout = nhwc, "NHWC"
        else:
            return None
        g = _Gemm(node, x, layout, wp, bp)
        var = _emit(ctx, g, None)
    except BackendError:
        return None
    _state(ctx).gemms[var] = g
    return var


def _per_channel(arr: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """`arr` (broadcasting against out_shape) as a vector along `axis` (length 1 or the channel count), or None
    when it varies along another axis."""
    if arr.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - arr.ndim) + arr.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis % len(out_shape)):
        return None
    return arr.reshape(-1)


def try_fuse_requantize(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Emit requantize(GEMM) as one template kernel with the requantize in its epilogue, or return None when the
    input is not a template GEMM or the multiplier / shift are not per-output-channel constants."""
    from tvm import relax

    if not _builds_relax(ctx) or not isinstance(args[0], relax.Var):
        return None
    g = _state(ctx).gemms.get(args[0])
    if g is None:
        return None
    b, c = _const(args[1]), _const(args[2])
    if b is None or c is None:
        return None
    out_shape = tuple(int(d) for d in node.outputs[0].shape)
    axis = -1 if g.node.op == "qlinear" else 1
    bv, cv = _per_channel(b, out_shape, axis), _per_channel(c, out_shape, axis)
    if bv is None or cv is None:
        return None
    if np.abs(bv.astype(np.int64)).max() >= 2**31 or np.abs(cv.astype(np.int64)).max() >= 63:
        return None  # keep the epilogue's int32 × int32 → int64 product and shifts in range
    a = node.attrs
    rq = K.Requant(bv.astype(np.int64), cv.astype(np.int32), int(a["input_zero_point"]), int(a["zero_point"]),
                   node.outputs[0].dtype, a["min"], a["max"])
    try:
        return _emit(ctx, g, rq)
    except BackendError:
        return None
