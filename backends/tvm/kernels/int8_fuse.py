"""Lowering side of the VNNI int8 template (kernels/int8.py): route qlinear / qconv2d to it, fuse the following
`requantize` into its epilogue, and keep convolution activations channels-last between template kernels.

The graph is lowered node by node, so a GEMM cannot see its consumers. Instead the GEMM rule emits the plain
int32 kernel and remembers how it was built (`_Gemm`, keyed by the Relax var it returned); when the requantize
rule then finds its input in that table it emits one kernel with the requantize in the epilogue. The int32 call
is left without users and Relax drops it (dead code) unless another consumer still reads the accumulator.

Convolutions write NHWC ([B·OH·OW, O]); the rule returns the NCHW view (reshape + permute_dims, the op's own
layout) and records the NHWC tensor behind it, so that a following template convolution reads the NHWC tensor
directly (the transposition is then dead too) while every other consumer sees NCHW.

The same trick carries a CNN's other ops: a `qadd` of a requantized template convolution and a channels-last
residual is emitted once more as that convolution with requantize + qadd in its epilogue (`try_fuse_qadd`),
an 8-bit `max_pool2d` of a channels-last tensor runs NHWC (`try_max_pool`, kernels/int8_pool.py), and
depthwise convolutions take the channels-last depthwise kernel (kernels/int8_dw.py) with the same epilogues.
The template uses AVX-512 VNNI or, on targets without it, its exact AVX2 variant (`int8.isa()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import int4 as K4
from qcc.backends.tvm.kernels import int8 as K
from qcc.backends.tvm.kernels import int8_dw as KDW
from qcc.errors import BackendError


@dataclass
class _Gemm:
    """How a template GEMM was emitted: enough to emit it again with a fused epilogue."""

    node: Any  # the qlinear / qconv2d Node
    x: Any  # Relax input (NHWC for a conv when x_layout says so)
    x_layout: str
    wp: np.ndarray
    bp: np.ndarray
    kernels: Any = K  # the kernel module: int8, or int4 (packed W4 weights, kernels/int4.py) for i4 weights
    isa: str = "vnni"  # int8 kernels: "vnni" or the exact "avx2" fallback (K.isa())


@dataclass
class _State:
    gemms: dict[Any, _Gemm] = field(default_factory=dict)  # returned var -> its GEMM
    nhwc: dict[Any, Any] = field(default_factory=dict)  # NCHW var -> the NHWC var it is a view of
    fused: dict[Any, tuple[_Gemm, K.Requant]] = field(default_factory=dict)  # requantized var -> its GEMM


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


def _emit(ctx: Any, g: _Gemm, rq: K.Requant | None, add: K.ResidualAdd | None = None,
          residual: Any = None) -> Any:
    """Emit the template kernel of `g` (with `rq`, and then `add` with the [M, N] `residual`, fused) and return
    the op-layout Relax value."""
    from tvm import relax

    node, a = g.node, g.node.attrs
    x_t = node.inputs[0]
    out_full = tuple(int(d) for d in node.outputs[0].shape)
    zx = int(a["x_zero_point"])
    extra = [] if rq is None else rq.arrays(getattr(g.kernels, "channels", len)(g.bp))  # (int4_group)
    dt = "int32" if rq is None else ctx.dtype(rq.dtype if add is None else add.dtype)
    if node.op == "qlinear":
        n, k = node.inputs[1].shape
        m = int(np.prod(x_t.shape[:-1], dtype=np.int64))
        func = g.kernels.qlinear_kernel((m, k), x_t.dtype, n, zx, rq=rq, **({"isa": g.isa} if g.kernels is K else {}))
        out_shape: tuple[int, ...] = (m, n)
    else:
        x_shape = tuple(int(d) for d in (relax_shape(g.x) if g.x_layout == "NHWC" else x_t.shape))
        more: dict[str, Any] = {} if add is None else {"add": add}
        if g.kernels is K:
            more["isa"] = g.isa
        func = g.kernels.qconv2d_kernel(x_shape, x_t.dtype, node.inputs[1].shape, out_full, tuple(a["stride"]),
                                        tuple(a["padding"]), tuple(a["dilation"]), zx, rq=rq,
                                        x_layout=g.x_layout, **more)
        out_shape = (out_full[0] * out_full[2] * out_full[3], out_full[1])
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": [node.op]})
    isa = g.isa if g.kernels is K else getattr(g.kernels, "TAG", "vnni")
    gv = ctx.bb.add_func(func, f"{node.op}_{isa}" + ("" if rq is None else "_rq") + ("" if add is None else "_add"))
    consts = [relax.const(g.wp, "int8"), relax.const(g.bp, "int32")]
    consts += [relax.const(e, str(e.dtype)) for e in extra]
    if residual is not None:
        consts.append(residual)
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
    isa = K.isa() if _builds_relax(ctx) else None
    if isa is None:
        return None
    if x_t.dtype not in ("i8", "u8") or w_t.dtype not in ("i8", "i4") or int(a["w_zero_point"]) != 0:
        return None
    w = _const(args[1])
    bias = _const(args[2]) if len(args) > 2 else None
    if w is None or (len(args) > 2 and bias is None):
        return None
    zx = int(a["x_zero_point"])
    x, layout = args[0], "NCHW"
    # i4: weights stay packed two per byte (VNNI only; the AVX2 path widens them like i8)
    kern = K4 if w_t.dtype == "i4" and K4.packed() and isa == "vnni" else K
    try:
        if node.op == "qlinear":
            if len(args) > 3 or a.get("group_size") is not None:  # VS-Quant group scales: only the W4 kernel
                if kern is not K4 or len(args) != 4 or (kern := K4.grouped(_const(args[3]), a["group_size"])) is None:
                    return None
            wp, bp = kern.pack_weight(w.astype(np.int8), x_t.dtype, zx, bias, **({"isa": isa} if kern is K else {}))
            m, k = int(np.prod(x_t.shape[:-1], dtype=np.int64)), int(x_t.shape[-1])
            if len(x_t.shape) != 2:
                x = ctx.bb.emit(relax.op.reshape(args[0], (m, k)))
        elif node.op == "qconv2d":
            if int(a["groups"]) != 1:  # only depthwise (groups = C = O): channels-last, no GEMM (int8_dw.py)
                if not int(a["groups"]) == int(x_t.shape[1]) == int(w_t.shape[0]) or int(w_t.shape[1]) != 1:
                    return None
                kern = KDW
            more = {"dilation": tuple(a["dilation"]), **({"isa": isa} if kern is K else {})}  # window-run layout
            wp, bp = kern.pack_conv_weight(w.astype(np.int8), x_t.dtype, zx, bias, **more)
            nhwc = _state(ctx).nhwc.get(args[0])
            if nhwc is not None:
                x, layout = nhwc, "NHWC"
        else:
            return None
        g = _Gemm(node, x, layout, wp, bp, kern, isa)
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
        var = _emit(ctx, g, rq)
    except BackendError:
        return None
    _state(ctx).fused[var] = (g, rq)
    return var


def try_fuse_qadd(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Emit qadd(requantize(conv), r) as one template convolution whose epilogue requantizes, reads the residual
    r channels-last and applies the qadd, or return None (then the generic rule runs): no operand is a fused
    template convolution, r is not a channels-last template output, or the operands broadcast.

    When both operands qualify (a ResNet downsampling block) the later-emitted convolution takes the add: its
    output is the one most likely read by this qadd alone. The convolution's own requantize kernel stays only if
    another consumer still reads it (dead code otherwise)."""
    from tvm import relax

    if not _builds_relax(ctx) or len(args) != 2:
        return None
    out_shape = tuple(int(d) for d in node.outputs[0].shape)
    if any(tuple(int(d) for d in v.shape) != out_shape for v in node.inputs) or len(out_shape) != 4:
        return None
    st = _state(ctx)
    order = list(st.fused)
    sides = [s for s in (0, 1) if isinstance(args[s], relax.Var) and args[s] in st.fused]
    for side in sorted(sides, key=lambda s: -order.index(args[s])):
        g, rq = st.fused[args[side]]
        other = args[1 - side]
        r = st.nhwc.get(other) if isinstance(other, relax.Var) else None
        if g.node.op != "qconv2d" or r is None:  # (int8 and int4 convolutions both take a fused qadd)
            continue
        a = node.attrs
        y, o = ("a", "b") if side == 0 else ("b", "a")
        add = K.ResidualAdd(int(a[f"{y}_multiplier"]), int(a[f"{y}_zero_point"]), int(a[f"{o}_multiplier"]),
                            int(a[f"{o}_zero_point"]), int(a["shift"]), int(a["zero_point"]), node.outputs[0].dtype,
                            node.inputs[1 - side].dtype, a["min"], a["max"])
        b_, c, h, w = out_shape
        try:
            res = ctx.bb.emit(relax.op.reshape(r, (b_ * h * w, c)))
            return _emit(ctx, g, rq, add, res)
        except BackendError:
            return None
    return None


def try_max_pool(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Emit an 8-bit max_pool2d whose input is a channels-last template output as an NHWC kernel
    (kernels/int8_pool.py) and return its NCHW view (its NHWC tensor is recorded for the next template conv), or
    None: not a template chain, not 8-bit, or a window too large."""
    from tvm import relax

    from qcc.backends.tvm.kernels import int8_pool

    if not _builds_relax(ctx) or not isinstance(args[0], relax.Var) or node.inputs[0].dtype not in ("i8", "u8"):
        return None
    x = _state(ctx).nhwc.get(args[0])
    if x is None:
        return None
    a = node.attrs
    b_, c, oh, ow = (int(d) for d in node.outputs[0].shape)
    try:
        func = int8_pool.max_pool_nhwc_kernel(relax_shape(x), ctx.dtype(node.inputs[0].dtype), (oh, ow),
                                              tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]),
                                              tuple(a.get("dilation", (1, 1))))
    except BackendError:
        return None
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": [node.op]})
    gv = ctx.bb.add_func(func, "max_pool2d_nhwc")
    ctx.kernel_ops.setdefault(gv.name_hint, node.op)
    nhwc = ctx.bb.emit(relax.call_tir(gv, [x], relax.TensorType((b_, oh, ow, c), ctx.dtype(node.outputs[0].dtype))))
    nchw = ctx.bb.emit(relax.op.permute_dims(nhwc, (0, 3, 1, 2)))
    _state(ctx).nhwc[nchw] = nhwc
    return nchw


def is_template_gemm(ctx: Any, expr: Any) -> bool:
    """Whether `expr` is the int32 output of a template GEMM whose requantize rule would fuse into it."""
    from tvm import relax

    return isinstance(expr, relax.Var) and _builds_relax(ctx) and expr in _state(ctx).gemms
