"""Lowering of the fused GNN ops: segment_csr and gather_aggregate (kernels in `kernels/gnn.py`).

Both are hand-written TIR (`te.extern`), already parallel (CPU) or thread-bound (CUDA), so the schedule
registry and dlight leave them alone. A `segment_csr` of a constant index is a call on constants, which TVM's
FoldConstant evaluates at build time, so the CSR of a fixed graph is computed once, by the compiler.
"""

from __future__ import annotations

from typing import Any

from tvm import relax, te

from qcc.backends.tvm import lower_qgnn  # noqa: F401  (registers segment_softmax, qsegment_softmax, irsqrt)
from qcc.backends.tvm.kernels.gnn import AggregateSpec, aggregate_kernel, csr_kernel
from qcc.backends.tvm.lower_base import LowerCtx, lowers
from qcc.ir.graph import Node
from qcc.ir.ops.gnn import row_shapes


@lowers("segment_csr")
def _lower_segment_csr(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    n, e = int(node.attrs["num_segments"]), node.inputs[0].shape[0]
    gen = csr_kernel(ctx.device, n, e)

    def compute(idx: te.Tensor) -> list[te.Tensor]:
        return te.extern([(n + 1,), (e,)], [idx], lambda ins, outs: gen(ins[0], outs[0], outs[1]),
                         dtype=["int64", "int64"], name="segment_csr")

    out = ctx.emit_te(node, compute, args[0])
    return [ctx.bb.emit(relax.TupleGetItem(out, 0)), ctx.bb.emit(relax.TupleGetItem(out, 1))]


def aggregate_spec(node: Node, dtype: str) -> AggregateSpec:
    """The kernel description of a gather_aggregate node (row shapes resolved from its programs)."""
    a = node.attrs
    kinds = tuple(a["kinds"])
    ops = node.inputs[3:3 + len(kinds)]
    ir_dtype = ops[0].dtype
    rows: dict[str, tuple[int, ...]] = {
        f"x{i}": (v.shape if k == "const" else v.shape[1:]) for i, (v, k) in enumerate(zip(ops, kinds))}
    score_rows: tuple[tuple[int, ...], ...] = ()
    if a["score"]:
        score_rows = tuple(row_shapes(a["score"], rows, ir_dtype))
        rows["alpha"] = score_rows[-1]
    message_rows = tuple(row_shapes(a["message"], rows, ir_dtype))
    return AggregateSpec(n=node.inputs[0].shape[0] - 1, kinds=kinds, shapes=tuple(v.shape for v in ops),
                         score=tuple(a["score"]), message=tuple(a["message"]), reduce=str(a["reduce"]),
                         base=bool(a["base"]), include_self=bool(a["include_self"]), dtype=dtype, rows=rows,
                         score_rows=score_rows, message_rows=message_rows)


@lowers("gather_aggregate")
def _lower_gather_aggregate(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> relax.Expr:
    spec = aggregate_spec(node, ctx.out_dtype(node))
    gen = aggregate_kernel(spec, ctx.device)
    shape = node.outputs[0].shape

    def compute(*ts: Any) -> te.Tensor:
        return te.extern([shape], list(ts), lambda ins, outs: gen(ins, outs[0]), dtype=[spec.dtype],
                         name="gather_aggregate")

    return ctx.emit_te(node, compute, *args)
