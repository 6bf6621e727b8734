"""gnn-fuse: gather -> edge-wise ops -> segment reduce (and segment softmax) becomes one `gather_aggregate`.

For every segment reduction (`SegmentReduce`, from `graph_ops`) the pass walks the reduced edge tensor back
through the ops it can express as an edge program (`qcc.ir.ops.gnn`): unary / binary elementwise ops,
row-preserving unsqueeze / reshape, and one `SegmentSoftmax` over the same destination index (its scores become
the score program, its output `alpha`). The leaves become the fused op's operands:

- an edge gather by the reduction's index -> a ``"dst"`` operand (the vertex table itself);
- an edge gather by one other index (the first one met) -> a ``"src"`` operand;
- a tensor without the edge axis (a weight, a bias) -> a ``"const"`` operand (a leading broadcast 1 dropped);
- a constant per-edge tensor whose rows are all equal (``ones(E)`` of a degree count) -> a ``"const"`` row;
- any other per-edge tensor -> an ``"edge"`` operand (read in place; the fused op still writes no |E| tensor).

The destination CSR (`segment_csr`) is emitted once per index value, and the source ids in CSR order
(``gather(src, order)``) once per (src, dst) pair, right after the indices are defined (ahead of every layer when
they are graph inputs), and shared by every fused op of the graph. Nodes left without users are removed. The
pass is a no-op on graphs without segment reductions. Stats: ``{"fused": n, "softmax": k, "csr": c}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcc.errors import VerificationError
from qcc.ir.graph import Graph, Node, Value, make_node
from qcc.ir.ops.gnn import BINARY as EDGE_BINARY
from qcc.ir.ops.gnn import PARAM_UNARY, UNARY, linear_in_alpha, row_shapes
from qcc.ir.ops.quant import INT_RANGES
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import remove_dead_nodes
from qcc.ir.types import dtype_from_numpy
from qcc.passes._stats import record_stats
from qcc.passes.gnn.analysis import OpCost, nbytes, register_cost
from qcc.passes.gnn.graph_ops import (
    SegmentReduce,
    SegmentSoftmax,
    index_root,
    match_gather,
    match_segment_reduce,
    match_segment_softmax,
    same_index,
)

# IR op -> edge-program op
_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "maximum": "max", "minimum": "min"}
_UNARY = {op: op for op in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "relu", "sigmoid", "tanh")}
_PARAM = {"leaky_relu": "alpha", "elu": "alpha"}
assert set(_BINARY.values()) <= set(EDGE_BINARY) and set(_UNARY) <= set(UNARY) and set(_PARAM) <= set(PARAM_UNARY)


class _Builder:
    """Builds the operand list and the edge programs of one fused reduction."""

    def __init__(self, graph: Graph, prods: dict[Value, Node], red: SegmentReduce, n_edges: int) -> None:
        self.graph, self.prods, self.red, self.e = graph, prods, red, n_edges
        self.operands: list[tuple[Value | np.ndarray, str]] = []
        self.src_index: Value | None = None
        self.softmax: SegmentSoftmax | None = None
        self.score: list[tuple[str, tuple[str, ...], Any]] = []
        self.prologue: list[Node] = []  # nodes to emit before the fused op (reshapes of consts)

    def operand(self, v: Value | np.ndarray, kind: str) -> str:
        for i, (w, k) in enumerate(self.operands):
            if w is v and k == kind:
                return f"x{i}"
        self.operands.append((v, kind))
        return f"x{len(self.operands) - 1}"

    def _edge_leaf(self, v: Value) -> str:
        arr = self.graph.params.get(v)
        if arr is not None and arr.size and np.all(arr == arr.reshape(-1)[:1].reshape((1,) * arr.ndim)[0]):
            return self.operand(np.array(arr[0], order="C"), "const")  # every edge's row is the same
        return self.operand(v, "edge")

    def _const(self, v: Value, out_rank: int) -> str:
        if len(v.shape) < out_rank:
            return self.operand(v, "const")
        arr = self.graph.params.get(v)  # rank == out rank, leading dim 1: drop it
        if arr is not None:
            return self.operand(np.array(arr[0], order="C"), "const")
        node = make_node("reshape", [v], {"shape": tuple(v.shape[1:])}, name=f"{v.name}_row")
        self.prologue.append(node)
        return self.operand(node.outputs[0], "const")

    def _is_edge(self, v: Value) -> bool:
        return len(v.shape) >= 1 and v.shape[0] == self.e

    def build(self, v: Value, prog: list[Any], memo: dict[Value, str], allow_softmax: bool) -> str:
        """The program reference computing the per-edge rows of `v` (instructions appended to `prog`)."""
        if v in memo:
            return memo[v]
        ref = self._build(v, prog, memo, allow_softmax)
        memo[v] = ref
        return ref

    def _build(self, v: Value, prog: list[Any], memo: dict[Value, str], allow_softmax: bool) -> str:
        node = self.prods.get(v)
        if node is None or not self._is_edge(v):
            return self._edge_leaf(v)
        g = match_gather(node, self.graph, self.prods)
        if g is not None:
            if same_index(g.index, self.red.index, self.prods) and g.table.shape[0] == self.red.num_segments:
                return self.operand(g.table, "dst")
            if self.src_index is None or same_index(g.index, self.src_index, self.prods):
                self.src_index = self.src_index or g.index
                return self.operand(g.table, "src")
            return self._edge_leaf(v)
        if allow_softmax and self.softmax is None:
            sm = match_segment_softmax(node, self.graph, self.prods)
            if sm is not None and same_index(sm.index, self.red.index, self.prods) \
                    and sm.num_segments == self.red.num_segments:
                score: list[Any] = []
                root = self.build(sm.scores, score, {}, False)
                if not score:
                    score.append(("id", (root,), None))
                self.softmax, self.score = sm, score
                return "alpha"
        rank = len(v.shape)
        if node.op == "qadd" and all(x.dtype == v.dtype and self._is_edge(x) and len(x.shape) == rank
                                     for x in node.inputs):
            at = node.attrs
            lo, hi = INT_RANGES[v.dtype]
            lo = lo if at.get("min") is None else max(lo, int(at["min"]))  # type: ignore[arg-type]
            hi = hi if at.get("max") is None else min(hi, int(at["max"]))  # type: ignore[arg-type]
            keys = ("a_multiplier", "b_multiplier", "shift", "a_zero_point", "b_zero_point", "zero_point")
            qparam = tuple(int(at[k]) for k in keys) + (lo, hi)  # type: ignore[arg-type]
            refs = tuple(self.build(x, prog, memo, allow_softmax) for x in node.inputs)
            return self._emit(prog, ("qadd", refs, qparam))
        if node.op in _BINARY and len(node.inputs) == 2 and node.inputs[0].dtype == v.dtype:
            refs = tuple(self.build(x, prog, memo, allow_softmax) if self._is_edge(x) and len(x.shape) == rank
                         else self._const(x, rank) for x in node.inputs)
            return self._emit(prog, (_BINARY[node.op], refs, None))
        if node.op in _UNARY or node.op in _PARAM:
            a = self.build(node.inputs[0], prog, memo, allow_softmax)
            attrs: dict[str, Any] = dict(node.attrs)
            param = float(attrs[_PARAM[node.op]]) if node.op in _PARAM else None
            return self._emit(prog, (_UNARY.get(node.op, node.op), (a,), param))
        x = node.inputs[0] if node.inputs else None
        if x is not None and self._is_edge(x):
            raw: Any = node.attrs.get("axes", ())
            if node.op == "unsqueeze" and all(int(a) % len(v.shape) != 0 for a in raw):
                axes = tuple(int(a) % len(v.shape) - 1 for a in raw)
                return self._emit(prog, ("unsqueeze", (self.build(x, prog, memo, allow_softmax),), axes))
            if node.op in ("reshape", "squeeze"):
                return self._emit(prog, ("reshape", (self.build(x, prog, memo, allow_softmax),), tuple(v.shape[1:])))
        return self._edge_leaf(v)

    @staticmethod
    def _emit(prog: list[Any], ins: tuple[str, tuple[str, ...], Any]) -> str:
        prog.append(ins)
        return f"t{len(prog) - 1}"


@dataclass(frozen=True)
class GnnFuse:
    """Fuse each segment reduction with the edge-wise ops and gathers feeding it (see the module docstring).

    With `edge_operands=False` a reduction whose message would still read a computed per-edge tensor (an ``"edge"``
    operand) is left alone: fusing it would not remove any |E|-row tensor (integer graphs use this)."""

    name: ClassVar[str] = "gnn-fuse"
    edge_operands: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        prods = g.producers()
        reds = [r for n in g.nodes if (r := match_segment_reduce(n, g, prods)) is not None]
        if not reds:
            return g
        position = {id(n): i for i, n in enumerate(g.nodes)}
        early: list[tuple[int, Node]] = []  # (position to insert before, node): CSR and col nodes
        at: dict[int, list[Node]] = {}  # node position -> nodes replacing it (prologue + fused op)
        csr: dict[tuple[Value, int], tuple[Value, Value]] = {}
        cols: dict[tuple[Value, Value, int], Value] = {}
        mapping: dict[Value, Value] = {}
        stats = {"fused": 0, "softmax": 0, "csr": 0}
        for red in reds:
            n_edges = red.index.shape[0]
            b = _Builder(g, prods, red, n_edges)
            message: list[Any] = []
            if len(red.src.shape) < 1 or red.src.shape[0] != n_edges:
                continue
            root = b.build(red.src, message, {}, True)
            if not message:
                message.append(("id", (root,), None))
            if not self.edge_operands and any(k == "edge" and isinstance(w, Value) for w, k in b.operands):
                continue
            if any(dtype_from_numpy(w.dtype) != red.src.dtype if isinstance(w, np.ndarray) else w.dtype != red.src.dtype
                   for w, _ in b.operands):
                continue  # mixed dtypes (e.g. an integer edge weight): leave this reduction alone
            ops_vals = [w if isinstance(w, Value) else g.add_param(w, f"{red.node.name or 'edge'}_row")
                        for w, _ in b.operands]
            dst_root = index_root(red.index, prods)
            key = (dst_root, red.num_segments)
            if key not in csr:
                node = make_node("segment_csr", [red.index], {"num_segments": red.num_segments},
                                 name=f"csr_{dst_root.name}")
                early.append((self._after(g, prods, position, [red.index]), node))
                csr[key] = (node.outputs[0], node.outputs[1])
                stats["csr"] += 1
            ptr, order = csr[key]
            col = order  # without a "src" operand the source ids are never read
            if b.src_index is not None:
                ckey = (index_root(b.src_index, prods), dst_root, red.num_segments)
                if ckey not in cols:
                    node = make_node("gather", [b.src_index, order], {"axis": 0}, name=f"col_{ckey[0].name}")
                    early.append((self._after(g, prods, position, [b.src_index, red.index]), node))
                    cols[ckey] = node.outputs[0]
                col = cols[ckey]
            inputs = [ptr, order, col, *ops_vals] + ([red.base] if red.base is not None else [])
            attrs: dict[str, Any] = {"kinds": tuple(k for _, k in b.operands), "score": tuple(b.score),
                                     "message": tuple(message), "reduce": red.reduce, "base": red.base is not None,
                                     "include_self": True}
            try:
                fused = make_node("gather_aggregate", inputs, attrs, name=red.node.name)
            except VerificationError:
                continue  # e.g. an edge op the program cannot express on this dtype
            at[position[id(red.node)]] = [*b.prologue, fused, red.node]
            mapping[red.out] = fused.outputs[0]
        if not mapping:
            return graph.copy()
        nodes: list[Node] = []
        early.sort(key=lambda t: t[0])
        k = 0
        for i, n in enumerate(g.nodes):
            while k < len(early) and early[k][0] <= i:
                nodes.append(early[k][1])
                k += 1
            nodes.extend(at.get(i, [n]))
        nodes.extend(node for _, node in early[k:])
        g.nodes = nodes
        g.replace_uses(mapping)
        remove_dead_nodes(g)
        fused_nodes = [n for n in g.nodes if n.op == "gather_aggregate"]
        stats["fused"] = len(fused_nodes)
        stats["softmax"] = sum(1 for n in fused_nodes if n.attrs["score"])
        record_stats(ctx, self.name, stats)
        return g

    @staticmethod
    def _after(g: Graph, prods: dict[Value, Node], position: dict[int, int], values: list[Value]) -> int:
        """The node position right after every producer of `values` (0 for graph inputs and params)."""
        pos = 0
        for v in values:
            node = prods.get(v)
            if node is not None:
                pos = max(pos, position[id(node)] + 1)
        return pos


# -- costs for qcc.passes.gnn.analysis -------------------------------------------------------------------------
_OP_FLOPS = {"exp": 4, "log": 4, "sigmoid": 4, "tanh": 4, "elu": 4, "sqrt": 2, "rsqrt": 2, "id": 0, "unsqueeze": 0,
             "reshape": 0}


def _program_cost(program: tuple[Any, ...], rows: dict[str, tuple[int, ...]], dtype: str) -> tuple[int, set[str]]:
    """FLOPs per edge of an edge program and the operand names it reads."""
    shapes = row_shapes(program, rows, dtype)
    flops = sum(_OP_FLOPS.get(op, 1) * math.prod(shape) for (op, _, _), shape in zip(program, shapes))
    return flops, {a for _, args, _ in program for a in args if a.startswith("x")}


def gather_aggregate_cost(node: Node) -> OpCost:
    """What the CPU CSR kernel does: with a softmax, a first sweep over each vertex's edges for the score max (and
    sum), then one sweep recomputing scores, weighting and reducing the messages; bytes are the CSR, the rows each
    sweep gathers (a destination row once per vertex), the base and the result. No edge-sized tensor is written."""
    a: dict[str, Any] = dict(node.attrs)
    kinds = tuple(a["kinds"])
    ops = node.inputs[3:3 + len(kinds)]
    ptr, order = node.inputs[0], node.inputs[1]
    n, e = ptr.shape[0] - 1, order.shape[0]
    rows = {f"x{i}": (v.shape if k == "const" else v.shape[1:]) for i, (v, k) in enumerate(zip(ops, kinds))}
    sweeps: list[set[str]] = []
    flops = 0
    if a["score"]:
        sflops, sreads = _program_cost(a["score"], rows, ops[0].dtype)
        rows["alpha"] = row_shapes(a["score"], rows, ops[0].dtype)[-1]
        per_score = math.prod(rows["alpha"])
        if linear_in_alpha(a["message"], a["reduce"]):  # max sweep, then exp + sum with the messages
            flops += e * (2 * sflops + per_score * (1 + 6))
        else:  # online max/sum sweep, then exp and divide with the messages
            flops += e * (2 * sflops + per_score * (11 + 6))
        sweeps.append(sreads)
    mflops, mreads = _program_cost(a["message"], rows, ops[0].dtype)
    out = node.outputs[0]
    flops += e * (mflops + math.prod(out.shape[1:]))
    sweeps.append(mreads | (sweeps[0] if sweeps else set()))  # the last sweep also recomputes the scores
    moved = nbytes(ptr)
    for reads in sweeps:  # a sweep loads the edge id only for "edge" operands and the source id only for "src" ones
        used = {kinds[int(r[1:])] for r in reads}
        moved += nbytes(order) * ("edge" in used) + nbytes(node.inputs[2]) * ("src" in used)
    for i, (v, k) in enumerate(zip(ops, kinds)):
        row_bytes = nbytes(v) // max(v.shape[0], 1) if k != "const" else nbytes(v)
        times = sum(f"x{i}" in s for s in sweeps)
        per = {"src": e * row_bytes, "edge": e * row_bytes, "dst": n * row_bytes, "const": row_bytes}[k]
        moved += per * times
    if a["base"]:
        moved += nbytes(node.inputs[-1])
    return OpCost(flops, moved + nbytes(out))


def segment_csr_cost(node: Node) -> OpCost:
    """Counting sort: the index read twice, offsets and order written, a fill cursor per segment."""
    idx = node.inputs[0]
    return OpCost(0, 2 * nbytes(idx) + sum(nbytes(v) for v in node.outputs) + 2 * nbytes(node.outputs[0]))


register_cost("gather_aggregate", gather_aggregate_cost)
register_cost("segment_csr", segment_csr_cost)
