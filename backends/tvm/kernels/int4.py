"""AVX-512 VNNI W4A8 GEMM template: `qlinear` / `qconv2d` with int4 weights packed two per byte and unpacked in
registers (the int8 template of kernels/int8.py with a half-size weight operand).

Packing. The int8 template reads its weights as [Np/16, Kp/4, 16, 4] int8: one 64-byte `vpdpbusd` operand per
16 output channels and 4 reduction steps. Here two consecutive operands share one 64-byte vector: the packed
weight is [Np/16, Kp/8, 16, 4] bytes, byte (jb, t, j, q) holding w[16·jb + j, 8t + q] in its low nibble and
w[16·jb + j, 8t + 4 + q] in its high nibble. One aligned 64-byte load then yields two operands with no shuffle:

    high operand = b & 0xF0          (per byte: 16 · the high nibble, sign included: bit 7 is the nibble's sign)
    low operand  = (b << 4) & 0xF0   (a 16-bit shift; the mask drops the bits that crossed a byte boundary)

i.e. each operand byte is 16·w, an exact int8 (w ∈ [−8, 7] → 16·w ∈ [−128, 112]); AVX-512 has no byte shift:
LLVM emits one `vgf2p8affineqb` (or `vpsllw` + `vpandq`) for the low operand and one `vpandq` for the high one.
The kernel accumulates Σ (x + s)·16w with `vpdpbusd` and the epilogue shifts the accumulator right by 4, which is
exact: every product is at most 255·128 < 2^15 in magnitude as in the int8 template and K ≤ 2^16, so the 16×
accumulator never leaves int32 and is a multiple of 16.

Cost. The two unpack instructions per 64-byte load are shared by the R rows of the register tile (2 per 2·R
`vpdpbusd`), but they compete with `vpdpbusd` for the vector ALUs: on the Zen 4 host a compute-bound layer runs
~5-10% slower than the int8 template (the same kernel without the unpack runs at int8 speed), while the weights
read from memory, and the library, are half the size.

Exactness otherwise follows kernels/int8.py (u8 shift of i8 activations folded into the int32 bias, padding cells
hold zx + s, padded K / N columns meet zero weights). The reduction is padded to a multiple of 8 with zero
weights: a qlinear's K at its end; a convolution's im2col K by `conv_geometry` (window runs of KW·C bytes for an
RGB stem as in kernels/int8.py, else input channels padded to a multiple of 8 for an odd kernel area).
Per-vector (VS-Quant) group scales: kernels/int4_group.py (`grouped`), for group sizes that are a multiple of 8;
other group sizes fall back to the generic rule, which reads the i4 weights widened to int8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.backends.tvm.kernels.int8 import (  # noqa: F401
    MAX_K,
    Requant,
    ResidualAdd,
    _ceil,
    _epilogue,
    enabled,
    schedule_register_tile,
)
from qcc.errors import BackendError

INTRIN = "qcc_dot_16x8_vnni_i4"
ENV = "QCC_INT4_PACKED"  # "0": i4 weights widened to int8 and run by the int8 template (for comparisons)
_registered = False


def packed() -> bool:
    """Whether i4 weights use this template (default) rather than the int8 one with widened weights."""
    import os

    return os.environ.get(ENV, "1") != "0"


def grouped(gs: np.ndarray | None, group: Any) -> Any:
    """The kernels for a qlinear with VS-Quant group scales `gs` (kernels/int4_group.py), or None when the group
    size is not a multiple of 8 or the scales are not constant (the generic rule then runs it)."""
    from qcc.backends.tvm.kernels.int4_group import grouped as _grouped

    return _grouped(gs, group)


def _unpack16(w: Any, h: Any) -> Any:
    """16·(nibble h of the int8 byte w) as int32: ((w << (28 − 4h)) >> 24) & −16 (h = 0 low, 1 high). The
    tensor intrinsic's description spells the same expression; its implementation computes it with byte masks."""
    from tvm import tirx

    return tirx.bitwise_and(tirx.shift_right(tirx.shift_left(w.astype("int32"), 28 - h * 4), 24), -16)


def _register_intrin() -> None:
    """Register the W4 VNNI intrinsic: C[16] += Σ_{h<2, q<4} A[4h + q] · 16·nibble_h(B[j, q]) with two `vpdpbusd`
    on one 64-byte load of B (see the module docstring for the masks)."""
    global _registered
    if _registered:
        return
    from qcc.backends.tvm.schedules import preload_tensor_intrinsics

    preload_tensor_intrinsics()
    from tvm import s_tir
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8,), "uint8", offset_factor=1),  # type: ignore[valid-type]
             B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:16], A[0:8], B[0:16, 0:4])
            T.writes(C[0:16])
            for i, h, k in T.grid(16, 2, 4):
                with T.sblock("update"):
                    vi, vh, vk = T.axis.remap("SRR", [i, h, k])
                    C[vi] = C[vi] + T.cast(A[vh * 4 + vk], "int32") * T.bitwise_and(
                        T.shift_right(T.shift_left(T.cast(B[vi, vk], "int32"), 28 - vh * 4), 24), -16)

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((8,), "uint8", offset_factor=1),  # type: ignore[valid-type]
             B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:16], A[0:8], B[0:16, 0:4])
            T.writes(C[0:16])
            a_lo = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                                 dtype="uint8x64")
            a_hi = T.reinterpret(T.broadcast(T.reinterpret(A.vload([4], "uint8x4"), dtype="int32"), 16),
                                 dtype="uint8x64")
            b = B.vload([0, 0], dtype="int8x64")
            mask = T.broadcast(T.int8(-16), 64)
            w_lo = T.bitwise_and(T.shift_left(b, T.broadcast(T.int8(4), 64)), mask)
            w_hi = T.bitwise_and(b, mask)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                                        C.vload([0], dtype="int32x16"), a_lo, w_lo, dtype="int32x16"),
                a_hi, w_hi, dtype="int32x16")

    try:
        s_tir.TensorIntrin.register(INTRIN, desc, impl)
    except Exception:  # already registered by an earlier import in this process
        pass
    _registered = True


def pack_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Pack int4 weights [N, K] (values in [−8, 7], any integer container) two per byte into [Np/16, Kp/8, 16, 4]
    int8 (zero padded; layout in the module docstring) and fold the u8-shift correction into the int32 bias [Np]:
    bias − (zx + s)·Σ_k w. Raises BackendError for out-of-range weights, K > MAX_K or a bias that overflows."""
    n, k = w.shape
    if k > MAX_K:
        raise BackendError(f"int4 template: K={k} exceeds {MAX_K}; int32 accumulation could overflow")
    w64 = np.asarray(w).astype(np.int64)
    if w64.size and (w64.min() < -8 or w64.max() > 7):
        raise BackendError("int4 template: weights outside [-8, 7]")
    s = 128 if x_dtype == "i8" else 0
    np_, kp = _ceil(n, 16), _ceil(k, 8)
    wp = np.zeros((np_, kp), np.uint8)
    wp[:n, :k] = (w64 & 0xF).astype(np.uint8)
    blocks = wp.reshape(np_ // 16, 16, kp // 8, 2, 4)  # [jb, j, t, h, q]
    packed = (blocks[:, :, :, 0, :] | (blocks[:, :, :, 1, :] << 4)).transpose(0, 2, 1, 3)  # [jb, t, j, q]
    b = np.zeros(np_, np.int64)
    if bias is not None:
        b[:n] = bias.astype(np.int64)
    b[:n] -= (int(x_zero_point) + s) * w64.sum(1)
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise BackendError("int4 template: folded bias does not fit int32")
    return np.ascontiguousarray(packed).view(np.int8), b.astype(np.int32)


def unpack_weight(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """The inverse of `pack_weight` (for tests and inspection): int8 [n, k] weights."""
    b = packed.view(np.uint8).transpose(0, 2, 1, 3)  # [jb, j, t, q]
    lo = ((b & 0xF).astype(np.int16) ^ 8) - 8
    hi = ((b >> 4).astype(np.int16) ^ 8) - 8
    w = np.stack([lo, hi], axis=3)  # [jb, j, t, h, q]
    return w.reshape(b.shape[0] * 16, -1)[:n, :k].astype(np.int8)


def conv_geometry(c: int, kh: int, kw: int, dilation_w: int = 1) -> tuple[int, int, int | None]:
    """(Cp, KWp, L): the im2col K layout of a convolution, K a multiple of 8 and every 4-byte VNNI operand from
    one contiguous channels-last run.

    With C not a multiple of 4 (an RGB stem) and no horizontal dilation, the window-run layout of kernels/int8.py:
    K runs (KH, L), L = KW·C rounded up to 4 (to 8 when KH is odd), the bytes past KW·C belonging to the next
    pixel and meeting zero weights (7×7 RGB stem: K = 7·24). Otherwise (KH, KWp, Cp): Cp a multiple of 4, of 8 for
    an odd kernel area unless c ≤ 4, where one zero kernel column (KWp = KW + 1) costs less than doubling Cp."""
    if c % 4 and dilation_w == 1:
        return 0, kw, _ceil(kw * c, 4 if kh % 2 == 0 else 8)
    if (kh * kw) % 2 == 0:
        return _ceil(c, 4), kw, None
    return (4, kw + 1, None) if c <= 4 else (_ceil(c, 8), kw, None)


def pack_conv_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None,
                     dilation: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray]:
    """`pack_weight` for a conv weight [O, C, KH, KW], reordered first to the K layout of `conv_geometry`
    ([O, KH, L] window runs or [O, KH, KWp, Cp], zero padded; `dilation` decides together with the kernel)."""
    o, c, kh, kw = w.shape
    cp, kwp, run = conv_geometry(c, kh, kw, int(dilation[1]))
    if run is not None:
        wr = np.zeros((o, kh, run), np.int8)
        wr[..., :kw * c] = w.transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
        return pack_weight(wr.reshape(o, -1), x_dtype, x_zero_point, bias)
    wc = np.zeros((o, kh, kwp, cp), np.int8)
    wc[:, :, :kw, :c] = w.transpose(0, 2, 3, 1)
    return pack_weight(wc.reshape(o, -1), x_dtype, x_zero_point, bias)


TILES = ((2, 8), (3, 6), (1, 8))  # (16-column blocks JB, rows R): the first JB dividing Np/16 wins


def _tile(m: int, np_: int) -> tuple[int, int, int]:
    """(rows R, 16-column blocks JB, padded rows Mp) of the register tile. R·JB accumulators plus 2·JB unpacked
    weight vectors (low and high operands of each 64-byte load), the activation broadcasts and the two mask
    constants must fit the 32 zmm registers; each unpack is shared by R rows, so the tile is tall and narrow
    (8 × 2·16: no spills, 1 unpack per 8 `vpdpbusd`). R − 1 rows are used when they pad M less (M = 49, 196)."""
    jb, rows = next((b, r) for b, r in TILES if (np_ // 16) % b == 0)
    rows = min((rows, rows - 1), key=lambda r: (_ceil(m, r), -r))
    return rows, jb, _ceil(m, rows)


def _gemm_func(m: int, kp: int, np_: int, inputs: list[Any], a_fn: Any, out_shape: tuple[int, ...],
               out_fn: Any, name: str, extras: tuple[Any, ...] = ()) -> Any:
    """The scheduled PrimFunc: A = a_fn(i, k) (uint8, rows padded to the tile), C16 = A · (16·W)ᵀ with the W4
    intrinsic, out = out_fn(C16 >> 4 as a function (i, j), bias, idx) over `out_shape`. Same register tiling as
    kernels/int8.py: R × JB·16 accumulators stay in zmm registers over the whole K loop; each 64-byte weight load
    (8 reduction steps of 16 channels) is unpacked once and feeds 2·R `vpdpbusd`."""
    from tvm import s_tir, te, tirx

    _register_intrin()
    rows, jb, mp = _tile(m, np_)
    W = te.placeholder((np_ // 16, kp // 8, 16, 4), "int8", name="W")
    bias = te.placeholder((np_,), "int32", name="bias")
    A = te.compute((mp, kp), a_fn, name="A")
    kb = te.reduce_axis((0, kp // 8), name="kb")
    h = te.reduce_axis((0, 2), name="h")
    kq = te.reduce_axis((0, 4), name="kq")
    C = te.compute((mp, np_), lambda i, j: te.sum(
        A[i, kb * 8 + h * 4 + kq].astype("int32") * _unpack16(W[j // 16, kb, j % 16, kq], h), axis=[kb, h, kq]),
        name="C")

    def acc(i: Any, j: Any) -> Any:
        return tirx.shift_right(C[i, j], 4)  # exact: C holds 16 × the dot product (module docstring)

    out = te.compute(out_shape, lambda *idx: out_fn(acc, bias, idx), name="out")
    func = te.create_prim_func([*inputs, W, bias, *extras, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("C")
    i, j, kbl, hl, kql = sch.get_loops(blk)
    io, ii = sch.split(i, [None, rows])
    jo, jj, ji = sch.split(j, [None, jb, 16])
    sch.reorder(io, jo, kbl, ii, jj, ji, hl, kql)
    return schedule_register_tile(sch, blk, (io, jo, ii, jj, ji), kbl, INTRIN, out_shape[-1] % (jb * 16) == 0)


def qlinear_kernel(x_shape: tuple[int, ...], x_dtype: str, n: int, zx: int, name: str = "qlinear_vnni_w4",
                   rq: Requant | None = None) -> Any:
    """W4 VNNI kernel for qlinear: inputs (x as [M, K], W from `pack_weight`, folded bias[, requantize
    multiplier, shift]) → [M, n]: the int32 accumulator, or with `rq` the requantized tensor."""
    from tvm import te, tirx

    k = int(x_shape[-1])
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    kp, np_ = _ceil(k, 8), _ceil(n, 16)
    X = te.placeholder((m, k), "int8" if x_dtype == "i8" else "uint8", name="X")
    s = 128 if x_dtype == "i8" else 0
    extras, epi, _ = _epilogue(rq, np_)

    def a_fn(i: Any, kk: Any) -> Any:
        v = (X[tirx.min(i, m - 1), tirx.min(kk, k - 1)].astype("int32") + s).astype("uint8")
        return v if kp == k else tirx.if_then_else(kk < k, v, tirx.const(0, "uint8"))

    sch = _gemm_func(m, kp, np_, [X], a_fn, (m, n),
                     lambda acc, b, idx: epi(acc(idx[0], idx[1]) + b[idx[1]], idx[1]), name, extras)
    a_loops = sch.get_loops(sch.get_sblock("A"))
    if kp % 16 == 0:
        sch.vectorize(sch.split(a_loops[-1], [None, 16])[1])
    return sch.mod["main"]


def qconv2d_kernel(x_shape: tuple[int, ...], x_dtype: str, w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   stride: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int], zx: int,
                   name: str = "qconv2d_vnni_w4", rq: Requant | None = None, x_layout: str = "NCHW",
                   add: ResidualAdd | None = None) -> Any:
    """W4 VNNI kernel for a groups=1 qconv2d; arguments, output ([B·OH·OW, O], NHWC) and the fused requantize /
    `add` (a qadd with a residual [B·OH·OW, O], the last input) as `kernels.int8.qconv2d_kernel`, the weight from
    this module's `pack_conv_weight`."""
    from tvm import te, tirx

    if x_layout == "NHWC":
        b_, h, w, c = (int(d) for d in x_shape)
    else:
        b_, c, h, w = (int(d) for d in x_shape)
    o, _, kh, kw = (int(d) for d in w_shape)
    _, _, oh, ow = (int(d) for d in out_shape)
    (sh, sw), (dh, dw) = stride, dilation
    cp, kwp, run = conv_geometry(c, kh, kw, dw)
    kp, np_, m = (kh * run if run is not None else cp * kh * kwp), _ceil(o, 16), b_ * oh * ow
    X = te.placeholder(tuple(int(d) for d in x_shape), "int8" if x_dtype == "i8" else "uint8", name="X")
    s = 128 if x_dtype == "i8" else 0
    pad_val = int(zx) + s  # the real value 0 in the shifted domain
    if not 0 <= pad_val <= 255:
        raise BackendError(f"int4 template: zero point {zx} out of range for {x_dtype}")
    pt, pl, pb, pr = padding
    # a zero kernel column (KWp > KW) reads dw cells past the padded input: they hold the pad value
    hp, wp = h + pt + pb, max(w + pl + pr, (ow - 1) * sw + (kwp - 1) * dw + 1)

    def load(n: Any, ci: Any, y: Any, x: Any) -> Any:
        return X[n, y, x, ci] if x_layout == "NHWC" else X[n, ci, y, x]

    def shifted(n: Any, y: Any, x: Any, ci: Any) -> Any:  # padded-input coordinates, real channel ci
        return tirx.if_then_else(
            tirx.all(ci < c, y >= pt, y < pt + h, x >= pl, x < pl + w),
            (load(n, tirx.min(ci, c - 1), tirx.min(tirx.max(y - pt, 0), h - 1),
                  tirx.min(tirx.max(x - pl, 0), w - 1)).astype("int32") + s).astype("uint8"),
            tirx.const(pad_val, "uint8"))

    extras, epi, _ = _epilogue(rq, np_, add, (m, o)) if add is not None else _epilogue(rq, np_)

    def row(i: Any) -> tuple[Any, Any, Any]:
        i = tirx.min(i, m - 1)  # rows padded to the register tile repeat the last one
        bi, rem = i // (oh * ow), i % (oh * ow)
        return bi, rem // ow, rem % ow

    if run is not None:  # window runs: Xp [B, Hp, Wp'·C], spare pixels on the right for the last run's overhang
        wpe = wp + -(-(run - kw * c) // c)
        Xp = te.compute((b_, hp, wpe * c), lambda n, y, q: shifted(n, y, q // c, q % c), name="Xp")

        def a_fn(i: Any, kk: Any) -> Any:
            bi, y, x = row(i)
            return Xp[bi, y * sh + (kk // run) * dh, x * (sw * c) + kk % run]
    else:  # shifted, padded, channels-last input: the im2col gather below has no conditions
        Xp = te.compute((b_, hp, wp, cp), lambda n, y, x, ci: shifted(n, y, x, ci), name="Xp")

        def a_fn(i: Any, kk: Any) -> Any:
            bi, y, x = row(i)
            r, q = kk // (kwp * cp), kk % (kwp * cp)
            return Xp[bi, y * sh + r * dh, x * sw + (q // cp) * dw, q % cp]

    def out_fn(acc: Any, b: Any, idx: Any) -> Any:
        i, oc = idx
        v = acc(i, oc) + b[oc]
        return epi(v, oc, i) if add is not None else epi(v, oc)

    sch = _gemm_func(m, kp, np_, [X], a_fn, (m, o), out_fn, name, extras)
    # Split the gather's K loop by (KH, L) or (KH, KWp, Cp): the index div/mod simplify away, runs are vector copies.
    a_loop = sch.get_loops(sch.get_sblock("A"))[-1]
    if run is not None:
        _, ci = sch.split(a_loop, [kh, run])
        if run <= 64:
            sch.vectorize(ci)
    else:
        _, _, ci = sch.split(a_loop, [kh, kwp, cp])
        if cp % 16 == 0:
            sch.vectorize(sch.split(ci, [None, 16])[1])
        elif cp <= 16:
            sch.vectorize(ci)
    xp = sch.get_sblock("Xp")
    if run is not None:  # (pixel, channel) loops: the q // C, q % C of the flattened row simplify away
        sch.split(sch.get_loops(xp)[-1], [None, c])
    sch.parallel(sch.fuse(*sch.get_loops(xp)[:2]))
    return sch.mod["main"]
