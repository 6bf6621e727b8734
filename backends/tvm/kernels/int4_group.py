"""W4A8 VNNI `qlinear` with VS-Quant per-vector weight scales (`group_scale`, docs/ops.md): the packed int4 GEMM of
kernels/int4.py with a per-group epilogue inside the K loop.

The reference computes Σ_g gs[o, g] · Σ_{k ∈ g} (x_k − zx)·w[o, k] + bias in int64 and wraps it to int32. Here,
per output tile (R rows × JB·16 channels) and group g, the W4 intrinsic accumulates the group's partial dot
product P_g = Σ_{k ∈ g} (x_k + s)·16·w in zmm registers (exact in int32, as in kernels/int4.py), and a second
register tile accumulates D += (P_g >> 4)·gs[g, o] in uint32, i.e. modulo 2^32 — as is the bias add after the
loop. Every step is a ring operation, so D + bias ≡ the reference modulo 2^32, and the int32 result (and the
requantize after it) is bit-exact. The u8 shift of i8 activations folds into the bias as
bias − (zx + s)·Σ_g gs[o, g]·Σ_{k ∈ g} w[o, k], also reduced modulo 2^32 (it cannot overflow anything).

The group scales travel in the same int32 constant as the bias ([Np + ng·Np]: the bias, then gs transposed to
[ng, Np] so that one group's scales for 16 channels are one vector load): the kernel then has the inputs of the
plain template (x, packed W, "bias"[, requantize multiplier, shift]) and int8_fuse emits it unchanged. Groups must
be a multiple of 8 (one packed byte pair per 8 reduction steps); otherwise `grouped` returns None (fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import int4 as K4
from qcc.backends.tvm.kernels.int8 import Requant, _ceil, _epilogue

TILES = ((2, 5), (3, 3), (1, 8))  # (JB, R): partial and total accumulators both live in registers: 2·R·JB ≤ 20


@dataclass(frozen=True)
class GroupedW4:
    """The kernel module interface of kernels/int4.py (`pack_weight`, `qlinear_kernel`) for one qlinear with
    integer group scales `gs` [n, K / group]."""

    gs: np.ndarray
    group: int

    def pack_weight(self, w: np.ndarray, x_dtype: str, x_zero_point: int, bias: np.ndarray | None) -> tuple[
            np.ndarray, np.ndarray]:
        """(packed int4 weights as kernels/int4.pack_weight, int32 [Np + ng·Np]: folded bias then gsᵀ)."""
        n, k = w.shape
        ng = k // self.group
        wp, _ = K4.pack_weight(w, x_dtype, x_zero_point, None)
        np_ = wp.shape[0] * 16
        s = 128 if x_dtype == "i8" else 0
        gs = self.gs.astype(np.int64).reshape(n, ng)
        corr = (w.astype(np.int64).reshape(n, ng, self.group).sum(-1) * gs).sum(-1)
        b = np.zeros(np_, np.int64)
        if bias is not None:
            b[:n] = bias.astype(np.int64)
        b[:n] -= (int(x_zero_point) + s) * corr
        g = np.zeros((ng, np_), np.int64)
        g[:, :n] = gs.T
        both = np.concatenate([b, g.reshape(-1)])
        return wp, (both & 0xFFFFFFFF).astype(np.uint32).view(np.int32)  # modulo 2^32 (module docstring)

    def channels(self, bp: np.ndarray) -> int:
        """Np, the output channels of the packed bias + scales constant `bp` (a fused requantize's arrays match)."""
        return len(bp) // (1 + self.gs.shape[1])

    def qlinear_kernel(self, x_shape: tuple[int, ...], x_dtype: str, n: int, zx: int,
                       name: str = "qlinear_vnni_w4_gs", rq: Requant | None = None) -> Any:
        """The grouped kernel: inputs (x as [M, K], W, bias+gs[, requantize multiplier, shift]) → [M, n]."""
        return _kernel(x_shape, x_dtype, n, self.group, name, rq)


def grouped(gs: np.ndarray | None, group: Any) -> GroupedW4 | None:
    """The grouped W4 kernels for constant group scales `gs` and a group size that is a multiple of 8, else None."""
    if gs is None or not isinstance(group, int) or group <= 0 or group % 8:
        return None
    return GroupedW4(np.asarray(gs), group)


def _kernel(x_shape: tuple[int, ...], x_dtype: str, n: int, group: int, name: str, rq: Requant | None) -> Any:
    from tvm import s_tir, te, tirx

    K4._register_intrin()
    k = int(x_shape[-1])
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    np_, ng, gb = _ceil(n, 16), k // group, group // 8
    jb, rows = next((b, r) for b, r in TILES if (np_ // 16) % b == 0)
    mp = _ceil(m, rows)
    X = te.placeholder((m, k), "int8" if x_dtype == "i8" else "uint8", name="X")
    s = 128 if x_dtype == "i8" else 0
    W = te.placeholder((np_ // 16, k // 8, 16, 4), "int8", name="W")
    BG = te.placeholder((np_ * (1 + ng),), "int32", name="bias")  # bias, then gs as [ng, Np]
    extras, epi, _ = _epilogue(rq, np_)
    A = te.compute((mp, k), lambda i, kk: (X[tirx.min(i, m - 1), kk].astype("int32") + s).astype("uint8"), name="A")
    kb = te.reduce_axis((0, gb), name="kb")
    h = te.reduce_axis((0, 2), name="h")
    kq = te.reduce_axis((0, 4), name="kq")
    # C[i, g, j]: 16 × group g's partial dot product (j innermost: the intrinsic's 16 lanes are contiguous)
    C = te.compute((mp, ng, np_), lambda i, g, j: te.sum(
        A[i, g * group + kb * 8 + h * 4 + kq].astype("int32") * K4._unpack16(W[j // 16, g * gb + kb, j % 16, kq], h),
        axis=[kb, h, kq]), name="C")
    gr = te.reduce_axis((0, ng), name="gr")
    D = te.compute((mp, np_), lambda i, j: te.sum(
        tirx.shift_right(C[i, gr, j], 4).astype("uint32") * BG[np_ + gr * np_ + j].astype("uint32"), axis=gr),
        name="D")
    out = te.compute((m, n), lambda i, j: epi((D[i, j] + BG[j].astype("uint32")).astype("int32"), j), name="out")
    func = te.create_prim_func([X, W, BG, *extras, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("C")
    i, g, j, kbl, hl, kql = sch.get_loops(blk)
    io, ii = sch.split(i, [None, rows])
    jo, jj, ji = sch.split(j, [None, jb, 16])
    sch.reorder(io, jo, g, kbl, ii, jj, ji, hl, kql)
    sch.compute_at(sch.get_sblock("A"), io)
    dblk = sch.get_sblock("D")
    sch.reverse_compute_at(dblk, g)  # each group's partial tile is folded into D right after its K loop
    sch.reverse_compute_at(sch.get_sblock("out"), jo)
    sch.parallel(io)
    init = sch.decompose_reduction(blk, kbl)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, K4.INTRIN)
    sch.set_scope(init, 0, "local")
    sch.set_scope(dblk, 0, "local")
    sch.unroll(ii)
    sch.unroll(jj)
    sch.vectorize(sch.split(sch.get_loops(dblk)[-1], [None, 16])[1])
    if k % 16 == 0:
        sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("A"))[-1], [None, 16])[1])
    return sch.mod["main"]
