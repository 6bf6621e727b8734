"""Tiled attention with an online softmax (FlashAttention-2 forward), as hand-written TIR.

    out[b, i, :] = Σ_j softmax_j(scale · q[b, i]·k[b, j] + mask[b, i, j]) · v[b, j, :]   (causal: j ≤ i)

The kernel walks K/V in tiles of `bc` keys for a tile of `br` queries and keeps, per query row, the running
maximum m, the running sum ℓ and an unnormalised accumulator acc[dv]; each new tile rescales them by
exp(m_old − m_new) (FA2's order: the query tiles are the outer, independent loop; ℓ divides once at the end).
The N×M scores never exist: the workspace per query tile is br·d (Q) + d·bc (Kᵀ) + br·bc (S/P) + br·dv (acc)
floats plus 2·br, whatever the sequence length.

- CPU (`gen_cpu`): one parallel loop over batch·heads × query tiles; the Kᵀ tile is transposed into a local
  buffer so that S = Q·Kᵀ runs as `rb` rows × bc lanes of vector FMAs per d step (register blocking), the
  exponential is a vectorisable polynomial (`fast_exp`: Cody–Waite reduction and a degree-6 polynomial, within
  2 ulp of expf on the range that matters), and P·V runs as rb rows × dv lanes per key.
- CUDA (`gen_cuda`): one thread block per (batch·head, query tile of `br` rows), one thread per query row;
  the K and V tiles are loaded cooperatively into shared memory, each thread keeps its row's acc in registers.

Rows past N are computed on clamped indices and never stored; keys past M are masked to −∞ (probability 0).
Inputs may be float16 (cuda-fp16): loads widen to float32, all arithmetic is float32, the store narrows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qcc.errors import BackendError

NEG_INF = -3.0e38  # the running maximum before any key (finite, so exp(m_old - m_new) never sees inf - inf)
EXP_CUTOFF = -87.0  # fast_exp(x) = 0 below this (expf underflows to denormals there anyway)


@dataclass(frozen=True)
class AttentionShape:
    """One attention call flattened to [BH, N, D]: q [bh, n, d], k [bh, m, d], v [bh, m, dv] -> out [bh, n, dv].

    `heads` splits bh = batch · heads for the mask; `mask` is the mask's shape aligned to [batch, heads, n, m]
    (each dim 1 or full), or None; `scale` multiplies q·k; `causal` keeps key j ≤ query i (top-left aligned)."""

    bh: int
    heads: int
    n: int
    m: int
    d: int
    dv: int
    scale: float
    causal: bool = False
    mask: tuple[int, int, int, int] | None = None
    dtype: str = "float32"

    @property
    def flops(self) -> int:
        """Multiply-adds of Q·Kᵀ and P·V counted as 2 flops (causal halves it approximately)."""
        full = 2 * self.bh * self.n * self.m * (self.d + self.dv)
        return full // 2 if self.causal else full

    def workspace_bytes(self, br: int, bc: int, tasks: int) -> int:
        """Bytes of the kernel's tile buffers for `tasks` query tiles in flight (one per thread)."""
        per = br * self.d + self.d * bc + br * bc + br * self.dv + 2 * br
        return 4 * per * tasks


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def choose_tiles(shape: AttentionShape, device: str = "cpu", l1d: int = 32 * 1024, l2: int = 1024 * 1024,
                 lanes: int = 16, shared_bytes: int = 48 * 1024) -> tuple[int, int]:
    """(br, bc) by the cache-size rule.

    CPU: bc is the register block's width: 4 vectors with 32 vector registers (AVX-512: 4 rows × 4 vectors = 16
    accumulators), 2 with 16; br is the largest of 8..64 whose Q, S/P and acc tiles (4·br·(d + bc + dv) bytes,
    re-read for every key tile) fit in L1, while the Kᵀ / V panels of a key tile stream from L2 (`l2` only caps
    br·d for very wide heads). Measured on this project's AVX-512 CPU (d = 64): (32, 64) ran at 50 GFLOP/s
    against 37 for (64, 64) and 23 for (32, 128) (register spills). Small sequences get the smallest tile
    covering them.
    CUDA (FA1 §3.1 rule): bc = ⌊M_shared / (4·d·4 bytes)⌋ rounded down to a power of two in [16, 64]; br = 64
    (one thread per query row, two warps)."""
    d, dv = shape.d, shape.dv
    if device == "cuda":
        bc = max(16, min(64, 1 << int(math.log2(max(1, shared_bytes // (4 * max(d, dv) * 4))))))
        return 64, bc
    bc = lanes * (4 if lanes >= 16 else 2)
    br = 8
    for cand in (16, 32, 64):
        if 4 * cand * (d + bc + dv) <= l1d and 4 * cand * d <= l2 // 4:
            br = cand
    br = min(br, max(4, 1 << max(0, math.ceil(math.log2(max(shape.n, 1))))))
    bc = min(bc, max(lanes, _ceil(shape.m, lanes) * lanes))
    return br, bc


# The (br, bc) tiles the cost model ranks (and `qcc costmodel collect` measures) for the CPU kernel.
TILE_CANDIDATES = ((8, 16), (8, 32), (8, 64), (16, 16), (16, 32), (16, 64), (16, 128), (32, 16), (32, 32),
                   (32, 64), (32, 128), (64, 16), (64, 32), (64, 64), (64, 128))


def tile_candidates(shape: AttentionShape, rule: tuple[int, int]) -> list[tuple[int, int]]:
    """The CPU tile candidates of `shape`: the rule's tiles first, then every TILE_CANDIDATES entry not larger
    than the queries (br) or keys (bc) need."""
    rest = [t for t in TILE_CANDIDATES if t != tuple(rule) and t[0] <= max(shape.n, 8) and t[1] <= max(shape.m, 16)]
    return [tuple(rule), *rest]  # type: ignore[list-item]


def tile_kernel(shape: AttentionShape, br: int, bc: int, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cost model's kernel dict (qcc.costmodel.features, kind "attention") of `shape` at tiles (br, bc)."""
    k: dict[str, Any] = {"kind": "attention", "shape": {"type": "AttentionShape", "bh": shape.bh,
                                                         "heads": shape.heads, "n": shape.n, "m": shape.m,
                                                         "d": shape.d, "dv": shape.dv, "causal": shape.causal},
                         "params": {"type": "AttentionParams", "br": int(br), "bc": int(bc)}, "epilogue": [],
                         "dtype": "f32", "layout": "NCHW"}
    if target is not None:
        k["target"] = dict(target)
    return k


def model_tiles(shape: AttentionShape, model: Any, rule: tuple[int, int],
                target: dict[str, Any] | None = None) -> tuple[int, int] | None:
    """The tiles a cost model (`CostModel.predict`, or its ranking `score`) expects fastest among
    `tile_candidates`, or None when the model was not trained on attention kernels or cannot predict them."""
    from qcc.costmodel.model import AnalyticCostModel, choose
    from qcc.errors import CostModelError

    kinds = (getattr(model, "meta", None) or {}).get("kinds")
    # The analytic roofline cannot tell tiles apart (same flops and bytes): the measured cache rule stays.
    if model is None or isinstance(model, AnalyticCostModel) or (kinds is not None and "attention" not in kinds):
        return None
    cands = tile_candidates(shape, rule)
    try:
        return cands[choose(model, [tile_kernel(shape, br, bc, target) for br, bc in cands])]
    except CostModelError:
        return None


def check_tiles(shape: AttentionShape, br: int, bc: int, device: str = "cpu") -> None:
    """Reject tile sizes the kernel cannot use (BackendError naming the bad value)."""
    for name, val in (("br", br), ("bc", bc)):
        if not isinstance(val, int) or val < 1 or val > 1024:
            raise BackendError(f"attention tile {name}={val!r} must be an int in [1, 1024]")
    if device == "cuda" and br > 1024:
        raise BackendError(f"attention tile br={br} exceeds the CUDA block size")


# -- the exponential -------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1)  # Cephes expf


def fast_exp(x: Any) -> Any:
    """exp(x) for float32 x ≤ ~88 as TIR that vectorises (no libm call): 0 below EXP_CUTOFF."""
    from tvm import tirx

    f32 = "float32"
    xc = tirx.max(x, tirx.const(EXP_CUTOFF, f32))
    n = tirx.floor(xc * tirx.const(_LOG2E, f32) + tirx.const(0.5, f32))
    r = xc - n * tirx.const(_LN2_HI, f32) - n * tirx.const(_LN2_LO, f32)
    p = tirx.const(_EXP_POLY[0], f32)
    for c in _EXP_POLY[1:]:
        p = p * r + tirx.const(c, f32)
    p = p * r * r + r + tirx.const(1.0, f32)
    bits = tirx.shift_left(tirx.Cast("int32", n) + tirx.const(127, "int32"), tirx.const(23, "int32"))
    y = p * tirx.call_intrin(f32, "tirx.reinterpret", bits)
    return tirx.Select(x < tirx.const(EXP_CUTOFF, f32), tirx.const(0.0, f32), y)


# -- shared index helpers ------------------------------------------------------------------------------------
def _mask_index(s: AttentionShape, bh: Any, i: Any, j: Any) -> Any:
    """Flat index into the broadcast mask for (batch·head bh, query i, key j)."""
    mb, mh, mn, mm = s.mask  # type: ignore[misc]
    b, h = bh // s.heads, bh % s.heads
    idx = b if mb > 1 else 0
    idx = idx * mh + (h if mh > 1 else 0)
    idx = idx * mn + (i if mn > 1 else 0)
    return idx * mm + (j if mm > 1 else 0)


def _f32(x: Any) -> Any:
    from qcc.backends.tvm.lower_base import cast

    return cast("float32", x)


def _score_fix(s: AttentionShape, bc: int, raw: Any, mask: Any, bh: Any, i: Any, j: Any) -> Any:
    """raw (already scaled) plus the mask, −∞-like where the key is out of range or causally hidden."""
    from tvm import tirx

    val = raw
    if mask is not None:
        val = val + _f32(mask[_mask_index(s, bh, tirx.min(i, s.n - 1), tirx.min(j, s.m - 1))])
    hidden = j >= s.m if s.m % bc else None
    if s.causal:
        hidden = j > i if hidden is None else tirx.Or(hidden, j > i)
    # hidden keys score −∞ (not NEG_INF): exp(−∞ − m) is 0 even while m is still the initial NEG_INF
    return val if hidden is None else tirx.Select(hidden, tirx.const(float("-inf"), "float32"), val)


def gen_cpu(s: AttentionShape, br: int, bc: int, rb: int = 4) -> Any:
    """The IRBuilder body generator `gen(q, k, v, [mask,] out)` of the CPU kernel (see the module docstring)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    rb = max(1, min(rb, br))
    while br % rb:
        rb -= 1
    n_qt, n_kt = _ceil(s.n, br), _ceil(s.m, bc)
    mp = n_kt * bc
    d, dv, f32 = s.d, s.dv, "float32"
    lanes = 16 if bc % 16 == 0 else bc  # width of the max/sum partial reductions

    def gen(*bufs: Any) -> Any:
        q, k, v = (T.buffer_proxy(b) for b in bufs[:3])
        mask = T.buffer_proxy(bufs[3]) if s.mask is not None else None
        out = T.buffer_proxy(bufs[-1])
        with IRBuilder() as ib, T.seq_scope():
            # Kᵀ once per call ([bh, d, m] padded to whole tiles, O(N·d) like K itself), so the S tile loads
            # contiguous bc-lane rows of keys for each d; padded keys are zero and masked below.
            ktg = T.buffer_proxy(T.alloc_buffer([s.bh * d * mp], f32, scope="global"))
            with T.parallel(0, s.bh * n_kt) as t:
                bh, j0 = t // n_kt, (t % n_kt) * bc
                with T.serial(0, bc) as c:
                    key = tirx.min(j0 + c, s.m - 1)
                    with T.serial(0, d) as e:
                        val = _f32(k[(bh * s.m + key) * d + e])
                        if s.m % bc:
                            val = tirx.Select(j0 + c < s.m, val, tirx.const(0.0, f32))
                        ktg[(bh * d + e) * mp + j0 + c] = val
            with T.parallel(0, s.bh * n_qt) as t:
                bh, i0 = t // n_qt, (t % n_qt) * br
                qt = T.buffer_proxy(T.alloc_buffer([br * d], f32, scope="local"))
                sp = T.buffer_proxy(T.alloc_buffer([br * bc], f32, scope="local"))
                acc = T.buffer_proxy(T.alloc_buffer([br * dv], f32, scope="local"))
                mrow = T.buffer_proxy(T.alloc_buffer([br], f32, scope="local"))
                lrow = T.buffer_proxy(T.alloc_buffer([br], f32, scope="local"))
                red = T.buffer_proxy(T.alloc_buffer([lanes], f32, scope="local"))
                old = T.buffer_proxy(T.alloc_buffer([2], f32, scope="local"))  # m_old, alpha of one row
                with T.serial(0, br) as r:
                    row = tirx.min(i0 + r, s.n - 1)
                    with T.vectorized(0, d) as c:
                        qt[r * d + c] = _f32(q[(bh * s.n + row) * d + c]) * tirx.const(s.scale, f32)
                    with T.vectorized(0, dv) as c:
                        acc[r * dv + c] = tirx.const(0.0, f32)
                    mrow[r] = tirx.const(NEG_INF, f32)
                    lrow[r] = tirx.const(0.0, f32)
                # causal: key tiles entirely right of the query tile's last row are skipped
                kend = tirx.min(n_kt, (i0 + br + bc - 1) // bc) if s.causal else n_kt
                with T.serial(0, kend) as jt:
                    j0 = jt * bc
                    # S = (scale·Q) Kᵀ: rb rows × bc lanes accumulate across d
                    with T.serial(0, br // rb) as r0:
                        with T.unroll(0, rb) as ri:
                            with T.vectorized(0, bc) as c:
                                sp[(r0 * rb + ri) * bc + c] = tirx.const(0.0, f32)
                        with T.serial(0, d) as e:
                            with T.unroll(0, rb) as ri:
                                with T.vectorized(0, bc) as c:
                                    o = (r0 * rb + ri) * bc + c
                                    sp[o] = sp[o] + qt[(r0 * rb + ri) * d + e] * ktg[(bh * d + e) * mp + j0 + c]
                    with T.serial(0, br) as r:
                        with T.vectorized(0, bc) as c:
                            sp[r * bc + c] = _score_fix(s, bc, sp[r * bc + c], mask, bh, i0 + r, j0 + c)
                        with T.vectorized(0, lanes) as c:
                            red[c] = sp[r * bc + c]
                        with T.serial(1, bc // lanes) as c0:
                            with T.vectorized(0, lanes) as c:
                                red[c] = tirx.max(red[c], sp[r * bc + c0 * lanes + c])
                        old[0] = mrow[r]
                        with T.serial(0, lanes) as c:
                            mrow[r] = tirx.max(mrow[r], red[c])
                        with T.vectorized(0, bc) as c:
                            sp[r * bc + c] = fast_exp(sp[r * bc + c] - mrow[r])
                        with T.vectorized(0, lanes) as c:
                            red[c] = sp[r * bc + c]
                        with T.serial(1, bc // lanes) as c0:
                            with T.vectorized(0, lanes) as c:
                                red[c] = red[c] + sp[r * bc + c0 * lanes + c]
                        old[1] = fast_exp(old[0] - mrow[r])
                        lrow[r] = lrow[r] * old[1]
                        with T.serial(0, lanes) as c:
                            lrow[r] = lrow[r] + red[c]
                        with T.vectorized(0, dv) as c:
                            acc[r * dv + c] = acc[r * dv + c] * old[1]
                    # acc += P V: rb rows × dv lanes per key
                    with T.serial(0, br // rb) as r0:
                        with T.serial(0, bc) as c:
                            key = tirx.min(j0 + c, s.m - 1)
                            with T.unroll(0, rb) as ri:
                                with T.vectorized(0, dv) as e:
                                    o = (r0 * rb + ri) * dv + e
                                    acc[o] = acc[o] + sp[(r0 * rb + ri) * bc + c] * _f32(v[(bh * s.m + key) * dv + e])
                with T.serial(0, br) as r:
                    with T.If(i0 + r < s.n):
                        with T.Then():
                            # a row with every key hidden has ℓ = 0 and outputs 0 (torch's SDPA convention)
                            inv = tirx.Select(lrow[r] > tirx.const(0.0, f32), tirx.const(1.0, f32) / lrow[r],
                                              tirx.const(0.0, f32))
                            with T.vectorized(0, dv) as c:
                                out[(bh * s.n + i0 + r) * dv + c] = (acc[r * dv + c] * inv).astype(s.dtype)
        return ib.get()

    return gen


def gen_cuda(s: AttentionShape, br: int, bc: int) -> Any:
    """The IRBuilder body generator of the CUDA kernel: a block per (batch·head, query tile), a thread per row.

    Per key tile the block loads K and V into shared memory together (a strided cooperative copy, then a
    barrier); each thread scores its row against the tile into registers, takes the tile maximum, rescales
    its accumulator once and adds P·V; a second barrier guards the shared tiles before the next load."""
    from tvm import te, tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    n_qt, n_kt = _ceil(s.n, br), _ceil(s.m, bc)
    d, dv, f32 = s.d, s.dv, "float32"

    def sync() -> None:
        T.evaluate(tirx.call_intrin("int32", "tirx.tvm_storage_sync", "shared"))

    def gen(*bufs: Any) -> Any:
        q, k, v = (T.buffer_proxy(b) for b in bufs[:3])
        mask = T.buffer_proxy(bufs[3]) if s.mask is not None else None
        out = T.buffer_proxy(bufs[-1])
        bx, tx = te.thread_axis("blockIdx.x"), te.thread_axis("threadIdx.x")
        with IRBuilder() as ib:
            with T.frame_scope([T.attr(bx, "thread_extent", s.bh * n_qt), T.attr(tx, "thread_extent", br)]):
                ks = T.buffer_proxy(T.alloc_buffer([bc * d], f32, scope="shared"))
                vs = T.buffer_proxy(T.alloc_buffer([bc * dv], f32, scope="shared"))
                qr = T.buffer_proxy(T.alloc_buffer([d], f32, scope="local"))
                acc = T.buffer_proxy(T.alloc_buffer([dv], f32, scope="local"))
                sc = T.buffer_proxy(T.alloc_buffer([bc], f32, scope="local"))
                st = T.buffer_proxy(T.alloc_buffer([4], f32, scope="local"))  # m, l, m_old, tmp
                bh, i0 = bx // n_qt, (bx % n_qt) * br
                row = tirx.min(i0 + tx, s.n - 1)
                with T.serial(0, d) as e:
                    qr[e] = _f32(q[(bh * s.n + row) * d + e]) * tirx.const(s.scale, f32)
                with T.serial(0, dv) as e:
                    acc[e] = tirx.const(0.0, f32)
                st[0] = tirx.const(NEG_INF, f32)
                st[1] = tirx.const(0.0, f32)
                kend = tirx.min(n_kt, (i0 + br + bc - 1) // bc) if s.causal else n_kt
                with T.serial(0, kend) as jt:
                    j0 = jt * bc
                    for src, dst, width in ((k, ks, d), (v, vs, dv)):
                        with T.serial(0, _ceil(bc * width, br)) as it:
                            idx = it * br + tx
                            with T.If(idx < bc * width):
                                with T.Then():
                                    key = tirx.min(j0 + idx // width, s.m - 1)
                                    dst[idx] = _f32(src[(bh * s.m + key) * width + idx % width])
                    sync()
                    st[2] = st[0]
                    with T.serial(0, bc) as c:
                        st[3] = tirx.const(0.0, f32)
                        with T.serial(0, d) as e:
                            st[3] = st[3] + qr[e] * ks[c * d + e]
                        sc[c] = _score_fix(s, bc, st[3], mask, bh, i0 + tx, j0 + c)
                        st[0] = tirx.max(st[0], sc[c])
                    st[3] = tirx.exp(st[2] - st[0])
                    st[1] = st[1] * st[3]
                    with T.serial(0, dv) as e:
                        acc[e] = acc[e] * st[3]
                    with T.serial(0, bc) as c:
                        sc[c] = tirx.Select(sc[c] < tirx.const(NEG_INF / 2, f32), tirx.const(0.0, f32),
                                            tirx.exp(sc[c] - st[0]))
                        st[1] = st[1] + sc[c]
                        with T.serial(0, dv) as e:
                            acc[e] = acc[e] + sc[c] * vs[c * dv + e]
                    sync()
                with T.If(i0 + tx < s.n):
                    with T.Then():
                        st[3] = tirx.Select(st[1] > tirx.const(0.0, f32), tirx.const(1.0, f32) / st[1],
                                            tirx.const(0.0, f32))
                        with T.serial(0, dv) as e:
                            out[(bh * s.n + i0 + tx) * dv + e] = (acc[e] * st[3]).astype(s.dtype)
        return ib.get()

    return gen
