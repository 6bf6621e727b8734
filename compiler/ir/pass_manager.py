"""Passes and the pass manager.

A pass is a small dataclass with a kebab-case `name` and `run(graph, ctx) -> graph`. `run_passes` verifies
after every pass, names the passes that ran before a failure, and owns printing (`--print-after-all`), IR
dumps and per-pass timing: passes never print.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TextIO

from qcc.errors import PassError, QccError, VerificationError
from qcc.ir.graph import Graph
from qcc.ir.printer import print_graph
from qcc.ir.verifier import verify


class Pass(Protocol):
    """The pass interface: a kebab-case `name` (file, pass and test named alike) and `run`."""

    name: ClassVar[str]

    def run(self, graph: Graph, ctx: PassContext) -> Graph: ...


@dataclass
class PassContext:
    """Everything passes may consult, and the debugging switches the manager honours.

    `target` is a `qcc.target.Target` (typed Any here so qcc.ir stays the lowest layer); `options` holds
    compile options; `print_after` is a set of pass names or {"*"}; `dump_dir` gets NN-<pass>.qir files.
    """

    target: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    verify_each: bool = True
    print_after: frozenset[str] = frozenset()
    out: TextIO | None = None
    dump_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    seed: int = 0

    def should_print(self, pass_name: str) -> bool:
        return "*" in self.print_after or pass_name in self.print_after


def run_passes(graph: Graph, passes: Sequence[Pass], ctx: PassContext | None = None) -> Graph:
    """Run `passes` in order with verify-after-each, printing, dumping and timing."""
    ctx = ctx or PassContext()
    if ctx.verify_each:
        verify(graph)
    if ctx.dump_dir is not None:
        ctx.dump_dir.mkdir(parents=True, exist_ok=True)
        (ctx.dump_dir / "00-input.qir").write_text(print_graph(graph))
    for i, p in enumerate(passes):
        before = [q.name for q in passes[:i]]
        t0 = time.perf_counter()
        try:
            graph = p.run(graph, ctx)
            if ctx.verify_each:
                verify(graph)
        except PassError:
            raise
        except QccError as e:
            if not isinstance(e, VerificationError):
                # A user-facing error (infeasible budget, bad option...) keeps its class; the note names the pass.
                e.add_note(f"in pass {p.name!r} (passes run before it: {', '.join(before) or 'none'})")
                raise
            raise PassError(f"pass {p.name!r} failed (passes run before it: {', '.join(before) or 'none'}): {e}") from e
        except Exception as e:
            raise PassError(f"pass {p.name!r} failed (passes run before it: {', '.join(before) or 'none'}): "
                            f"{type(e).__name__}: {e}") from e
        ctx.timings[p.name] = ctx.timings.get(p.name, 0.0) + time.perf_counter() - t0
        if ctx.should_print(p.name):
            out = ctx.out or sys.stderr
            out.write(f"// ----- IR after {p.name} ----- //\n{print_graph(graph)}\n")
        if ctx.dump_dir is not None:
            (ctx.dump_dir / f"{i + 1:02d}-{p.name}.qir").write_text(print_graph(graph))
    return graph
