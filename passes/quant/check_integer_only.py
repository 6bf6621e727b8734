"""check-integer-only: prove that nothing between the input quantize and the output dequantize computes in float.

The rule, on the IR: the float part of the graph may only be its boundary. A float graph input may be read only by
`quantize` nodes (the input boundary); a float graph output must be produced by a `dequantize` of an integer value
(the output boundary) — or be a float input passed through. Every other node must have no float-typed input or
output: no float op, no float constant, no dequantize feeding a float op. At least one input quantize must exist,
so a weight-only graph (integer weights dequantized into float ops) fails, and the report says it is weight-only.

`check_integer_only(graph)` returns an `IntegerOnlyReport` (ok, offending nodes with the reason, text); the pass
raises `PassError` with that text when the check fails and `raise_on_failure` is set, and otherwise records the
number of offending nodes in `ctx.stats["check-integer-only"]`. The graph is returned unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from qcc.errors import PassError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import value_names
from qcc.ir.types import FLOAT_DTYPES
from qcc.passes._stats import record_stats


@dataclass
class IntegerOnlyReport:
    """The verdict of the integer-only check: `ok`, and each offending node as (name, op, reason)."""

    ok: bool
    offending: list[tuple[str, str, str]] = field(default_factory=list)
    input_quantizes: int = 0
    output_dequantizes: int = 0
    weight_only: bool = False

    def text(self) -> str:
        if self.ok:
            return (f"integer-only: yes ({self.input_quantizes} input quantize, {self.output_dequantizes} output "
                    f"dequantize, no float op between them)")
        head = "integer-only: no"
        if self.weight_only:
            head += " (weight-only quantization: integer weights are dequantized into float ops)"
        lines = [f"{head}; {len(self.offending)} node(s) compute in float:"]
        lines += [f"  {op} {name!r}: {why}" for name, op, why in self.offending[:50]]
        if len(self.offending) > 50:
            lines.append(f"  ... and {len(self.offending) - 50} more")
        return "\n".join(lines)

    __str__ = text


def _is_float(v: Value) -> bool:
    return v.dtype in FLOAT_DTYPES


def check_integer_only(graph: Graph) -> IntegerOnlyReport:
    """Check that only the input quantize / output dequantize boundary touches float values."""
    inputs = set(graph.inputs)
    outputs = set(graph.outputs)
    users = graph.users()
    offending: list[tuple[str, str, str]] = []
    n_in = n_out = 0

    names = value_names(graph)

    def label(n: Node) -> str:
        return n.name or (names[n.outputs[0]] if n.outputs else n.op)

    for n in graph.nodes:
        if n.op == "quantize" and n.inputs[0] in inputs:
            n_in += 1
            continue
        if n.op == "dequantize" and not _is_float(n.inputs[0]) and n.output in outputs:
            n_out += 1
            continue
        data = n.inputs[:1] if n.op in ("quantize", "dequantize") else n.inputs  # scales are compile-time
        floats = [v for v in data if _is_float(v)]
        if floats:
            kind = "dequantize output" if n.op == "dequantize" else "float input"
            what = ", ".join(f"%{names[v]}" for v in floats[:3])
            offending.append((label(n), n.op, f"{kind} {what}"))
            continue
        if any(_is_float(v) for v in n.outputs):
            why = "dequantizes into float ops" if n.op == "dequantize" else "float output"
            offending.append((label(n), n.op, why))
    for v in graph.inputs:
        if _is_float(v) and any(u.op != "quantize" for u in users.get(v, [])):
            bad = sorted({u.op for u in users[v] if u.op != "quantize"})
            offending.append((v.name, "input", f"float input read by {', '.join(bad)}"))
    has_float_io = any(_is_float(v) for v in graph.inputs)
    weight_only = n_in == 0 and any(n.op == "dequantize" and n.inputs[0] in graph.params
                                    and any(_is_float(v) for u in users.get(n.output, []) for v in u.outputs)
                                    for n in graph.nodes)
    ok = not offending and (n_in > 0 or not has_float_io)
    if n_in == 0 and has_float_io and not offending:
        offending.append(("<inputs>", "input", "no input quantize: the graph is not quantized"))
    return IntegerOnlyReport(ok, offending, n_in, n_out, weight_only)


@dataclass(frozen=True)
class CheckIntegerOnly:
    """Analysis: fail (PassError naming the float nodes) unless the graph is integer-only between its input
    quantize and output dequantize. With `raise_on_failure=False` it only records the count in ctx.stats."""

    name: ClassVar[str] = "check-integer-only"
    raise_on_failure: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        report = check_integer_only(graph)
        record_stats(ctx, self.name, {"float_nodes": len(report.offending), "integer_only": int(report.ok)})
        if not report.ok and self.raise_on_failure:
            raise PassError(f"pass {self.name!r}: the graph is not integer-only.\n{report.text()}")
        return graph
