"""AVX-512 VNNI int8 GEMM template for the integer ops `qlinear` and `qconv2d` (+ a fused `requantize`).

Each op becomes one kernel. Per register tile of R output rows × JB·16 channels: the tile's activation rows are
gathered as uint8 (the flattened input, or for a convolution its im2col rows, read as contiguous channel runs
from a shifted, padded, channels-last copy of the input), a GEMM tensorized with `vpdpbusd` (u8 × s8 → s32,
16 lanes × 4 bytes) keeps the R·JB accumulators in zmm registers over the whole K loop against constant weights
packed [Np/16, Kp/4, 16, 4], and the epilogue adds the folded int32 bias and either writes the int32
accumulator (docs/ops.md) or applies a fused `requantize` (dyadic scale, zero point, clamp, cast) so that only
the 8-bit result reaches memory. Convolutions write NHWC ([B·OH·OW, O]); int8_fuse.py keeps that layout between
template convolutions and gives every other consumer the NCHW view.

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

from dataclasses import dataclass
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
    # Importing tensor_intrin directly costs minutes in a process that has torch loaded (inspect.stack per
    # TVMScript function); the preload patches that away.
    from qcc.backends.tvm.schedules import preload_tensor_intrinsics

    preload_tensor_intrinsics()
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


def _tile(m: int, np_: int) -> tuple[int, int, int]:
    """(rows R, 16-column blocks JB, padded rows Mp) of the register tile: R × JB accumulators of 16 int32 lanes
    (≤ 24 of the 32 zmm registers, leaving room for JB weight vectors and the broadcast activation)."""
    jb = next(b for b in (4, 3, 2, 1) if (np_ // 16) % b == 0)
    rows = 6 if jb == 4 else 8
    return rows, jb, _ceil(m, rows)


def _gemm_func(m: int, kp: int, np_: int, inputs: list[Any], a_fn: Any, out_shape: tuple[int, ...],
               out_fn: Any, name: str, extras: tuple[Any, ...] = ()) -> Any:
    """Build and schedule the PrimFunc: A = a_fn(i, k) (uint8, rows padded to the tile), C = A·Wᵀ via VNNI,
    out = out_fn(C, bias, idx) over `out_shape` [m, n].

    Per output tile of R rows × JB·16 columns the accumulators stay in registers across the whole K loop (one
    64-byte weight load per 16 columns and K step feeds R vpdpbusd), the tile's activation rows are gathered
    right before it (no materialised im2col matrix) and the epilogue (bias, requantize, clamp, cast) runs on the
    tile while it is hot: the int32 accumulator never reaches memory."""
    from tvm import s_tir, te

    _register_intrin()
    rows, jb, mp = _tile(m, np_)
    W = te.placeholder((np_, kp), "int8", name="W")  # transform_layout below packs it [Np/16, Kp/4, 16, 4]
    bias = te.placeholder((np_,), "int32", name="bias")
    A = te.compute((mp, kp), a_fn, name="A")
    k = te.reduce_axis((0, kp), name="k")
    C = te.compute((mp, np_), lambda i, j: te.sum(A[i, k].astype("int32") * W[j, k].astype("int32"), axis=k),
                   name="C")
    out = te.compute(out_shape, lambda *idx: out_fn(C, bias, idx), name="out")
    func = te.create_prim_func([*inputs, W, bias, *extras, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("C")
    sch.transform_layout(blk, ("read", 1), lambda n, kk: [n // 16, kk // 4, n % 16, kk % 4])
    i, j, kk = sch.get_loops(blk)
    io, ii = sch.split(i, [None, rows])
    jo, jj, ji = sch.split(j, [None, jb, 16])
    ko, ki = sch.split(kk, [None, 4])
    sch.reorder(io, jo, ko, ii, jj, ji, ki)
    sch.compute_at(sch.get_sblock("A"), io)
    sch.reverse_compute_at(sch.get_sblock("out"), jo)
    sch.parallel(io)  # before tensorize: the block becomes opaque after
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, INTRIN)
    sch.set_scope(init, 0, "local")  # compacted to the R × JB·16 tile: registers after unrolling
    sch.unroll(ii)
    sch.unroll(jj)
    o_loops = sch.get_loops(sch.get_sblock("out"))
    if out_shape[-1] % (jb * 16) == 0:  # whole tiles: no bound predicate in the way of the vectorizer
        sch.vectorize(sch.split(o_loops[-1], [None, 16])[1])
    return sch


@dataclass(frozen=True)
class Requant:
    """A `requantize` fused into the GEMM epilogue (docs/ops.md semantics): multiplier / shift per output
    channel (length n) or per tensor (length 1), the zero points, the clamp range and the IR output dtype."""

    multiplier: np.ndarray
    shift: np.ndarray
    input_zero_point: int
    zero_point: int
    dtype: str
    lo: int | None = None
    hi: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.multiplier.size > 1 or self.shift.size > 1

    def arrays(self, np_: int) -> list[np.ndarray]:
        """The kernel's extra constant inputs: multiplier (int64) and shift (int32), padded to Np."""
        if not self.per_channel:
            return []
        n = max(self.multiplier.size, self.shift.size)
        b, c = np.zeros(np_, np.int64), np.zeros(np_, np.int32)
        b[:n] = np.broadcast_to(self.multiplier.reshape(-1), (n,))
        c[:n] = np.broadcast_to(self.shift.reshape(-1), (n,))
        return [b, c]


def _epilogue(rq: Requant | None, np_: int) -> tuple[tuple[Any, ...], Any, str]:
    """Placeholders, a function (acc32, j) -> output value, and the output dtype of an epilogue."""
    from tvm import te

    if rq is None:
        return (), (lambda acc, j: acc), "int32"
    from qcc.backends.tvm.lower_base import TVM_DTYPES
    from qcc.backends.tvm.lower_quant import I64, clamp_to, dyadic_scale, i64

    dt = TVM_DTYPES[rq.dtype]
    extras: tuple[Any, ...] = ()
    if rq.per_channel:
        extras = (te.placeholder((np_,), "int64", name="rq_mult"), te.placeholder((np_,), "int32", name="rq_shift"))

    def f(acc: Any, j: Any) -> Any:
        if extras:
            b, c = extras[0][j], extras[1][j].astype(I64)
        else:
            b, c = int(rq.multiplier.reshape(-1)[0]), int(rq.shift.reshape(-1)[0])
        y = dyadic_scale(i64(acc) - i64(int(rq.input_zero_point)), b, c) + i64(int(rq.zero_point))
        return clamp_to(y, rq.dtype, dt, rq.lo, rq.hi)

    return extras, f, dt


def qlinear_kernel(x_shape: tuple[int, ...], x_dtype: str, n: int, zx: int, name: str = "qlinear_vnni",
                   rq: Requant | None = None) -> Any:
    """VNNI kernel for qlinear: inputs (x as [M, K], W packed, folded bias[, requantize multiplier, shift]) →
    [M, n]: the int32 accumulator, or with `rq` the requantized tensor."""
    from tvm import te, tirx

    k = int(x_shape[-1])
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    kp, np_ = _ceil(k, 4), _ceil(n, 16)
    tdt = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder((m, k), tdt, name="X")
    s = 128 if x_dtype == "i8" else 0
    extras, epi, _ = _epilogue(rq, np_)

    def a_fn(i: Any, kk: Any) -> Any:
        v = (X[tirx.min(i, m - 1), tirx.min(kk, k - 1)].astype("int32") + s).astype("uint8")
        return v if kp == k else tirx.if_then_else(kk < k, v, tirx.const(0, "uint8"))

    sch = _gemm_func(m, kp, np_, [X], a_fn, (m, n), lambda C, b, idx: epi(C[idx[0], idx[1]] + b[idx[1]], idx[1]),
                     name, extras)
    a_loops = sch.get_loops(sch.get_sblock("A"))
    if kp % 16 == 0:
        sch.vectorize(sch.split(a_loops[-1], [None, 16])[1])
    return sch.mod["main"]


def conv_channels(c: int) -> int:
    """Input channels padded to a multiple of 4: the im2col K runs (KH, KW, Cp), so every 4-byte VNNI operand
    is 4 channels of one pixel (padded channels meet zero weights)."""
    return _ceil(c, 4)


def pack_conv_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """`pack_weight` for a conv weight [O, C, KH, KW]: reordered to [O, KH, KW, Cp] (channels zero-padded to
    `conv_channels`) first."""
    o, c, kh, kw = w.shape
    wc = np.zeros((o, kh, kw, conv_channels(c)), np.int8)
    wc[..., :c] = w.transpose(0, 2, 3, 1)
    return pack_weight(wc.reshape(o, -1), x_dtype, x_zero_point, bias)


def qconv2d_kernel(x_shape: tuple[int, ...], x_dtype: str, w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   stride: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int], zx: int,
                   name: str = "qconv2d_vnni", rq: Requant | None = None, x_layout: str = "NCHW") -> Any:
    """VNNI kernel for a groups=1 qconv2d: inputs (x in `x_layout` NCHW or NHWC, W from `pack_conv_weight`,
    folded bias[, requantize multiplier, shift]) → [B·OH·OW, O] (NHWC): the int32 accumulator or, with `rq`, the
    requantized tensor. `out_shape` is the op's NCHW shape, `padding` (top, left, bottom, right).

    The input is shifted into u8 and padded once, channels last (Xp [B, Hp, Wp, Cp]); each row tile then gathers
    its im2col rows from Xp as contiguous channel runs right before its GEMM."""
    from tvm import te, tirx

    if x_layout == "NHWC":
        b_, h, w, c = (int(d) for d in x_shape)
    else:
        b_, c, h, w = (int(d) for d in x_shape)
    o, _, kh, kw = (int(d) for d in w_shape)
    _, _, oh, ow = (int(d) for d in out_shape)
    cp = conv_channels(c)
    kp, np_, m = cp * kh * kw, _ceil(o, 16), b_ * oh * ow
    tdt = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder(tuple(int(d) for d in x_shape), tdt, name="X")
    s = 128 if x_dtype == "i8" else 0
    pad_val = int(zx) + s  # the real value 0 in the shifted domain
    if not 0 <= pad_val <= 255:
        raise BackendError(f"int8 template: zero point {zx} out of range for {x_dtype}")
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = padding
    hp, wp = h + pt + pb, w + pl + pr

    def load(n: Any, ci: Any, y: Any, x: Any) -> Any:
        return X[n, y, x, ci] if x_layout == "NHWC" else X[n, ci, y, x]

    # Shifted, padded, channels-last input: a cheap pass so that the im2col gather below has no conditions.
    Xp = te.compute((b_, hp, wp, cp), lambda n, y, x, ci: tirx.if_then_else(
        tirx.all(ci < c, y >= pt, y < pt + h, x >= pl, x < pl + w),
        (load(n, tirx.min(ci, c - 1), y - pt, x - pl).astype("int32") + s).astype("uint8"),
        tirx.const(pad_val, "uint8")), name="Xp")
    extras, epi, _ = _epilogue(rq, np_)

    def a_fn(i: Any, kk: Any) -> Any:
        i = tirx.min(i, m - 1)  # rows padded to the register tile repeat the last one
        bi, rem = i // (oh * ow), i % (oh * ow)
        y, x = rem // ow, rem % ow
        r, q = kk // (kw * cp), kk % (kw * cp)
        return Xp[bi, y * sh + r * dh, x * sw + (q // cp) * dw, q % cp]

    def out_fn(C: Any, bias: Any, idx: Any) -> Any:
        i, oc = idx
        return epi(C[i, oc] + bias[oc], oc)

    sch = _gemm_func(m, kp, np_, [X], a_fn, (m, o), out_fn, name, extras)
    # Split the gather's K loop by the (KH, KW, Cp) factors: the index div/mod simplify away, the channel run
    # is a vector copy.
    _, _, ci = sch.split(sch.get_loops(sch.get_sblock("A"))[-1], [kh, kw, cp])
    if cp % 16 == 0:
        sch.vectorize(sch.split(ci, [None, 16])[1])
    elif cp <= 16:
        sch.vectorize(ci)
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
