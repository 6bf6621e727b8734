"""Epilogue grouping: which nodes of a graph run as one kernel template with a fused epilogue.

An *anchor* is a node a CPU kernel template computes (backends/tvm/kernels):

    conv2d  (f32, constant weight)                       -> "conv2d"  (direct / depthwise template)
    linear  (f32, constant weight)                       -> "dense"
    matmul  (f32, constant 2-D right operand)            -> "dense"   (weight read as [K, N])
    matmul  (f32, two activations, same batch dims)      -> "batch_matmul" (attention's Q·Kᵀ and P·V)

Starting at the anchor's output, the chain of elementwise nodes that follows is folded into the template's
epilogue (kernels/epilogue.py) as long as the current value has exactly one user and is not a graph output:

    add(v, param)    with a per-output-channel constant, first such step  -> ("bias",)
    add(v, r) / add(r, v) with r of v's exact shape and dtype             -> ("add",)  (residual input r)
    mul(v, s) / mul(s, v) with a one-element constant s                    -> ("scale", s)
    relu, relu6, clip(lo, hi), hardswish, gelu(approximate="none")          -> the step of the same name

The conv2d / linear bias input becomes the leading ("bias",) step. The fused kernel is emitted where the last
member of the group stands in the node order, so every residual is already computed there. `find_groups`
only decides the grouping; whether a template accepts the shapes is decided when lowering, which lowers the
members one by one with the generic rules when it does not.

When the graph carries the decisions of the fuse pass (`qcc.passes.fuse`, `fusion="auto"`), the chain is the
pass's anchor+epilogue group instead of the rule above: its members are folded while they map onto template
steps, and the members after the first one that does not (a sigmoid, a requantize...) are the group's `tail`,
which the lowering fuses into one generic kernel. With `fusion="off"` anchors fold nothing but their own bias.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.ir.graph import Graph, Node, Value

_ACTIVATIONS = ("relu", "relu6", "hardswish")


@dataclass
class Group:
    """An anchor node and the chain folded into its epilogue (see the module docstring)."""

    anchor: Node
    kind: str  # "conv2d" | "dense" | "batch_matmul"
    members: list[Node]  # the anchor first, then the folded chain in order
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    bias: np.ndarray | None = None  # the [channels] bias of the ("bias",) step
    residuals: list[Value] = field(default_factory=list)  # one per ("add",) step, in order
    tail: list[Node] = field(default_factory=list)  # members of the fuse pass's group after the template's chain

    @property
    def output(self) -> Value:
        """The value the group computes (the last member's output)."""
        return self.members[-1].outputs[0]

    @property
    def last(self) -> Node:
        return self.members[-1]


def anchor_kind(node: Node, graph: Graph) -> str | None:
    """The template kind an anchor node maps to, or None when the node is no anchor."""
    if not node.inputs or node.inputs[0].dtype != "f32" or len(node.outputs) != 1:
        return None
    ins = node.inputs
    if node.op == "conv2d":
        return "conv2d" if ins[1] in graph.params and len(ins[0].shape) == 4 else None
    if node.op == "linear":
        return "dense" if ins[1] in graph.params and len(ins[0].shape) >= 1 else None
    if node.op == "matmul":
        a, b = ins[0].shape, ins[1].shape
        if len(a) < 2 or len(b) < 2:
            return None
        if ins[1] in graph.params and len(b) == 2:
            return "dense"
        if ins[0] not in graph.params and ins[1] not in graph.params and len(a) == len(b) and a[:-2] == b[:-2]:
            return "batch_matmul"
    return None


def _channels(group: Group) -> tuple[int, int]:
    """(channel count, channel axis) of the anchor's output: O on axis 1 for conv2d, N on the last axis."""
    shape = group.anchor.outputs[0].shape
    return (shape[1], 1) if group.kind == "conv2d" else (shape[-1], len(shape) - 1)


def _as_bias(arr: np.ndarray, group: Group) -> np.ndarray | None:
    """The [channels] vector when `arr` broadcasts along the anchor's channel axis only, else None."""
    out_shape = group.anchor.outputs[0].shape
    channels, axis = _channels(group)
    if arr.ndim > len(out_shape) or arr.size != channels or channels == 1:
        return None
    full = (1,) * (len(out_shape) - arr.ndim) + tuple(arr.shape)
    if full[axis] != channels:
        return None
    return np.asarray(arr, np.float32).reshape(-1)


def _step(node: Node, v: Value, group: Group, graph: Graph) -> tuple[Any, ...] | None:
    """The epilogue step `node` applies to `v` (and records bias / residual on the group), or None."""
    op, attrs = node.op, node.attrs
    if len(node.outputs) != 1 or node.outputs[0].shape != v.shape or node.outputs[0].dtype != "f32":
        return None
    if op in _ACTIVATIONS and len(node.inputs) == 1:
        return (op,)
    if op == "gelu" and attrs.get("approximate", "none") == "none":
        return ("gelu",)
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        if lo is None and hi is None:
            return None
        return ("clip", -3.4e38 if lo is None else float(lo), 3.4e38 if hi is None else float(hi))
    if op in ("add", "mul") and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is v else node.inputs[0]
        if other is v:
            return None
        if other in graph.params:
            arr = graph.params[other]
            if op == "mul":
                return ("scale", float(np.asarray(arr).reshape(-1)[0])) if arr.size == 1 else None
            if group.bias is None:
                b = _as_bias(arr, group)
                if b is not None:
                    group.bias = b
                    return ("bias",)
            return None
        if op == "add" and other.shape == v.shape and other.dtype == "f32":
            group.residuals.append(other)
            return ("add",)
    return None


def _meta_chain(graph: Graph, node: Node) -> list[Node] | None:
    """The members after `node` of its fuse-pass group (None when the graph carries no fusion meta)."""
    gid = node.meta.get("fusion_group")
    if gid is None:
        return None
    if node.meta.get("fusion_kind") != "anchor+epilogue":
        return []
    return [n for n in graph.nodes if n.meta.get("fusion_group") == gid and n is not node]


def find_groups(graph: Graph, fusion: str = "tvm") -> list[Group]:
    """Every anchor of `graph` with its folded epilogue chain, in node order (see the module docstring).

    `fusion`: "tvm" (the rule above), "auto" (the fuse pass's groups when the graph has them, else the rule),
    "off" (no epilogue)."""
    users = graph.users()
    outputs = set(graph.outputs)
    groups: list[Group] = []
    claimed: set[Node] = set()  # a node joins at most one group (both operands of a residual add may be anchors)
    for node in graph.nodes:
        kind = anchor_kind(node, graph)
        if kind is None or node in claimed:
            continue
        g = Group(node, kind, [node])
        if node.op in ("conv2d", "linear") and len(node.inputs) > 2:
            if node.inputs[2] not in graph.params:
                continue  # a computed bias: leave the node to the generic lowering
            g.bias = np.asarray(graph.params[node.inputs[2]], np.float32).reshape(-1)
            g.steps.append(("bias",))
        v = node.outputs[0]
        chain = _meta_chain(graph, node) if fusion == "auto" else [] if fusion == "off" else None
        candidates = chain if chain is not None else _single_use_chain(g, users, outputs)
        for i, nxt in enumerate(candidates):
            step = None if nxt in claimed or v not in nxt.inputs else _step(nxt, v, g, graph)
            if step is None:
                if chain is not None:
                    g.tail = chain[i:]  # the fuse pass's members the template cannot fold
                break
            g.steps.append(step)
            g.members.append(nxt)
            v = nxt.outputs[0]
        claimed.update(g.members)
        groups.append(g)
    return groups


def _single_use_chain(g: Group, users: dict[Value, list[Node]], outputs: set[Value]) -> Iterator[Node]:
    """The rule's chain (no fusion meta): the sole user of the group's current output, while that output is no
    graph output and has exactly one user; read lazily, as the group grows."""
    while True:
        v = g.members[-1].outputs[0]
        if v in outputs or len(users.get(v, [])) != 1:
            return
        yield users[v][0]


def describe(groups: list[Group]) -> list[str]:
    """One line per group, e.g. "conv2d[bias,add,relu]" (for reports and tests)."""
    return [f"{g.anchor.op}[{','.join(str(s[0]) for s in g.steps)}]" for g in groups]
