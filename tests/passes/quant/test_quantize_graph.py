"""quantize_graph, the entry the compile pipeline calls: integer-only and weight-only results, the report,
keep_float / auto_fallback, and clear errors for bad options and bad calibration data."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from qcc.errors import CalibrationError, OptionError
from qcc.interpreter import interpret
from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext
from qcc.passes.quant import QuantReport, quantize_graph


def _net(rng):
    b = GraphBuilder()
    x = b.input((4, 2, 5, 5), "f32", "x")
    w = b.param(rng.normal(0, 0.4, (6, 2, 3, 3)).astype(np.float32), "conv.weight")
    y = b.emit("conv2d", [x, w], {"padding": (1, 1, 1, 1)}, name="conv")
    y = b.emit("batch_norm", [y, *(b.param(a.astype(np.float32), f"bn.{n}") for n, a in
                                   (("w", rng.uniform(0.5, 1.5, 6)), ("b", rng.normal(0, 0.1, 6)),
                                    ("m", rng.normal(0, 0.1, 6)), ("v", rng.uniform(0.5, 1.5, 6))))], name="bn")
    y = b.emit("relu", [y], name="relu")
    y = b.emit("reduce_mean", [y], {"axes": (2, 3), "keepdims": False}, name="gap")
    w2 = rng.normal(0, 0.4, (3, 6)).astype(np.float32)
    w2[0, 0] = 40.0  # an outlier weight: this layer is sensitive at 4 bits
    y = b.emit("linear", [y, b.param(w2, "fc.weight")], name="fc")
    return b.output(y)


def _data(rng, n=4):
    return [rng.normal(0, 1, (4, 2, 5, 5)).astype(np.float32) for _ in range(n)]


def test_integer_only_w8a8_with_report():
    rng = np.random.default_rng(0)
    g, data = _net(rng), _data(rng)
    q, report = quantize_graph(g, calibration=data, progress=False)
    assert isinstance(report, QuantReport) and report.integer_only and not report.weight_only
    assert "batch_norm" not in q.op_counts() and "qconv2d" in q.op_counts()
    assert [(r.name, r.op, r.bits, r.granularity) for r in report.rows] == [
        ("conv", "conv2d", "W8A8", "per-channel"), ("gap", "reduce_mean", "A8", "per-tensor"),
        ("fc", "linear", "W8A8", "per-channel")]
    assert all(r.sqnr_db is not None and r.sqnr_db > 30 for r in report.rows)
    assert report.rows[0].bytes == 6 * 2 * 9 + 4 * 6 and report.rows[0].float_bytes == 6 * 2 * 9 * 4
    text = report.text()
    assert "W8A8 integer-only" in text and "integer-only: yes" in text and "SQNR" in text
    want, got = interpret(g, data[:1])[0], interpret(q, data[:1])[0]
    assert np.abs(want - got).max() < 0.05 * np.abs(want).max()


def test_w4a8_and_per_vector_and_methods():
    rng = np.random.default_rng(1)
    g, data = _net(rng), _data(rng)
    _, r8 = quantize_graph(g, calibration=data, progress=False)
    _, r4 = quantize_graph(g, bits=4, calibration=data, progress=False, calibration_method="percentile",
                           weight_method="minmax")
    assert r4.integer_only and r4.rows[0].bits == "W4A8" and r4.total_bytes < r8.total_bytes
    assert r4.rows[0].sqnr_db < r8.rows[0].sqnr_db
    _, rv = quantize_graph(g, bits=4, calibration=data, progress=False, group_size=2)
    assert rv.rows[-1].granularity == "per-vector(2)" and rv.integer_only


def test_keep_float_and_auto_fallback():
    rng = np.random.default_rng(2)
    g, data = _net(rng), _data(rng)
    q, report = quantize_graph(g, calibration=data, progress=False, keep_float=["fc"])
    assert not report.integer_only and report.kept_float == ["fc"] and "fc" not in [r.name for r in report.rows]
    assert "not integer-only" in report.mode and "linear 'fc'" in report.text()
    _, r4 = quantize_graph(g, bits=4, calibration=data, progress=False, weight_method="minmax")
    worst = min(r4.rows, key=lambda r: r.sqnr_db)
    threshold = worst.sqnr_db + 0.1
    _, rf = quantize_graph(g, bits=4, calibration=data, progress=False, weight_method="minmax",
                           auto_fallback=threshold)
    assert worst.name in rf.kept_float and not rf.integer_only
    assert all(r.sqnr_db >= threshold - 10 for r in rf.rows)  # the rest is still quantized and reported


def test_weight_only_without_calibration():
    rng = np.random.default_rng(3)
    g = _net(rng)
    q, report = quantize_graph(g, bits=4)
    assert report.weight_only and not report.integer_only and "weight-only int4" in report.mode
    assert "weight-only" in report.text() and report.sqnr_kind == "weights"
    assert "quantize" not in q.op_counts() and q.op_counts()["dequantize"] == 2
    assert all(r.sqnr_db is not None and math.isfinite(r.sqnr_db) for r in report.rows)
    x = _data(rng, 1)
    want, got = interpret(g, x)[0], interpret(q, x)[0]
    assert 0 < np.abs(want - got).max() < 0.1 * np.abs(want).max()  # int4 weights, float math


def test_calibration_errors_are_clear():
    rng = np.random.default_rng(4)
    g = _net(rng)
    with pytest.raises(CalibrationError, match="empty"):
        quantize_graph(g, calibration=[], progress=False)
    with pytest.raises(CalibrationError, match=r"shape \[4, 2, 6, 6\] does not match"):
        quantize_graph(g, calibration=[np.zeros((4, 2, 6, 6), np.float32)], progress=False)
    bad = _data(rng, 2)
    bad[1][0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="batch 1, input 'x': contains NaN"):
        quantize_graph(g, calibration=bad, progress=False)


@pytest.mark.parametrize("options,match", [
    ({"bits": 6}, "bits must be 8"), ({"bits": True}, "bits must be 8"),
    ({"calibration_method": "kl"}, "calibration_method"), ({"weight_method": "l2"}, "weight_method"),
    ({"group_size": 0}, "group_size"), ({"nonlinear": "exact"}, "nonlinear"),
    ({"auto_fallback": "20dB"}, "auto_fallback"), ({"auto_fallback": math.nan}, "auto_fallback"),
    ({"keep_float": [3]}, "keep_float"), ({"keep_float": ["no_such_layer"]}, "match no node"),
    ({"per_channel": "yes"}, "per_channel"),
])
def test_bad_options(options, match):
    rng = np.random.default_rng(5)
    with pytest.raises(OptionError, match=match):
        quantize_graph(_net(rng), calibration=_data(rng, 1), progress=False, **options)


def test_passes_run_through_the_pass_manager():
    rng = np.random.default_rng(6)
    ctx = PassContext(print_after=frozenset({"realize-integer"}), out=io.StringIO())
    quantize_graph(_net(rng), calibration=_data(rng, 1), progress=False, ctx=ctx)
    assert "IR after realize-integer" in ctx.out.getvalue()
    assert {"calibrate", "quantize", "realize-integer"} <= set(ctx.timings)
