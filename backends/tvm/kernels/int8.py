"""AVX-512 VNNI int8 GEMM template for the integer ops `qlinear` and `qconv2d` (+ a fused `requantize` and
`qadd`), with an exact AVX2 fallback.

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

Epilogue. The requantize is the reference's int64 formula; when every shift is ≥ 1 (all real models) only its
right-shift branch is emitted, `(x·b + 2^(c−1)) >> c`, the same value with fewer vector ops. A fused `qadd`
(`ResidualAdd`) takes the saturated requantize value and the residual read at the same [row, channel] and
applies qadd's int64 formula, so a ResNet block's add costs no kernel and no extra pass over memory.

Stem. An input whose channel count is not a multiple of 4 (RGB: C = 3) uses the window-run K layout
(`window_runs`): K runs (KH, ceil4(KW·C)) over contiguous pixel·channel bytes instead of (KH, KW, Cp), 168
instead of 196 for a 7×7 stem, with 7 gather runs per row instead of 49.

AVX2. `isa()` picks the instruction set from the build's target features (mattr). Without AVX-512 VNNI the
same template tensorizes an 8-lane × 2-byte step instead: the activation pair and the weights widened to int16
and multiplied with `vpmaddwd` (int16 × int16 → int32 pairs summed). That is exact: |x + s| ≤ 255 and
|w| ≤ 128 fit int16, each pair sum is at most 2·255·128 < 2^31. (`vpmaddubsw` would be faster but saturates its
int16 pair sums, 2·255·127 > 2^15 − 1, so it is NOT exact for u8 × s8.) Weights are packed [Np/8, Kp/2, 8, 2].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import int8_isa as _isa
from qcc.backends.tvm.kernels.int8_isa import (  # noqa: F401  (re-exported: int4, int8_matmul, measure use them)
    _ISA,
    INTRIN,
    INTRIN_AVX2,
    _register_intrin,
    _threads,
    enabled,
)
from qcc.errors import BackendError

MAX_K = 1 << 16  # |Σ (x+s)·w| ≤ K·255·128 < 2^31 for K ≤ 2^16


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def pack_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None,
                isa: str = "vnni") -> tuple[np.ndarray, np.ndarray]:
    """Pack int8 weights [N, K] to [Np/16, Kp/4, 16, 4] (zero padded; AVX2: [Np/8, Kp/2, 8, 2]) and fold the
    u8-shift correction into the int32 bias [Np]: bias − (zx + s)·Σ_k w. Raises BackendError when the folded
    bias does not fit int32."""
    n, k = w.shape
    if k > MAX_K:
        raise BackendError(f"int8 template: K={k} exceeds {MAX_K}; int32 accumulation could overflow")
    s = 128 if x_dtype == "i8" else 0
    np_, kp = _ceil(n, 16), _ceil(k, 4)
    wp = np.zeros((np_, kp), np.int8)
    wp[:n, :k] = w
    lanes, kstep, _ = _ISA[isa]
    packed = np.ascontiguousarray(wp.reshape(np_ // lanes, lanes, kp // kstep, kstep).transpose(0, 2, 1, 3))
    b = np.zeros(np_, np.int64)
    if bias is not None:
        b[:n] = bias.astype(np.int64)
    b[:n] -= (int(x_zero_point) + s) * w.astype(np.int64).sum(1)
    if b.min() < -(2**31) or b.max() >= 2**31:
        raise BackendError("int8 template: folded bias does not fit int32")
    return packed, b.astype(np.int32)


def _tile(m: int, np_: int, isa: str = "vnni") -> tuple[int, int, int]:
    """(rows R, column blocks JB, padded rows Mp) of the register tile: R × JB accumulators of 16 int32 lanes
    (≤ 24 of the 32 zmm registers, leaving room for JB weight vectors and the broadcast activation); AVX2:
    4 × 2 blocks of 8 lanes (8 of the 16 ymm registers, the rest for the widened operands)."""
    if isa == "avx2":
        return 4, 2, _ceil(m, 4)
    jb = next(b for b in (4, 3, 2, 1) if (np_ // 16) % b == 0)
    top = 6 if jb == 4 else 8
    # The row tiles are the parallel tasks: take the height (up to 2 below the register limit) whose busiest
    # thread computes the fewest rows, e.g. 5 for the 7×7 maps of a ResNet's last stage on 2 threads (10 tiles of
    # 5 rows, 25 per thread, instead of 9 tiles of 6: 30 on one thread).
    threads = _threads()

    def busiest(r: int) -> int:
        return -(-(_ceil(m, r) // r) // threads) * r

    best = min(busiest(r) for r in range(top, top - 3, -1))
    # taller tiles load fewer weights per row and pay their per-tile overhead less often: keep them unless a
    # lower one is clearly (> 3 %) better balanced
    rows = next(r for r in range(top, top - 3, -1) if busiest(r) <= 1.03 * best)
    return rows, jb, _ceil(m, rows)


def _gemm_func(m: int, kp: int, np_: int, inputs: list[Any], a_fn: Any, out_shape: tuple[int, ...],
               out_fn: Any, name: str, extras: tuple[Any, ...] = (), isa: str = "vnni") -> Any:
    """Build and schedule the PrimFunc: A = a_fn(i, k) (uint8, rows padded to the tile), C = A·Wᵀ via VNNI,
    out = out_fn(C, bias, idx) over `out_shape` [m, n].

    Per output tile of R rows × JB·16 columns the accumulators stay in registers across the whole K loop (one
    64-byte weight load per 16 columns and K step feeds R vpdpbusd), the tile's activation rows are gathered
    right before it (no materialised im2col matrix) and the epilogue (bias, requantize, clamp, cast) runs on the
    tile while it is hot: the int32 accumulator never reaches memory."""
    from tvm import s_tir, te

    _register_intrin()
    rows, jb, mp = _tile(m, np_, isa)
    lanes, kstep, intrin = _ISA[isa]
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
    sch.transform_layout(blk, ("read", 1), lambda n, kk: [n // lanes, kk // kstep, n % lanes, kk % kstep])
    i, j, kk = sch.get_loops(blk)
    io, ii = sch.split(i, [None, rows])
    jo, jj, ji = sch.split(j, [None, jb, lanes])
    ko, ki = sch.split(kk, [None, kstep])
    sch.reorder(io, jo, ko, ii, jj, ji, ki)
    return schedule_register_tile(sch, blk, (io, jo, ii, jj, ji), ko, intrin, out_shape[-1] % (jb * lanes) == 0)


def schedule_register_tile(sch: Any, blk: Any, loops: tuple[Any, ...], k_outer: Any, intrin: str,
                           whole_tiles: bool) -> Any:
    """The register-tile schedule shared by the int8 and int4 GEMMs, once the accumulator block `blk` ("C") is
    split into `loops` = (io, jo, ii, jj, ji) with the K loop `k_outer` between jo and ii: the tile's activation
    rows ("A") gathered per io, the epilogue ("out") run per jo tile, the accumulators initialised and kept in
    registers, `intrin` on the 16 lanes. `whole_tiles`: the output columns are whole tiles, so the epilogue
    vectorises without a bound predicate in the way."""
    io, jo, ii, jj, ji = loops
    sch.compute_at(sch.get_sblock("A"), io)
    sch.reverse_compute_at(sch.get_sblock("out"), jo)
    sch.parallel(io)  # before tensorize: the block becomes opaque after
    init = sch.decompose_reduction(blk, k_outer)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, intrin)
    sch.set_scope(init, 0, "local")  # compacted to the R × JB·16 tile: registers after unrolling
    sch.unroll(ii)
    sch.unroll(jj)
    if whole_tiles:
        sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("out"))[-1], [None, 16])[1])
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


@dataclass(frozen=True)
class ResidualAdd:
    """A `qadd` fused after the requantize epilogue of a convolution (docs/ops.md qadd): with y the requantized
    GEMM value (before its cast; it is already saturated to the requantize dtype, so the cast is exact) and r the
    residual tensor read at the same [row, channel] of the [M, N] output,
        out = clamp(round_shift((y − y_zero_point)·y_multiplier + (r − r_zero_point)·r_multiplier, shift)
                    + zero_point),
    all in int64 exactly like the reference (|y|, |r| < 2^8 and |multipliers| < 2^31: no overflow)."""

    y_multiplier: int
    y_zero_point: int
    r_multiplier: int
    r_zero_point: int
    shift: int
    zero_point: int
    dtype: str
    r_dtype: str
    lo: int | None = None
    hi: int | None = None


def _clamp64(x: Any, ir_dtype: str, lo: int | None, hi: int | None) -> Any:
    """Saturate an int64 value to an IR integer dtype's range intersected with [lo, hi] (no cast)."""
    from tvm import tirx

    from qcc.backends.tvm.lower_quant import I64, const
    from qcc.ir.ops.quant import INT_RANGES

    tlo, thi = INT_RANGES[ir_dtype]
    lo = tlo if lo is None else max(tlo, int(lo))
    hi = thi if hi is None else min(thi, int(hi))
    return tirx.min(tirx.max(x, const(lo, I64)), const(hi, I64))


def _epilogue(rq: Requant | None, np_: int, add: ResidualAdd | None = None,
              res_shape: tuple[int, int] | None = None) -> tuple[tuple[Any, ...], Any, str]:
    """Placeholders, a function (acc32, j[, i]) -> output value, and the output dtype of an epilogue. With `add`
    (which needs `rq`) the last placeholder is the [M, N] residual (`res_shape`) and the function needs the row i."""
    from tvm import te, tirx

    if rq is None:
        if add is not None:
            raise BackendError("int8 template: a fused qadd needs a fused requantize")
        return (), (lambda acc, j, i=None: acc), "int32"
    from qcc.backends.tvm.lower_base import TVM_DTYPES
    from qcc.backends.tvm.lower_quant import I64, clamp_to, dyadic_scale, i64, round_shift

    dt = TVM_DTYPES[rq.dtype if add is None else add.dtype]
    extras: tuple[Any, ...] = ()
    if rq.per_channel:
        extras = (te.placeholder((np_,), "int64", name="rq_mult"), te.placeholder((np_,), "int32", name="rq_shift"))
    if add is not None:
        if res_shape is None:
            raise BackendError("int8 template: a fused qadd needs the residual shape")
        extras += (te.placeholder(res_shape, TVM_DTYPES[add.r_dtype], name="residual"),)

    right_only = int(np.min(rq.shift)) >= 1 and int(np.max(rq.shift)) <= 62

    def f(acc: Any, j: Any, i: Any = None) -> Any:
        if rq.per_channel:
            b, c = extras[0][j], extras[1][j].astype(I64)
        else:
            b, c = int(rq.multiplier.reshape(-1)[0]), int(rq.shift.reshape(-1)[0])
        x = i64(acc) - i64(int(rq.input_zero_point))
        if right_only:  # every shift c ≥ 1: round_shift's right-shift branch alone, (x·b + 2^(c−1)) >> c
            x = x * i64(b)
            y = tirx.shift_right(x + tirx.shift_left(i64(1), i64(c) - i64(1)), i64(c)) + i64(int(rq.zero_point))
        else:
            y = dyadic_scale(x, b, c) + i64(int(rq.zero_point))
        if add is None:
            return clamp_to(y, rq.dtype, dt, rq.lo, rq.hi)
        y = _clamp64(y, rq.dtype, rq.lo, rq.hi)  # the requantize result, as the reference's qadd input
        s = (y - i64(add.y_zero_point)) * i64(add.y_multiplier) \
            + (i64(extras[-1][i, j]) - i64(add.r_zero_point)) * i64(add.r_multiplier)
        return clamp_to(round_shift(s, i64(add.shift)) + i64(add.zero_point), add.dtype, dt, add.lo, add.hi)

    return extras, f, dt


def qlinear_kernel(x_shape: tuple[int, ...], x_dtype: str, n: int, zx: int, name: str = "qlinear_vnni",
                   rq: Requant | None = None, isa: str = "vnni") -> Any:
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
                     name, extras, isa)
    a_loops = sch.get_loops(sch.get_sblock("A"))
    if kp % 16 == 0:
        sch.vectorize(sch.split(a_loops[-1], [None, 16])[1])
    return sch.mod["main"]


def conv_channels(c: int) -> int:
    """Input channels padded to a multiple of 4: the im2col K runs (KH, KW, Cp), so every 4-byte VNNI operand
    is 4 channels of one pixel (padded channels meet zero weights)."""
    return _ceil(c, 4)


def window_runs(c: int, kw: int, dilation_w: int) -> int | None:
    """The run length L of the "window-run" K layout, or None for the (KH, KW, Cp) layout.

    With C not a multiple of 4 (an RGB stem: C = 3) and no horizontal dilation, the KW·C input bytes of one kernel
    row are contiguous in a channels-last input, so K runs (KH, L) with L = KW·C rounded up to 4 instead of
    (KH, KW, Cp): for a 7×7 stem K = 7·24 = 168 instead of 196, and the gather copies 7 runs per row instead of
    49. The L − KW·C bytes after each run belong to the next pixel and meet zero weights. For C % 4 == 0 both
    layouts coincide, so the plain one is kept."""
    return _ceil(kw * c, 4) if c % 4 != 0 and dilation_w == 1 else None


def pack_conv_weight(w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None,
                     dilation: tuple[int, int] = (1, 1), isa: str = "vnni") -> tuple[np.ndarray, np.ndarray]:
    """`pack_weight` for a conv weight [O, C, KH, KW]: reordered to [O, KH, KW, Cp] (channels zero-padded to
    `conv_channels`) first, or to [O, KH, L] in the window-run layout (`window_runs`, which `dilation` decides
    together with the kernel)."""
    o, c, kh, kw = w.shape
    run = window_runs(c, kw, int(dilation[1]))
    if run is not None:
        wr = np.zeros((o, kh, run), np.int8)
        wr[..., :kw * c] = w.transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
        return pack_weight(wr.reshape(o, -1), x_dtype, x_zero_point, bias, isa)
    wc = np.zeros((o, kh, kw, conv_channels(c)), np.int8)
    wc[..., :c] = w.transpose(0, 2, 3, 1)
    return pack_weight(wc.reshape(o, -1), x_dtype, x_zero_point, bias, isa)


def qconv2d_kernel(x_shape: tuple[int, ...], x_dtype: str, w_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   stride: tuple[int, int], padding: tuple[int, int, int, int], dilation: tuple[int, int], zx: int,
                   name: str = "qconv2d_vnni", rq: Requant | None = None, x_layout: str = "NCHW",
                   add: ResidualAdd | None = None, isa: str = "vnni") -> Any:
    """VNNI kernel for a groups=1 qconv2d: inputs (x in `x_layout` NCHW or NHWC, W from `pack_conv_weight`,
    folded bias[, requantize multiplier, shift]) → [B·OH·OW, O] (NHWC): the int32 accumulator or, with `rq`, the
    requantized tensor. `out_shape` is the op's NCHW shape, `padding` (top, left, bottom, right). With `add` a
    `qadd` with a residual [B·OH·OW, O] tensor (the last input) follows the requantize in the epilogue.

    An NCHW input (or one with C % 4 != 0) is shifted into u8 and padded once, channels last (Xp [B, Hp, Wp, Cp],
    or [B, Hp, Wp'·C] in the window-run layout); an NHWC input with C % 4 == 0 is read in place. Each row tile
    gathers its im2col rows as contiguous channel runs right before its GEMM."""
    from tvm import te, tirx

    if x_layout == "NHWC":
        b_, h, w, c = (int(d) for d in x_shape)
    else:
        b_, c, h, w = (int(d) for d in x_shape)
    o, _, kh, kw = (int(d) for d in w_shape)
    _, _, oh, ow = (int(d) for d in out_shape)
    cp = conv_channels(c)
    (sh, sw), (dh, dw) = stride, dilation
    run = window_runs(c, kw, dw)
    kp, np_, m = (kh * run if run is not None else cp * kh * kw), _ceil(o, 16), b_ * oh * ow
    tdt = "int8" if x_dtype == "i8" else "uint8"
    X = te.placeholder(tuple(int(d) for d in x_shape), tdt, name="X")
    s = 128 if x_dtype == "i8" else 0
    pad_val = int(zx) + s  # the real value 0 in the shifted domain
    if not 0 <= pad_val <= 255:
        raise BackendError(f"int8 template: zero point {zx} out of range for {x_dtype}")
    pt, pl, pb, pr = padding
    hp, wp = h + pt + pb, w + pl + pr

    def load(n: Any, ci: Any, y: Any, x: Any) -> Any:
        return X[n, y, x, ci] if x_layout == "NHWC" else X[n, ci, y, x]

    def shifted(n: Any, y: Any, x: Any, ci: Any) -> Any:  # padded-input coordinates, real channel ci
        return tirx.if_then_else(
            tirx.all(ci < c, y >= pt, y < pt + h, x >= pl, x < pl + w),
            (load(n, tirx.min(ci, c - 1), tirx.min(tirx.max(y - pt, 0), h - 1),
                  tirx.min(tirx.max(x - pl, 0), w - 1)).astype("int32") + s).astype("uint8"),
            tirx.const(pad_val, "uint8"))

    extras, epi, _ = _epilogue(rq, np_, add, (m, o))

    if run is not None:
        # Window-run layout: Xp [B, Hp, Wp'·C] (pixels flattened with their channels, a few spare pixels on the
        # right so that the last run's L − KW·C overhang stays inside), a row's run r is
        # Xp[y·sh + r·dh, x·sw·C : x·sw·C + L].
        wpe = wp + -(-(run - kw * c) // c)
        Xp = te.compute((b_, hp, wpe * c), lambda n, y, q: shifted(n, y, q // c, q % c), name="Xp")

        def a_fn(i: Any, kk: Any) -> Any:
            i = tirx.min(i, m - 1)  # rows padded to the register tile repeat the last one
            bi, rem = i // (oh * ow), i % (oh * ow)
            y, x = rem // ow, rem % ow
            return Xp[bi, y * sh + (kk // run) * dh, x * (sw * c) + kk % run]
    else:
        # Shifted, padded, channels-last input: a cheap pass so that the im2col gather below has no conditions.
        # An NHWC input with whole 4-channel groups (every convolution inside the chain) needs no copy: the
        # gather reads it in place, each channel run either the input's (shifted) or, outside, the padding value
        # — one condition per run, and one parallel pass less per convolution.
        virtual = x_layout == "NHWC" and cp == c
        Xp = None if virtual else te.compute((b_, hp, wp, cp), lambda n, y, x, ci: shifted(n, y, x, ci), name="Xp")

        def a_fn(i: Any, kk: Any) -> Any:
            i = tirx.min(i, m - 1)  # rows padded to the register tile repeat the last one
            bi, rem = i // (oh * ow), i % (oh * ow)
            y, x = rem // ow, rem % ow
            r, q = kk // (kw * cp), kk % (kw * cp)
            yy, xx, ci = y * sh + r * dh, x * sw + (q // cp) * dw, q % cp
            return shifted(bi, yy, xx, ci) if Xp is None else Xp[bi, yy, xx, ci]

    def out_fn(C: Any, bias: Any, idx: Any) -> Any:
        i, oc = idx
        return epi(C[i, oc] + bias[oc], oc, i)

    sch = _gemm_func(m, kp, np_, [X], a_fn, (m, o), out_fn, name, extras, isa)
    # Split the gather's K loop by the (KH, KW, Cp) or (KH, L) factors: the index div/mod simplify away, the
    # channel run is a vector copy.
    if run is not None:
        _, ci = sch.split(sch.get_loops(sch.get_sblock("A"))[-1], [kh, run])
        if run <= 64:
            sch.vectorize(ci)
    else:
        _, _, ci = sch.split(sch.get_loops(sch.get_sblock("A"))[-1], [kh, kw, cp])
        if cp % 16 == 0:
            sch.vectorize(sch.split(ci, [None, 16])[1])
        elif cp <= 16:
            sch.vectorize(ci)
    if Xp is None:
        return sch.mod["main"]
    xp = sch.get_sblock("Xp")
    if run is not None:  # (pixel, channel) loops: the q // C, q % C of the flattened row simplify away
        sch.split(sch.get_loops(xp)[-1], [None, c])
    sch.parallel(sch.fuse(*sch.get_loops(xp)[:2]))
    return sch.mod["main"]


def isa() -> str | None:
    """The instruction set of the int8 template for the build in progress (`int8_isa.isa`)."""
    return _isa.isa()
