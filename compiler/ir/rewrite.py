"""One pattern-rewrite engine for local rewrites (tinygrad-style: rules are data).

A rule is `(pattern, fn)`. A pattern is `Pat(op, *input_patterns, name=..., attrs=...)`, `Var(name)`
(captures any value) or `Const(name)` (captures a param, i.e. a constant). When the pattern matches a node,
`fn(b, **captures)` is called with a `RewriteBuilder` and the captured nodes (by `name=`) and values; it
returns the replacement value (or tuple of values for multi-output roots), or None to decline. New nodes
emitted through `b` are inserted just before the matched root. Rules are indexed by root op; rule sets
compose with `+`; the driver iterates to a fixed point (bounded) and counts matches per rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.ir.graph import Attr, Graph, Node, Value, make_node


@dataclass(frozen=True)
class Var:
    """Matches any value and captures it under `name`."""

    name: str


@dataclass(frozen=True)
class Const:
    """Matches a param (constant) value and captures it under `name`."""

    name: str


@dataclass(frozen=True)
class Pat:
    """Matches a node with op `op` (or any op in a tuple) whose inputs match `inputs` (all of them when
    given; `None` means any inputs), and whose attrs satisfy `attrs` (a predicate or exact values)."""

    op: str | tuple[str, ...]
    inputs: tuple[Pat | Var | Const, ...] | None
    name: str | None = None
    attrs: Callable[[Mapping[str, Attr]], bool] | Mapping[str, Attr] | None = None

    def __init__(self, op: str | tuple[str, ...], *inputs: Pat | Var | Const, name: str | None = None,
                 attrs: Callable[[Mapping[str, Attr]], bool] | Mapping[str, Attr] | None = None,
                 any_inputs: bool = False) -> None:
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", None if any_inputs else tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attrs", attrs)

    @property
    def ops(self) -> tuple[str, ...]:
        return self.op if isinstance(self.op, tuple) else (self.op,)


RuleFn = Callable[..., Value | Sequence[Value] | None]


@dataclass
class Rules:
    """An ordered rule set indexed by root op."""

    rules: list[tuple[Pat, RuleFn]] = field(default_factory=list)

    def __add__(self, other: Rules) -> Rules:
        return Rules(self.rules + other.rules)

    def for_op(self, op: str) -> list[tuple[Pat, RuleFn]]:
        return [(p, f) for p, f in self.rules if op in p.ops]


class RewriteBuilder:
    """What a rule function uses to build its replacement: emit nodes, make constants, read constants."""

    def __init__(self, graph: Graph, root: Node) -> None:
        self.graph = graph
        self.root = root
        self.new_nodes: list[Node] = []
        self.new_params: dict[Value, np.ndarray] = {}

    def emit(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Attr] | None = None) -> Value:
        return self.emit_node(op, inputs, attrs).output

    def emit_node(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Attr] | None = None) -> Node:
        node = make_node(op, inputs, attrs, self.root.name)
        self.new_nodes.append(node)
        return node

    def const(self, array: np.ndarray, name: str | None = None) -> Value:
        """A new param holding `array` (named after the root node unless given)."""
        array = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
        from qcc.ir.types import TensorType

        v = Value(TensorType.of(array), name or f"{self.root.name or self.root.op}.const{len(self.new_params)}")
        self.new_params[v] = array
        return v

    def value_of(self, v: Value) -> np.ndarray | None:
        """The data of `v` if it is a constant (param), else None."""
        if v in self.new_params:
            return self.new_params[v]
        return self.graph.params.get(v)


def _match(pat: Pat | Var | Const, v: Value, producers: Mapping[Value, Node], params: Mapping[Value, Any],
           caps: dict[str, Any]) -> bool:
    if isinstance(pat, Var):
        return _bind(caps, pat.name, v)
    if isinstance(pat, Const):
        return v in params and _bind(caps, pat.name, v)
    node = producers.get(v)
    return node is not None and _match_node(pat, node, producers, params, caps)


def _bind(caps: dict[str, Any], name: str, obj: Any) -> bool:
    if name in caps:
        return caps[name] is obj  # a repeated name must capture the same object
    caps[name] = obj
    return True


def _match_node(pat: Pat, node: Node, producers: Mapping[Value, Node], params: Mapping[Value, Any],
                caps: dict[str, Any]) -> bool:
    if node.op not in pat.ops:
        return False
    if pat.attrs is not None:
        if callable(pat.attrs):
            if not pat.attrs(node.attrs):
                return False
        elif any(node.attrs.get(k) != want for k, want in pat.attrs.items()):
            return False
    if pat.inputs is not None:
        if len(pat.inputs) != len(node.inputs):
            return False
        for p, v in zip(pat.inputs, node.inputs):
            if not _match(p, v, producers, params, caps):
                return False
    return pat.name is None or _bind(caps, pat.name, node)


def remove_dead_nodes(g: Graph) -> int:
    """Drop nodes none of whose outputs is used, and params no node or output uses. Returns nodes removed."""
    live: set[Value] = set(g.outputs)
    kept: list[Node] = []
    for n in reversed(g.nodes):
        if any(v in live for v in n.outputs):
            kept.append(n)
            live.update(n.inputs)
    removed = len(g.nodes) - len(kept)
    g.nodes = kept[::-1]
    g.params = {v: a for v, a in g.params.items() if v in live}
    return removed


def rewrite(g: Graph, rules: Rules, name: str = "rewrite", max_iters: int = 64,
            stats: dict[str, int] | None = None) -> Graph:
    """Apply `rules` to a copy of `g` until nothing matches (at most `max_iters` sweeps); dead nodes removed.

    `stats`, if given, receives the number of applications per rule function name.
    """
    g = g.copy()
    for _ in range(max_iters):
        changed = False
        producers = g.producers()
        new_nodes: list[Node] = []
        mapping: dict[Value, Value] = {}
        for node in g.nodes:
            if mapping and any(v in mapping for v in node.inputs):
                node.inputs = tuple(mapping.get(v, v) for v in node.inputs)
            replaced = False
            for pat, fn in rules.for_op(node.op):
                caps: dict[str, Any] = {}
                if not _match_node(pat, node, producers, g.params, caps):
                    continue
                b = RewriteBuilder(g, node)
                out = fn(b, **caps)
                if out is None:
                    continue
                outs = (out,) if isinstance(out, Value) else tuple(out)
                if outs == node.outputs:
                    continue  # returning the root's own outputs means "no change"
                if len(outs) != len(node.outputs):
                    raise ValueError(f"rule {fn.__name__} returned {len(outs)} values for {len(node.outputs)} outputs")
                g.params.update(b.new_params)
                new_nodes.extend(b.new_nodes)
                for n2 in b.new_nodes:
                    for v in n2.outputs:
                        producers[v] = n2
                for old, new in zip(node.outputs, outs):
                    if old is not new:
                        mapping[old] = new
                if stats is not None:
                    stats[fn.__name__] = stats.get(fn.__name__, 0) + 1
                replaced = changed = True
                break
            if not replaced:
                new_nodes.append(node)
        g.nodes = new_nodes
        g.replace_uses(mapping)
        if not changed:
            break
    remove_dead_nodes(g)
    return g
