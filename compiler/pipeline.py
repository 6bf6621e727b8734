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
        get_pass("gnn-reorganize"),  # GNN ops before gathers (|V| rows, not |E|); a no-op without graph ops
        get_pass("fold-batchnorm"),
        get_pass("constant-folding"),
        get_pass("canonicalize"),
        *attention_passes(ctx),  # softmax(Q·Kᵀ·s + mask)·V → one tiled `attention` op (float targets)
        *gnn_fuse_passes(ctx),  # gather → edge ops → segment reduce → one `gather_aggregate` (float targets)
        get_pass("dead-code-elimination"),
    ]


def gnn_fuse_passes(ctx: PassContext) -> list[Pass]:
    """Float targets: gnn-score-linear and gnn-fuse unless `gnn_fuse="off"`; constant folding after them computes
    the CSR of a constant graph (index params) at compile time. Integer targets: gnn-quant-prep (always: it is what
    makes a GNN integer-only), and the integer fusion after quantization (`qgnn_fuse_passes`)."""
    from qcc.passes import get_pass

    mode = ctx.options.get("gnn_fuse", "auto")
    if mode not in ("auto", "off"):
        raise OptionError(f"gnn_fuse must be 'auto' or 'off', got {mode!r}")
    if ctx.target is not None and ctx.target.is_integer:
        # Integer targets: degrees counted in int32, score reductions as linears, one op per segment softmax, so
        # the quantizer's GNN rules (qcc.passes.quant.realize_gnn) make the graph integer-only.
        from qcc.passes.gnn.quant_prep import GnnQuantPrep

        return [GnnQuantPrep(), get_pass("canonicalize")]
    if mode == "off":
        return []
    from qcc.passes.gnn.quant_prep import GnnScoreLinear  # attention scores of one input: one GEMM

    return [GnnScoreLinear(), get_pass("gnn-fuse"), get_pass("constant-folding")]


def qgnn_fuse_passes(target: Target, ctx: PassContext) -> list[Pass]:
    """Integer targets, after quantization: gnn-integer-fuse (integer gather → edge ops → segment reduce as one
    `gather_aggregate`) unless `gnn_fuse="off"`; constant folding then computes a constant graph's CSR."""
    from qcc.passes import get_pass
    from qcc.passes.gnn.quant_prep import GnnIntegerFuse

    if ctx.options.get("gnn_fuse", "auto") == "off" or target.device not in ("cpu", "cuda"):
        return []
    return [GnnIntegerFuse(), get_pass("constant-folding")]


QATTENTION_AUTO_KEYS = 1024  # attention="auto" on integer targets: the tiled integer kernel from this many keys


def qattention_passes(target: Target, ctx: PassContext) -> list[Pass]:
    """Integer targets, after quantization: the realized integer attention chain becomes one `qattention` (a
    bit-exact rewrite; cpu and cuda backends) — with `attention="on"` always, with "auto" when it attends over
    at least QATTENTION_AUTO_KEYS keys (where the N×M scores would cost memory; shorter ones run faster unfused)."""
    from qcc.passes import get_pass

    mode = ctx.options.get("attention", "auto")
    if mode == "off" or target.device not in ("cpu", "cuda"):
        return []
    return [get_pass("recognize-qattention", min_keys=0 if mode == "on" else QATTENTION_AUTO_KEYS)]


def attention_passes(ctx: PassContext) -> list[Pass]:
    """recognize-attention unless `attention="off"`; integer targets keep the chain for the integer softmax
    (`attention="on"` fuses it after quantization instead: `qattention_passes`).

    `attention_tile=(br, bc)` forces the backend's tile sizes (default: the cache / shared-memory rule)."""
    from qcc.passes import get_pass

    mode = ctx.options.get("attention", "auto")
    if mode not in ("auto", "on", "off"):
        raise OptionError(f"attention must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off" or (ctx.target is not None and ctx.target.is_integer):
        return []
    return [get_pass("recognize-attention", tile=ctx.options.get("attention_tile") or "")]


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
    # The accelerator runs integer-only graphs: calibration data is required (checked in `optimize`).
    "accel-int8": float_pipeline,
    "accel-int4": float_pipeline,
    "accel-mixed": float_pipeline,
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
    if target.device == "accel" and ctx.options.get("calibration") is None:
        raise OptionError(f"target {target.name!r} runs integer-only programs: pass calibration=<batches> so "
                          "activations can be quantized (the accelerator has no floating point)")
    graph = run_passes(graph, pipeline_for(target, ctx), ctx)
    _resolve_calibration_runner(graph, target, ctx)
    quant = {k: ctx.options[k] for k in QUANT_OPTIONS if k in ctx.options}
    mixed = {k: quant.pop(k) for k in MIXED_OPTIONS if k in quant}
    if target.precision == "mixed" or (target.is_integer and mixed.get("budget") is not None):
        from qcc.passes.mixed import mixed_quantize_graph

        graph, mixed_report = mixed_quantize_graph(graph, ctx=ctx, budget=mixed.pop("budget", None),
                                                   calibration=quant.pop("calibration", None), **mixed, **quant)
        ctx.options["quant_report"] = mixed_report
        return run_passes(graph, qattention_passes(target, ctx), ctx)
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
        graph = run_passes(graph, qattention_passes(target, ctx) + qgnn_fuse_passes(target, ctx), ctx)
    elif quant:
        raise OptionError(f"option(s) {sorted(quant)} apply only to integer targets, not {target.name!r}")
    return graph


def _resolve_calibration_runner(graph: Graph, target: Target, ctx: PassContext) -> None:
    """Turn the option `calibration_runner` ("auto" default | "interpreter" | "tvm") into the calibrate pass's
    runner: a float TVM build of the graph for the host CPU when that pays off, else the reference interpreter."""
    mode = ctx.options.get("calibration_runner")
    if callable(mode):  # already a runner (a test, or an API user with their own)
        return
    if mode not in (None, "auto", "interpreter", "tvm"):
        raise OptionError(f"calibration_runner must be 'auto', 'interpreter' or 'tvm', got {mode!r}")
    if not target.is_integer or target.device not in ("cpu", "cuda") or ctx.options.get("calibration") is None:
        if mode is not None and not target.is_integer:
            raise OptionError(f"option calibration_runner applies only to integer targets, not {target.name!r}")
        ctx.options.pop("calibration_runner", None)
        return
    from qcc.backends.tvm.calibration_runner import choose_runner, count_batches

    num = count_batches(ctx.options["calibration"], graph)
    ctx.options["calibration_runner"] = choose_runner(mode, graph, num, target)


def fuse(graph: Graph, target: Target, ctx: PassContext) -> Graph:
    """The fuse pass (qcc.passes.fuse) with the `fusion` option ("auto" default, "off"): its groups, written to
    node meta, are the kernels the backend emits."""
    from qcc.passes import get_pass

    mode = ctx.options.get("fusion", "auto")
    if mode not in ("auto", "off"):
        raise OptionError(f"fusion must be 'auto' or 'off', got {mode!r}")
    return run_passes(graph, [get_pass("fuse", mode=mode, device=target.device)], ctx)


def build(graph: Graph, target: Target, options: dict[str, Any] | None = None) -> Any:
    """Build an optimized graph with the target's backend; returns the backend executable."""
    if target.device in ("cpu", "cuda"):
        from qcc.backends.tvm import build as tvm_build

        opts = options or {}
        return tvm_build(graph, target, tune=bool(opts.get("tune", False)), quiet=bool(opts.get("quiet", False)),
                         fusion=str(opts.get("fusion", "auto")))
    if target.device == "accel":
        from qcc.backends.accel.build import build as accel_build

        opts = options or {}
        return accel_build(graph, target, method=str(opts.get("schedule", "ilp")),
                           time_limit_s=float(opts.get("schedule_time_limit", 10.0)))
    raise TargetError(f"no backend for device {target.device!r} in this version of qcc")


def load_executable(path: str) -> tuple[Any, dict[str, Any]]:
    """Load a library written by `export_library`; returns (executable, metadata)."""
    from qcc.backends.accel.program import is_qbin, load_qbin

    if is_qbin(path):  # an accelerator program (.qbin)
        return load_qbin(path)
    from qcc.backends.tvm import load_library

    return load_library(path)
