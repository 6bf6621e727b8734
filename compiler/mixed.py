"""Mixed-precision helpers of the API: `qcc.pareto` (a budget sweep) and `qcc.plot_bits` (matplotlib figure).

`pareto` imports the model once, measures layer sensitivity once, then for each budget solves the ILP, builds the
integer-only graph and measures its output SQNR against the float graph on the calibration batches (reference
interpreter), with an optional user metric (e.g. accuracy) on the quantized graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.errors import InfeasibleBudgetError, OptionError
from qcc.interpreter import interpret
from qcc.ir.graph import Graph


@dataclass
class ParetoRow:
    """One budget of a sweep: what the ILP chose and predicted, and what the built model measured."""

    budget: Any
    status: str
    bits: dict[str, int] = field(default_factory=dict)
    predicted_sensitivity: float | None = None
    predicted_sqnr_db: float | None = None
    measured_sqnr_db: float | None = None
    size_bytes: float | None = None
    bops: float | None = None
    latency_ms: float | None = None
    metric: float | None = None


def _output_sqnr(ref: Graph, quant: Graph, feeds: Sequence[list[np.ndarray]]) -> float:
    power = err = 0.0
    for feed in feeds:
        with np.errstate(all="ignore"):
            rs, qs = interpret(ref, list(feed)), interpret(quant, list(feed))
        for r, q in zip(rs, qs, strict=True):
            r64, q64 = np.asarray(r, np.float64), np.asarray(q, np.float64)
            power += float(np.sum(r64 * r64))
            err += float(np.sum((r64 - q64) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(power / err) if power > 0 else -math.inf


def pareto(model: Any, example_inputs: Sequence[Any] | None, calibration: Any, budgets: Sequence[Any],
           candidate_bits: Sequence[int] = (4, 8), pin_first_last: bool = True, device: str = "cpu",
           metric: Callable[[Graph], float] | None = None, input_shapes: Any = None,
           **quant_options: Any) -> list[ParetoRow]:
    """Solve the bit allocation for each budget (qcc.Budget or dict) and build each model; one row per budget.

    Infeasible budgets give a row with status "infeasible" (and the error text) instead of raising.
    """
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext, run_passes
    from qcc.passes.mixed import AllocationProblem
    from qcc.passes.quant import _prepare, quantize_graph
    from qcc.passes.quant.calibrate import prepare_batches
    from qcc.pipeline import float_pipeline

    if not budgets:
        raise OptionError("pareto needs a list of budgets")
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    ctx = PassContext()
    graph = run_passes(import_model(model, example_inputs, input_shapes), float_pipeline(ctx), ctx)
    graph = _prepare(graph, ctx)
    batches = list(calibration)
    problem = AllocationProblem.build(graph, batches, candidate_bits, pin_first_last, device=device)
    feeds = prepare_batches(batches, graph)[:8]
    rows = []
    for budget in budgets:
        try:
            result = problem.solve(budget)
        except InfeasibleBudgetError as e:
            rows.append(ParetoRow(budget, f"infeasible: {e}"))
            continue
        q, _ = quantize_graph(graph, bits=max(candidate_bits), calibration=batches, layer_bits=result.bits,
                              progress=False, **quant_options)
        a = result.allocation
        rows.append(ParetoRow(budget, a.status, dict(a.bits), a.objective, result.predicted_sqnr_db,
                              _output_sqnr(graph, q, feeds), a.used["size_bytes"], a.used["bops"],
                              a.used["latency_ms"], metric(q) if metric is not None else None))
    return rows


def _allocation_of(obj: Any) -> Any:
    report = getattr(obj, "quant_report", obj)
    alloc = getattr(report, "allocation", report)
    if hasattr(alloc, "sensitivity") and hasattr(alloc, "allocation"):
        return alloc
    return None


def plot_bits(obj: Any, path: str) -> None:
    """Draw a mixed-precision result to an image file.

    `obj` is a compiled mixed library (or its report / allocation): per-layer sensitivity (output SQNR with only
    that layer at each candidate width) with the chosen bits, and the predicted Pareto front (size vs predicted
    SQNR, by re-solving the ILP over size budgets) with the chosen point; or a list of `pareto` rows: the front,
    predicted and measured.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alloc = _allocation_of(obj)
    if alloc is None:
        rows = [r for r in obj if isinstance(r, ParetoRow) and r.size_bytes is not None] \
            if isinstance(obj, (list, tuple)) else None
        if not rows:
            raise OptionError("plot_bits needs a mixed-precision library (target *-mixed), its report, or the "
                              "feasible rows of qcc.pareto")
        fig, ax = plt.subplots(figsize=(6, 4))
        _front(ax, [r.size_bytes / 1e6 for r in rows if r.size_bytes is not None],
               [r.predicted_sqnr_db for r in rows], [r.measured_sqnr_db for r in rows])
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        _layers(ax1, alloc)
        sizes, predicted = _predicted_front(alloc)
        _front(ax2, sizes, predicted, None)
        ax2.scatter([alloc.allocation.used["size_bytes"] / 1e6], [alloc.predicted_sqnr_db], s=80, c="red",
                    zorder=3, label="chosen")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _layers(ax: Any, alloc: Any) -> None:
    sens = alloc.sensitivity
    names = [layer.name for layer in sens.layers]
    x = np.arange(len(names))
    width = 0.8 / len(sens.bits)
    for k, b in enumerate(sens.bits):
        ax.bar(x + k * width, [min(sens.sqnr_db(i, b), 120.0) for i in range(len(names))], width,
               label=f"SQNR with only this layer at {b} bits")
    for i, name in enumerate(names):
        ax.annotate(f"W{alloc.bits[name]}", (x[i] + 0.4 - width / 2, 1.0), ha="center", color="white",
                    fontweight="bold")
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title("per-layer sensitivity and chosen weight bits")
    ax.legend(fontsize=7)


def _predicted_front(alloc: Any) -> tuple[list[float], list[float]]:
    from qcc.passes.mixed import AllocationProblem

    costs = alloc.costs
    problem = AllocationProblem(tuple(alloc.sensitivity.bits), alloc.sensitivity, costs,
                                dict(alloc.allocation.pinned), [tuple(g) for g in alloc.allocation.groups])
    lo, hi = costs.uniform(min(costs.bits))["size_bytes"], costs.uniform(max(costs.bits))["size_bytes"]
    sizes, predicted = [], []
    for r in np.linspace(0.0, 1.0, 11):
        try:
            res = problem.solve({"size_mb": (lo + r * (hi - lo)) / 1e6}, time_limit_s=2.0)
        except InfeasibleBudgetError:
            continue
        sizes.append(res.allocation.used["size_bytes"] / 1e6)
        predicted.append(res.predicted_sqnr_db)
    return sizes, predicted


def _front(ax: Any, sizes: Sequence[float], predicted: Sequence[float | None],
           measured: Sequence[float | None] | None) -> None:
    ax.plot(sizes, predicted, "o-", label="predicted SQNR (Σ sensitivity)")
    if measured is not None:
        ax.plot(sizes, measured, "s--", label="measured SQNR (built model)")
    ax.set_xlabel("weight size (MB)")
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title("Pareto front")
    ax.legend(fontsize=7)
