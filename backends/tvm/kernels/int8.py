"""AVX-512 VNNI int8 GEMM template for the integer ops `qlinear` and `qconv2d` (im2col + GEMM).

Both ops become one kernel: an activation stage that writes a uint8 matrix A [M, Kp] (the flattened input, or
the im2col patches of a convolution), a GEMM tensorized with `vpdpbusd` (u8 × s8 → s32, 16 lanes × 4 bytes)
against constant weights packed [Np/16, Kp/4, 16, 4], and an epilogue that adds the folded int32 bias and
writes the op's own output layout (docs/ops.md: the int32 accumulator incl. bias).

Exactness. `vpdpbusd` is unsigned × signed, so activations are shifted into u8: an i8 input x becomes x + 128,
a u8 input stays. With s = 128 (i8) or 0 (u8) and the weight zero point 0 (the template declines otherwise),
    Σ_k (x − zx)·w + bias = Σ_k (x + s)·w − (zx + s)·Σ_k w + bias,
so the correction folds into a constant int32 bias computed here in int64. Every product is at most
255·128 < 2^15 in magnitude and the template requires K ≤ 2^16, so |Σ (x + s)·w| < 2^31: the int32 accumulation
never overflows, and adding the folded bias (checked to fit int32) wraps exactly like the reference's final
`astype(int32)` of its int64 sum. Padding cells of a convolution hold the real value 0, i.e. the raw value zx,
which is zx + s in the shifted domain (always within [0, 255]). Padded K and N columns meet zero weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.errors import BackendError

MAX_K = 1 << 16  # |Σ (x+s)·w| ≤ K·255·128 < 2^31 for K ≤ 2^16
INTRIN = "qcc_dot_16x4_vnni"
ROW_TILE = 8  # output rows sharing each packed weight load
_registered = False


def _register_intrin() -> None:
    """Register the VNNI dot-product intrinsic with i8x64 operands (compiler.md §5.6; the stock one needs a fix
    for LLVM ≥ 20)."""
    global _registered
    if _registered:
        return
    from tvm import s_tir
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni_impl(A: T.Buffer((4,), "uint8", offset_factor=1),  # type: ignore[valid-type]
                  B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
                  C: T.Buffer((16,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    try:
        s_tir.TensorIntrin.register(INTRIN, dot_product_16x4_u8i8i32_desc, vnni_impl)
    except Exception:  # already registered by an earlier import in this process
        pass
    _registered = True


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def pack_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Pack int8 weights [N, K] to [Np/16, Kp/4, 16, 4] (zero padded) and fold the u8-shift correction into the
    int32 bias [Np]: bias − (zx + s)·Σ_k w. Raises BackendError when the folded bias does not fit int32."""
    n, k = w.shape
    if k > MAX_K:
        raise BackendError(f"int8 template: K={k} exceeds {MAX_K}; int32 accumulation could overflow")
    s = 128 if x_dtype == "i8" else 0
    np_, kp = _ceil(n, 16), _ceil(k, 4)
    wp = np.zeros((np_, kp), np.int8)
    wp[:n, :k] = w
    packed = np.ascontiguousarray(wp.reshape(np_ // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3))
    b = np.zeros(np_, np.int64)
    if bias is not None:
        b[:n] = bias.astype(np.int64)
    b[:n] -= (int(x_zero_point) + s) * w.astype(np.int64).sum(1)
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise BackendError("int8 template: folded bias does not fit int32")
    return packed, b.astype(np.int32)


def _gemm_func(m: int, kp: int, np_: int, inputs: list[Any], a_fn: Any, out_shape: tuple[int, ...],
               out_fn: Any, name: str) -> Any:
    """Build and schedule the PrimFunc: A = a_fn(m, k) (uint8), C = A·Wᵀ via VNNI, out = out_fn(C, bias, idx)."""
    from tvm import s_tir, te

    _register_intrin()
    W = te.placeholder((np_, kp), "int8", name="W")  # transform_layout below packs it [Np/16, Kp/4, 16, 4]
    bias = te.placeholder((np_,), "int32", name="bias")
    A = te.compute((m, kp), a_fn, name="A")
    k = te.reduce_axis((0, kp), name="k")
    C = te.compute((m, np_), lambda i, j: te.sum(A[i, k].astype("int32") * W[j, k].astype("int32"), axis=k),
                   name="C")
    out = te.compute(out_shape, lambda *idx: out_fn(C, bias, idx), name="out")
    func = te.create_prim_func([*inputs, W, bias, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("C")
    sch.transform_layout(blk, ("read", 1), lambda n, kk: [n // 16, kk // 4, n % 16, kk % 4])
    i, j, kk = sch.get_loops(blk)
    jo, ji = sch.split(j, [None, 16])
    ko, ki = sch.split(kk, [None, 4])
    rows = ROW_TILE if m % ROW_TILE == 0 else 1
    io, ii = sch.split(i, [None, rows])
    # rows × 16 accumulators per K step: one 64-byte weight load feeds `rows` vpdpbusd.
    sch.reorder(io, jo, ko, ii, ji, ki)
    par = sch.fuse(io, jo) if m // rows < 4 else io
    sch.parallel(par)  # before tensorize: the block becomes opaque after
    sch.decompose_reduction(blk, ko)
    sch.tensorize(ji, INTRIN)
    sch.unroll(ii)
    o_loops = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(o_loops[0])
    return sch.mod["main"]


def qlinear_kernel(x_shape: tuple[int, ...], x_dtype: str, n: int, zx: int, name: str = "qlinear_vnni") -> Any:
    """VNNI kernel for qlinear: inputs (x as [M, K], W packed, folded bias) → int32 [M, n]."""
    from tvm import s_tir, te, tirx

    k = int(x_shape[-1])
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    kp, np_ = _ceil(k, 4), _ceil(n, 16)
    tdt = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder((m, k), tdt, name="X")
    s = 128 if x_dtype == "i8" else 0

    def a_fn(i: Any, kk: Any) -> Any:
        return tirx.if_then_else(kk < k, (X[i, kk].astype("int32") + s).astype("uint8"), tirx.const(0, "uint8"))

    func = _gemm_func(m, kp, np_, [X], a_fn, (m, n), lambda C, b, idx: C[idx[0], idx[1]] + b[idx[1]], name)
    sch = s_tir.Schedule(func)
    sch.parallel(sch.get_loops(sch.get_sblock("A"))[0])
    return sch.mod["main"]


def conv_channels(c: int, kh: int, kw: int) -> int:
    """Input channels padded so that the im2col K = Cp·KH·KW is a multiple of 4 (padded channels meet zero
    weights), which keeps every im2col index free of bounds checks."""
    cp = c
    while (cp * kh * kw) % 4:
        cp += 1
    return cp


def pack_conv_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """`pack_weight` for a conv weight [O, C, KH, KW]: channels zero-padded to `conv_channels` first."""
    o, c, kh, kw = w.shape
    wc = np.zeros((o, conv_channels(c, kh, kw), kh, kw), np.int8)
    wc[:, :c] = w
    return pack_weight(wc.reshape(o, -1), x_dtype, x_zero_point, bias)


def qconv2d_kernel(x_shape: tuple[int, ...], x_dtype: str, w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   stride: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int], zx: int,
                   name: str = "qconv2d_vnni") -> Any:
    """VNNI kernel for a groups=1 NCHW qconv2d (im2col + GEMM): inputs (x, W from `pack_conv_weight`, folded
    bias) → int32 NCHW. `padding` is (top, left, bottom, right)."""
    from tvm import s_tir, te, tirx

    b_, c, h, w = (int(d) for d in x_shape)
    o, _, kh, kw = (int(d) for d in w_shape)
    _, _, oh, ow = (int(d) for d in out_shape)
    cp = conv_channels(c, kh, kw)
    kp, np_, m = cp * kh * kw, _ceil(o, 16), b_ * oh * ow
    tdt = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder((b_, c, h, w), tdt, name="X")
    s = 128 if x_dtype == "i8" else 0
    pad_val = int(zx) + s  # the real value 0 in the shifted domain
    if not 0 <= pad_val <= 255:
        raise BackendError(f"int8 template: zero point {zx} out of range for {x_dtype}")
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    hp, wp = h + pt + pb, w + pl + pr
    # Shifted, padded input: a cheap pass so that the im2col gather below has no conditions.
    Xp = te.compute((b_, cp, hp, wp), lambda n, ci, y, x: tirx.if_then_else(
        tirx.all(ci < c, y >= pt, y < pt + h, x >= pl, x < pl + w),
        (X[n, tirx.min(ci, c - 1), y - pt, x - pl].astype("int32") + s).astype("uint8"),
        tirx.const(pad_val, "uint8")), name="Xp")

    def a_fn(i: Any, kk: Any) -> Any:
        bi, rem = i // (oh * ow), i % (oh * ow)
        y, x = rem // ow, rem % ow
        ci, r = kk // (kh * kw), kk % (kh * kw)
        return Xp[bi, ci, y * sh + (r // kw) * dh, x * sw + (r % kw) * dw]

    def out_fn(C: Any, bias: Any, idx: Any) -> Any:
        bi, oc, y, x = idx
        return C[(bi * oh + y) * ow + x, oc] + bias[oc]

    func = _gemm_func(m, kp, np_, [X], a_fn, (b_, o, oh, ow), out_fn, name)
    sch = s_tir.Schedule(func)
    # Split the im2col loops by the (B, OH, OW) × (Cp, KH, KW) factors: the index div/mod then simplify away.
    blk = sch.get_sblock("A")
    i, kk = sch.get_loops(blk)
    sch.split(i, [b_ * oh, ow])
    sch.split(kk, [cp, kh, kw])
    xp = sch.get_sblock("Xp")
    sch.parallel(sch.fuse(*sch.get_loops(xp)[:2]))
    return sch.mod["main"]


def enabled() -> bool:
    """The template is on when this CPU has AVX-512 VNNI, unless QCC_INT8_VNNI=0 (default-on switch).

    The kernels are compiled for the host's LLVM target (host.target_dict); a build for a CPU without VNNI must
    set QCC_INT8_VNNI=0."""
    import os

    from qcc.backends.tvm.host import cpu_flags

    if os.environ.get("QCC_INT8_VNNI", "1") == "0":
        return False
    return "avx512_vnni" in cpu_flags()


def _const(expr: Any) -> np.ndarray | None:
    from tvm.ir.expr import Constant

    return expr.value.numpy() if isinstance(expr, Constant) else None


def try_lower(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Lower a qlinear / qconv2d node through the VNNI template and return its Relax value, or None when the
    template does not apply (then the caller uses the generic lowering): non-CPU device, no VNNI, weights that
    are not constant int8 with zero point 0, group-wise scales, grouped convolution, i16 activations."""
    from tvm import relax

    a = node.attrs
    x_t, w_t = node.inputs[0], node.inputs[1]
    if ctx.device != "cpu" or ctx.float16 or not enabled():
        return None
    if x_t.dtype not in ("i8", "u8") or w_t.dtype not in ("i8", "i4") or int(a["w_zero_point"]) != 0:
        return None
    w = _const(args[1])
    bias = _const(args[2]) if len(args) > 2 else None
    if w is None or (len(args) > 2 and bias is None):
        return None
    zx = int(a["x_zero_point"])
    try:
        if node.op == "qlinear":
            if len(args) > 3 or a.get("group_size") is not None:
                return None
            n, k = w.shape
            m = int(np.prod(x_t.shape[:-1], dtype=np.int64))
            wp, bp = pack_weight(w.astype(np.int8), x_t.dtype, zx, bias)
            func = qlinear_kernel((m, k), x_t.dtype, n, zx)
            x = ctx.bb.emit(relax.op.reshape(args[0], (m, k))) if len(x_t.shape) != 2 else args[0]
            out_shape: tuple[int, ...] = (m, n)
        elif node.op == "qconv2d":
            if int(a["groups"]) != 1:
                return None
            wp, bp = pack_conv_weight(w.astype(np.int8), x_t.dtype, zx, bias)
            out_shape = tuple(int(d) for d in node.outputs[0].shape)
            func = qconv2d_kernel(x_t.shape, x_t.dtype, w.shape, out_shape, tuple(a["stride"]),
                                  tuple(a["padding"]), tuple(a["dilation"]), zx)
            x = args[0]
        else:
            return None
    except BackendError:
        return None
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": [node.op]})
    gv = ctx.bb.add_func(func, f"{node.op}_vnni")
    var = ctx.bb.emit(relax.call_tir(gv, [x, relax.const(wp, "int8"), relax.const(bp, "int32")],
                                     relax.TensorType(out_shape, "int32")))
    ctx.kernel_ops.setdefault(gv.name_hint, node.op)
    if out_shape != tuple(node.outputs[0].shape):
        var = ctx.bb.emit(relax.op.reshape(var, tuple(int(d) for d in node.outputs[0].shape)))
    return var
