"""realize-integer: golden integer IR, every realized op kind against the float QDQ graph, exact integer
properties (fused clamps, identical quantized values up to ties), the I-ViT variants and what stays float."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import OptionError
from qcc.interpreter import interpret, interpret_all
from qcc.ir.graph import GraphBuilder
from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.passes.quant import Calibrate, Quantize, RealizeInteger, check_integer_only
from qcc.passes.quant.report import sqnr_db
from tests.passes.quant.mlp_fixture import CALIB, MLP


def test_golden_integer_ir(check_pass):
    # fc1 + relu: qlinear (int32 bias at S_x·S_w) + per-channel requantize to u8 (the relu clamp is u8's own 0);
    # fc2 produces the int32 accumulator the output dequantize reads: no requantize.
    qdq = run_passes(parse(MLP), [Quantize(weight_method="minmax")], PassContext(options={"calibration": CALIB}))
    check_pass(RealizeInteger(), print_graph(qdq), """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %"x.scale" = param "x.scale" : f32[] dense<[0.009999999776482582]>
  %"x.zero_point" = param "x.zero_point" : i32[] dense<[0]>
  %"w.q" = param "w.q" : i8[2,2] dense<[127, -64, 16, 127]>
  %"fc2.scale" = param "fc2.scale" : f32[2] dense<[6.191137799760327e-05, 0.00012382275599520653]>
  %"fc2.zero_point" = param "fc2.zero_point" : i32[] dense<[0]>
  %"fc1.bias" = param "fc1.bias" : i32[2] dense<[1270, -1270]>
  %"fc1.multiplier" = param "fc1.multiplier" : i32[2] dense<[1376359625, 1376359625]>
  %"fc1.shift" = param "fc1.shift" : i32[2] dense<[37, 36]>
  %0 = quantize(%x, %"x.scale", %"x.zero_point") {dtype="i8"} : i8[1,2]{scale=(0.009999999776482582,), zp=(0,), bits=8}  // x
  %1 = qlinear(%0, %"w.q", %"fc1.bias") {x_zero_point=0} : i32[1,2]  // fc1
  %2 = requantize(%1, %"fc1.multiplier", %"fc1.shift") {dtype="u8", input_zero_point=0, max=None, min=None, zero_point=0} : u8[1,2]{scale=(0.007862744852900505,), zp=(0,), bits=8, signed=False}  // fc1
  %3 = qlinear(%2, %"w.q") {x_zero_point=0} : i32[1,2]{scale=(6.191137799760327e-05, 0.00012382275599520653), zp=(0,), bits=32, axis=1}  // fc2
  %4 = dequantize(%3, %"fc2.scale", %"fc2.zero_point") : f32[1,2]  // fc2
  return %4
}""", inputs=CALIB[:1], atol=2e-4, rtol=0.0)  # noqa: E501


def _quantized(graph, data, nonlinear="ibert", **opts):
    ctx = PassContext()
    qdq = run_passes(graph, [Calibrate(progress=False, data=data), Quantize(**opts)], ctx)
    return qdq, run_passes(qdq, [RealizeInteger(nonlinear)], ctx), ctx


def _sqnr(want, got):
    want, got = want.astype(np.float64), got.astype(np.float64)
    return sqnr_db(float(np.sum(want**2)), float(np.sum((want - got) ** 2)))


def _block(rng, act="relu"):
    """conv → act, residual add (+relu), concat, avg pool, mean, linear: the CNN kinds."""
    b = GraphBuilder()
    x = b.input((2, 4, 6, 6), "f32", "x")
    w = b.param(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w")
    bias = b.param(rng.normal(0, 0.1, 4).astype(np.float32), "bias")
    y = b.emit("conv2d", [x, w, bias], {"padding": (1, 1, 1, 1)}, name="conv")
    y = b.emit(act, [y], name="act") if act != "clip" else b.emit("clip", [y], {"min": 0.0, "max": 1.0}, name="act")
    s = b.emit("relu", [b.emit("add", [x, y], name="add")], name="add_relu")
    d = b.emit("sub", [s, x], name="sub")
    c = b.emit("concat", [s, d], {"axis": 1}, name="cat")
    p = b.emit("avg_pool2d", [c], {"kernel": (2, 2), "stride": (2, 2)}, name="avg")
    m = b.emit("reduce_mean", [p], {"axes": (2, 3), "keepdims": False}, name="gap")
    half = b.emit("mul", [m, b.param(np.array(0.5, np.float32), "half")], name="half")
    w2 = b.param(rng.normal(0, 0.3, (3, 8)).astype(np.float32), "w2")
    return b.output(b.emit("linear", [half, w2], name="fc"))


@pytest.mark.parametrize("act", ["relu", "relu6", "clip"])
def test_cnn_kinds_are_integer_and_track_the_qdq_graph(act):
    rng = np.random.default_rng(0)
    g = _block(rng, act)
    data = [rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32) for _ in range(3)]
    qdq, real, ctx = _quantized(g, data)
    assert check_integer_only(real).ok
    ops = real.op_counts()
    assert {"qconv2d", "qadd", "qconcat", "avg_pool2d", "qmean", "qlinear", "requantize"} <= set(ops)
    assert ctx.stats["realize-integer"]["realized-add"] == 2  # add (+relu fused) and sub
    for x in data:
        ref, fake, got = interpret(g, [x])[0], interpret(qdq, [x])[0], interpret(real, [x])[0]
        assert _sqnr(fake, got) > 35  # integer == fake-quant up to rounding ties
        assert _sqnr(ref, got) > 25


def test_integer_values_equal_fake_quant_values_up_to_ties():
    rng = np.random.default_rng(1)
    g = _block(rng)
    data = [rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)]
    qdq, real, _ = _quantized(g, data)
    quants = [n for n in qdq.nodes if n.op == "quantize"]
    env_q, env_r = interpret_all(qdq, data), interpret_all(real, data)
    first = next(n for n in quants if n.name == "act")  # the first layer: same integer inputs in both graphs
    a, b = env_q[first.output].astype(np.int64), env_r[first.output].astype(np.int64)
    assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01


def test_fused_clamp_bounds(check_pass):
    # relu6 after a linear, output i8 at 0.1: the requantize clamps to [0, 60] (zero point 0; 6 / 0.1 = 60).
    qdq = """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %s = param "s" : f32[] dense<[0.1]>
  %z = param "z" : i32[] dense<[0]>
  %wq = param "wq" : i8[2,2] dense<[10, 20, -30, 40]>
  %ws = param "ws" : f32[] dense<[0.5]>
  %0 = quantize(%x, %s, %z) {dtype="i8"} : i8[1,2]
  %1 = dequantize(%0, %s, %z) : f32[1,2]
  %2 = dequantize(%wq, %ws, %z) : f32[2,2]
  %3 = linear(%1, %2) : f32[1,2]  // fc
  %4 = relu6(%3) : f32[1,2]
  %5 = quantize(%4, %s, %z) {dtype="i8"} : i8[1,2]
  %6 = dequantize(%5, %s, %z) : f32[1,2]
  return %6
}"""
    check_pass(RealizeInteger(), qdq, """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %s = param "s" : f32[] dense<[0.10000000149011612]>
  %z = param "z" : i32[] dense<[0]>
  %wq = param "wq" : i8[2,2] dense<[10, 20, -30, 40]>
  %"fc.multiplier" = param "fc.multiplier" : i32[] dense<[1073741824]>
  %"fc.shift" = param "fc.shift" : i32[] dense<[31]>
  %0 = quantize(%x, %s, %z) {dtype="i8"} : i8[1,2]
  %1 = qlinear(%0, %wq) {x_zero_point=0} : i32[1,2]  // fc
  %2 = requantize(%1, %"fc.multiplier", %"fc.shift") {dtype="i8", input_zero_point=0, max=60, min=0, zero_point=0} : i8[1,2]  // fc
  %3 = dequantize(%2, %s, %z) : f32[1,2]
  return %3
}""", inputs=[np.array([[0.3, 0.2]], np.float32)], atol=0.1 + 1e-6, rtol=0.0)  # noqa: E501
    # The clamp acts: 6.0 in float, 60 in integers.
    g = parse(qdq)
    real = run_passes(g, [RealizeInteger()])
    x = np.array([[1.2, 0.9]], np.float32)
    assert interpret(g, [x])[0][0].tolist() == pytest.approx([6.0, 0.0])
    assert interpret(real, [x])[0][0].tolist() == pytest.approx([6.0, 0.0])


def _encoder(rng):
    b = GraphBuilder()
    x = b.input((2, 4, 8), "f32", "x")
    h = b.emit("layer_norm", [x, b.param(rng.normal(1, 0.2, 8).astype(np.float32), "g"),
                              b.param(rng.normal(0, 0.1, 8).astype(np.float32), "beta")], {"axis": 2}, name="ln")
    q = b.emit("linear", [h, b.param(rng.normal(0, 0.4, (8, 8)).astype(np.float32), "wq")], name="q")
    k = b.emit("linear", [h, b.param(rng.normal(0, 0.4, (8, 8)).astype(np.float32), "wk")], name="k")
    s = b.emit("matmul", [q, b.emit("transpose", [k], {"perm": (0, 2, 1)}, name="kt")], name="scores")
    s = b.emit("div", [s, b.param(np.array(2.0, np.float32), "sqrt_d")], name="scaled")
    p = b.emit("softmax", [s], {"axis": 2}, name="softmax")
    y = b.emit("add", [x, b.emit("matmul", [p, h], name="context")], name="residual")
    f = b.emit("gelu", [b.emit("linear", [y, b.param(rng.normal(0, 0.4, (16, 8)).astype(np.float32), "w1")],
                               name="fc1")], name="gelu")
    pos = b.param(rng.normal(0, 0.2, (4, 16)).astype(np.float32), "pos")
    return b.output(b.emit("add", [f, pos], name="add_pos"))


@pytest.mark.parametrize("nonlinear,ops", [("ibert", {"isoftmax", "igelu", "ilayer_norm"}),
                                           ("ivit", {"shiftmax", "shiftgelu", "ilayer_norm"})])
def test_transformer_kinds(nonlinear, ops):
    rng = np.random.default_rng(3)
    g = _encoder(rng)
    data = [rng.normal(0, 1, (2, 4, 8)).astype(np.float32) for _ in range(3)]
    qdq, real, _ = _quantized(g, data, nonlinear)
    report = check_integer_only(real)
    assert report.ok, report.text()
    assert ops <= set(real.op_counts()) and "qmatmul" in real.op_counts()
    ln = next(n for n in real.nodes if n.op == "ilayer_norm")
    assert ln.attrs["sqrt"] == ("newton" if nonlinear == "ibert" else "ivit")
    for x in data:
        assert _sqnr(interpret(g, [x])[0], interpret(real, [x])[0]) > (25 if nonlinear == "ibert" else 18)


def test_data_movement_gather_pad_and_adaptive_pool_run_on_integers():
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    ids = b.input((2, 3), "i64", "ids")
    table = b.param(rng.normal(0, 1, (10, 4)).astype(np.float32), "embedding")
    e = b.emit("gather", [table, ids], {"axis": 0}, name="embed")  # [2, 3, 4], a float table read by index
    e = b.emit("reshape", [e], {"shape": (2, 3, 2, 2)}, name="view")
    e = b.emit("pad", [e], {"pads": (0, 0, 1, 1, 0, 0, 1, 1), "value": 0.0}, name="pad")
    g = b.output(b.emit("adaptive_avg_pool2d", [e], {"output_size": (1, 1)}, name="pool"))
    data = [rng.integers(0, 10, (2, 3)) for _ in range(3)]
    _, real, _ = _quantized(g, data)
    assert check_integer_only(real).ok
    assert {"gather", "reshape", "pad", "qmean"} <= set(real.op_counts())
    for x in data:  # means of 3×3 windows, each within one output step of the float result
        assert _sqnr(interpret(g, [x])[0], interpret(real, [x])[0]) > 20


def test_what_cannot_be_realized_stays_float_and_is_reported():
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    x = b.input((2, 8), "f32", "x")
    y = b.emit("linear", [x, b.param(rng.normal(0, 0.4, (8, 8)).astype(np.float32), "w")], name="fc")
    y = b.emit("tanh", [y], name="tanh")  # no integer tanh
    g = b.output(b.emit("linear", [y, b.param(rng.normal(0, 0.4, (4, 8)).astype(np.float32), "w2")], name="fc2"))
    _, real, _ = _quantized(g, [rng.normal(0, 1, (2, 8)).astype(np.float32)])
    assert "qlinear" in real.op_counts() and "tanh" in real.op_counts()
    report = check_integer_only(real)
    assert not report.ok and ("tanh", "tanh") in {(name, op) for name, op, _ in report.offending}


def test_bad_option():
    with pytest.raises(OptionError, match="nonlinear must be one of"):
        run_passes(parse(MLP), [RealizeInteger("ishift")])
