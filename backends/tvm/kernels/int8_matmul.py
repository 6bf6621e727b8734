"""Integer `qmatmul` template for the CPU (attention Q·Kᵀ and P·V: both operands are activations).

int32 accumulation of the centered operands, a register tile of R rows × up to 64 columns kept in vector
registers across the K loop, batch × row tiles in parallel. Exactness: every product |(a − za)(b − zb)| is at
most amax·bmax (the operands' ranges), so when K·amax·bmax < 2^31 the int32 sum equals the reference's int64 sum
and its final int32 cast; the template declines otherwise (and for i16 operands or broadcast batches).
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


def try_lower(ctx: Any, node: Any, args: list[Any]) -> Any:
    """Lower a qmatmul through the template, or return None (generic rule): non-CPU device, rank < 2 operands,
    broadcast batch dimensions, i16 operands, or a K for which int32 could overflow."""
    from tvm import relax

    a_t, b_t = node.inputs
    za, zb = int(node.attrs["a_zero_point"]), int(node.attrs["b_zero_point"])
    if ctx.device != "cpu" or ctx.float16 or not isinstance(ctx.bb, relax.BlockBuilder):
        return None  # (a composing context of the fuse pass chains TE: the template emits Relax itself)
    if a_t.dtype not in _DTYPES or b_t.dtype not in _DTYPES:
        return None
    if len(a_t.shape) < 2 or len(a_t.shape) != len(b_t.shape) or tuple(a_t.shape[:-2]) != tuple(b_t.shape[:-2]):
        return None
    m, k = (int(d) for d in a_t.shape[-2:])
    n = int(b_t.shape[-1])
    if not fits_int32(a_t.dtype, za, b_t.dtype, zb, k):
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
