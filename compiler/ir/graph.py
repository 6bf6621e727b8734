"""The graph IR: SSA values, nodes and graphs (jaxpr-shaped, topologically ordered)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.ir.types import TensorType

# An attribute value: frozen, printable scalars and tuples.
Attr = int | float | str | bool | None | tuple[Any, ...]


@dataclass(eq=False, slots=True)
class Value:
    """An SSA value. Identity semantics: two Values are equal only if they are the same object."""

    type: TensorType
    name: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False, slots=True)
class Node:
    """One operation: `op` is a key of the op registry; `attrs` are frozen; `meta` holds pass decisions."""

    op: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # the source-model node name, for error messages and reports

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.name!r})"


@dataclass(eq=False)
class Graph:
    """A function: inputs, constant parameters (with data), topologically ordered nodes, outputs."""

    inputs: list[Value] = field(default_factory=list)
    params: dict[Value, np.ndarray] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    name: str = "main"

    # -- queries ---------------------------------------------------------------------------------
    def producers(self) -> dict[Value, Node]:
        """Map each node-produced value to its node."""
        return {v: n for n in self.nodes for v in n.outputs}

    def users(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it (in node order)."""
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                lst = out.setdefault(v, [])
                if not lst or lst[-1] is not n:
                    lst.append(n)
        return out

    def values(self) -> list[Value]:
        """All values in definition order: inputs, params, then node outputs."""
        vals = list(self.inputs) + list(self.params)
        for n in self.nodes:
            vals.extend(n.outputs)
        return vals

    def param_by_name(self, name: str) -> Value:
        for v in self.params:
            if v.name == name:
                return v
        raise KeyError(name)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    # -- construction ----------------------------------------------------------------------------
    def add_input(self, type: TensorType, name: str) -> Value:
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def add_param(self, array: np.ndarray, name: str) -> Value:
        array = np.asarray(array, order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
        v = Value(TensorType.of(array), name)
        self.params[v] = array
        return v

    def copy(self) -> Graph:
        """A shallow structural copy: new node list and dicts; values and arrays are shared."""
        nodes = [Node(n.op, n.inputs, n.outputs, dict(n.attrs), dict(n.meta), n.name) for n in self.nodes]
        return Graph(list(self.inputs), dict(self.params), nodes, list(self.outputs), self.name)

    def replace_uses(self, mapping: Mapping[Value, Value]) -> None:
        """Rewrite every use of a key value (node inputs and graph outputs) to its mapped value."""
        if not mapping:
            return

        def resolve(v: Value) -> Value:
            seen = 0
            while v in mapping and seen < 1000:
                v = mapping[v]
                seen += 1
            return v

        for n in self.nodes:
            if any(v in mapping for v in n.inputs):
                n.inputs = tuple(resolve(v) for v in n.inputs)
        self.outputs = [resolve(v) for v in self.outputs]

    def rename(self) -> Graph:
        """Give node outputs fresh sequential names (%0, %1, ...) keeping input and param names."""
        i = 0
        for n in self.nodes:
            for v in n.outputs:
                v.name = str(i)
                i += 1
        return self


def make_node(
    op: str,
    inputs: Sequence[Value],
    attrs: Mapping[str, Attr] | None = None,
    name: str = "",
    out_types: Iterable[TensorType] | None = None,
) -> Node:
    """Create a node, inferring its output types from the op registry unless given."""
    from qcc.ir.ops import infer_types

    attrs = dict(attrs or {})
    types = list(out_types) if out_types is not None else infer_types(op, [v.type for v in inputs], attrs, name)
    outputs = tuple(Value(t) for t in types)
    return Node(op, tuple(inputs), outputs, attrs, {}, name)


class GraphBuilder:
    """Append nodes to a graph with type inference: `b.emit("add", [x, y])` returns the output value."""

    def __init__(self, graph: Graph | None = None) -> None:
        self.graph = graph if graph is not None else Graph()
        self._count = 0

    def input(self, shape: Sequence[int], dtype: str, name: str) -> Value:
        return self.graph.add_input(TensorType(tuple(int(d) for d in shape), dtype), name)

    def param(self, array: np.ndarray, name: str) -> Value:
        return self.graph.add_param(array, name)

    def emit_node(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Attr] | None = None,
                  name: str = "") -> Node:
        node = make_node(op, inputs, attrs, name)
        for v in node.outputs:
            v.name = f"t{self._count}"
            self._count += 1
        self.graph.nodes.append(node)
        return node

    def emit(self, op: str, inputs: Sequence[Value], attrs: Mapping[str, Attr] | None = None,
             name: str = "") -> Value:
        return self.emit_node(op, inputs, attrs, name).output

    def output(self, *values: Value) -> Graph:
        self.graph.outputs = list(values)
        return self.graph
