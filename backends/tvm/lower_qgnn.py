"""Lowering of the quantized-GNN ops (`qcc.ir.ops.qgnn`): segment_softmax, qsegment_softmax and irsqrt.

The segment softmaxes are hand-written TIR (`te.extern`): one parallel loop over the feature columns (CPU
threads, or one CUDA thread per column), inside it serial passes over the edges — segment max, exp and segment
sum, normalisation — so edges of one segment are combined in index order and the integer version is exactly the
reference's int64 arithmetic. `irsqrt` is a fixed chain of guarded integer Newton steps (no float), mirroring
`qgnn.isqrt_fixed` stage by stage.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from qcc.backends.tvm.lower_base import LowerCtx, cast, const, is_float, lowers, lowest, parallel_loop, prod
from qcc.backends.tvm.lower_quant import clamp_to, i64
from qcc.backends.tvm.lower_quant_nonlinear import _i_exp
from qcc.backends.tvm.lower_scatter import _row
from qcc.ir.graph import Node
from qcc.ir.ops import qgnn
from qcc.ir.ops.quant_nonlinear import SOFTMAX_NORM_BITS, SOFTMAX_OUT_BITS

SHR, SHL = tirx.shift_right, tirx.shift_left


@lowers("segment_softmax", "qsegment_softmax")
def _lower_segment_softmax(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    shape = node.inputs[0].shape
    n, e, cols = int(node.attrs["num_segments"]), shape[0], prod(shape[1:])
    integer = node.op == "qsegment_softmax"
    iexp = {k: int(node.attrs[k]) for k in ("ln2", "b", "c", "n", "k")} if integer else {}
    out_dt = ctx.out_dtype(node)
    device = ctx.device
    shift = SOFTMAX_NORM_BITS - SOFTMAX_OUT_BITS

    def gen(s_buf: Any, i_buf: Any, o_buf: Any) -> Any:
        s, idx, out = (T.buffer_proxy(b) for b in (s_buf, i_buf, o_buf))
        in_dt = str(s_buf.dtype)
        acc = "int64" if integer else ("float64" if in_dt == "float64" else "float32")
        with IRBuilder() as ib:
            with T.seq_scope():
                mx = T.buffer_proxy(T.alloc_buffer([n * cols], acc, scope="global"))
                den = T.buffer_proxy(T.alloc_buffer([n * cols], acc, scope="global"))
                ex = T.buffer_proxy(T.alloc_buffer([e * cols], acc, scope="global"))
                with parallel_loop(device, cols) as c0:
                    col = cast("int64", c0)
                    with T.serial(0, n) as r:
                        mx[cast("int64", r) * cols + col] = lowest(acc)
                        den[cast("int64", r) * cols + col] = const(0, acc)
                    with T.serial(0, e) as i:
                        at = _row(idx[i], n) * cols + col
                        mx[at] = tirx.max(mx[at], cast(acc, s[cast("int64", i) * cols + col]))
                    with T.serial(0, e) as i:
                        j = cast("int64", i) * cols + col
                        at = _row(idx[i], n) * cols + col
                        diff = cast(acc, s[j]) - mx[at]
                        ex[j] = _i_exp(diff, **iexp) if integer else tirx.exp(diff)
                        den[at] = den[at] + ex[j]
                    with T.serial(0, e) as i:
                        j = cast("int64", i) * cols + col
                        total = den[_row(idx[i], n) * cols + col]
                        if integer:
                            factor = tirx.floordiv(SHL(i64(1), i64(SOFTMAX_NORM_BITS)), tirx.max(total, i64(1)))
                            y = SHR(ex[j] * factor + SHL(i64(1), i64(shift - 1)), i64(shift))
                            out[j] = clamp_to(y, "u8", out_dt)
                        else:
                            out[j] = cast(out_dt, ex[j] / total)
            return ib.get()

    def compute(s: te.Tensor, i: te.Tensor) -> te.Tensor:
        return te.extern([shape], [s, i], lambda ins, outs: gen(ins[0], ins[1], outs[0]), dtype=[out_dt],
                         name=node.op)

    assert integer or is_float(out_dt)
    return ctx.emit_te(node, compute, *args)


@lowers("irsqrt")
def _lower_irsqrt(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    bits = int(node.attrs["bits"])
    out_dt = ctx.out_dtype(node)
    shape = node.inputs[0].shape
    total, device = prod(shape), ctx.device

    # One loop of ISQRT_STEPS guarded Newton steps per element (a TE stage per step would be inlined into one
    # exponentially large expression).
    def gen(d_buf: Any, o_buf: Any) -> Any:
        d, out = T.buffer_proxy(d_buf), T.buffer_proxy(o_buf)
        with IRBuilder() as ib:
            with T.seq_scope():
                xs = T.buffer_proxy(T.alloc_buffer([total], "int64", scope="global"))
                with parallel_loop(device, total) as j:
                    q = tirx.floordiv(SHL(i64(1), i64(2 * bits)), tirx.max(i64(d[j]), i64(1)))
                    xs[j] = i64(1 << qgnn.ISQRT_START_BITS)
                    with T.serial(0, qgnn.ISQRT_STEPS):
                        v = xs[j]
                        xs[j] = tirx.max(tirx.min(v, SHR(v + tirx.floordiv(q, v), i64(1))), i64(1))
                    out[j] = cast(out_dt, tirx.Select(q == i64(0), i64(0), xs[j]))  # d > 4^bits: 0 (as the reference)
            return ib.get()

    def compute(d: te.Tensor) -> te.Tensor:
        return te.extern([shape], [d], lambda ins, outs: gen(ins[0], outs[0]), dtype=[out_dt], name="irsqrt")

    return ctx.emit_te(node, compute, args[0])
