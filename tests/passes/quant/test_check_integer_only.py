"""check-integer-only: passes on a realized graph, fails naming the float node when one is left in, says when a
graph is weight-only, and the pass raises (or only records) accordingly."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import PassError
from qcc.ir.graph import GraphBuilder
from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import get_pass
from qcc.passes.quant import Calibrate, CheckIntegerOnly, Quantize, RealizeInteger, check_integer_only

# quantize → qlinear → requantize, all integer: the body both graphs below start with.
_BODY = """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %s = param "s" : f32[] dense<[0.1]>
  %z = param "z" : i32[] dense<[0]>
  %wq = param "wq" : i8[2,2] dense<[10, 20, -30, 40]>
  %m = param "m" : i32[] dense<[1073741824]>
  %c = param "c" : i32[] dense<[31]>
  %0 = quantize(%x, %s, %z) {dtype="i8"} : i8[1,2]
  %1 = qlinear(%0, %wq) : i32[1,2]  // fc
  %2 = requantize(%1, %m, %c) {dtype="i8"} : i8[1,2]  // fc"""

INTEGER = _BODY + """
  %3 = dequantize(%2, %s, %z) : f32[1,2]
  return %3
}"""

# The same with a float sigmoid between two dequantize / quantize pairs: a float op left in.
FLOAT_LEFT = _BODY + """
  %3 = dequantize(%2, %s, %z) : f32[1,2]  // fc
  %4 = sigmoid(%3) : f32[1,2]  // gate
  %5 = quantize(%4, %s, %z) {dtype="i8"} : i8[1,2]  // gate
  %6 = dequantize(%5, %s, %z) : f32[1,2]  // gate
  return %6
}"""


def test_integer_graph_passes():
    report = check_integer_only(parse(INTEGER))
    assert report.ok and report.offending == [] and report.input_quantizes == report.output_dequantizes == 1
    assert "integer-only: yes" in report.text()
    run_passes(parse(INTEGER), [CheckIntegerOnly()])


def test_a_float_op_left_in_fails_and_is_named():
    report = check_integer_only(parse(FLOAT_LEFT))
    assert not report.ok
    assert [(name, op) for name, op, _ in report.offending] == [("fc", "dequantize"), ("gate", "sigmoid"),
                                                               ("gate", "quantize")]
    with pytest.raises(PassError, match="not integer-only(.|\n)*sigmoid 'gate': float input"):
        run_passes(parse(FLOAT_LEFT), [CheckIntegerOnly()])
    ctx = PassContext()
    run_passes(parse(FLOAT_LEFT), [get_pass("check-integer-only", raise_on_failure="no")], ctx)
    assert ctx.stats["check-integer-only"] == {"float_nodes": 3, "integer_only": 0}


def test_float_input_read_by_a_float_op_and_unquantized_graphs_fail():
    text = INTEGER.replace("%3 = dequantize(%2, %s, %z) : f32[1,2]\n  return %3",
                           "%3 = dequantize(%2, %s, %z) : f32[1,2]\n  %4 = add(%3, %x) : f32[1,2]\n  return %4")
    report = check_integer_only(parse(text))
    assert not report.ok and ("x", "input", "float input read by add") in report.offending
    plain = parse("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%x) : f32[2]\n  return %0\n}")
    assert not check_integer_only(plain).ok


def _mlp():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input((2, 4), "f32", "x")
    y = b.emit("relu", [b.emit("linear", [x, b.param(rng.normal(0, 1, (4, 4)).astype(np.float32), "w")],
                               name="fc")], name="act")
    return b.output(y), [rng.normal(0, 1, (2, 4)).astype(np.float32)]


def test_realized_graph_passes_qdq_graph_fails_weight_only_says_so():
    g, data = _mlp()
    ctx = PassContext()
    qdq = run_passes(g, [Calibrate(progress=False, data=data), Quantize()], ctx)
    assert not check_integer_only(qdq).ok
    real = run_passes(qdq, [RealizeInteger(), CheckIntegerOnly()], ctx)
    assert check_integer_only(real).ok
    weight_only = run_passes(g, [Quantize(weight_only=True)])
    report = check_integer_only(weight_only)
    assert not report.ok and report.weight_only and "weight-only" in report.text()
