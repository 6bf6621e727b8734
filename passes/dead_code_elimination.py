"""dead-code-elimination: drop nodes whose outputs nothing uses, and params nothing reads.

Liveness flows backwards from the graph outputs: a node is live when any of its outputs is a graph output or an
input of a live node; a param is live when a live node reads it or it is a graph output. Every op in the IR is
pure, so removing a dead node never changes a result. Graph inputs are kept even when unused: they are the
function's signature, and callers bind arrays to them by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcc.ir.graph import Graph
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import remove_dead_nodes
from qcc.passes._stats import record_stats


@dataclass(frozen=True)
class DeadCodeElimination:
    """Remove dead nodes and unused params (graph inputs stay).

    Adds `{"nodes": n, "params": m}` (how many were removed) to `ctx.stats["dead-code-elimination"]`.
    """

    name: ClassVar[str] = "dead-code-elimination"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        g = graph.copy()
        params_before = len(g.params)
        removed = remove_dead_nodes(g)
        record_stats(ctx, self.name, {"nodes": removed, "params": params_before - len(g.params)})
        return g
