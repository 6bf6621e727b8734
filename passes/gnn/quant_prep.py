"""gnn-quant-prep: put a reorganized GNN in the form the integer quantizer realizes (integer targets only).

Three exact rewrites, each on a recognised graph operator (float semantics unchanged; interpreter-checked):

- **Integer degrees**: a segment sum of constants, ``index_add(β·1, index, γ·1)`` with integral β and γ (GCN's
  ``deg = 1 + in-degree``), is counted in int32 and cast to float: ``cast(index_add(β, index, γ))``. The quantizer
  then reads it as an exact integer (scale 1) and ``rsqrt`` of it becomes ``irsqrt``.
- **Attention scores as a linear layer**: ``reduce_sum(x · C, last axis)`` with a constant ``C`` broadcast over the
  rows of ``x [N, M.., F]`` (GAT's per-head ``a_l·Wh`` after reorganisation) becomes
  ``reshape(linear(reshape(x, [N, M·F]), W))`` with the block-diagonal ``W [M, M·F]`` holding ``C``; the quantizer
  gives it per-channel int8 weights and an int32 accumulator.
- **Segment softmax**: each matched `SegmentSoftmax` (``exp`` / segment sum / gather / divide, with or without
  the max shift) becomes one ``segment_softmax(scores, index)`` op, realized as ``qsegment_softmax``.

Also here: `GnnIntegerFuse` (gnn-integer-fuse, after quantization: widening casts moved before gathers, then
gnn-fuse where it removes every |E|-row tensor) and `GnnScoreLinear` (gnn-score-linear, float targets before
gnn-fuse: the score reductions of one input as one GEMM + split, so that input is read once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcc.ir.graph import Graph, Node, Value, make_node
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import remove_dead_nodes
from qcc.ir.types import FLOAT_DTYPES, TensorType
from qcc.passes._stats import record_stats
from qcc.passes.gnn.graph_ops import match_segment_softmax

_MAX_COUNT = 2**24  # float32 counts are exact below this


def _const_integral(g: Graph, v: Value) -> np.ndarray | None:
    """The integral values of a float param (None if `v` is not one, or not integral / too large)."""
    if v not in g.params or v.dtype not in FLOAT_DTYPES:
        return None
    a = np.asarray(g.params[v], np.float64)
    if not np.all(np.isfinite(a)) or np.any(a != np.rint(a)) or np.any(np.abs(a) > 2**15):
        return None
    return np.rint(a).astype(np.int32)


@dataclass(frozen=True)
class GnnQuantPrep:
    """The three rewrites of the module docstring (integer degrees, score linears, segment softmax)."""

    name: ClassVar[str] = "gnn-quant-prep"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        counts = {"degree": 0, "score_linear": 0, "segment_softmax": 0}
        prods = g.producers()
        users = g.users()
        outputs = set(g.outputs)
        new: list[Node] = []
        for node in g.nodes:
            repl = (self._degree(g, node) or self._score_linear(g, node, prods, users, outputs)
                    or self._softmax(g, node, prods, users, outputs))
            if repl is None:
                new.append(node)
                continue
            kind, nodes = repl
            counts[kind] += 1
            new.extend(nodes)
        g.nodes = new
        removed = remove_dead_nodes(g)
        record_stats(ctx, self.name, {**counts, "removed": removed})
        return g

    @staticmethod
    def _finish(nodes: list[Node], old: Value) -> list[Node]:
        """Make the last node produce `old` (same type), so every user keeps reading the same value."""
        last = nodes[-1]
        if (last.outputs[0].shape, last.outputs[0].dtype) != (old.shape, old.dtype):
            raise AssertionError("gnn-quant-prep produced a value of the wrong type")
        last.outputs = (old,)
        return nodes

    def _degree(self, g: Graph, node: Node) -> tuple[str, list[Node]] | None:
        if node.op != "index_add" or node.attrs.get("axis") != 0 or node.output.dtype not in FLOAT_DTYPES:
            return None
        base, index, src = node.inputs
        b, s = _const_integral(g, base), _const_integral(g, src)
        if b is None or s is None or len(index.shape) != 1:
            return None
        if int(np.abs(b).max(initial=0)) + int(np.abs(s).sum()) >= _MAX_COUNT:
            return None
        bi = g.add_param(b, f"{base.name}.i32")
        si = g.add_param(s, f"{src.name}.i32")
        count = make_node("index_add", [bi, index, si], {"axis": 0}, name=node.name)
        cast = make_node("cast", [count.output], {"dtype": node.output.dtype}, name=node.name)
        return "degree", self._finish([count, cast], node.output)

    def _score_linear(self, g: Graph, node: Node, prods: dict[Value, Node], users: dict[Value, list[Node]],
                      outputs: set[Value]) -> tuple[str, list[Node]] | None:
        found = score_pattern(g, node, prods, users, outputs)
        if found is None:
            return None
        x, w = found
        return "score_linear", self._finish(score_linear_nodes(g, node, x, [w], [node.output]), node.output)

    def _softmax(self, g: Graph, node: Node, prods: dict[Value, Node], users: dict[Value, list[Node]],
                 outputs: set[Value]) -> tuple[str, list[Node]] | None:
        if node.op not in ("div", "mul"):
            return None
        sm = match_segment_softmax(node, g, prods)
        if sm is None:
            return None
        inside = set(sm.nodes)
        for n in sm.nodes:  # the pattern's intermediates must not be read elsewhere (they disappear)
            if n is node:
                continue
            for v in n.outputs:
                if v in outputs or any(u not in inside for u in users.get(v, [])):
                    return None
        seg = make_node("segment_softmax", [sm.scores, sm.index], {"num_segments": sm.num_segments}, name=node.name)
        seg.outputs[0].type = TensorType(sm.scores.shape, sm.scores.dtype)
        if sm.out.shape != sm.scores.shape:
            return None
        return "segment_softmax", self._finish([seg], sm.out)



@dataclass(frozen=True)
class GnnIntegerFuse:
    """gnn-fuse on a realized integer graph: first each widening ``cast(gather(t, i))`` becomes
    ``gather(cast(t), i)`` (a row-wise op moved before the gather, so the |E|-row int32 copy disappears and the
    table is a ``"src"`` / ``"dst"`` operand), then `GnnFuse` turns gather → integer edge ops → segment reduce into
    ``gather_aggregate`` (integer sums accumulate exactly; max / min are exact) where that removes every |E|-row
    tensor of the message (GCN's sums); messages with requantizing edge ops (GAT's α·h, EdgeConv's qadd) stay
    unfused."""

    name: ClassVar[str] = "gnn-integer-fuse"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        from qcc.passes.gnn.gnn_fuse import GnnFuse

        g = graph.copy()
        prods = g.producers()
        users = g.users()
        moved = 0
        new: list[Node] = []
        for node in g.nodes:
            gat = prods.get(node.inputs[0]) if node.op == "cast" else None
            if gat is None or gat.op != "gather" or gat.attrs.get("axis") != 0 or len(gat.inputs[1].shape) != 1 \
                    or node.output.dtype in FLOAT_DTYPES or gat.output.dtype in FLOAT_DTYPES \
                    or gat.inputs[0].shape[0] > gat.inputs[1].shape[0] or len(users.get(gat.output, [])) != 1:
                new.append(node)
                continue
            wide = make_node("cast", [gat.inputs[0]], dict(node.attrs), name=node.name)
            moved_gather = make_node("gather", [wide.output, gat.inputs[1]], dict(gat.attrs), name=gat.name)
            new.extend(GnnQuantPrep._finish([wide, moved_gather], node.output))
            moved += 1
        g.nodes = new
        remove_dead_nodes(g)
        record_stats(ctx, self.name, {"cast_moved": moved})
        return GnnFuse(edge_operands=False).run(g, ctx)


def score_pattern(g: Graph, node: Node, prods: dict[Value, Node], users: dict[Value, list[Node]],
                  outputs: set[Value]) -> tuple[Value, np.ndarray] | None:
    """(x, W) if `node` is ``reduce_sum(x · C, last axis)`` with a constant C broadcast over x's rows (not its
    vertex axis), the product used only there: the score equals ``linear(reshape(x, [N, M·F]), W)`` reshaped, with
    the block-diagonal W [M, M·F] holding C."""
    if node.op != "reduce_sum" or node.output.dtype not in FLOAT_DTYPES:
        return None
    mul = prods.get(node.inputs[0])
    if mul is None or mul.op != "mul" or mul.output in outputs or len(users.get(mul.output, [])) != 1:
        return None
    x_shape = mul.output.shape
    rank = len(x_shape)
    if rank < 2 or tuple(int(a) % rank for a in node.attrs["axes"]) != (rank - 1,):  # type: ignore[union-attr]
        return None
    for i in (0, 1):
        x, c = mul.inputs[i], mul.inputs[1 - i]
        lead = (1,) * (rank - len(c.shape)) + tuple(c.shape)
        if c in g.params and x not in g.params and x.shape == x_shape and len(c.shape) <= rank and lead[0] == 1:
            break
    else:
        return None
    f = x_shape[-1]
    m = int(np.prod(x_shape[1:-1], dtype=np.int64))
    try:
        cb = np.broadcast_to(np.asarray(g.params[c], np.float64).reshape(lead)[0], x_shape[1:]).reshape(m, f)
    except ValueError:
        return None
    w = np.zeros((m, m * f), np.float64)
    for r in range(m):
        w[r, r * f:(r + 1) * f] = cb[r]
    return x, w.astype(np.dtype(str(g.params[c].dtype)))


def score_linear_nodes(g: Graph, node: Node, x: Value, ws: list[np.ndarray], outs: list[Value]) -> list[Node]:
    """reshape(x, [N, K]) → one linear with the stacked score weights → split per score → reshape to each score's
    shape (the last node produces a value of `outs[-1]`'s type; the others produce `outs[:-1]` themselves)."""
    k = ws[0].shape[1]
    wv = g.add_param(np.concatenate(ws, axis=0), f"{node.name or 'score'}.linear_weight")
    flat = make_node("reshape", [x], {"shape": (x.shape[0], k)}, name=node.name)
    lin = make_node("linear", [flat.output, wv], {}, name=node.name)
    nodes = [flat, lin]
    parts = [lin.output]
    if len(ws) > 1:
        split = make_node("split", [lin.output], {"axis": 1, "sizes": tuple(w.shape[0] for w in ws)}, name=node.name)
        nodes.append(split)
        parts = list(split.outputs)
    for j, (part, out) in enumerate(zip(parts, outs)):
        back = make_node("reshape", [part], {"shape": tuple(out.shape)}, name=node.name)
        if j < len(outs) - 1:
            back.outputs = (out,)
        nodes.append(back)
    return nodes


@dataclass(frozen=True)
class GnnScoreLinear:
    """Attention scores ``reduce_sum(x · C)`` (GAT's ``a_l·Wh`` and ``a_r·Wh`` after reorganisation) as one linear
    per input: the scores of one x come from a single GEMM (x read once, the |V|×M·F products never written),
    then a split. Float targets run it before gnn-fuse."""

    name: ClassVar[str] = "gnn-score-linear"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        prods, users, outputs = g.producers(), g.users(), set(g.outputs)
        groups: dict[Value, list[tuple[Node, np.ndarray]]] = {}
        for node in g.nodes:
            found = score_pattern(g, node, prods, users, outputs)
            if found is not None:
                groups.setdefault(found[0], []).append((node, found[1]))
        first: dict[int, list[Node]] = {}
        drop: set[int] = set()
        for x, members in groups.items():
            outs = [n.output for n, _ in members]
            nodes = score_linear_nodes(g, members[0][0], x, [w for _, w in members], outs)
            nodes[-1].outputs = (outs[-1],)
            first[id(members[0][0])] = nodes
            drop.update(id(n) for n, _ in members)
        if not groups:
            return g
        new: list[Node] = []
        for node in g.nodes:
            if id(node) in first:
                new.extend(first[id(node)])
            elif id(node) not in drop:
                new.append(node)
        g.nodes = new
        removed = remove_dead_nodes(g)
        record_stats(ctx, self.name, {"scores": sum(len(m) for m in groups.values()), "linears": len(groups),
                                      "removed": removed})
        return g
