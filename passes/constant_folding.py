"""constant-folding: evaluate nodes whose inputs are all constants and replace them by params.

Every node whose inputs are all params is run through its op's NumPy reference (`qcc.ir.ops.evaluate`, the same
code the interpreter runs, so folding never changes a result) and its outputs become new params. Folding goes in
topological order, so whole constant subgraphs collapse in one pass.

Size rule: folding trades compute for memory. A node is kept when its outputs together hold more than
`max_growth` elements beyond what its inputs hold (an `expand`, `tile` or `pad` of a small constant into a huge
one, say), because storing the result would bloat the model more than computing it costs. Shrinking and
size-preserving nodes always fold.

Params that were consumed only by folded nodes are dropped; other dead code is left for dead-code-elimination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcc.ir.graph import Graph, Value
from qcc.ir.ops import evaluate
from qcc.ir.pass_manager import PassContext
from qcc.ir.types import numpy_dtype
from qcc.passes._stats import record_stats

DEFAULT_MAX_GROWTH = 1 << 20


def folded_name(base: str, index: int, num_outputs: int, taken: set[str]) -> str:
    """A deterministic, unique param name for output `index` of a folded node called `base`."""
    want = f"{base}.folded" if num_outputs == 1 else f"{base}.folded{index}"
    name, k = want, 1
    while name in taken:
        name, k = f"{want}_{k}", k + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class ConstantFolding:
    """Replace every node whose inputs are all constants by params holding its outputs.

    `max_growth`: keep a node whose outputs hold more than this many elements beyond its inputs (see the module
    docstring). Adds `{"folded": n, "kept_large": m}` to `ctx.stats["constant-folding"]`.
    """

    name: ClassVar[str] = "constant-folding"
    max_growth: int = DEFAULT_MAX_GROWTH

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        taken = {v.name for v in g.params} | {v.name for v in g.inputs}
        mapping: dict[Value, Value] = {}
        consumed: set[Value] = set()
        kept = []
        folded = kept_large = 0
        for node in g.nodes:
            if mapping and any(v in mapping for v in node.inputs):
                node.inputs = tuple(mapping.get(v, v) for v in node.inputs)
            if not all(v in g.params for v in node.inputs):
                kept.append(node)
                continue
            grown = sum(v.type.size for v in node.outputs) - sum(v.type.size for v in node.inputs)
            if grown > self.max_growth:
                kept_large += 1
                kept.append(node)
                continue
            # The reference may warn (integer overflow, division by zero); the interpreter would compute the
            # same values at run time, so the warnings carry no information here.
            with np.errstate(all="ignore"):
                arrays = evaluate(node.op, [g.params[v] for v in node.inputs], node.attrs)
            base = node.name or node.op
            for i, (out, data) in enumerate(zip(node.outputs, arrays)):
                # Same normalisation as the interpreter: the declared dtype and shape are the truth.
                # (np.asarray with order="C", not ascontiguousarray, which would turn a 0-d result into 1-d.)
                data = np.asarray(np.asarray(data).astype(numpy_dtype(out.dtype), copy=False).reshape(out.shape),
                                  order="C")
                param = Value(out.type, folded_name(base, i, len(node.outputs), taken))
                g.params[param] = data
                mapping[out] = param
            consumed.update(node.inputs)
            folded += 1
        g.nodes = kept
        g.replace_uses(mapping)
        # Drop the params only folded nodes read (they are dead now); unrelated dead params stay for DCE.
        used = {v for n in g.nodes for v in n.inputs} | set(g.outputs)
        g.params = {v: a for v, a in g.params.items() if v in used or v not in consumed}
        record_stats(ctx, self.name, {"folded": folded, "kept_large": kept_large})
        return g
