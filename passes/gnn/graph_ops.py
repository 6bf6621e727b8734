"""Recognisers for graph (message-passing) operators in the IR, from both frontends.

A GNN written in plain PyTorch (``index_select`` / ``index_add_`` / ``scatter_add_``) or exported to ONNX
(``Gather`` / ``ScatterElements`` / ``ScatterND`` with a reduction) imports as ordinary IR ops. The recognisers
here name the three graph operators those ops spell:

- `EdgeGather`: ``table[index]`` along axis 0 with a 1-D integer index, i.e. vertex rows copied onto edges
  (``gather`` with ``axis=0``; torch ``index_select`` and ONNX ``Gather`` both import as it).
- `SegmentReduce`: rows of an edge tensor ``src [E, ...]`` reduced onto ``num_segments`` vertices by ``index [E]``.
  Semantics: ``out[v] = base[v] ⊕ R_{e: index[e] = v} src[e]`` for ``reduce`` in sum / max / min, where ``⊕`` is
  the reduction itself; with ``base`` None the op starts from nothing and an empty segment gives 0 (``mean`` is
  only matched in that form). Matched from ``index_add`` (axis 0), ``index_reduce`` (axis 0; sum, mean, amax,
  amin), and ``scatter_elements`` (axis 0, add / max / min) whose index is a 1-D index broadcast over the row
  (``expand(reshape(index))``, which is what PyG-style ``index.view(-1, 1).expand_as(src)`` exports to);
  ONNX ``ScatterND`` with a reduction over whole rows imports directly as ``index_add`` / ``index_reduce``.
- `SegmentSoftmax`: ``exp(s [- max_seg(s)[index]]) / segment_sum(exp(...))[index]``, the attention normalisation
  of GAT, also written as a multiplication by a reciprocal.

Matchers never change the graph. `find_graph_ops` lists every recognised operator in node order; the gathers and
reductions inside a segment softmax are listed on their own as well (the softmax comes at its final divide).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.types import INT_DTYPES

Producers = Mapping[Value, Node]

# index_reduce's reduce names -> SegmentReduce.reduce ("prod" has no GNN use and is not matched).
_INDEX_REDUCE = {"sum": "sum", "mean": "mean", "amax": "max", "amin": "min"}
_SCATTER_REDUCE = {"add": "sum", "max": "max", "min": "min"}


@dataclass(frozen=True)
class EdgeGather:
    """``out = table[index]`` along axis 0: vertex rows gathered onto edges (``index`` is 1-D, integer)."""

    node: Node
    table: Value
    index: Value
    out: Value


@dataclass(frozen=True)
class SegmentReduce:
    """Rows of ``src [E, ...]`` reduced onto ``num_segments`` rows by ``index [E]`` (see the module docstring).

    ``base`` is the tensor reduced into (e.g. a self-loop term), or None when the op starts from zeros, in which
    case an empty segment yields 0. ``reduce`` is "sum", "mean", "max" or "min" ("mean" only with ``base`` None).
    """

    node: Node
    src: Value
    index: Value
    num_segments: int
    reduce: str
    base: Value | None
    out: Value


@dataclass(frozen=True)
class SegmentSoftmax:
    """``out = exp(scores [- segmax]) / segment_sum(exp(...))[index]``: a softmax over each vertex's edges.

    ``nodes`` are the matched nodes (from the optional max shift through ``exp`` to the final divide), in graph
    order; ``scores [E, ...]`` is the input of the softmax, ``index [E]`` the segment of each edge.
    """

    nodes: tuple[Node, ...]
    scores: Value
    index: Value
    num_segments: int
    out: Value


GraphOp = EdgeGather | SegmentReduce | SegmentSoftmax


def _producers(graph: Graph, producers: Producers | None) -> Producers:
    return producers if producers is not None else graph.producers()


def is_zeros(v: Value, graph: Graph, producers: Producers | None = None) -> bool:
    """Whether `v` is a constant of zeros (a zero param, or an ``expand`` / reshape of one)."""
    prods = _producers(graph, producers)
    for _ in range(8):
        if v in graph.params:
            return not np.any(graph.params[v])
        node = prods.get(v)
        if node is None or node.op not in ("expand", "reshape", "unsqueeze", "squeeze", "cast"):
            return False
        v = node.inputs[0]
    return False


def _vector_like(v: Value) -> bool:
    return sum(d != 1 for d in v.shape) <= 1


def index_root(v: Value, producers: Producers) -> Value:
    """`v` with integer casts and reshapes between vector-like shapes (``[E]``, ``[E, 1]``) stripped (frontends add
    them, e.g. ONNX ScatterND's ``[E, 1]`` index)."""
    while True:
        node = producers.get(v)
        if node is None or not node.inputs:
            return v
        src = node.inputs[0]
        if node.op == "cast" and src.dtype in INT_DTYPES and v.dtype in INT_DTYPES and src.shape == v.shape:
            v = src
        elif (node.op in ("reshape", "squeeze", "unsqueeze") and _vector_like(v) and _vector_like(src)
              and int(np.prod(src.shape)) == int(np.prod(v.shape))):
            v = src
        else:
            return v


def same_index(a: Value, b: Value, producers: Producers) -> bool:
    """Whether two index values are the same tensor (up to casts and 1-D reshapes)."""
    return a is b or index_root(a, producers) is index_root(b, producers)


def _is_edge_index(v: Value) -> bool:
    return len(v.shape) == 1 and v.dtype in INT_DTYPES


def match_gather(node: Node, graph: Graph, producers: Producers | None = None) -> EdgeGather | None:
    """An `EdgeGather` if `node` is a ``gather`` on axis 0 with a 1-D integer index, else None."""
    if node.op != "gather" or node.attrs.get("axis") != 0 or len(node.inputs) != 2:
        return None
    table, index = node.inputs
    if not table.shape or not _is_edge_index(index):
        return None
    return EdgeGather(node, table, index, node.outputs[0])


def _broadcast_row_index(idx: Value, upd: Value, producers: Producers) -> Value | None:
    """The 1-D index `idx` was broadcast from over the rows of `upd` (``expand(reshape(i, [E, 1, ..]))``, or
    ``reshape(i, [E, 1])`` itself when the rows have one element)."""
    if idx.shape != upd.shape or not idx.shape:
        return None
    node = producers.get(idx)
    if not _vector_like(idx):
        if node is None or node.op != "expand":
            return None
        idx = node.inputs[0]
        if idx.shape[:1] != upd.shape[:1] or not _vector_like(idx):
            return None
    root = index_root(idx, producers)
    return root if _is_edge_index(root) and root.shape[0] == upd.shape[0] else None


def match_segment_reduce(node: Node, graph: Graph, producers: Producers | None = None) -> SegmentReduce | None:
    """A `SegmentReduce` for ``index_add`` / ``index_reduce`` on axis 0 and ``scatter_elements`` on axis 0 with a
    row-broadcast 1-D index, when its semantics fit the dataclass's (see the module docstring); else None."""
    if node.op not in ("index_add", "index_reduce", "scatter_elements") or node.attrs.get("axis") != 0:
        return None
    prods = _producers(graph, producers)
    base, index, src = node.inputs
    out = node.outputs[0]
    zero = is_zeros(base, graph, prods)
    if node.op == "index_add":
        if not _is_edge_index(index):
            return None
        return SegmentReduce(node, src, index, out.shape[0], "sum", None if zero else base, out)
    if node.op == "index_reduce":
        reduce = _INDEX_REDUCE.get(str(node.attrs.get("reduce")))
        if reduce is None or not _is_edge_index(index):
            return None
        include_self = bool(node.attrs.get("include_self", True))
        if not include_self:  # touched rows ignore base, untouched keep it: a plain segment op only over zeros
            return SegmentReduce(node, src, index, out.shape[0], reduce, None, out) if zero else None
        if reduce == "mean":  # the base counts as one more element: no plain segment mean
            return None
        keep = None if zero and reduce == "sum" else base  # max(0, ...) still needs its zero base
        return SegmentReduce(node, src, index, out.shape[0], reduce, keep, out)
    reduce = _SCATTER_REDUCE.get(str(node.attrs.get("reduction")))
    if reduce is None or base.shape[1:] != src.shape[1:]:
        return None
    row_index = _broadcast_row_index(index, src, prods)
    if row_index is None:
        return None
    keep = None if zero and reduce == "sum" else base
    return SegmentReduce(node, src, row_index, out.shape[0], reduce, keep, out)


def _gathered(v: Value, prods: Producers, graph: Graph) -> tuple[Node, Value, Value] | None:
    """(node, table, index) if `v` is an edge gather."""
    node = prods.get(v)
    if node is None:
        return None
    g = match_gather(node, graph, prods)
    return (node, g.table, g.index) if g is not None else None


def match_segment_softmax(node: Node, graph: Graph, producers: Producers | None = None) -> SegmentSoftmax | None:
    """A `SegmentSoftmax` ending at `node`: ``div(ex, gather(segsum(ex), i))``, or ``mul`` of `ex` by the gathered
    reciprocal (either order, reciprocal before or after the gather), with ``ex = exp(s)`` or
    ``exp(s - gather(segmax(s), i))``; the segment sum must start from zeros. Else None."""
    if node.op not in ("div", "mul") or len(node.inputs) != 2:
        return None
    prods = _producers(graph, producers)
    out = node.outputs[0]
    orders = [(0, 1)] if node.op == "div" else [(0, 1), (1, 0)]
    for i_ex, i_den in orders:
        ex, den = node.inputs[i_ex], node.inputs[i_den]
        if ex.shape != out.shape or den.shape != out.shape:
            continue
        chain: list[Node] = []
        d = den
        recip = node.op == "mul"
        if recip:  # reciprocal(gather(sum)) or gather(reciprocal(sum))
            rn = prods.get(d)
            if rn is not None and rn.op == "reciprocal":
                chain.append(rn)
                d = rn.inputs[0]
        found = _gathered(d, prods, graph)
        if found is None:
            continue
        gnode, table, index = found
        chain.append(gnode)
        if recip and not any(n.op == "reciprocal" for n in chain):
            rn = prods.get(table)
            if rn is None or rn.op != "reciprocal":
                continue
            chain.append(rn)
            table = rn.inputs[0]
        snode = prods.get(table)
        seg = match_segment_reduce(snode, graph, prods) if snode is not None else None
        if seg is None or seg.reduce != "sum" or seg.base is not None or seg.src is not ex \
                or not same_index(seg.index, index, prods):
            continue
        chain.append(snode)  # type: ignore[arg-type]
        enode = prods.get(ex)
        if enode is None or enode.op != "exp":
            continue
        chain.append(enode)
        scores = enode.inputs[0]
        shift = _max_shift(scores, seg.index, prods, graph)
        if shift is not None:
            chain.extend(shift[0])
            scores = shift[1]
        order = {id(n): k for k, n in enumerate(graph.nodes)}
        nodes = tuple(sorted(chain + [node], key=lambda n: order.get(id(n), -1)))
        return SegmentSoftmax(nodes, scores, seg.index, seg.num_segments, out)
    return None


def _max_shift(t: Value, index: Value, prods: Producers, graph: Graph) -> tuple[list[Node], Value] | None:
    """([nodes], s) if ``t = s - gather(segmax(s), index)`` (the overflow guard of a softmax), else None."""
    sub = prods.get(t)
    if sub is None or sub.op != "sub":
        return None
    s, m = sub.inputs
    found = _gathered(m, prods, graph)
    if found is None or s.shape != t.shape:
        return None
    gnode, table, gidx = found
    rnode = prods.get(table)
    seg = match_segment_reduce(rnode, graph, prods) if rnode is not None else None
    if seg is None or seg.reduce != "max" or seg.src is not s or not same_index(seg.index, index, prods) \
            or not same_index(gidx, index, prods):
        return None
    return [sub, gnode, rnode], s  # type: ignore[list-item]


def find_graph_ops(graph: Graph) -> list[GraphOp]:
    """Every recognised graph operator of `graph`, in node order (see the module docstring)."""
    prods = graph.producers()
    found: list[GraphOp] = []
    for node in graph.nodes:
        op: GraphOp | None = (match_gather(node, graph, prods) or match_segment_reduce(node, graph, prods)
                              or match_segment_softmax(node, graph, prods))
        if op is not None:
            found.append(op)
    return found


def has_graph_ops(graph: Graph) -> bool:
    """Whether `graph` has an edge gather and a segment reduction (a message-passing graph)."""
    ops = find_graph_ops(graph)
    return any(isinstance(o, EdgeGather) for o in ops) and any(isinstance(o, SegmentReduce) for o in ops)
