"""Cost analysis of a graph: FLOPs, bytes moved between memory and kernels, peak intermediate memory.

Each node is taken to be one kernel that reads its inputs from memory and writes its outputs back (the model of an
unfused executor), so ``bytes`` of a node is what it reads plus what it writes. A gather reads only the rows it
copies (plus the index); a segment reduction reads its base, index and source and writes its result. Reshape-like
ops are views: they cost nothing and alias their input's buffer.

Per-op costs come from `COST_FUNCTIONS`, keyed by op name; `register_cost(op, fn)` adds or replaces one (a fused
op registers its own cost, which is how the fusion pass reports that it never writes an edge tensor). Ops without
an entry get the elementwise default (one FLOP per output element, inputs plus outputs moved).

Peak intermediate memory is a liveness walk over node order: a node's outputs are allocated when it runs and freed
after their last use (graph outputs stay live); inputs and parameters are not counted. ``edge_bytes`` sums the
node outputs whose leading extent is an edge count (the length of a gather index) and not a vertex count: the
|E|×F tensors the reorganization and fusion passes try to remove.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from qcc.ir.graph import Graph, Node, Value

VIEW_OPS = ("reshape", "squeeze", "unsqueeze")
_COPY_OPS = ("transpose", "concat", "split", "slice", "expand", "tile", "pad", "cast", "where")
_FLOPS_PER_ELEMENT = {"exp": 4, "log": 4, "sigmoid": 4, "tanh": 4, "erf": 4, "gelu": 8, "silu": 5, "elu": 4,
                      "rsqrt": 2, "sqrt": 2, "div": 1, "pow": 4, "softmax": 5, "log_softmax": 5, "layer_norm": 8,
                      "batch_norm": 2}


@dataclass(frozen=True)
class OpCost:
    """FLOPs a kernel performs and bytes it moves between memory and the kernel."""

    flops: int
    bytes: int


def nbytes(v: Value) -> int:
    """Bytes of a dense tensor value (sub-byte dtypes rounded up per element to one byte)."""
    width = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "i16": 2}.get(v.dtype, 1)
    return math.prod(v.shape) * width


def _numel(v: Value) -> int:
    return math.prod(v.shape)


def _io(node: Node) -> int:
    return sum(nbytes(v) for v in node.inputs) + sum(nbytes(v) for v in node.outputs)


def _default_cost(node: Node) -> OpCost:
    if node.op in VIEW_OPS:
        return OpCost(0, 0)
    out = sum(_numel(v) for v in node.outputs)
    flops = 0 if node.op in _COPY_OPS else out * _FLOPS_PER_ELEMENT.get(node.op, 1)
    return OpCost(flops, _io(node))


def _gather_cost(node: Node) -> OpCost:
    index, out = node.inputs[1], node.outputs[0]
    return OpCost(0, nbytes(index) + 2 * nbytes(out))  # read the copied rows, write them


def _segment_cost(node: Node) -> OpCost:
    return OpCost(_numel(node.inputs[2]), _io(node))


def _matmul_cost(node: Node) -> OpCost:
    a, out = node.inputs[0], node.outputs[0]
    k = a.shape[-1] if a.shape else 1
    return OpCost(2 * _numel(out) * k, _io(node))


def _reduce_cost(node: Node) -> OpCost:
    return OpCost(_numel(node.inputs[0]), _io(node))


def _conv_cost(node: Node) -> OpCost:
    w, out = node.inputs[1], node.outputs[0]
    return OpCost(2 * _numel(out) * math.prod(w.shape[1:]), _io(node))


CostFn = Callable[[Node], OpCost]
COST_FUNCTIONS: dict[str, CostFn] = {
    "gather": _gather_cost, "index_add": _segment_cost, "index_reduce": _segment_cost,
    "scatter_elements": _segment_cost, "matmul": _matmul_cost, "linear": _matmul_cost, "qmatmul": _matmul_cost,
    "qlinear": _matmul_cost, "conv2d": _conv_cost, "qconv2d": _conv_cost,
    **{op: _reduce_cost for op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")},
}


def register_cost(op: str, fn: CostFn) -> None:
    """Use `fn(node) -> OpCost` for nodes of `op` (replacing any earlier entry)."""
    COST_FUNCTIONS[op] = fn


def node_cost(node: Node) -> OpCost:
    """The cost of one node: its registered cost function, else the elementwise default."""
    return COST_FUNCTIONS.get(node.op, _default_cost)(node)


@dataclass(frozen=True)
class GraphCost:
    """Totals of a graph (see the module docstring), and FLOPs / bytes per op name."""

    flops: int
    bytes_moved: int
    peak_bytes: int
    edge_bytes: int
    num_nodes: int
    per_op: dict[str, OpCost] = field(default_factory=dict)


def _edge_counts(graph: Graph) -> set[int]:
    """Leading extents that are edge counts: gather index lengths that are not also vertex (table) counts."""
    edges, vertices = set(), set()
    for n in graph.nodes:
        if n.op == "gather" and n.attrs.get("axis") == 0 and len(n.inputs[1].shape) == 1:
            edges.add(n.inputs[1].shape[0])
            vertices.add(n.inputs[0].shape[0])
    return edges - vertices


def peak_intermediate_bytes(graph: Graph) -> int:
    """Peak bytes of live node outputs over a walk in node order (views alias their source)."""
    alias: dict[Value, Value] = {}
    for n in graph.nodes:
        if n.op in VIEW_OPS:
            src = n.inputs[0]
            alias[n.outputs[0]] = alias.get(src, src)
    last_use: dict[Value, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last_use[alias.get(v, v)] = i
    end = len(graph.nodes)
    for v in graph.outputs:
        last_use[alias.get(v, v)] = end
    live, peak = 0, 0
    frees: dict[int, int] = {}
    for i, n in enumerate(graph.nodes):
        if n.op not in VIEW_OPS:
            for v in n.outputs:
                live += nbytes(v)
                die = last_use.get(v, i)  # an unused output dies at once
                frees[die] = frees.get(die, 0) + nbytes(v)
        peak = max(peak, live)
        live -= frees.pop(i, 0)
    return peak


def analyze(graph: Graph) -> GraphCost:
    """FLOPs, bytes moved, peak intermediate memory and edge-tensor bytes of `graph`."""
    per_op: dict[str, OpCost] = {}
    flops = moved = 0
    edges = _edge_counts(graph)
    edge_bytes = 0
    for n in graph.nodes:
        c = node_cost(n)
        flops += c.flops
        moved += c.bytes
        prev = per_op.get(n.op, OpCost(0, 0))
        per_op[n.op] = OpCost(prev.flops + c.flops, prev.bytes + c.bytes)
        if n.op not in VIEW_OPS:
            edge_bytes += sum(nbytes(v) for v in n.outputs if v.shape and v.shape[0] in edges)
    return GraphCost(flops, moved, peak_intermediate_bytes(graph), edge_bytes, len(graph.nodes),
                     dict(sorted(per_op.items())))


def _fmt(n: int, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n} {unit}"


def format_analysis(before: GraphCost | None, after: GraphCost, rules: dict[str, int] | None = None) -> str:
    """The report section: totals before the GNN passes and after the whole pipeline, with their ratios, and the
    reorganization rules that fired (`rules`, name -> count)."""
    rows = [("FLOPs", "flops", "FLOP"), ("bytes moved", "bytes_moved", "B"),
            ("peak intermediate", "peak_bytes", "B"), ("edge tensors written", "edge_bytes", "B")]
    lines = ["  GNN analysis (before GNN passes -> after all passes):"]
    for label, key, unit in rows:
        a = getattr(after, key)
        if before is None:
            lines.append(f"    {label:<22} {_fmt(a, unit)}")
            continue
        b = getattr(before, key)
        ratio = f"  ({b / a:.2f}x less)" if a and b >= a else (f"  ({a / b:.2f}x more)" if b else "")
        lines.append(f"    {label:<22} {_fmt(b, unit)} -> {_fmt(a, unit)}{ratio}")
    nodes = f"{before.num_nodes} -> {after.num_nodes}" if before is not None else str(after.num_nodes)
    lines.append(f"    {'kernels (nodes)':<22} {nodes}")
    if rules:
        lines.append(f"    {'reorganized':<22} " + ", ".join(f"{k}×{v}" for k, v in sorted(rules.items())))
    return "\n".join(lines)
