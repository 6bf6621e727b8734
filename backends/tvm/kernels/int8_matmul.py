"""Integer `qmatmul` template for the CPU (attention Q·Kᵀ and P·V: both operands are activations).

int32 accumulation of the centered operands, a register tile of R rows × up to 64 columns kept in vector
registers across the K loop, batch × row tiles in parallel. Exactness: every product |(a − za)(b − zb)| is at
most amax·bmax (the operands' ranges), so when K·amax·bmax < 2^31 the int32 sum equals the reference's int64 sum
and its final int32 cast; the template declines otherwise (and for i16 operands or broadcast batches).

Inside a fuse-pass group (qmatmul + its requantize chain, and on CPU the reshape / transpose head split that
feeds it, see passes/fuse.py) the rule returns TE instead, and `schedule_fused` (registered for the "qmatmul"
anchor) schedules the fused kernel: with AVX-512 VNNI `vnni_acc_te` — u8 × s8 vpdpbusd with the +128 / −128
operand shifts corrected by run-time row / column sums — else `acc_te`, the int32 register tile above; the
requantize epilogue runs on each hot tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.ir.ops.quant import INT_RANGES

_DTYPES = {"i8": "int8", "u8": "uint8", "i4": "int8", "u4": "uint8"}


def _amax(dtype: str, zp: int) -> int:
    lo, hi = INT_RANGES[dtype]
    return max(abs(lo - zp), abs(hi - zp))


def fits_int32(a_dtype: str, za: int, b_dtype: str, zb: int, k: int) -> bool:
    """Whether Σ_k (a − za)(b − zb) can never leave int32."""
    return k * _amax(a_dtype, za) * _amax(b_dtype, zb) < 2**31


def qmatmul_kernel(bt: int, m: int, k: int, n: int, a_dtype: str, za: int, b_dtype: str, zb: int,
                   name: str = "qmatmul_int") -> Any:
    """PrimFunc (A [bt, m, k], B [bt, k, n]) → int32 [bt, m, n] = Σ_k (A − za)(B − zb)."""
    from tvm import s_tir, te

    A = te.placeholder((bt, m, k), _DTYPES[a_dtype], name="A")
    B = te.placeholder((bt, k, n), _DTYPES[b_dtype], name="B")
    r = te.reduce_axis((0, k), name="k")
    C = te.compute((bt, m, n), lambda b, i, j: te.sum(
        (A[b, i, r].astype("int32") - za) * (B[b, r, j].astype("int32") - zb), axis=r), name="C")
    func = te.create_prim_func([A, B, C]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("C")
    b, i, j, kk = sch.get_loops(blk)
    rows = next(x for x in (4, 3, 2, 1) if m % x == 0)
    width = next((w for w in (64, 48, 32, 16) if n % w == 0), n)
    io, ii = sch.split(i, [None, rows])
    jo, jj = sch.split(j, [None, width])
    sch.reorder(b, io, jo, kk, ii, jj)
    sch.parallel(sch.fuse(b, io))
    wb = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(wb, jo)
    sch.unroll(ii)
    if width % 16 == 0:
        sch.vectorize(jj)
        sch.vectorize(sch.get_loops(wb)[-1])
    init = sch.decompose_reduction(blk, kk)
    if width % 16 == 0:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


ACC_NAME = "qmatmul_acc"  # the reduction block of the composable form, found again by `schedule_fused`


def acc_te(a: Any, b: Any, za: int, zb: int) -> Any:
    """The int32 accumulation Σ_k (a − za)(b − zb) of TE tensors a [..., m, k], b [..., k, n] (same batch dims),
    as one reduction block named ACC_NAME (exact when `fits_int32` holds)."""
    from tvm import te

    k = a.shape[-1]
    r = te.reduce_axis((0, k), name="k")
    shape = tuple(a.shape[:-1]) + (b.shape[-1],)

    def body(*i: Any) -> Any:
        x = a[tuple(i[:-1]) + (r,)].astype("int32")
        y = b[tuple(i[:-2]) + (r, i[-1])].astype("int32")
        return te.sum((x - za if za else x) * (y - zb if zb else y), axis=r)

    return te.compute(shape, body, name=ACC_NAME)


VNNI_ACC = "qmatmul_vnni"  # the vpdpbusd reduction block of `vnni_acc_te`
_SIGNED = ("i8", "i4")


def _shifts(a_dtype: str, za: int, b_dtype: str, zb: int) -> tuple[int, int, int, int]:
    """(sa, sb, za', zb'): vpdpbusd multiplies u8 by s8, so A moves by sa (+128 when signed) into u8 and B by sb
    (−128 when unsigned) into s8; the zero points move with them (za' = za + sa, zb' = zb + sb)."""
    sa = 128 if a_dtype in _SIGNED else 0
    sb = 0 if b_dtype in _SIGNED else -128
    return sa, sb, za + sa, zb + sb


def vnni_applies(a_dtype: str, za: int, b_dtype: str, zb: int, k: int, n: int) -> bool:
    """Whether `vnni_acc_te` computes this qmatmul exactly in int32 (and the CPU has VNNI).

    With ã = a + sa ∈ [0, 255] and b̃ = b + sb ∈ [−128, 127]:
        Σ_k (a − za)(b − zb) = Σ ã·b̃ − zb'·Σ_k ã − za'·Σ_k b̃ + K·za'·zb',
    |Σ ã·b̃| ≤ K·255·128, |zb'·Σ ã| ≤ |zb'|·K·255, |za'·Σ b̃| ≤ |za'|·K·128. When those bounds and the constant
    sum below 2^31 every partial sum of the right-hand side is an int32 (no wrap-around at all), and the
    result is the exact value."""
    from qcc.backends.tvm.kernels import int8 as K

    isa = K.isa() if hasattr(K, "isa") else ("vnni" if K.enabled() else None)  # the build target's features
    if k % 4 or n % 16 or isa != "vnni":
        return False
    _, _, za2, zb2 = _shifts(a_dtype, za, b_dtype, zb)
    bound = k * 255 * 128 + abs(zb2) * k * 255 + abs(za2) * k * 128 + k * abs(za2 * zb2)
    return bound < 2**31


def vnni_acc_te(a: Any, b: Any, a_dtype: str, za: int, b_dtype: str, zb: int) -> Any:
    """Σ_k (a − za)(b − zb) of TE tensors a [..., m, k], b [..., k, n] by u8 × s8 → s32 dot products.

    Stages: ã (u8, "qmm_a") and b̃ packed [..., k/4, n, 4] (s8, "qmm_b": the vpdpbusd operand layout, 4
    consecutive k of one column in 4 bytes), the column sums of b̃ and row sums of ã where a zero point needs
    them, the reduction VNNI_ACC, and the correction (see `vnni_applies`), an elementwise stage that the fused
    group's epilogue absorbs. The two operand stages are written as reductions over a unit axis so that the
    fuse pass's inlining keeps them as buffers (vpdpbusd reads them whole)."""
    from tvm import te, tirx

    sa, sb, za2, zb2 = _shifts(a_dtype, za, b_dtype, zb)
    lead = tuple(a.shape[:-2])
    k, n = int(a.shape[-1]), b.shape[-1]

    def unit(name: str) -> Any:
        return te.reduce_axis((0, 1), name=name)

    ua, ub = unit("ua"), unit("ub")
    au = te.compute(a.shape, lambda *i: te.sum((a[tuple(i[:-1]) + (i[-1] + ua,)].astype("int32") + sa)
                                               .astype("uint8"), axis=ua), name="qmm_a")
    bp = te.compute(lead + (k // 4, n, 4), lambda *i: te.sum(
        (b[tuple(i[:-3]) + (i[-3] * 4 + i[-1] + ub, i[-2])].astype("int32") + sb).astype("int8"), axis=ub),
        name="qmm_b")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute(tuple(a.shape[:-1]) + (n,), lambda *i: te.sum(
        au[tuple(i[:-1]) + (r,)].astype("int32")
        * bp[tuple(i[:-2]) + (tirx.floordiv(r, 4), i[-1], tirx.floormod(r, 4))].astype("int32"), axis=r),
        name=VNNI_ACC)
    col = row = None
    if za2:
        rc = te.reduce_axis((0, k), name="kc")
        col = te.compute(lead + (n,), lambda *i: te.sum(b[tuple(i[:-1]) + (rc, i[-1])].astype("int32") + sb,
                                                        axis=rc), name="qmm_colsum")
    if zb2:
        rr = te.reduce_axis((0, k), name="kr")
        row = te.compute(tuple(a.shape[:-1]), lambda *i: te.sum(a[tuple(i) + (rr,)].astype("int32") + sa,
                                                                axis=rr), name="qmm_rowsum")

    def corrected(*i: Any) -> Any:
        # the sums are read before the accumulator: the kernel then computes them first (root order), which
        # lets the schedule move the epilogue into the accumulator's tile loop (all its producers visited)
        v = tirx.const(k * za2 * zb2, "int32")
        if row is not None:
            v = v - tirx.const(zb2, "int32") * row(*i[:-1])
        if col is not None:
            v = v - tirx.const(za2, "int32") * col(*(tuple(i[:-2]) + (i[-1],)))
        return v + acc(*i)

    return te.compute(acc.shape, corrected, name="qmm_corrected")


def try_lower(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Lower a qmatmul through the template, or return None (generic rule): non-CPU device, rank < 2 operands,
    broadcast batch dimensions, i16 operands, or a K for which int32 could overflow.

    Inside a group of the fuse pass (TE arguments) the result is `acc_te`, which the group's requantize epilogue
    chains onto; `schedule_fused` (registered for the "qmatmul" anchor) then tiles that fused kernel."""
    from tvm import relax, te

    a_t, b_t = node.inputs
    za, zb = int(node.attrs["a_zero_point"]), int(node.attrs["b_zero_point"])
    if ctx.device != "cpu" or ctx.float16:
        return None
    if a_t.dtype not in _DTYPES or b_t.dtype not in _DTYPES:
        return None
    if len(a_t.shape) < 2 or len(a_t.shape) != len(b_t.shape) or tuple(a_t.shape[:-2]) != tuple(b_t.shape[:-2]):
        return None
    m, k = (int(d) for d in a_t.shape[-2:])
    n = int(b_t.shape[-1])
    if not fits_int32(a_t.dtype, za, b_t.dtype, zb, k):
        return None
    if all(isinstance(x, te.Tensor) for x in args):
        if vnni_applies(a_t.dtype, za, b_t.dtype, zb, k, n):
            return vnni_acc_te(args[0], args[1], a_t.dtype, za, b_t.dtype, zb)
        return acc_te(args[0], args[1], za, zb)
    if not isinstance(ctx.bb, relax.BlockBuilder):
        return None
    bt = int(np.prod(a_t.shape[:-2], dtype=np.int64))
    func = qmatmul_kernel(bt, m, k, n, a_t.dtype, za, b_t.dtype, zb)
    func = func.without_attr("global_symbol").with_attrs({"op_pattern": 8, "qcc.ops": ["qmatmul"]})
    gv = ctx.bb.add_func(func, "qmatmul_int")
    x = ctx.bb.emit(relax.op.reshape(args[0], (bt, m, k))) if len(a_t.shape) != 3 else args[0]
    y = ctx.bb.emit(relax.op.reshape(args[1], (bt, k, n))) if len(b_t.shape) != 3 else args[1]
    var = ctx.bb.emit(relax.call_tir(gv, [x, y], relax.TensorType((bt, m, n), "int32")))
    ctx.kernel_ops.setdefault(gv.name_hint, "qmatmul")
    out = tuple(int(d) for d in node.outputs[0].shape)
    return var if out == (bt, m, n) else ctx.bb.emit(relax.op.reshape(var, out))


def _tile(m: int, n: int) -> tuple[int, int]:
    """Register tile: rows × width int32 accumulators (width a multiple of 16 lanes where n allows)."""
    rows = next(x for x in (4, 3, 2, 1) if m % x == 0)
    width = next((w for w in (64, 48, 32, 16) if n % w == 0), n)
    return rows, width


def schedule_fused(func: Any, target: Any) -> Any:
    """Schedule a fused kernel whose anchor is `acc_te`'s reduction (qmatmul + its requantize epilogue): the
    register tile of `qmatmul_kernel`, batch × row tiles in parallel, and the epilogue computed per tile from
    the tile's accumulators (a local buffer), vectorised. None (decline) for anything else."""
    if target.kind.name != "llvm":
        return None
    try:
        return _schedule_fused(func)
    except Exception:  # not the expected structure: the default CPU schedule takes it
        return None


def _has_block(sch: Any, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:
        return False


def _unmerge_heads(sch: Any, epi: Any, batch_dims: list[int], n: int) -> bool:
    """Give the epilogue block the accumulator's loop order (`batch_dims`: the accumulator's batch extents).
    With the head merge fused behind it (fuse pass: [..., H, m, n] written as [..., m, H·n]) its iteration
    space is re-indexed (..., head, row, column), so that an output tile maps onto one accumulator tile. False
    when the block matches neither form."""
    loops = sch.get_loops(epi)
    if len(loops) == len(batch_dims) + 2:
        return True
    if not batch_dims or len(loops) != len(batch_dims) + 1 or int(sch.get(loops[-1]).extent) != batch_dims[-1] * n:
        return False
    from tvm.tirx import IndexMap

    order = IndexMap.from_func(lambda *v: (*v[:-2], v[-1] // n, v[-2], v[-1] % n), ndim=len(loops))
    sch.transform_block_layout(epi, order)
    return True


def _schedule_vnni(sch: Any) -> Any:
    """`vnni_acc_te`'s kernel: batches in parallel (each packs its own b̃ once), per R × JB·16 register tile of
    the epilogue the vpdpbusd accumulators are computed right there and stay in zmm registers over K, ã is
    shifted per row tile, and the epilogue runs on the hot tile."""
    from qcc.backends.tvm.kernels import int8 as K

    K._register_intrin()
    blk = sch.get_sblock(VNNI_ACC)
    consumers = sch.get_consumers(blk)
    if len(consumers) != 1:
        return None
    epi = consumers[0]
    *batch, i, j, _ = sch.get_loops(blk)
    m, n = (int(sch.get(lp).extent) for lp in (i, j))
    if not _unmerge_heads(sch, epi, [int(sch.get(lp).extent) for lp in batch], n):
        return None
    *ebatch, ei, ej = sch.get_loops(epi)
    if len(ebatch) != len(batch):
        return None
    jb = next(x for x in (4, 3, 2, 1) if (n // 16) % x == 0)
    rows = next(r for r in ((6, 4, 3, 2, 1) if jb == 4 else (8, 6, 4, 3, 2, 1)) if m % r == 0)
    eio, eii = sch.split(ei, [None, rows])
    ejo, eji = sch.split(ej, [None, jb * 16])
    sch.reorder(*ebatch, eio, ejo, eii, eji)
    outer = (sch.fuse(*ebatch) if len(ebatch) > 1 else ebatch[0]) if ebatch else None
    # the accumulator tile is computed inside the epilogue's tile loop (all its consumers are there)
    sch.compute_at(blk, ejo)
    ii, jx, kk = sch.get_loops(blk)[-3:]
    jj, ji = sch.split(jx, [jb, 16])
    ko, ki = sch.split(kk, [None, 4])
    sch.reorder(ko, ii, jj, ji, ki)
    for name in ("qmm_b", "qmm_colsum"):
        if _has_block(sch, name) and outer is not None:
            sch.compute_at(sch.get_sblock(name), outer)
    for name in ("qmm_a", "qmm_rowsum"):
        if _has_block(sch, name):
            sch.compute_at(sch.get_sblock(name), eio)
    sch.parallel(outer if outer is not None else eio)  # before tensorize: the block becomes opaque after
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, K.INTRIN)
    sch.set_scope(init, 0, "local")  # compacted to the R × JB·16 tile: registers after unrolling
    sch.unroll(ii)
    sch.unroll(jj)
    sch.vectorize(sch.split(eji, [None, 16])[1])
    return sch.mod["main"]


def _schedule_fused(func: Any) -> Any:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if _has_block(sch, VNNI_ACC):
        return _schedule_vnni(sch)
    blk = sch.get_sblock(ACC_NAME)
    consumers = sch.get_consumers(blk)
    if len(consumers) > 1:
        return None
    *batch, i, j, kk = sch.get_loops(blk)
    m, n = (int(sch.get(lp).extent) for lp in (i, j))
    batch_dims = [int(sch.get(lp).extent) for lp in batch]
    rows, width = _tile(m, n)
    io, ii = sch.split(i, [None, rows])
    jo, jj = sch.split(j, [None, width])
    sch.reorder(*batch, io, jo, kk, ii, jj)
    sch.parallel(sch.fuse(*batch, io) if batch else io)
    if consumers:
        epi = consumers[0]
        if not _unmerge_heads(sch, epi, batch_dims, n):
            return None
        sch.reverse_compute_at(epi, jo)
        sch.set_scope(blk, 0, "local")
        eloops = sch.get_loops(epi)
        if width % 16 == 0:
            sch.vectorize(eloops[-1])
    sch.unroll(ii)
    if width % 16 == 0:
        sch.vectorize(jj)
    init = sch.decompose_reduction(blk, kk)
    if width % 16 == 0:
        sch.vectorize(sch.get_loops(init)[-1])
    return sch.mod["main"]


def _register() -> None:
    from qcc.backends.tvm.schedules import SCHEDULES, register_schedule

    if "qmatmul" not in SCHEDULES:
        register_schedule("qmatmul")(schedule_fused)


_register()
