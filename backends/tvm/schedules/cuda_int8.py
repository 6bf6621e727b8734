"""CUDA schedules for qcc's int8 GEMM kernels (`lower_cuda_int8`): `__dp4a` on sm_61+, tensor cores on sm_80+.

The kernels this module schedules have one reduction block named `GEMM_BLOCK`,

    C[(b,) i, j] = Σ_k A[(b,) i, k] · B[(b,) j, k]        A, B: int8 / uint8, C: int32 (uint32 for u8×u8)

whose extents are already padded to the tile sizes (`Tiles`), so no loop of the tensorized region needs a
predicate (`Schedule.tensorize` rejects predicated blocks). The producers of A and B (zero padding, im2col,
transposes, all injective) are inlined into the shared-memory fetches, and the epilogue that reads C (bias,
zero-point correction, the un-padding into the op's output shape) into the register write-back.

The dp4a schedule (after TVM's `DP4A_*` intrinsics of `tvm.s_tir.tensor_intrin.dot_product_common`, which the
cheat sheet §5.7 verified at the CUDA-source level):

    blockIdx.(z,) x, y  → a BM × BN tile of C (z: the batch)
    threadIdx.y, x      → a TM × TN register tile per thread (C in "local")
    per BK step of k    → A[BM, BK] and B[BN, BK] fetched cooperatively into "shared"
    innermost 4 of k    → one `__dp4a` (four int8 products summed into an int32, sm_61+)

The tensor-core schedule (`schedule_wmma`, sm_80+) tiles the same block into 16×16×16 WMMA fragments
(`wmma_*_s8` intrinsics of `tvm.s_tir.tensor_intrin.cuda`): warps of `WmmaTiles` per block, operands staged in
dynamic shared memory, the int32 accumulator written back through shared memory with the epilogue inlined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir, tirx

GEMM_BLOCK = "qcc_int8_gemm"
THREADS = (16, 16)  # threadIdx.y, threadIdx.x of every tile shape below


@dataclass(frozen=True)
class Tiles:
    """Block tile BM × BN × BK and per-thread register tile TM × TN (BM = 16·TM, BN = 16·TN)."""

    bm: int
    bn: int
    bk: int

    @property
    def tm(self) -> int:
        return self.bm // THREADS[0]

    @property
    def tn(self) -> int:
        return self.bn // THREADS[1]


def choose_tiles(m: int, n: int, k: int) -> Tiles:
    """Tiles for an M × N × K GEMM: 64-wide where the extent allows it, 16 for skinny operands (a linear layer
    on one sample has M = 1); BK = 32 for long reductions, else 16."""

    def side(extent: int) -> int:
        return 64 if extent >= 64 else 32 if extent >= 32 else 16

    return Tiles(side(m), side(n), 32 if k >= 128 else 16)


def round_up(x: int, multiple: int) -> int:
    return -(-int(x) // multiple) * multiple


def cuda_arch(target: Any) -> int | None:
    """The SM version of a CUDA tvm Target (`sm_80` → 80), None for other targets."""
    if target is None or target.kind.name != "cuda":
        return None
    arch = str(target.attrs.get("arch", "")) if "arch" in target.attrs else ""
    digits = "".join(c for c in arch.removeprefix("sm_") if c.isdigit())
    return int(digits) if digits else None


def has_dp4a(target: Any) -> bool:
    """Whether the target's GPUs have `__dp4a` (Pascal sm_61 and later)."""
    arch = cuda_arch(target)
    return arch is not None and arch >= 61


def dp4a_intrin(a_dtype: str, b_dtype: str) -> str:
    """The name of TVM's dp4a tensor intrinsic for these operand dtypes (registers them on first use)."""
    from qcc.backends.tvm.schedules import preload_tensor_intrinsics

    preload_tensor_intrinsics()
    from tvm.s_tir.tensor_intrin import dot_product_common as dp

    names = {("int8", "int8"): dp.DP4A_S8S8S32_INTRIN, ("uint8", "int8"): dp.DP4A_U8S8S32_INTRIN,
             ("int8", "uint8"): dp.DP4A_S8U8S32_INTRIN, ("uint8", "uint8"): dp.DP4A_U8U8U32_INTRIN}
    return names[(a_dtype, b_dtype)]


def _producers_inlined(sch: s_tir.Schedule, block: Any) -> None:
    """Inline every injective producer of `block` (recursively), so the fetch computes the padding itself."""
    for producer in sch.get_producers(block):
        _producers_inlined(sch, producer)
        sch.compute_inline(producer)


def _cooperative_fetch(sch: s_tir.Schedule, block: Any, at: Any, vector: int) -> None:
    sch.compute_at(block, at)
    loops = sch.get_loops(block)[-2:]  # the tile rows and the BK columns
    fused = sch.fuse(*loops)
    factors = [None, THREADS[0], THREADS[1]] + ([vector] if vector > 1 else [])
    parts = sch.split(fused, factors)
    sch.bind(parts[1], "threadIdx.y")
    sch.bind(parts[2], "threadIdx.x")
    if vector > 1:
        sch.vectorize(parts[3])


def _flat_launch(sch: s_tir.Schedule, block: Any) -> None:
    fused = sch.fuse(*sch.get_loops(block))
    bx, tx = sch.split(fused, [None, THREADS[0] * THREADS[1]])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def schedule_dp4a(func: tirx.PrimFunc, tiles: Tiles, a_dtype: str, b_dtype: str,
                  vector_b: bool = False) -> tirx.PrimFunc:
    """Schedule the GEMM kernel `func` (see the module docstring) with `__dp4a`; returns the scheduled function.

    `vector_b`: B is a plain buffer read in order (a packed constant weight), so its fetch uses 4-byte loads."""
    sch = s_tir.Schedule(func)
    gemm = sch.get_sblock(GEMM_BLOCK)
    loops = sch.get_loops(gemm)
    batch, (i, j, k) = loops[:-3], loops[-3:]
    bi, ti, ii = sch.split(i, [None, THREADS[0], tiles.tm])
    bj, tj, jj = sch.split(j, [None, THREADS[1], tiles.tn])
    ko, kt, ki = sch.split(k, [None, tiles.bk // 4, 4])
    sch.reorder(*batch, bi, bj, ti, tj, ko, kt, ii, jj, ki)
    if batch:
        sch.bind(sch.fuse(*batch) if len(batch) > 1 else batch[0], "blockIdx.z")
    sch.bind(bi, "blockIdx.x")  # rows (N·OH·OW for a convolution) can be many: x allows 2^31 − 1 blocks
    sch.bind(bj, "blockIdx.y")
    sch.bind(ti, "threadIdx.y")
    sch.bind(tj, "threadIdx.x")
    local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(local, tj)
    for consumer in sch.get_consumers(local):  # the epilogue: bias, corrections, output shape
        try:
            sch.reverse_compute_inline(consumer)
        except s_tir.ScheduleError:  # an index map the inliner cannot invert: its own flat launch
            _flat_launch(sch, consumer)
    fetches = [sch.cache_read(gemm, idx, "shared") for idx in (0, 1)]
    per_step = {0: tiles.bm * tiles.bk, 1: tiles.bn * tiles.bk}
    for idx, fetch in enumerate(fetches):
        vec = 4 if (idx == 1 and vector_b and per_step[idx] % (THREADS[0] * THREADS[1] * 4) == 0) else 1
        _cooperative_fetch(sch, fetch, ko, vec)
        _producers_inlined(sch, fetch)
    sch.decompose_reduction(gemm, ko)
    sch.tensorize(ki, dp4a_intrin(a_dtype, b_dtype))
    return sch.mod["main"]


@dataclass(frozen=True)
class WmmaTiles:
    """Tensor-core tiles: `wi` × `wj` warps per block, each computing `fi` × `fj` 16×16 fragments, and `fk`
    16-deep fragments per shared-memory step: BM = 16·wi·fi, BN = 16·wj·fj, BK = 16·fk."""

    wi: int
    wj: int
    fi: int
    fj: int
    fk: int = 2

    @property
    def bm(self) -> int:
        return 16 * self.wi * self.fi

    @property
    def bn(self) -> int:
        return 16 * self.wj * self.fj

    @property
    def bk(self) -> int:
        return 16 * self.fk


def choose_wmma_tiles(m: int, n: int) -> WmmaTiles:
    """Up to 4 × 2 warps of 2 × 2 fragments (128 × 64 per block), fewer for small M, N. The int32 accumulator
    tile is staged in shared memory: 128 × 64 × 4 B = 32 KiB plus the operand tiles stays under the 48 KiB a
    kernel gets without opting in to more."""

    def side(extent: int, most: int) -> tuple[int, int]:  # (warps, fragments per warp)
        for warps, frags in ((4, 2), (2, 2), (2, 1)):
            if warps <= most and extent >= 16 * warps * frags:
                return warps, frags
        return 1, 1

    (wi, fi), (wj, fj) = side(m, 4), side(n, 2)
    return WmmaTiles(wi, wj, fi, fj)


def has_int8_tensor_cores(target: Any) -> bool:
    """Whether qcc uses int8 tensor cores (WMMA m16n16k16 s8) on this target: sm_80 and later."""
    arch = cuda_arch(target)
    return arch is not None and arch >= 80


def schedule_wmma(func: tirx.PrimFunc, tiles: WmmaTiles) -> tirx.PrimFunc:
    """Schedule the GEMM kernel `func` (int8 × int8 → int32, extents padded to the tiles) on tensor cores.

    The structure follows dlight's `MatmulInt8Tensorization` (shared.dyn fetches, wmma fragments, accumulator
    staged through shared memory) without its software-pipeline annotations, which make TVM 0.27 fail on
    int8 fragments (`GetWmmaFragmentSize`, cheat sheet §0.4)."""
    from qcc.backends.tvm.schedules import preload_tensor_intrinsics

    preload_tensor_intrinsics()
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    group = get_wmma_intrin_group(load_scope="shared.dyn", store_scope="shared.dyn", in_dtype="int8",
                                  out_dtype="int32", trans_b=True)
    warp, vector = 32, 4
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(GEMM_BLOCK)
    loops = sch.get_loops(block)
    batch, (i, j, k) = loops[:-3], loops[-3:]
    i, i_inner = sch.split(i, [None, 16])
    j, j_inner = sch.split(j, [None, 16])
    k, k_inner = sch.split(k, [None, 16])
    sch.reorder(i, j, k, i_inner, j_inner, k_inner)
    inner = block
    outer = sch.blockize(i_inner)
    i0, i1, i2 = sch.split(i, [None, tiles.wi, tiles.fi])
    j0, j1, j2 = sch.split(j, [None, tiles.wj, tiles.fj])
    k0, k1 = sch.split(k, [None, tiles.fk])
    sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2)
    if batch:
        sch.bind(sch.fuse(*batch) if len(batch) > 1 else batch[0], "blockIdx.z")
    sch.bind(i0, "blockIdx.x")
    sch.bind(j0, "blockIdx.y")
    ty = sch.fuse(i1, j1)
    sch.bind(ty, "threadIdx.y")
    num_ty = tiles.wi * tiles.wj

    def fetch(idx: int) -> Any:
        read = sch.cache_read(outer, idx, "shared.dyn")
        sch.compute_at(read, k0)
        fused = sch.fuse(*sch.get_loops(read)[-2:])
        _, f1, f2, f3 = sch.split(fused, [None, num_ty, warp, vector])
        sch.bind(f2, "threadIdx.x")
        sch.bind(f1, "threadIdx.y")
        sch.vectorize(f3)
        sch.storage_align(read, 0, axis=-2, factor=32, offset=16)
        return read

    fetches = [fetch(0), fetch(1)]
    for f in fetches:
        _producers_inlined(sch, f)
    a_frag = sch.cache_read(outer, 0, "wmma.matrix_a")
    b_frag = sch.cache_read(outer, 1, "wmma.matrix_b")
    sch.compute_at(a_frag, k1)
    sch.compute_at(b_frag, k1)
    staged = sch.cache_write(outer, 0, "shared.dyn")
    sch.storage_align(staged, 0, -2, 16, 4)
    store = sch.cache_write(outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(store, ty)
    sch.reverse_compute_at(staged, ty)
    si, sj = sch.get_loops(store)[-2:]
    si0, si1 = sch.split(si, [None, 16])
    sj0, sj1 = sch.split(sj, [None, 16])
    sch.reorder(si0, sj0, si1, sj1)
    init = sch.decompose_reduction(outer, k0)
    init_inner = sch.get_child_blocks(init)[0]
    for frag, intrin in ((a_frag, group["load_a"]), (b_frag, group["load_b"])):
        fi_, fj_ = sch.get_loops(frag)[-2:]
        fi0, fi1 = sch.split(fi_, [None, 16])
        fj0, fj1 = sch.split(fj_, [None, 16])
        sch.reorder(fi0, fj0, fi1, fj1)
        sch.unroll(fi0)
        sch.unroll(fj0)
        sch.tensorize(fi1, intrin)
    sch.tensorize(sch.get_loops(init_inner)[-2], group["init"])
    sch.tensorize(sch.get_loops(store)[-2], group["store"])
    sch.tensorize(sch.get_loops(inner)[-3], group["compute"])
    for consumer in sch.get_consumers(staged):  # the epilogue into the shared → global write-back
        try:
            sch.reverse_compute_inline(consumer)
        except s_tir.ScheduleError:
            _flat_launch(sch, consumer)
    fused = sch.fuse(*sch.get_loops(staged)[-2:])
    _, f1, f2 = sch.split(fused, [None, warp, vector])
    sch.bind(f1, "threadIdx.x")
    sch.vectorize(f2)
    return sch.mod["main"]


def cuda_sources(executable: Any) -> list[str]:
    """The CUDA C sources inside a compiled module (walks the imports: VM executable → llvm host → cuda)."""
    mod = getattr(executable, "mod", executable)
    seen, out, stack = set(), [], [mod]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind == "cuda":
            out.append(m.inspect_source())
        stack.extend(m.imports)
    return out


def current_target() -> Any:
    """The enclosing `with tvm.target.Target(...)` (the build sets it around lowering), or None."""
    return tvm.target.Target.current(allow_none=True)
