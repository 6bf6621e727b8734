"""Lowering of `attention` to the tiled online-softmax kernel (`kernels/attention.py`), and of `qattention` to an
exact integer kernel that streams the keys three times per query row (row max, integer exp-sum, P·V), recomputing
each score, so the N×M integer scores never exist either.

q, k, v keep their IR shapes [..., N, D]; the kernel indexes them flat as [BH, N, D] (BH = the product of the
leading dims, the last leading dim being the heads). The mask is passed as it is when its leading dims are
either all broadcast or all full (the common [B|1, H|1, N|1, M] forms); otherwise it is first broadcast to
[B, H, N|1, M] by a small TE copy (still no N×M scores unless the mask itself is N×M).

Tile sizes: `node.meta["attention_tile"]` = (br, bc) when the compile option `attention_tile` forced them, else
on the CPU the tiles the cost model (`qcc.costmodel.active_model()`: compile's `cost_model=` or the shipped
model, when it was trained on attention kernels) predicts fastest among `tile_candidates`, else the cache-size
rule `choose_tiles` for this CPU (the shared-memory rule on CUDA); `meta["attention_tile_source"]` says which.
The chosen tiles and the kernel's workspace bytes are written back to `node.meta` (`attention_tiles`,
`attention_workspace`).
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te

from qcc.backends.tvm.kernels.attention import (
    AttentionShape,
    _mask_index,
    check_tiles,
    choose_tiles,
    gen_cpu,
    gen_cuda,
    model_tiles,
)
from qcc.backends.tvm.lower_base import LowerCtx, lowers, prod
from qcc.errors import BackendError
from qcc.ir.graph import Node


def attention_shape(node: Node, dtype: str = "float32") -> tuple[AttentionShape, bool]:
    """The kernel's view of an attention node, and whether its mask must be broadcast first."""
    q, k, v = (t.type for t in node.inputs[:3])
    lead = q.shape[:-2]
    heads = lead[-1] if lead else 1
    batch = prod(lead[:-1]) if lead else 1
    n, m = q.shape[-2], k.shape[-2]
    mask4: tuple[int, int, int, int] | None = None
    expand = False
    if len(node.inputs) == 4:
        mshape = (1,) * (len(lead) + 2 - node.inputs[3].type.rank) + tuple(node.inputs[3].type.shape)
        outer = mshape[:max(len(lead) - 1, 0)]
        if all(d == 1 for d in outer):
            mb = 1
        elif tuple(outer) == tuple(lead[:-1]):
            mb = batch
        else:
            mb, expand = batch, True
        mh = mshape[len(lead) - 1] if lead else 1
        mask4 = (mb, mh, mshape[-2], mshape[-1])
    s = AttentionShape(bh=batch * heads, heads=heads, n=n, m=m, d=q.shape[-1], dv=v.shape[-1],
                       scale=float(node.attrs["scale"]), causal=bool(node.attrs["causal"]), mask=mask4, dtype=dtype)
    return s, expand


def tiles_for(node: Node, s: AttentionShape, device: str) -> tuple[int, int]:
    """(br, bc): forced by `node.meta["attention_tile"]`, else the cache / shared-memory rule."""
    forced = node.meta.get("attention_tile") if node.meta else None
    if forced:
        br, bc = (int(x) for x in forced)
        check_tiles(s, br, bc, device)
        return br, bc
    if device == "cuda":
        return choose_tiles(s, "cuda")
    from qcc.backends.tvm.kernels.params import CpuInfo
    from qcc.costmodel.model import active_model

    info = CpuInfo.detect()
    rule = choose_tiles(s, "cpu", l1d=info.l1d, l2=info.l2, lanes=info.lanes)
    target = {"lanes": info.lanes, "vregs": info.vregs, "l1d": info.l1d, "l2": info.l2, "l3": info.l3,
              "cores": info.cores}
    picked = model_tiles(s, active_model(), rule, target)
    if node.meta is not None:
        node.meta["attention_tile_source"] = "rule" if picked is None else "cost model"
    return picked or rule


@lowers("attention")
def _lower_attention(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    dtype = ctx.out_dtype(node)
    s, expand = attention_shape(node, dtype)
    br, bc = tiles_for(node, s, ctx.device)
    gen = gen_cuda(s, br, bc) if ctx.device == "cuda" else gen_cpu(s, br, bc)
    lead = node.inputs[0].shape[:-2]
    if isinstance(node.meta, dict):
        node.meta["attention_tiles"] = (br, bc)
        tasks = 1 if ctx.device == "cuda" else 2
        node.meta["attention_workspace"] = s.workspace_bytes(br, bc, tasks) + 4 * s.bh * s.d * -(-s.m // bc) * bc

    def compute(*ts: te.Tensor) -> te.Tensor:
        ins = list(ts)
        if expand:  # broadcast the mask's leading dims: [B..., H|1, N|1, M] (rare layouts only)
            mask = ins[3]
            mb, mh, mn, mm = s.mask  # type: ignore[misc]
            full = (*lead[:-1], mh, mn, mm)
            off = len(full) - len(mask.shape)

            def at(*i: Any) -> Any:
                idx = [0 if int(mask.shape[d]) == 1 else i[d + off] for d in range(len(mask.shape))]
                return mask(*idx)

            ins[3] = te.compute(full, at, name="mask_broadcast")
        out_shape = (*lead, s.n, s.dv)
        return te.extern([out_shape], ins, lambda i, o: gen(*i, o[0]), dtype=[dtype], name="attention")

    return ctx.emit_te(node, compute, *args, name="attention")


# -- integer attention (qattention) ---------------------------------------------------------------------------
def _int_steps(steps: Any, mask: Any, s: AttentionShape, bh: Any, i: Any, j: Any) -> Any:
    """The TIR of `steps` applied to the int64 score expression, mirroring the requantize / qadd references."""
    from qcc.backends.tvm.lower_quant import clamp_to, dyadic_scale, i64, round_shift

    def apply(x: Any) -> Any:
        for st in steps:
            if st[0] == "requantize":
                _, mult, shift, dtype, izp, zp, lo, hi = st
                x = clamp_to(dyadic_scale(x - i64(izp), mult, shift) + i64(zp), dtype, "int64", lo, hi)
            else:
                _, am, bm, shift, azp, bzp, zp, dtype, lo, hi = st
                b = i64(mask[_mask_index(s, bh, i, j)])
                acc = (x - i64(azp)) * i64(am) + (b - i64(bzp)) * i64(bm)
                x = clamp_to(round_shift(acc, i64(shift)) + i64(zp), dtype, "int64", lo, hi)
        return x

    return apply


def gen_qattention(s: AttentionShape, device: str, attrs: dict[str, Any]) -> Any:
    """IRBuilder body of the integer attention kernel: one independent task per query row, three passes over the
    keys that recompute each score (q·k, then the steps): the row maximum, the integer exp-sum, then
    P = u8-normalised exp and acc += P·(v − zv). Workspace per row: q (d int32) and acc (dv int32)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from qcc.backends.tvm.lower_base import cast, parallel_loop
    from qcc.backends.tvm.lower_quant import clamp_to, i64
    from qcc.backends.tvm.lower_quant_nonlinear import _i_exp, _shift_exp
    from qcc.ir.ops import quant_nonlinear as ref

    d, dv, i32 = s.d, s.dv, "int32"
    zq, zk, zv = (int(attrs[k]) for k in ("q_zero_point", "k_zero_point", "v_zero_point"))
    soft = attrs["softmax"]
    if soft[0] == "isoftmax":
        iexp = lambda x: _i_exp(x, *(int(t) for t in soft[1:]))  # noqa: E731
    else:
        iexp = lambda x: _shift_exp(x, *(int(t) for t in soft[1:]))  # noqa: E731
    norm_shift = ref.SOFTMAX_NORM_BITS - ref.SOFTMAX_OUT_BITS

    def gen(*bufs: Any) -> Any:
        q, k, v = (T.buffer_proxy(b) for b in bufs[:3])
        mask = T.buffer_proxy(bufs[3]) if len(bufs) == 5 else None
        out = T.buffer_proxy(bufs[-1])
        with IRBuilder() as ib:
            with parallel_loop(device, s.bh * s.n) as t:
                bh, i = t // s.n, t % s.n
                qr = T.buffer_proxy(T.alloc_buffer([d], i32, scope="local"))
                acc = T.buffer_proxy(T.alloc_buffer([dv], i32, scope="local"))
                st = T.buffer_proxy(T.alloc_buffer([4], "int64", scope="local"))  # max, sum, factor, score
                with T.serial(0, d) as e:
                    qr[e] = cast(i32, q[t * d + e]) - tirx.const(zq, i32)
                with T.serial(0, dv) as e:
                    acc[e] = tirx.const(0, i32)
                st[0] = tirx.min_value("int64")
                st[1] = tirx.const(0, "int64")

                def score(j: Any) -> None:
                    """st[3] = the integer score of key j (int32 dot product, then the steps)."""
                    st[3] = tirx.const(0, "int64")
                    with T.serial(0, d) as e:
                        prod = qr[e] * (cast(i32, k[(bh * s.m + j) * d + e]) - tirx.const(zk, i32))
                        st[3] = i64(cast(i32, st[3]) + prod)  # int32 accumulation (wraps like qmatmul)
                    st[3] = _int_steps(attrs["steps"], mask, s, bh, i, j)(st[3])

                with T.serial(0, s.m) as j:
                    score(j)
                    st[0] = tirx.max(st[0], st[3])
                with T.serial(0, s.m) as j:
                    score(j)
                    st[1] = st[1] + iexp(st[3] - st[0])
                st[2] = tirx.floordiv(tirx.shift_left(i64(1), i64(ref.SOFTMAX_NORM_BITS)), tirx.max(st[1], i64(1)))
                with T.serial(0, s.m) as j:
                    score(j)
                    p = tirx.shift_right(iexp(st[3] - st[0]) * st[2] + tirx.shift_left(i64(1), i64(norm_shift - 1)),
                                         i64(norm_shift))
                    pu = clamp_to(p, "u8", i32)
                    with T.serial(0, dv) as e:
                        acc[e] = acc[e] + pu * (cast(i32, v[(bh * s.m + j) * dv + e]) - tirx.const(zv, i32))
                with T.serial(0, dv) as e:
                    out[t * dv + e] = acc[e]
        return ib.get()

    return gen


@lowers("qattention")
def _lower_qattention(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    q, k, v = (t.type for t in node.inputs[:3])
    lead = q.shape[:-2]
    heads = lead[-1] if lead else 1
    batch = prod(lead[:-1]) if lead else 1
    mask4 = None
    if len(node.inputs) == 4:
        mshape = (1,) * (len(lead) + 2 - node.inputs[3].type.rank) + tuple(node.inputs[3].type.shape)
        outer = mshape[:max(len(lead) - 1, 0)]
        if not (all(x == 1 for x in outer) or tuple(outer) == tuple(lead[:-1])):
            raise BackendError(f"qattention {node.name!r}: mask {list(mshape)} broadcasts over only some of the "
                               f"batch dims {list(lead[:-1])}")
        mask4 = (1 if all(x == 1 for x in outer) else batch, mshape[len(lead) - 1] if lead else 1,
                 mshape[-2], mshape[-1])
    s = AttentionShape(bh=batch * heads, heads=heads, n=q.shape[-2], m=k.shape[-2], d=q.shape[-1], dv=v.shape[-1],
                       scale=1.0, mask=mask4, dtype="int32")
    gen = gen_qattention(s, ctx.device, dict(node.attrs))
    if isinstance(node.meta, dict):
        node.meta["attention_workspace"] = 4 * (s.d + s.dv) * s.bh * s.n  # per-row q and acc, all rows

    def compute(*ts: te.Tensor) -> te.Tensor:
        return te.extern([(*lead, s.n, s.dv)], list(ts), lambda i, o: gen(*i, o[0]), dtype=["int32"],
                         name="qattention")

    return ctx.emit_te(node, compute, *args, name="qattention")
