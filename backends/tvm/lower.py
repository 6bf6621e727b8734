"""Lower a qcc Graph to a Relax IRModule.

The function `main` takes the graph inputs as parameters (in order, with the graph's dtypes) and returns a
tuple of the graph outputs. Parameters become `relax.const`s, so the weights travel inside the compiled
executable and the exported shared library (the VM executable serialises its constant pool into the
library). Each node becomes one `call_tir` of a TE/TIR kernel produced by the rule in `LOWER[node.op]`;
every kernel carries the function attribute `qcc.op` naming the qcc op it came from.

With `float16=True` the function computes every f32 value in float16: f32 inputs are cast on entry, f32
params are converted while lowering, and f32 outputs are cast back to float32, so callers see the graph's
own signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, te

# Importing the rule modules fills LOWER.
from qcc.backends.tvm import (  # noqa: F401
    lower_attention,
    lower_cuda_int8,
    lower_elementwise,
    lower_gnn,
    lower_nn,
    lower_pool,
    lower_quant,
    lower_quant_nonlinear,
    lower_scatter,
    lower_shape,
)
from qcc.backends.tvm.lower_base import LOWER, OP_ATTR, TVM_DTYPES, LowerCtx
from qcc.errors import BackendError, UnsupportedOperatorError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops.registry import complete_attrs, get_op

__all__ = ["LOWER", "OP_ATTR", "TVM_DTYPES", "Lowered", "lower"]


@dataclass
class Lowered:
    """The result of lowering: the module and, per kernel (prim_func name), the qcc op it implements."""

    mod: tvm.IRModule
    kernel_ops: dict[str, str]
    stats: dict[str, int] = field(default_factory=dict)  # template lowering counts (lower_templates)


def _cast_to(ctx: LowerCtx, expr: relax.Expr, dtype: str, node_name: str) -> relax.Expr:
    fake = Node("cast", (), (), {"dtype": dtype}, {}, node_name)
    return ctx.emit_te(fake, lambda x: te.compute(x.shape, lambda *i: x(*i).astype(dtype), name="cast"), expr,
                       name="boundary_cast")


def _param_const(ctx: LowerCtx, value: Value, array: np.ndarray) -> relax.Constant:
    dtype = ctx.dtype(value.dtype)
    data = np.ascontiguousarray(array).astype(dtype, copy=False)
    return relax.const(data, dtype)


def lower(graph: Graph, device: str = "cpu", float16: bool = False, templates: bool | None = None,
          tune: bool = False, quiet: bool = True, fusion: str = "tvm") -> Lowered:
    """Lower `graph` to a Relax module with entry function `main` (see the module docstring).

    `templates` (default: on for cpu float32) routes conv2d / linear / matmul and their epilogues through the
    hand-scheduled kernel templates with the layout pass (`lower_templates`); `tune` measures their parameter
    candidates first (progress on stderr unless `quiet`). `fusion`: "auto" materialises the groups of the fuse
    pass (`lower_fused`; the pass runs here when the graph carries no decisions; TVM's FuseOps later merges only
    what they left alone), "off" fuses nothing, "tvm" leaves fusion to TVM's FuseOps."""
    if templates is None:
        templates = device == "cpu" and not float16
    missing = [(n.op, n.name or f"#{i}") for i, n in enumerate(graph.nodes) if n.op not in LOWER]
    if missing:
        raise UnsupportedOperatorError(missing, model=f"graph {graph.name!r} (TVM lowering)")
    if fusion == "auto":
        from qcc.backends.tvm.lower_fused import ensure_meta

        graph = ensure_meta(graph, device, fusion)
    bb = relax.BlockBuilder()
    ctx = LowerCtx(bb, device=device, float16=float16)
    fused = None
    params = [relax.Var(v.name or f"input{i}", relax.TensorType(v.shape, TVM_DTYPES[v.dtype]))
              for i, v in enumerate(graph.inputs)]
    env: dict[Value, relax.Expr] = {}
    fast = None
    with bb.function("main", params):
        with bb.dataflow():
            for v, p in zip(graph.inputs, params):
                inner = ctx.dtype(v.dtype)
                env[v] = p if inner == TVM_DTYPES[v.dtype] else _cast_to(ctx, p, inner, v.name)
            for v, array in graph.params.items():
                env[v] = _param_const(ctx, v, array)
            if templates:
                from qcc.backends.tvm.lower_templates import TemplateLowering

                fast = TemplateLowering(ctx, graph, lambda node, args: _lower_rule(ctx, node, args), tune=tune,
                                        quiet=quiet, fusion=fusion)
                for v, expr in env.items():
                    fast.set(v, expr)
                for node in graph.nodes:
                    fast.lower_node(node)
            else:
                if fusion == "auto":
                    from qcc.backends.tvm.lower_fused import FusedLowering

                    fused = FusedLowering(ctx, graph, lambda node, args: _lower_rule(ctx, node, args))
                for node in graph.nodes:
                    if fused is not None and fused.owns(node):
                        fused.lower(node, env.__getitem__, env.__setitem__)
                    else:
                        _lower_node(ctx, node, env)
            outs = []
            for v in graph.outputs:
                expr = env[v] if fast is None else fast.get(v, "NCHW")
                if ctx.dtype(v.dtype) != TVM_DTYPES[v.dtype]:
                    expr = _cast_to(ctx, expr, TVM_DTYPES[v.dtype], v.name)
                outs.append(expr)
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    mod = bb.get()
    for gv, func in list(mod.functions_items()):
        op = ctx.kernel_ops.get(gv.name_hint)
        if op is not None and isinstance(func, tvm.tirx.PrimFunc):
            mod[gv] = func.with_attr(OP_ATTR, op)
    stats = dict(fast.stats) if fast is not None else dict(fused.stats) if fused is not None else {}
    return Lowered(mod, dict(ctx.kernel_ops), stats)


def _lower_node(ctx: LowerCtx, node: Node, env: dict[Value, relax.Expr]) -> None:
    try:
        args = [env[v] for v in node.inputs]
    except KeyError as e:
        raise BackendError(f"node {node.name or node.op!r}: input {e} is used before it is defined") from e
    for v, expr in zip(node.outputs, _lower_rule(ctx, node, args)):
        env[v] = expr


def _lower_rule(ctx: LowerCtx, node: Node, args: list[relax.Expr]) -> list[relax.Expr]:
    """Apply the generic rule of `node.op` to its argument expressions; one expression per output."""
    try:
        # Rules read attributes with the registry's defaults filled in.
        full = Node(node.op, node.inputs, node.outputs, complete_attrs(get_op(node.op), node.attrs), node.meta,
                    node.name)
        result = LOWER[node.op](ctx, full, args)
    except BackendError:
        raise
    except Exception as e:  # TVM errors: name the node and its types
        types = ", ".join(f"{v.dtype}{list(v.shape)}" for v in node.inputs)
        raise BackendError(f"lowering {node.op}({types}) {dict(node.attrs)} (node {node.name!r}) to TVM failed: "
                           f"{type(e).__name__}: {e}") from e
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(node.outputs):
        raise BackendError(f"lowering of {node.op} returned {len(results)} values for {len(node.outputs)} outputs")
    return results
