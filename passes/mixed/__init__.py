"""Mixed precision: per-layer sensitivity, costs, and weight-width allocation by integer programming (CP-SAT).

`mixed_quantize_graph(graph, budget=..., calibration=...)` is the entry the compile pipeline uses for the
`*-mixed` targets: allocate-bits chooses each weighted layer's weight width (W4 or W8 by default; activations are
8-bit) under the budget, then `quantize_graph` builds the integer-only graph with those widths. Its report is a
`MixedReport`: the quantization report plus the allocation (bits, sensitivities, budgets used and left).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qcc.errors import CalibrationError
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes.mixed.allocate_bits import (
    BUDGET_FIELDS,
    AllocateBits,
    AllocationProblem,
    MixedAllocation,
    budget_limits,
    tie_constraints,
)
from qcc.passes.mixed.costs import CostTable, MixedLayer, analytic_latency, cost_table, find_layers
from qcc.passes.mixed.ilp import Allocation, minimum_achievable, solve
from qcc.passes.mixed.sensitivity import Sensitivity, measure, predicted_sqnr_db
from qcc.passes.quant import QuantReport, quantize_graph
from qcc.passes.quant import _prepare as prepare_float


@dataclass
class MixedReport(QuantReport):
    """A QuantReport of a mixed-precision build, with the bit allocation that produced it."""

    allocation: MixedAllocation | None = None

    def text(self) -> str:
        base = QuantReport.text(self)
        return base if self.allocation is None else base + "\n" + self.allocation.text()

    __str__ = text


def _budget_dict(budget: Any) -> dict[str, Any]:
    if isinstance(budget, dict):
        return dict(budget)
    return {k: getattr(budget, k, None) for k in BUDGET_FIELDS}


def mixed_quantize_graph(graph: Graph, *, budget: Any, calibration: Iterable[Any] | None,
                         candidate_bits: Sequence[int] = (4, 8), pin_first_last: bool = True, tie: bool = True,
                         per_channel: bool = True, weight_method: str = "mse", ctx: PassContext | None = None,
                         **quant_options: Any) -> tuple[Graph, MixedReport]:
    """Allocate weight widths under `budget` (a qcc.Budget or a dict of its fields), then quantize integer-only.

    Raises InfeasibleBudgetError when no allocation fits (stating the smallest achievable values), OptionError for
    a bad budget, CalibrationError without calibration data. Other options go to `quantize_graph`.
    """
    if calibration is None:
        raise CalibrationError("mixed precision needs calibration data (calibration=[batches]) to measure "
                               "layer sensitivity and activation ranges")
    batches = list(calibration)
    ctx = ctx or PassContext()
    float_graph = prepare_float(graph, ctx)
    fields = {k: v for k, v in _budget_dict(budget).items() if v is not None}
    allocate = AllocateBits(**fields, candidate_bits=tuple(candidate_bits), pin_first_last=pin_first_last, tie=tie,
                            per_channel=per_channel, weight_method=weight_method, data=batches)
    if not fields:
        budget_limits(None, CostTable([], (), [], [], []))  # raises the "needs a budget" error
    allocated = run_passes(float_graph, [allocate], ctx)
    alloc: MixedAllocation = ctx.options["mixed.allocation"]
    out, report = quantize_graph(allocated, bits=max(candidate_bits), calibration=batches, per_channel=per_channel,
                                 weight_method=weight_method, ctx=ctx, layer_bits=alloc.bits, **quant_options)
    mixed = MixedReport(**{f: getattr(report, f) for f in QuantReport.__dataclass_fields__}, allocation=alloc)
    return out, mixed


__all__ = ["Allocation", "AllocateBits", "AllocationProblem", "CostTable", "MixedAllocation", "MixedLayer",
           "MixedReport", "Sensitivity", "analytic_latency", "budget_limits", "cost_table", "find_layers", "measure",
           "minimum_achievable", "mixed_quantize_graph", "predicted_sqnr_db", "solve", "tie_constraints"]
