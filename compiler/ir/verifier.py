"""The IR verifier: SSA well-formedness, topological order, op type rules, param data, outputs."""

from __future__ import annotations

import numpy as np

from qcc.errors import VerificationError
from qcc.ir.graph import Graph, Value
from qcc.ir.ops import OPS, infer_types
from qcc.ir.types import numpy_dtype


def verify(g: Graph) -> None:
    """Raise VerificationError describing the first problem found; return None if the graph is well formed."""
    defined: set[Value] = set()

    def define(v: Value, where: str) -> None:
        if v in defined:
            raise VerificationError(f"{where}: value %{v.name} is defined twice")
        defined.add(v)

    for v in g.inputs:
        define(v, "inputs")
    for v, data in g.params.items():
        define(v, f"param {v.name!r}")
        if not isinstance(data, np.ndarray):
            raise VerificationError(f"param {v.name!r}: data is {type(data).__name__}, not an ndarray")
        if data.shape != v.shape or data.dtype != numpy_dtype(v.dtype):
            raise VerificationError(f"param {v.name!r}: data {data.dtype}{list(data.shape)} "
                                    f"does not match its type {v.type}")
    for i, n in enumerate(g.nodes):
        where = f"node #{i} {n.op}" + (f" ({n.name!r})" if n.name else "")
        if n.op not in OPS:
            raise VerificationError(f"{where}: unknown op {n.op!r}")
        for v in n.inputs:
            if v not in defined:
                raise VerificationError(f"{where}: input %{v.name} is used before it is defined")
        inferred = infer_types(n.op, [v.type for v in n.inputs], n.attrs, n.name)
        if len(inferred) != len(n.outputs):
            raise VerificationError(f"{where}: has {len(n.outputs)} outputs, its type rule gives {len(inferred)}")
        for v, t in zip(n.outputs, inferred):
            if (v.shape, v.dtype) != (t.shape, t.dtype):
                raise VerificationError(f"{where}: output %{v.name} is typed {v.type}, its type rule gives {t}")
            define(v, where)
    if not g.outputs:
        raise VerificationError("graph has no outputs")
    for v in g.outputs:
        if v not in defined:
            raise VerificationError(f"graph output %{v.name} is never defined")
