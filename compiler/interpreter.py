"""The reference interpreter: runs a graph with each op's NumPy reference. The oracle for everything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qcc.errors import ShapeMismatchError
from qcc.ir.graph import Graph, Value
from qcc.ir.ops import evaluate
from qcc.ir.types import numpy_dtype


def bind_inputs(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict[Value, np.ndarray]:
    """Match arrays to graph inputs (by position or name), checking shape and dtype."""
    if isinstance(inputs, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in inputs]
        if missing:
            raise ShapeMismatchError(f"missing input(s) {missing}; expected {[v.name for v in graph.inputs]}")
        arrays = [inputs[v.name] for v in graph.inputs]
    else:
        arrays = list(inputs)
        if len(arrays) != len(graph.inputs):
            raise ShapeMismatchError(f"expected {len(graph.inputs)} input(s) "
                                     f"{[v.name for v in graph.inputs]}, got {len(arrays)}")
    env: dict[Value, np.ndarray] = {}
    for v, a in zip(graph.inputs, arrays):
        a = np.asarray(a)
        if tuple(a.shape) != v.shape:
            raise ShapeMismatchError(f"input {v.name!r}: expected shape {list(v.shape)}, got {list(a.shape)}")
        want = numpy_dtype(v.dtype)
        if a.dtype != want:
            if np.can_cast(a.dtype, want, casting="same_kind"):
                a = a.astype(want)
            else:
                raise ShapeMismatchError(f"input {v.name!r}: expected dtype {v.dtype}, got {a.dtype}")
        env[v] = a
    return env


def interpret_all(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> dict[Value, np.ndarray]:
    """Run the graph and return the array of every value (for calibration and debugging)."""
    env = bind_inputs(graph, inputs)
    env.update(graph.params)
    for node in graph.nodes:
        outs = evaluate(node.op, [env[v] for v in node.inputs], node.attrs)
        for v, a in zip(node.outputs, outs):
            env[v] = a.astype(numpy_dtype(v.dtype), copy=False).reshape(v.shape)
    return env


def interpret(graph: Graph, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run the graph on NumPy inputs (by position or by input name); returns the outputs in order."""
    env = interpret_all(graph, inputs)
    return [env[v] for v in graph.outputs]
