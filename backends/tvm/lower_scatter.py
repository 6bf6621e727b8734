"""Lowering of scatter-style ops: scatter_elements, index_add, index_reduce (GNN segment reductions).

These are written as TIR with TVM's IR builder (`te.extern`). Correctness first: the positions that can
collide (the same output element) are always handled by one thread in index order, so the result is the
serial NumPy result, including "last write wins" for duplicate indices. The loops over the columns that
cannot collide (every axis but the indexed one) run in parallel: `T.parallel` on CPU, one CUDA thread per
column on GPU. Indices wrap negatives like NumPy and are clamped into range so a bad index cannot write
outside the output.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from qcc.backends.tvm.lower_base import (
    LowerCtx,
    cast,
    const,
    dtype_of,
    highest,
    is_float,
    lowers,
    lowest,
    parallel_loop,
    prod,
    single_thread,
)
from qcc.ir.graph import Node


def _row(idx: Any, n: int) -> Any:
    """An index value wrapped (negatives) and clamped into [0, n), as int64."""
    r = cast("int64", idx)
    r = tirx.Select(r < const(0, "int64"), r + const(n, "int64"), r)
    return tirx.min(tirx.max(r, const(0, "int64")), const(n - 1, "int64"))


_COMBINE = {
    "none": lambda old, new: new,
    "add": lambda old, new: old + new,
    "sum": lambda old, new: old + new,
    "mean": lambda old, new: old + new,
    "mul": lambda old, new: old * new,
    "prod": lambda old, new: old * new,
    "max": tirx.max,
    "amax": tirx.max,
    "min": tirx.min,
    "amin": tirx.min,
}


@lowers("scatter_elements")
def _lower_scatter_elements(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis, reduction = int(node.attrs["axis"]), str(node.attrs.get("reduction", "none"))
    shape, ishape = node.inputs[0].shape, node.inputs[1].shape
    total = prod(shape)
    n_axis = shape[axis]
    # Column = every index position except along `axis`; the axis loop runs serially inside a column.
    ipre, iaxis, ipost = prod(ishape[:axis]), ishape[axis], prod(ishape[axis + 1:])
    post = prod(shape[axis + 1:])
    device = ctx.device

    def gen(x_buf: Any, i_buf: Any, u_buf: Any, o_buf: Any) -> Any:
        x, idx, upd, out = (T.buffer_proxy(b) for b in (x_buf, i_buf, u_buf, o_buf))
        combine = _COMBINE[reduction]
        with IRBuilder() as ib:
            with T.seq_scope():
                with parallel_loop(device, total) as j:
                    out[j] = x[j]
                with parallel_loop(device, ipre * ipost) as col:
                    p = cast("int64", col) // ipost
                    q = cast("int64", col) % ipost
                    with T.serial(0, iaxis) as k:
                        src = (p * iaxis + k) * ipost + q
                        r = _row(idx[src], n_axis)
                        dst = (p * n_axis + r) * post + q
                        out[dst] = combine(out[dst], upd[src])
            return ib.get()

    def compute(x: te.Tensor, i: te.Tensor, u: te.Tensor) -> te.Tensor:
        return te.extern([x.shape], [x, i, u], lambda ins, outs: gen(ins[0], ins[1], ins[2], outs[0]),
                         dtype=[x.dtype], name="scatter_elements")

    return ctx.emit_te(node, compute, *args)


@lowers("index_add", "index_reduce")
def _lower_index_reduce(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = int(node.attrs["axis"])
    reduce = "sum" if node.op == "index_add" else str(node.attrs["reduce"])
    include_self = True if node.op == "index_add" else bool(node.attrs.get("include_self", True))
    shape = node.inputs[0].shape
    n_idx = node.inputs[1].shape[0]
    pre, rows, post = prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])
    total = prod(shape)
    device = ctx.device

    def gen(x_buf: Any, i_buf: Any, s_buf: Any, o_buf: Any) -> Any:
        x, idx, src, out = (T.buffer_proxy(b) for b in (x_buf, i_buf, s_buf, o_buf))
        dt = dtype_of(x_buf)
        # Means divide the whole sum, so integer means accumulate in int64 (the reference does).
        acc_dt = "int64" if reduce == "mean" and not is_float(dt) else dt
        combine = _COMBINE[reduce]
        ident = {"sum": const(0, acc_dt), "mean": const(0, acc_dt), "prod": const(1, acc_dt),
                 "amax": lowest(acc_dt), "amin": highest(acc_dt)}[reduce]
        with IRBuilder() as ib:
            with T.seq_scope():  # statement-level allocations need an enclosing frame
                acc = out
                if acc_dt != dt:
                    acc = T.buffer_proxy(T.alloc_buffer([total], acc_dt, scope="global"))
                if reduce == "mean":
                    cnt = T.buffer_proxy(T.alloc_buffer([rows], "int64", scope="global"))
                with parallel_loop(device, total) as j:
                    acc[j] = cast(acc_dt, x[j])
                if reduce == "mean":
                    with single_thread(device):
                        with T.serial(0, rows) as r:
                            cnt[r] = const(0, "int64")
                        with T.serial(0, n_idx) as i:
                            r = _row(idx[i], rows)
                            cnt[r] = cnt[r] + const(1, "int64")
                with parallel_loop(device, pre * post) as col:
                    p = cast("int64", col) // post
                    q = cast("int64", col) % post
                    if not include_self:
                        with T.serial(0, n_idx) as i:
                            acc[(p * rows + _row(idx[i], rows)) * post + q] = ident
                    with T.serial(0, n_idx) as i:
                        dst = (p * rows + _row(idx[i], rows)) * post + q
                        acc[dst] = combine(acc[dst], cast(acc_dt, src[(p * n_idx + i) * post + q]))
                if reduce == "mean":
                    with parallel_loop(device, total) as j:
                        r = (cast("int64", j) // post) % rows
                        c = cnt[r] + const(1 if include_self else 0, "int64")
                        with T.If(cnt[r] > const(0, "int64")):
                            with T.Then():
                                if is_float(acc_dt):
                                    out[j] = cast(dt, acc[j] / cast(acc_dt, c))
                                else:
                                    out[j] = cast(dt, tirx.floordiv(acc[j], c))
                            with T.Else():  # untouched rows keep x (held in acc)
                                out[j] = cast(dt, acc[j])
            return ib.get()

    def compute(x: te.Tensor, i: te.Tensor, s: te.Tensor) -> te.Tensor:
        return te.extern([x.shape], [x, i, s], lambda ins, outs: gen(ins[0], ins[1], ins[2], outs[0]),
                         dtype=[x.dtype], name=node.op)

    return ctx.emit_te(node, compute, *args)

