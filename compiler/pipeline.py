"""Per-target pass pipelines, readable top to bottom, and the driver from IR to a built library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qcc.errors import OptionError, TargetError
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import Pass, PassContext, run_passes
from qcc.target import Target


def float_pipeline(ctx: PassContext) -> list[Pass]:
    """cpu-fp32 / cuda-fp32 / cuda-fp16: clean the imported graph, fold BatchNorm, fold constants."""
    from qcc.passes import get_pass

    return [
        get_pass("constant-folding"),
        get_pass("canonicalize"),
        get_pass("fold-batchnorm"),
        get_pass("constant-folding"),
        get_pass("canonicalize"),
        get_pass("dead-code-elimination"),
    ]


PIPELINES: dict[str, Callable[[PassContext], list[Pass]]] = {
    "cpu-fp32": float_pipeline,
    "cuda-fp32": float_pipeline,
    "cuda-fp16": float_pipeline,
    # Integer targets: the float clean-up, then quantization (see `quantize` below).
    "cpu-int8": float_pipeline,
    "cpu-int4": float_pipeline,
    "cuda-int8": float_pipeline,
    "cuda-int4": float_pipeline,
    # Mixed precision: per-layer weight widths chosen under a budget (qcc.passes.mixed), then quantized.
    "cpu-mixed": float_pipeline,
    "cuda-mixed": float_pipeline,
}

# Quantization options of `qcc.compile` (integer targets only), passed to qcc.passes.quant.quantize_graph.
QUANT_OPTIONS = ("calibration", "calibration_method", "weight_method", "per_channel", "group_size", "symmetric",
                 "keep_float", "nonlinear", "auto_fallback", "progress", "cache_dir",
                 "budget", "candidate_bits", "pin_first_last")
# The options above that only mixed precision takes (qcc.passes.mixed.mixed_quantize_graph): the *-mixed targets,
# and any integer target given a budget (cpu-int4 + budget allocates per-layer widths just as cpu-mixed does).
MIXED_OPTIONS = ("budget", "candidate_bits", "pin_first_last")


def pipeline_for(target: Target, ctx: PassContext) -> list[Pass]:
    """The pass list of a target; a target without a pipeline yet gets a clear TargetError."""
    try:
        make = PIPELINES[target.name]
    except KeyError:
        raise TargetError(f"target {target.name!r} is not available in this version of qcc; "
                          f"available: {sorted(PIPELINES)}") from None
    return make(ctx)


def optimize(graph: Graph, target: Target, ctx: PassContext) -> Graph:
    """Run the target's pipeline over an imported graph; integer targets are then quantized.

    The *-mixed targets, and any integer target given a `budget`, choose per-layer weight widths under the budget
    (candidates `candidate_bits`, default 4 and 8) before quantizing; a budget on a float target is an OptionError.

    The quantization report (`QuantReport`) is left in `ctx.options["quant_report"]`.
    """
    graph = run_passes(graph, pipeline_for(target, ctx), ctx)
    quant = {k: ctx.options[k] for k in QUANT_OPTIONS if k in ctx.options}
    mixed = {k: quant.pop(k) for k in MIXED_OPTIONS if k in quant}
    if target.precision == "mixed" or (target.is_integer and mixed.get("budget") is not None):
        from qcc.passes.mixed import mixed_quantize_graph

        graph, mixed_report = mixed_quantize_graph(graph, ctx=ctx, budget=mixed.pop("budget", None),
                                                   calibration=quant.pop("calibration", None), **mixed, **quant)
        ctx.options["quant_report"] = mixed_report
        return graph
    if mixed:
        if target.is_integer:
            raise OptionError(f"option(s) {sorted(mixed)} need a budget on {target.name!r}: mixed precision runs on "
                              f"the *-mixed targets and on integer targets given budget=qcc.Budget(...)")
        raise OptionError(f"option(s) {sorted(mixed)} (mixed precision) apply only to integer targets (cpu/cuda "
                          f"int8, int4, mixed), not {target.name!r}")
    if target.is_integer:
        from qcc.passes.quant import quantize_graph

        bits = 4 if target.precision == "int4" else 8
        graph, report = quantize_graph(graph, bits=bits, ctx=ctx, **quant)
        ctx.options["quant_report"] = report
    elif quant:
        raise OptionError(f"option(s) {sorted(quant)} apply only to integer targets, not {target.name!r}")
    return graph


def build(graph: Graph, target: Target, options: dict[str, Any] | None = None) -> Any:
    """Build an optimized graph with the target's backend; returns the backend executable."""
    if target.device in ("cpu", "cuda"):
        from qcc.backends.tvm import build as tvm_build

        opts = options or {}
        return tvm_build(graph, target, tune=bool(opts.get("tune", False)), quiet=bool(opts.get("quiet", False)))
    raise TargetError(f"no backend for device {target.device!r} in this version of qcc")


def load_executable(path: str) -> tuple[Any, dict[str, Any]]:
    """Load a library written by `export_library`; returns (executable, metadata)."""
    from qcc.backends.tvm import load_library

    return load_library(path)
