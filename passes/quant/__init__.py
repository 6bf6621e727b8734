"""Quantization passes: calibrate, quantize (QDQ), realize-integer, check-integer-only; and `quantize_graph`.

`quantize_graph(graph, calibration=batches, bits=8)` is the entry the compile pipeline uses: with calibration data
it returns an integer-only graph (W8A8, or W4A8 with `bits=4`) and a `QuantReport`; without, a weight-only graph
(integer weights dequantized into float ops) whose report says so. See quantization.md for the algorithms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from qcc.errors import OptionError
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import Pass, PassContext, run_passes
from qcc.passes.quant.calibrate import Calibrate, CalibrationStats, calibrate_graph, clear_cache
from qcc.passes.quant.check_integer_only import CheckIntegerOnly, IntegerOnlyReport, check_integer_only
from qcc.passes.quant.observers import METHODS
from qcc.passes.quant.quantize import LayerInfo, Quantize
from qcc.passes.quant.realize_integer import RealizeInteger
from qcc.passes.quant.realize_nonlinear import NONLINEAR
from qcc.passes.quant.report import LayerRow, QuantReport, build_rows, layer_sqnr
from qcc.passes.quant.weights import WEIGHT_METHODS


def _validate(bits: Any, calibration_method: Any, weight_method: Any, group_size: Any, keep_float: Any,
              nonlinear: Any, auto_fallback: Any, per_channel: Any, symmetric: Any) -> tuple[str, ...]:
    if bits not in (4, 8) or isinstance(bits, bool):
        raise OptionError(f"bits must be 8 (W8A8) or 4 (W4A8), got {bits!r}")
    if calibration_method not in METHODS:
        raise OptionError(f"calibration_method must be one of {list(METHODS)}, got {calibration_method!r}")
    if weight_method not in WEIGHT_METHODS:
        raise OptionError(f"weight_method must be one of {list(WEIGHT_METHODS)}, got {weight_method!r}")
    if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool)
                                   or group_size < 1):
        raise OptionError(f"group_size must be a positive int or None, got {group_size!r}")
    if nonlinear not in NONLINEAR:
        raise OptionError(f"nonlinear must be one of {list(NONLINEAR)}, got {nonlinear!r}")
    if auto_fallback is not None and (isinstance(auto_fallback, bool) or not isinstance(auto_fallback, (int, float))
                                      or not math.isfinite(auto_fallback)):
        raise OptionError(f"auto_fallback must be a minimum SQNR in dB (a number) or None, got {auto_fallback!r}")
    for name, flag in (("per_channel", per_channel), ("symmetric", symmetric)):
        if not isinstance(flag, bool):
            raise OptionError(f"{name} must be True or False, got {flag!r}")
    if isinstance(keep_float, str):
        keep_float = (keep_float,)
    try:
        kept = tuple(keep_float)
    except TypeError:
        raise OptionError(f"keep_float must be a list of layer names or op kinds, got {keep_float!r}") from None
    if not all(isinstance(k, str) for k in kept):
        raise OptionError(f"keep_float must hold strings (layer names or op kinds), got {kept!r}")
    return kept


def _prepare(graph: Graph, ctx: PassContext) -> Graph:
    """BatchNorm must be folded before weights are quantized."""
    if any(n.op == "batch_norm" for n in graph.nodes):
        from qcc.passes.constant_folding import ConstantFolding
        from qcc.passes.fold_batchnorm import FoldBatchNorm

        return run_passes(graph, [FoldBatchNorm(), ConstantFolding()], ctx)
    return graph


def quantize_graph(graph: Graph, *, bits: int = 8, calibration: Iterable[Any] | None = None,
                   calibration_method: str = "minmax", weight_method: str = "mse", per_channel: bool = True,
                   group_size: int | None = None, symmetric: bool = True, keep_float: Iterable[str] = (),
                   nonlinear: str = "ibert", auto_fallback: float | None = None, progress: bool = True,
                   cache_dir: str = "", ctx: PassContext | None = None,
                   layer_bits: Mapping[str, int] | None = None) -> tuple[Graph, QuantReport]:
    """Quantize a float graph: integer-only W8A8 / W4A8 with calibration data, weight-only without.

    Runs calibrate → quantize → realize-integer with `run_passes` (so `ctx` printing and dumping apply), then
    measures each layer's output SQNR against the float graph on the calibration data. With `auto_fallback`
    (dB), layers below it are kept in float and the graph is rebuilt (it is then no longer integer-only, and the
    report says so). `layer_bits` maps layer (node) names to their weight bits (mixed precision; the others use
    `bits`). Bad options raise OptionError; bad calibration data CalibrationError.
    """
    kept = _validate(bits, calibration_method, weight_method, group_size, keep_float, nonlinear, auto_fallback,
                     per_channel, symmetric)
    ctx = ctx or PassContext()
    float_graph = _prepare(graph, ctx)
    qopts: dict[str, Any] = {"bits": bits, "per_channel": per_channel, "group_size": group_size or 0,
                             "symmetric": symmetric, "weight_method": weight_method}
    if layer_bits:
        qopts["layer_bits"] = tuple(sorted(dict(layer_bits).items()))
    if calibration is None:
        out = run_passes(float_graph, [Quantize(**qopts, keep_float=kept, weight_only=True)], ctx)
        layers: list[LayerInfo] = ctx.options["quant.layers"]
        wsq = {i: layer.weight_sqnr for i, layer in enumerate(layers)}
        check = check_integer_only(out)
        report = QuantReport(build_rows(layers, dict(wsq), None), f"weight-only int{bits} (no calibration data: "
                             "float activations, not integer-only)", False, True, check, None, weight_method,
                             nonlinear, list(kept), "weights")
        return out, report
    calibrate: Pass = Calibrate(calibration_method, 8, symmetric, progress=progress, cache_dir=cache_dir,
                                data=calibration)
    calibrated = run_passes(float_graph, [calibrate], ctx)
    stats: CalibrationStats = ctx.options["quant.calibration"]

    def build(keep: tuple[str, ...]) -> tuple[Graph, list[LayerInfo], dict[int, float]]:
        g = run_passes(calibrated, [Quantize(**qopts, keep_float=keep), RealizeInteger(nonlinear)], ctx)
        infos: list[LayerInfo] = ctx.options["quant.layers"]
        return g, infos, layer_sqnr(float_graph, g, infos, stats.batches)

    out, layers, sq = build(kept)
    if auto_fallback is not None:
        low = [layer.name for i, layer in enumerate(layers) if sq.get(i, math.inf) < auto_fallback
               and layer.name not in kept and any(n.name == layer.name for n in float_graph.nodes)]
        if low:
            kept = kept + tuple(dict.fromkeys(low))
            out, layers, sq = build(kept)
    check = check_integer_only(out)
    wbits = "/".join(f"{b}" for b in sorted({bits, *dict(layer_bits or {}).values()}, reverse=True))
    mode = f"W{wbits}A8 " + ("integer-only" if check.ok else "with float layers (not integer-only)")
    rows = build_rows(layers, dict(sq), 8)
    report = QuantReport(rows, mode, check.ok, False, check, calibration_method, weight_method, nonlinear,
                         list(kept), "output")
    return out, report


__all__ = ["Calibrate", "CalibrationStats", "CheckIntegerOnly", "IntegerOnlyReport", "LayerInfo", "LayerRow",
           "QuantReport", "Quantize", "RealizeInteger", "calibrate_graph", "check_integer_only", "clear_cache",
           "quantize_graph"]
