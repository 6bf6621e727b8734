"""Deterministic text form of the IR.

```
func @main(%x: f32[1,3,8,8]) -> (f32[1,4,8,8]) {
  %w = param "w" : f32[4,3,3,3]
  %0 = conv2d(%x, %w) {dilation=(1, 1), groups=1, padding=(1, 1, 1, 1), stride=(1, 1)} : f32[1,4,8,8]
  return %0
}
```
Node outputs are numbered in order; inputs and params keep their names (quoted when not identifiers);
attributes are sorted; small params (≤ INLINE_LIMIT elements) print their data so goldens show constants.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from qcc.ir.graph import Graph, Value
from qcc.ir.types import QuantParams, TensorType

INLINE_LIMIT = 16
_IDENT = re.compile(r"^[A-Za-z0-9_]+$")


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def format_attr(v: Any) -> str:
    """Attribute values: ints, floats (repr, exact), strings (double-quoted), bools, None, tuples."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        inner = ", ".join(format_attr(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    raise TypeError(f"attribute value {v!r} of type {type(v).__name__} is not printable")


def format_quant(q: QuantParams) -> str:
    parts = [f"scale={format_attr(tuple(float(s) for s in q.scale))}",
             f"zp={format_attr(tuple(int(z) for z in q.zero_point))}", f"bits={q.bits}"]
    if not q.signed:
        parts.append("signed=False")
    if q.axis is not None:
        parts.append(f"axis={q.axis}")
    if q.group_size is not None:
        parts.append(f"group_size={q.group_size}")
    return "{" + ", ".join(parts) + "}"


def format_type(t: TensorType) -> str:
    s = f"{t.dtype}[{','.join(str(d) for d in t.shape)}]"
    return s + format_quant(t.quant) if t.quant is not None else s


def format_array(a: np.ndarray) -> str:
    flat = a.reshape(-1).tolist()
    if a.dtype.kind == "f":
        return "[" + ", ".join(format_float(x) for x in flat) + "]"
    if a.dtype.kind == "b":
        return "[" + ", ".join("True" if x else "False" for x in flat) + "]"
    return "[" + ", ".join(str(int(x)) for x in flat) + "]"


def _quote(name: str) -> str:
    return "%" + (name if _IDENT.match(name) else format_attr(name))


def value_names(g: Graph) -> dict[Value, str]:
    """The printed name of every value (deterministic; duplicates get a numeric suffix)."""
    names: dict[Value, str] = {}
    used: set[str] = set()

    def claim(v: Value, want: str) -> None:
        name, k = want, 1
        while name in used:
            name, k = f"{want}_{k}", k + 1
        used.add(name)
        names[v] = name

    for v in g.inputs:
        claim(v, v.name or "in")
    for v in g.params:
        claim(v, v.name or "param")
    i = 0
    for n in g.nodes:
        for v in n.outputs:
            while str(i) in used:
                i += 1
            claim(v, str(i))
            i += 1
    return names


def print_graph(g: Graph) -> str:
    """The deterministic text of a graph."""
    names = value_names(g)

    def ref(v: Value) -> str:
        return _quote(names[v]) if v in names else f"%<undefined {v.name}>"

    args = ", ".join(f"{ref(v)}: {format_type(v.type)}" for v in g.inputs)
    outs = ", ".join(format_type(v.type) for v in g.outputs)
    lines = [f"func @{g.name}({args}) -> ({outs}) {{"]
    for v, data in g.params.items():
        inline = f" dense<{format_array(data)}>" if data.size <= INLINE_LIMIT else ""
        lines.append(f"  {ref(v)} = param {format_attr(v.name)} : {format_type(v.type)}{inline}")
    for n in g.nodes:
        lhs = ", ".join(ref(v) for v in n.outputs)
        rhs = f"{n.op}({', '.join(ref(v) for v in n.inputs)})"
        if n.attrs:
            rhs += " {" + ", ".join(f"{k}={format_attr(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
        types = ", ".join(format_type(v.type) for v in n.outputs)
        suffix = f"  // {n.name}" if n.name else ""
        lines.append(f"  {lhs} = {rhs} : {types}{suffix}")
    lines.append(f"  return {', '.join(ref(v) for v in g.outputs)}")
    lines.append("}")
    return "\n".join(lines) + "\n"
