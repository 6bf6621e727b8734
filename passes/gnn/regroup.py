"""The ``regroup`` rule of gnn-reorganize: group gathered terms of a sum or product by their index.

``a[i] − b[j] + c[j]`` becomes ``a[i] + (c − b)[j]`` and ``h[i]·u[i]·w[j]`` becomes ``(h·u)[i]·w[j]``: the
arithmetic on terms gathered with the same index runs on table rows, then one gather per index remains. A sum is
flattened through ``add`` / ``sub`` nodes whose operands have the result's shape (no broadcasting); a product
through ``mul`` nodes whose operands have the result's rank and do not broadcast along the edge axis.
"""

from __future__ import annotations

from qcc.ir.graph import Node, Value
from qcc.ir.rewrite import RewriteBuilder
from qcc.passes.gnn.graph_ops import index_root

_MAX_TERMS = 16  # a bigger tree is not a message-passing expression; leave it alone


def _flatten(v: Value, sign: int, kind: str, out: Value, prods: dict[Value, Node],
             terms: list[tuple[int, Value]], top: bool) -> None:
    node = prods.get(v)
    if len(terms) > _MAX_TERMS:
        terms.append((sign, v))
        return
    if node is not None and (top or _flattenable(node, kind, out)):
        if kind == "sum" and node.op in ("add", "sub"):
            _flatten(node.inputs[0], sign, kind, out, prods, terms, False)
            _flatten(node.inputs[1], -sign if node.op == "sub" else sign, kind, out, prods, terms, False)
            return
        if kind == "prod" and node.op == "mul":
            _flatten(node.inputs[0], sign, kind, out, prods, terms, False)
            _flatten(node.inputs[1], sign, kind, out, prods, terms, False)
            return
    terms.append((sign, v))


def _flattenable(node: Node, kind: str, out: Value) -> bool:
    if kind == "sum":
        return node.op in ("add", "sub") and all(x.shape == out.shape for x in node.inputs)
    return node.op == "mul" and all(len(x.shape) == len(out.shape) and x.shape[0] in (1, out.shape[0])
                                    for x in node.inputs)


def _gather_key(v: Value, out: Value, prods: dict[Value, Node]) -> tuple[Value, Value, int] | None:
    """(table, index root, table rows) if `v` is an edge gather aligned with `out`'s edge axis."""
    node = prods.get(v)
    if node is None or node.op != "gather" or node.attrs.get("axis") != 0:
        return None
    table, index = node.inputs
    if len(index.shape) != 1 or len(v.shape) != len(out.shape) or index.shape[0] != out.shape[0]:
        return None
    if index.shape[0] < table.shape[0]:
        return None
    return table, index, table.shape[0]


def regroup(b: RewriteBuilder, root: Node) -> Value | None:
    """Group the gathered terms of the add/sub or mul tree rooted at `root` by index (see the module docstring)."""
    out = root.outputs[0]
    if out.dtype not in ("f16", "f32", "f64") or not out.shape or len(root.inputs) != 2:
        return None
    kind = "prod" if root.op == "mul" else "sum"
    if not _flattenable(root, kind, out):
        return None
    prods = b.graph.producers()
    terms: list[tuple[int, Value]] = []
    _flatten(out, 1, kind, out, prods, terms, True)
    if len(terms) > _MAX_TERMS:
        return None
    groups: dict[tuple[int, int], list[tuple[int, Value]]] = {}
    first_index: dict[tuple[int, int], Value] = {}
    others: list[tuple[int, Value]] = []
    order: list[tuple[int, int] | None] = []
    for sign, v in terms:
        key = _gather_key(v, out, prods)
        if key is None:
            others.append((sign, v))
            order.append(None)
            continue
        table, index, rows = key
        k = (id(index_root(index, prods)), rows)
        if k not in groups:
            groups[k], first_index[k] = [], index
            order.append(k)
        groups[k].append((sign, table))
    if not any(len(g) > 1 for g in groups.values()):
        return None
    parts: list[tuple[int, Value]] = []
    rest = iter(others)
    for slot in order:
        if slot is None:
            parts.append(next(rest))
            continue
        members = groups[slot]
        if kind == "prod":
            acc = members[0][1]
            for _, t in members[1:]:
                acc = b.emit("mul", [acc, t])
            parts.append((1, b.emit("gather", [acc, first_index[slot]], {"axis": 0})))
            continue
        # Sum: keep the first positive member first so a group like (-b + c) becomes c - b, not neg(b) + c.
        members = sorted(members, key=lambda m: m[0] < 0)
        sign0, acc = members[0]
        for sign, t in members[1:]:
            acc = b.emit("add" if sign == sign0 else "sub", [acc, t])
        parts.append((sign0, b.emit("gather", [acc, first_index[slot]], {"axis": 0})))
    parts = sorted(parts, key=lambda p: p[0] < 0)
    sign0, result = parts[0]
    if sign0 < 0:
        result = b.emit("neg", [result])
    for sign, v in parts[1:]:
        result = b.emit("mul" if kind == "prod" else ("add" if sign > 0 else "sub"), [result, v])
    if result.shape != out.shape or result.dtype != out.dtype:
        return None
    return result
