"""gnn-reorganize: propagation-postponed operator reorganization (Zhang et al., MLSys 2022, §3.2).

A message-passing layer gathers vertex rows onto edges (``x[src]``) and then applies neural operations per edge.
When an operation is row-wise it commutes with the gather, ``f(x[i]) == f(x)[i]``, so it can run on |V| rows
instead of |E|. The rules, each a rule of the rewrite engine (`rules_gnn_reorganize`):

- ``move_unary``: an elementwise unary op, a per-row reduction / softmax / shape op that leaves axis 0 alone, and
  ``layer_norm`` over trailing axes, applied to ``x[i]``, become ``f(x)[i]``.
- ``move_binary``: ``x[i] ⊙ y[i]`` (the same index) becomes ``(x ⊙ y)[i]``; ``x[i] ⊙ c`` with ``c`` constant along
  the edge axis becomes ``(x ⊙ c)[i]``; ``linear(x[i], W, b)`` and ``matmul(x[i], W)`` (2-D ``W``) become
  ``linear(x, W, b)[i]`` and ``(x @ W)[i]``.
- ``split_concat``: a linear function of a concat of gathered rows splits into one term per part, the GAT score
  ``a·[Wh_dst ‖ Wh_src] = (a_l·Wh)[dst] + (a_r·Wh)[src]``: ``reduce_sum(concat(p, q) * a, last)``,
  ``concat(p, q) @ W`` and ``linear(concat(p, q), W, b)``; the terms then move before their gathers.
- ``distribute_linear``: ``linear(p ± q, W, b)`` / ``(p ± q) @ W`` with a gathered operand becomes
  ``linear(p, W, b) ± q @ Wᵀ`` (EdgeConv's ``Θ(x_j − x_i)``), so each term moves before its gather.
- ``regroup``: a sum (add/sub tree) or product (mul tree) of same-shaped edge terms groups the gathered terms by
  index, ``a[i] − b[j] + c[j]  ->  a[i] + (c − b)[j]`` (EdgeConv's ``(Φ − Θ)x``) and
  ``h[src]·u[src]·u[dst]  ->  (h·u)[src]·u[dst]`` (GCN's symmetric normalisation).
- ``push_shape_through_binary``: a reshape-like op of an elementwise binary op of same-shaped gathered operands
  applies to each operand (so the gathers surface for the rules above).
- ``merge_linear``: ``linear(x, A) ± linear(x, B)`` with constant weights feeding a gather becomes
  ``linear(x, A ± B)`` (so EdgeConv keeps two GEMMs over |V| rows, as dgNN computes it).
- ``postscale_segment_sum``: ``index_add(base, j, m * s[j])`` with a per-destination factor ``s`` becomes
  ``base + segment_sum(m, j) * s`` (the scale runs once per vertex; the segment sum becomes a plain SpMM).

After the rules, `merge_duplicates` drops nodes that repeat an earlier one (the twins the moves leave behind).

A rule fires only when the gather has at least as many edges as its table has rows (moving an op before it never
adds work), and the pass does nothing on a graph without both an edge gather and a segment reduction
(`qcc.passes.gnn.graph_ops.has_graph_ops`), so CNNs, transformers and embedding lookups are left alone.
Rewrites are exact in real arithmetic; in floating point they reorder sums and products (allclose, not bitwise).
The pass records the GNN cost analysis of the graph it receives in ``ctx.options["gnn_analysis_before"]`` and
its rule counts in ``ctx.options["gnn_rules"]`` (both shown by ``CompiledModel.report()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import Pat, RewriteBuilder, Rules, Var, rewrite
from qcc.ir.types import numpy_dtype
from qcc.passes._stats import record_stats
from qcc.passes.gnn.analysis import analyze
from qcc.passes.gnn.graph_ops import has_graph_ops, index_root, is_zeros, match_segment_softmax, same_index
from qcc.passes.gnn.regroup import regroup

UNARY = ("relu", "relu6", "sigmoid", "silu", "hardswish", "hardsigmoid", "tanh", "exp", "log", "sqrt", "rsqrt",
         "neg", "abs", "erf", "reciprocal", "floor", "ceil", "round", "sin", "cos", "gelu", "elu", "leaky_relu",
         "clip", "cast")
REDUCE = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")
SHAPE = ("reshape", "squeeze", "unsqueeze", "transpose")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")


def _gather(name: str) -> Pat:
    return Pat("gather", Var(f"{name}_table"), Var(f"{name}_index"), name=name, attrs={"axis": 0})


def worth_moving(table: Value, index: Value) -> bool:
    """Whether an op after ``table[index]`` may move before it: a 1-D index at least as long as the table."""
    return len(index.shape) == 1 and len(table.shape) >= 1 and index.shape[0] >= table.shape[0]


def _regather(b: RewriteBuilder, x: Value, index: Value) -> Value:
    return b.emit("gather", [x, index], {"axis": 0})


# -- unary row-wise ops -----------------------------------------------------------------------------------------------
def _row_wise_attrs(node: Node, rows: int) -> dict[str, Any] | None:
    """The attrs of `node` applied to the table instead of the gathered rows, or None if it is not row-wise."""
    op = node.op
    attrs: dict[str, Any] = dict(node.attrs)
    if op in UNARY:
        return attrs
    if op in REDUCE:
        axes = attrs.get("axes", ())
        return attrs if axes and 0 not in axes else None
    if op in ("softmax", "log_softmax"):
        return attrs if attrs.get("axis") != 0 else None
    if op in ("squeeze", "unsqueeze"):
        return attrs if 0 not in attrs.get("axes", ()) else None
    if op == "transpose":
        perm = attrs.get("perm", ())
        return attrs if perm and perm[0] == 0 else None
    if op == "reshape":
        shape = node.outputs[0].shape
        if not shape or shape[0] != node.inputs[0].shape[0]:
            return None
        return {"shape": (rows,) + tuple(shape[1:])}
    return None


def move_unary(b: RewriteBuilder, root: Node, g: Node, g_table: Value, g_index: Value) -> Value | None:
    """``f(x[i]) -> f(x)[i]`` for a row-wise unary op `f` (see `_row_wise_attrs`)."""
    if not worth_moving(g_table, g_index):
        return None
    attrs = _row_wise_attrs(root, g_table.shape[0])
    if attrs is None:
        return None
    return _regather(b, b.emit(root.op, [g_table], attrs), g_index)


def move_layer_norm(b: RewriteBuilder, root: Node, g: Node, g_table: Value, g_index: Value, w: Value,
                    bias: Value) -> Value | None:
    """``layer_norm(x[i]) -> layer_norm(x)[i]`` when it normalises trailing axes only."""
    if not worth_moving(g_table, g_index) or int(root.attrs.get("axis", 0)) < 1:  # type: ignore[arg-type]
        return None
    return _regather(b, b.emit("layer_norm", [g_table, w, bias], dict(root.attrs)), g_index)


# -- binary ops -------------------------------------------------------------------------------------------------------
def _edge_invariant(c: Value, out: Value) -> bool:
    """`c` broadcasts against an edge tensor `out` without touching its edge axis (axis 0)."""
    return len(c.shape) < len(out.shape) or (len(c.shape) == len(out.shape) and c.shape[0] == 1)


def move_binary_same_index(b: RewriteBuilder, root: Node, g: Node, g_table: Value, g_index: Value, h: Node,
                           h_table: Value, h_index: Value) -> Value | None:
    """``x[i] ⊙ y[i] -> (x ⊙ y)[i]`` (the same index, tables with the same row count, edge axis aligned)."""
    out = root.outputs[0]
    if g_table.shape[0] != h_table.shape[0] or not worth_moving(g_table, g_index):
        return None
    if not (len(g.outputs[0].shape) == len(h.outputs[0].shape) == len(out.shape)):
        return None
    prods = b.graph.producers()
    if not same_index(g_index, h_index, prods):
        return None
    return _regather(b, b.emit(root.op, [g_table, h_table], dict(root.attrs)), g_index)


def move_binary_const(b: RewriteBuilder, root: Node, g: Node, g_table: Value, g_index: Value,
                      c: Value) -> Value | None:
    """``x[i] ⊙ c -> (x ⊙ c)[i]`` (either order) for `c` constant along the edge axis."""
    out = root.outputs[0]
    if not worth_moving(g_table, g_index) or len(g.outputs[0].shape) != len(out.shape):
        return None
    if not _edge_invariant(c, out):
        return None
    operands = [g_table, c] if root.inputs[0] is g.outputs[0] else [c, g_table]
    return _regather(b, b.emit(root.op, operands, dict(root.attrs)), g_index)


def move_linear(b: RewriteBuilder, root: Node, g: Node, g_table: Value, g_index: Value, w: Value,
                bias: Value | None = None) -> Value | None:
    """``linear(x[i], W, b) -> linear(x, W, b)[i]`` and ``x[i] @ W -> (x @ W)[i]`` (2-D W, x at least 2-D)."""
    if not worth_moving(g_table, g_index) or root.inputs[0] is not g.outputs[0] or len(g_table.shape) < 2:
        return None
    rest = list(root.inputs[1:])
    if root.op == "matmul" and len(rest[0].shape) != 2:
        return None
    if any(v is g.outputs[0] for v in rest):
        return None
    return _regather(b, b.emit(root.op, [g_table, *rest], dict(root.attrs)), g_index)


# -- concat split (GAT score) ----------------------------------------------------------------------------------------
def _has_gathered_part(parts: tuple[Value, ...], prods: dict[Value, Node]) -> bool:
    return any((n := prods.get(p)) is not None and n.op == "gather" and n.attrs.get("axis") == 0 for p in parts)


def _slice_last(b: RewriteBuilder, c: Value, start: int, stop: int) -> Value:
    data = b.value_of(c)
    if data is not None:
        return b.const(np.ascontiguousarray(data[..., start:stop]))
    axis = len(c.shape) - 1
    return b.emit("slice", [c], {"starts": (start,), "ends": (stop,), "axes": (axis,), "steps": (1,)})


def _sum(b: RewriteBuilder, terms: list[Value]) -> Value:
    acc = terms[0]
    for t in terms[1:]:
        acc = b.emit("add", [acc, t])
    return acc


def split_concat_score(b: RewriteBuilder, root: Node, m: Node, cat: Node, a: Value) -> Value | None:
    """``reduce_sum(concat(p, q, -1) * a, -1) -> reduce_sum(p * a_p, -1) + reduce_sum(q * a_q, -1)``."""
    x = cat.outputs[0]
    last = len(x.shape) - 1
    if cat.attrs.get("axis") != last or tuple(root.attrs.get("axes", ())) != (last,):  # type: ignore[arg-type]
        return None
    if m.outputs[0].shape != x.shape or not _has_gathered_part(cat.inputs, b.graph.producers()):
        return None
    if a is x or not a.shape:
        return None
    if a.shape[-1] not in (1, x.shape[-1]):
        return None
    terms, off = [], 0
    for p in cat.inputs:
        width = p.shape[-1]
        ap = a if a.shape[-1] == 1 else _slice_last(b, a, off, off + width)
        off += width
        terms.append(b.emit("reduce_sum", [b.emit("mul", [p, ap]), ], dict(root.attrs)))
    return _sum(b, terms)


def split_concat_linear(b: RewriteBuilder, root: Node, cat: Node, w: Value, bias: Value | None = None
                        ) -> Value | None:
    """``concat(p, q, -1) @ W -> p @ W[:fp] + q @ W[fp:]`` and the same for ``linear`` (bias added once)."""
    x = cat.outputs[0]
    last = len(x.shape) - 1
    if root.inputs[0] is not x or cat.attrs.get("axis") != last or last < 1:
        return None
    if not _has_gathered_part(cat.inputs, b.graph.producers()):
        return None
    if len(w.shape) != 2:
        return None
    terms, off = [], 0
    for k, p in enumerate(cat.inputs):
        width = p.shape[-1]
        if root.op == "matmul":
            wt = b.value_of(w)
            wp = b.const(np.ascontiguousarray(wt[off:off + width])) if wt is not None else b.emit(
                "slice", [w], {"starts": (off,), "ends": (off + width,), "axes": (0,), "steps": (1,)})
            terms.append(b.emit("matmul", [p, wp]))
        else:
            wp = _slice_last(b, w, off, off + width)
            extra = list(root.inputs[2:]) if k == 0 else []
            terms.append(b.emit("linear", [p, wp, *extra]))
        off += width
    return _sum(b, terms)


# -- distribute a linear map over a sum of gathered terms (EdgeConv) -------------------------------------------------
def distribute_linear(b: RewriteBuilder, root: Node, s: Node, p: Value, q: Value, w: Value,
                      bias: Value | None = None) -> Value | None:
    """``linear(p ± q, W, b) -> linear(p, W, b) ± linear(q, W)`` (and ``matmul``) when p or q is gathered."""
    x = s.outputs[0]
    if root.inputs[0] is not x or not (p.shape == q.shape == x.shape) or len(x.shape) < 2:
        return None
    if not _has_gathered_part((p, q), b.graph.producers()):
        return None
    if root.op == "matmul" and len(w.shape) != 2:
        return None
    first = b.emit(root.op, [p, *root.inputs[1:]], dict(root.attrs))
    second = b.emit(root.op, [q, w], dict(root.attrs))
    return b.emit(s.op, [first, second])


def merge_linear(b: RewriteBuilder, root: Node) -> Value | None:
    """``linear(x, A, a) ± linear(x, B, c) -> linear(x, A ± B, a ± c)`` for constant weights (EdgeConv's
    ``Φx − Θx = (Φ − Θ)x``); also ``x @ A ± x @ B``. Only on vertex tensors feeding a gather (GNN layers)."""
    prods = b.graph.producers()
    p, q = (prods.get(v) for v in root.inputs)
    if p is None or q is None or p.op != q.op or p.op not in ("linear", "matmul") or p.inputs[0] is not q.inputs[0]:
        return None
    if p.outputs[0].shape != root.outputs[0].shape or q.outputs[0].shape != root.outputs[0].shape:
        return None
    users = b.graph.users().get(root.outputs[0], [])
    if not any(u.op == "gather" and u.inputs[0] is root.outputs[0] for u in users):
        return None
    data = [[b.value_of(v) for v in n.inputs[1:]] for n in (p, q)]
    if any(d is None for ds in data for d in ds):
        return None
    sign = 1.0 if root.op == "add" else -1.0
    w = b.const(np.ascontiguousarray(data[0][0] + sign * data[1][0]))  # type: ignore[operator]
    rest: list[Value] = []
    if len(data[0]) > 1 or len(data[1]) > 1:
        zero = np.zeros(root.outputs[0].shape[-1], numpy_dtype(root.outputs[0].dtype))
        bp = data[0][1] if len(data[0]) > 1 else zero
        bq = data[1][1] if len(data[1]) > 1 else zero
        rest = [b.const(np.ascontiguousarray(bp + sign * bq))]  # type: ignore[operator]
    return b.emit(p.op, [p.inputs[0], w, *rest])


# -- shape ops through binary ops ------------------------------------------------------------------------------------
def push_shape_through_binary(b: RewriteBuilder, root: Node, e: Node, p: Value, q: Value) -> Value | None:
    """``unsqueeze(p ⊙ q) -> unsqueeze(p) ⊙ unsqueeze(q)`` (any reshape-like op) when p and q have the same shape
    and one of them is gathered."""
    x = e.outputs[0]
    prods = b.graph.producers()
    if not (p.shape == q.shape == x.shape) or not _has_gathered_part((p, q), prods):
        return None
    if match_segment_softmax(e, b.graph, prods) is not None:  # keep the softmax whole for the fusion pass
        return None
    attrs = dict(root.attrs)
    return b.emit(e.op, [b.emit(root.op, [p], attrs), b.emit(root.op, [q], attrs)])


# -- post-scaling a segment sum --------------------------------------------------------------------------------------
def postscale_segment_sum(b: RewriteBuilder, root: Node, base: Value, index: Value, m: Node) -> Value | None:
    """``index_add(base, j, x * s[j]) -> base + index_add(0, j, x) * s`` for a per-destination factor ``s``."""
    if root.attrs.get("axis") != 0 or len(index.shape) != 1:
        return None
    prods = b.graph.producers()
    out = root.outputs[0]
    for k in (0, 1):
        x, f = m.inputs[k], m.inputs[1 - k]
        fnode = prods.get(f)
        if fnode is None or fnode.op != "gather" or fnode.attrs.get("axis") != 0:
            continue
        s, sidx = fnode.inputs
        if x.shape != m.outputs[0].shape or len(f.shape) != len(x.shape) or s.shape[0] != out.shape[0]:
            continue
        if index_root(sidx, prods) is not index_root(index, prods):
            continue
        if out.dtype not in ("f16", "f32", "f64"):
            return None
        zeros = b.const(np.zeros(out.shape, numpy_dtype(out.dtype)))
        summed = b.emit("index_add", [zeros, index, x], {"axis": 0})
        scaled = b.emit("mul", [summed, s])
        if scaled.shape != out.shape:
            return None
        return scaled if is_zeros(base, b.graph) else b.emit("add", [base, scaled])
    return None


def _linear_pats(first: Pat) -> list[Pat]:
    """``matmul(first, w)``, ``linear(first, w)`` and ``linear(first, w, bias)``."""
    return [Pat("matmul", first, Var("w"), name="root"), Pat("linear", first, Var("w"), name="root"),
            Pat("linear", first, Var("w"), Var("bias"), name="root")]


_G = _gather("g")
_H = _gather("h")
_CAT = Pat("concat", any_inputs=True, name="cat")
rules_gnn_reorganize = Rules([
    (Pat(UNARY + REDUCE + SHAPE + ("softmax", "log_softmax"), _G, name="root"), move_unary),
    (Pat("layer_norm", _G, Var("w"), Var("bias"), name="root"), move_layer_norm),
    (Pat("reduce_sum", Pat("mul", _CAT, Var("a"), name="m"), name="root"), split_concat_score),
    (Pat("reduce_sum", Pat("mul", Var("a"), _CAT, name="m"), name="root"), split_concat_score),
    *[(p, split_concat_linear) for p in _linear_pats(_CAT)],
    *[(p, distribute_linear) for p in _linear_pats(Pat(("add", "sub"), Var("p"), Var("q"), name="s"))],
    *[(p, move_linear) for p in _linear_pats(_G)],
    (Pat(BINARY, _G, _H, name="root"), move_binary_same_index),
    (Pat(BINARY, _G, Var("c"), name="root"), move_binary_const),
    (Pat(BINARY, Var("c"), _G, name="root"), move_binary_const),
    (Pat(("add", "sub", "mul"), any_inputs=True, name="root"), regroup),
    (Pat(("add", "sub"), any_inputs=True, name="root"), merge_linear),
    (Pat(("unsqueeze", "squeeze", "reshape"), Pat(("add", "sub", "mul"), Var("p"), Var("q"), name="e"),
         name="root"), push_shape_through_binary),
    (Pat("index_add", Var("base"), Var("index"), Pat("mul", any_inputs=True, name="m"), name="root"),
     postscale_segment_sum),
])


@dataclass(frozen=True)
class GnnReorganize:
    """Apply `rules_gnn_reorganize` to a fixed point on a message-passing graph; a no-op on any other graph.

    Adds the number of applications per rule to ``ctx.stats["gnn-reorganize"]`` and stores the cost analysis of
    the input graph in ``ctx.options["gnn_analysis_before"]`` (the first time it runs).
    """

    name: ClassVar[str] = "gnn-reorganize"
    max_iters: int = 64

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if not has_graph_ops(graph):
            return graph
        ctx.options.setdefault("gnn_analysis_before", analyze(graph))
        stats: dict[str, int] = {}
        g = rewrite(graph, rules_gnn_reorganize, name=self.name, max_iters=self.max_iters, stats=stats)
        merged = merge_duplicates(g)
        if merged:
            stats["merge_duplicates"] = merged
        record_stats(ctx, self.name, stats)
        ctx.options["gnn_rules"] = dict(ctx.stats.get(self.name, {}))  # for the library report
        return g


def merge_duplicates(g: Graph) -> int:
    """Drop nodes that repeat an earlier node (same op, the same input values, equal attrs), in place; the rules
    leave such twins when two edge terms move the same vertex op before their gathers (``(x@W)[src] − (x@W)[dst]``).
    Every IR op is a pure function of its inputs, so a twin computes the same values. Returns nodes dropped."""
    seen: dict[tuple[Any, ...], Node] = {}
    mapping: dict[Value, Value] = {}
    kept: list[Node] = []
    dropped = 0
    for node in g.nodes:
        if mapping and any(v in mapping for v in node.inputs):
            node.inputs = tuple(mapping.get(v, v) for v in node.inputs)
        key = (node.op, tuple(id(v) for v in node.inputs), repr(sorted(node.attrs.items())))
        twin = seen.get(key)
        if twin is not None and len(twin.outputs) == len(node.outputs):
            mapping.update(zip(node.outputs, twin.outputs))
            dropped += 1
            continue
        seen[key] = node
        kept.append(node)
    g.nodes = kept
    g.replace_uses(mapping)
    return dropped
