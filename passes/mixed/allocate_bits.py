"""allocate-bits: choose each weighted layer's weight width under resource budgets and record it in node.meta.

Sensitivity (`sensitivity.measure`) on the calibration batches, costs (`costs.cost_table`), tie constraints from
the graph (`tie_constraints`), then the ILP (`ilp.solve`). The chosen width goes to `node.meta["bits"]`, which the
quantize pass reads, so realize-integer builds the mixed model integer-only like the uniform ones. The whole
result (`MixedAllocation`) goes to `ctx.options["mixed.allocation"]` for the report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from qcc.errors import CalibrationError, OptionError, PassError
from qcc.ir.graph import Graph, Value
from qcc.ir.pass_manager import PassContext
from qcc.passes._stats import record_stats
from qcc.passes.mixed.costs import CostTable, cost_table, find_layers, latency_term
from qcc.passes.mixed.ilp import Allocation, solve
from qcc.passes.mixed.sensitivity import Sensitivity, measure, predicted_sqnr_db
from qcc.passes.quant.calibrate import prepare_batches
from qcc.passes.quant.quantize import classify

BUDGET_FIELDS = ("size_mb", "size_ratio", "bops", "latency_ms")


@dataclass
class MixedAllocation:
    """Everything the allocation decided and why: the ILP answer, the sensitivity and cost tables, the limits."""

    allocation: Allocation
    sensitivity: Sensitivity
    costs: CostTable
    limits: dict[str, float]

    @property
    def bits(self) -> dict[str, int]:
        return self.allocation.bits

    @property
    def predicted_sqnr_db(self) -> float:
        return predicted_sqnr_db(self.sensitivity, self.allocation.bits)

    def text(self) -> str:
        """Chosen bits per layer, each layer's sensitivity (output SQNR with only it quantized), budgets used/left."""
        a, s, c = self.allocation, self.sensitivity, self.costs
        cand = "  ".join(f"{f'SQNR@{b} dB':>11}" for b in s.bits)
        lines = ["mixed precision (allocate-bits):",
                 f"  {'layer':<28} {'op':<8} {'params':>8} {cand} {'bits':>5} {'bytes':>8}"]
        for i, layer in enumerate(s.layers):
            b = a.bits[layer.name]
            sq = "  ".join(f"{s.sqnr_db(i, k):>11.1f}" for k in s.bits)
            tag = " (pinned)" if layer.name in a.pinned else ""
            lines.append(f"  {layer.name[:28]:<28} {layer.op:<8} {layer.n_weights:>8} {sq} {b:>5} "
                         f"{c.size[i][b]:>8}{tag}")
        for r, limit in self.limits.items():
            used = a.used[r]
            lines.append(f"  budget {r}: used {used:.6g} of {limit:.6g} (left {limit - used:.6g})")
        for r in ("size_bytes", "bops", "latency_ms"):
            if r not in self.limits:
                lines.append(f"  {r}: {a.used[r]:.6g} (no budget)")
        lines.append(f"  latency term: {c.latency_source}")
        if a.groups:
            lines.append("  tied: " + "; ".join("=".join(g) for g in a.groups))
        lines.append(f"  predicted output SQNR {self.predicted_sqnr_db:.1f} dB (Σ sensitivity {a.objective:.3g}); "
                     f"solver {a.status} in {a.solve_time_s * 1e3:.1f} ms")
        return "\n".join(lines)


def budget_limits(budget: Any, costs: CostTable) -> dict[str, float]:
    """ILP limits (size_bytes / bops / latency_ms) from a Budget-like object or mapping with BUDGET_FIELDS."""
    if budget is None:
        raise OptionError("mixed precision needs a budget, e.g. budget=qcc.Budget(size_mb=0.05)")
    if isinstance(budget, Mapping):
        unknown = sorted(set(budget) - set(BUDGET_FIELDS))
        if unknown:
            raise OptionError(f"unknown budget field(s) {unknown}; known: {list(BUDGET_FIELDS)}")
        values = {k: budget.get(k) for k in BUDGET_FIELDS}
    else:
        values = {k: getattr(budget, k, None) for k in BUDGET_FIELDS}
    for k, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise OptionError(f"budget {k} must be a positive number, got {v!r}")
    limits: dict[str, float] = {}
    sizes = []
    if values["size_mb"] is not None:
        sizes.append(float(values["size_mb"]) * 1e6)
    if values["size_ratio"] is not None:  # a fraction of the float32 weights
        sizes.append(float(values["size_ratio"]) * sum(layer.float_bytes for layer in costs.layers))
    if sizes:
        limits["size_bytes"] = min(sizes)
    if values["bops"] is not None:
        limits["bops"] = float(values["bops"])
    if values["latency_ms"] is not None:
        limits["latency_ms"] = float(values["latency_ms"])
    if not limits:
        raise OptionError(f"the budget sets none of {list(BUDGET_FIELDS)}")
    return limits


def tie_constraints(graph: Graph) -> list[tuple[str, ...]]:
    """Layers that must share a width: the weighted producers of the inputs of one add / sub / concat (traced back
    through scale-keeping ops such as relu, reshape, pooling), and layers reading the same weight."""
    producers = graph.producers()
    weighted = {n.outputs[0]: n.name for n in graph.nodes if classify(n, graph.params) == "linear"}

    def source(v: Value) -> str | None:
        for _ in range(len(graph.nodes)):
            if v in weighted:
                return weighted[v]
            node = producers.get(v)
            if node is None or classify(node, graph.params) != "pass":
                return None
            v = node.inputs[0]
        return None

    ties: list[tuple[str, ...]] = []
    for n in graph.nodes:
        if n.op in ("add", "sub", "concat"):
            names = tuple(dict.fromkeys(s for s in map(source, n.inputs) if s is not None))
            if len(names) > 1:
                ties.append(names)
    by_weight: dict[Value, list[str]] = {}
    for n in graph.nodes:
        if classify(n, graph.params) == "linear":
            by_weight.setdefault(n.inputs[1], []).append(n.name)
    ties += [tuple(names) for names in by_weight.values() if len(names) > 1]
    return ties


@dataclass(frozen=True)
class AllocateBits:
    """Choose per-layer weight bits under a budget (`size_mb`, `size_ratio`, `bops`, `latency_ms`, any subset).

    Options: `candidate_bits` (4, 8), `pin_first_last` (first and last weighted layer at the widest candidate),
    `tie` (tie constraints from the graph), `per_channel` / `weight_method` (as the quantize pass will use),
    `device` (latency constants; default the target's), `max_batches` (calibration batches scored),
    `time_limit_s` (solver), `cost_model` (the latency term's model: a CostModel, a path, "analytic"; default
    ctx.options["cost_model"], else the active / shipped model — see `costs.latency_term`). Needs calibration
    data in ctx.options["calibration"] (or `data`).
    """

    name: ClassVar[str] = "allocate-bits"
    size_mb: float | None = None
    size_ratio: float | None = None
    bops: float | None = None
    latency_ms: float | None = None
    candidate_bits: tuple[int, ...] = (4, 8)
    pin_first_last: bool = True
    tie: bool = True
    per_channel: bool = True
    weight_method: str = "mse"
    device: str = ""
    max_batches: int = 4
    time_limit_s: float = 10.0
    data: Any = None
    cost_model: Any = None

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        batches = self.data if self.data is not None else ctx.options.get("calibration")
        device = self.device or getattr(ctx.target, "device", None) or "cpu"
        model = self.cost_model if self.cost_model is not None else ctx.options.get("cost_model")
        problem = AllocationProblem.build(graph, batches, self.candidate_bits, self.pin_first_last, self.tie,
                                          self.per_channel, self.weight_method, device, self.max_batches, model)
        result = problem.solve({k: getattr(self, k) for k in BUDGET_FIELDS}, self.time_limit_s)
        out = graph.copy()
        for n in out.nodes:
            if n.name in result.bits and classify(n, out.params) == "linear":
                n.meta["bits"] = result.bits[n.name]
        ctx.options["mixed.allocation"] = result
        record_stats(ctx, self.name, {f"w{b}": sum(v == b for v in result.bits.values()) for b in problem.bits})
        return out


@dataclass
class AllocationProblem:
    """The measured inputs of the ILP for one graph (layers, sensitivity, costs, pins, ties); `solve(budget)` runs
    the ILP for one budget, so a Pareto sweep measures sensitivity once."""

    bits: tuple[int, ...]
    sensitivity: Sensitivity
    costs: CostTable
    pins: dict[str, int]
    ties: list[tuple[str, ...]]

    @classmethod
    def build(cls, graph: Graph, batches: Any, candidate_bits: Any = (4, 8), pin_first_last: bool = True,
              tie: bool = True, per_channel: bool = True, weight_method: str = "mse", device: str = "cpu",
              max_batches: int = 4, cost_model: Any = None) -> AllocationProblem:
        """Find the weighted layers of a float graph (BatchNorm folded) and measure sensitivity and costs (the
        latency term from `cost_model`, see `costs.latency_term`)."""
        try:
            bits = tuple(sorted(set(candidate_bits)))
        except TypeError:
            raise OptionError(f"candidate_bits must be a list of widths, got {candidate_bits!r}") from None
        if not bits or any(isinstance(b, bool) or b not in (2, 3, 4, 5, 6, 7, 8) for b in bits):
            raise OptionError(f"candidate_bits must be widths in 2..8, got {candidate_bits!r}")
        layers = find_layers(graph, per_channel)
        if not layers:
            raise PassError("allocate-bits: the model has no weighted layer (conv2d / linear / matmul) to allocate")
        dup = sorted(n for n, k in Counter(layer.name for layer in layers).items() if k > 1)
        if dup:
            raise PassError(f"allocate-bits: weighted layers need unique node names, repeated: {dup}")
        if batches is None:
            raise CalibrationError("allocate-bits needs calibration data to measure layer sensitivity")
        feeds = prepare_batches(batches, graph)[: max(1, max_batches)]
        costs = cost_table(layers, bits, *latency_term(device, cost_model))
        sens = measure(graph, layers, bits, feeds, per_channel, weight_method)
        pins = {layers[0].name: bits[-1], layers[-1].name: bits[-1]} if pin_first_last else {}
        return cls(bits, sens, costs, pins, tie_constraints(graph) if tie else [])

    def solve(self, budget: Any, time_limit_s: float = 10.0) -> MixedAllocation:
        """Solve the ILP for one budget (Budget-like or mapping); InfeasibleBudgetError when nothing fits."""
        limits = budget_limits(budget, self.costs)
        c = self.costs
        alloc = solve([layer.name for layer in c.layers], self.bits, self.sensitivity.nsr,
                      {"size_bytes": c.size, "bops": c.bops, "latency_ms": c.latency}, limits, self.ties,
                      self.pins, time_limit_s)
        return MixedAllocation(alloc, self.sensitivity, c, limits)
