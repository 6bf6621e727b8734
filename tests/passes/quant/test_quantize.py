"""quantize (QDQ annotation): golden IR, weight / bias / activation choices, keep_float, weight-only, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import CalibrationError, OptionError
from qcc.interpreter import interpret
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import get_pass
from qcc.passes.quant import Calibrate, Quantize
from qcc.passes.quant.report import sqnr_db
from tests.passes.quant.mlp_fixture import CALIB, MLP

GOLDEN = """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %"x.scale" = param "x.scale" : f32[] dense<[0.009999999776482582]>
  %"x.zero_point" = param "x.zero_point" : i32[] dense<[0]>
  %"w.q" = param "w.q" : i8[2,2] dense<[127, -64, 16, 127]>
  %"fc1.w.scale" = param "fc1.w.scale" : f32[2,1] dense<[0.007874015718698502, 0.015748031437397003]>
  %"fc1.w.zero_point" = param "fc1.w.zero_point" : i32[] dense<[0]>
  %"b.q" = param "b.q" : i32[2] dense<[1270, -1270]>
  %"fc1.b.scale" = param "fc1.b.scale" : f32[2] dense<[7.874015864217654e-05, 0.00015748031728435308]>
  %"fc1.b.zero_point" = param "fc1.b.zero_point" : i32[] dense<[0]>
  %"act.scale" = param "act.scale" : f32[] dense<[0.007862744852900505]>
  %"act.zero_point" = param "act.zero_point" : i32[] dense<[0]>
  %"fc2.w.scale" = param "fc2.w.scale" : f32[2,1] dense<[0.007874015718698502, 0.015748031437397003]>
  %"fc2.w.zero_point" = param "fc2.w.zero_point" : i32[] dense<[0]>
  %"fc2.scale" = param "fc2.scale" : f32[2] dense<[6.191137799760327e-05, 0.00012382275599520653]>
  %"fc2.zero_point" = param "fc2.zero_point" : i32[] dense<[0]>
  %0 = quantize(%x, %"x.scale", %"x.zero_point") {dtype="i8"} : i8[1,2]{scale=(0.009999999776482582,), zp=(0,), bits=8}  // x
  %1 = dequantize(%0, %"x.scale", %"x.zero_point") : f32[1,2]  // x
  %2 = dequantize(%"w.q", %"fc1.w.scale", %"fc1.w.zero_point") : f32[2,2]  // fc1.w
  %3 = dequantize(%"b.q", %"fc1.b.scale", %"fc1.b.zero_point") : f32[2]  // fc1.b
  %4 = linear(%1, %2, %3) : f32[1,2]  // fc1
  %5 = relu(%4) : f32[1,2]  // act
  %6 = quantize(%5, %"act.scale", %"act.zero_point") {dtype="u8"} : u8[1,2]{scale=(0.007862744852900505,), zp=(0,), bits=8, signed=False}  // act
  %7 = dequantize(%6, %"act.scale", %"act.zero_point") : f32[1,2]  // act
  %8 = dequantize(%"w.q", %"fc2.w.scale", %"fc2.w.zero_point") : f32[2,2]  // fc2.w
  %9 = linear(%7, %8) : f32[1,2]  // fc2
  %10 = quantize(%9, %"fc2.scale", %"fc2.zero_point") {dtype="i32"} : i32[1,2]{scale=(6.191137799760327e-05, 0.00012382275599520653), zp=(0,), bits=32, axis=1}  // fc2
  %11 = dequantize(%10, %"fc2.scale", %"fc2.zero_point") : f32[1,2]  // fc2
  return %11
}"""  # noqa: E501


def test_golden_qdq(check_pass):
    # S_x = 1.27/127; fc1's weights per row: 1/127 and 2/127 (minmax), stored once for both layers; bias int32 at
    # S_w·S_x; fc1 + relu fused: one u8 QDQ after the relu (2.005/255); fc2 feeds the graph output: an int32
    # accumulator at S_act·S_w per channel. The QDQ graph computes the float result up to quantization error.
    check_pass(Quantize(weight_method="minmax"), MLP, GOLDEN, inputs=CALIB[:1], atol=0.05, rtol=0.0,
               ctx=PassContext(options={"calibration": CALIB}))


def _cnn(rng):
    b = GraphBuilder()
    x = b.input((2, 3, 6, 6), "f32", "x")
    w1 = b.param(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv1.weight")
    b1 = b.param(rng.normal(0, 0.1, 8).astype(np.float32), "conv1.bias")
    y = b.emit("conv2d", [x, w1, b1], {"padding": (1, 1, 1, 1)}, name="conv1")
    y = b.emit("relu", [y], name="relu1")
    z = b.emit("max_pool2d", [y], {"kernel": (2, 2), "stride": (2, 2)}, name="pool")
    z = b.emit("reduce_mean", [z], {"axes": (2, 3), "keepdims": False}, name="gap")
    w2 = b.param(rng.normal(0, 0.3, (4, 8)).astype(np.float32), "fc.weight")
    return b.output(b.emit("linear", [z, w2], name="fc"))


def _run(graph, passes, data):
    ctx = PassContext()
    return run_passes(graph, [Calibrate(progress=False, data=data), *passes], ctx), ctx


def test_conv_weights_per_channel_per_tensor_and_int4():
    rng = np.random.default_rng(0)
    g = _cnn(rng)
    data = [rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32) for _ in range(2)]
    for opts, shape, dtype, top in [({}, (8, 1, 1, 1), "i8", 127), ({"per_channel": False}, (), "i8", 127),
                                    ({"bits": 4, "weight_method": "minmax"}, (8, 1, 1, 1), "i4", 7)]:
        q, _ = _run(g, [Quantize(**opts)], data)
        dq = next(n for n in q.nodes if n.op == "dequantize" and n.name == "conv1.conv1.weight")
        wq = q.params[dq.inputs[0]]
        assert dq.inputs[0].dtype == dtype and q.params[dq.inputs[1]].shape == shape
        assert np.abs(wq).max() <= top and (opts.get("weight_method") != "minmax" or np.abs(wq).max() == top)
        # The QDQ graph tracks the float graph closely.
        want, got = interpret(g, data[:1])[0], interpret(q, data[:1])[0]
        assert sqnr_db(float(np.sum(want**2)), float(np.sum((want - got) ** 2))) > (15 if dtype == "i4" else 30)


def test_pool_and_mean_keep_scales_relu_output_is_unsigned():
    rng = np.random.default_rng(1)
    g = _cnn(rng)
    q, ctx = _run(g, [Quantize()], [rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)])
    quants = {n.name: n for n in q.nodes if n.op == "quantize"}
    assert quants["relu1"].attrs["dtype"] == "u8"
    assert quants["pool"].output.type.quant == quants["relu1"].output.type.quant  # max pool keeps the scale
    assert quants["gap"].attrs["dtype"] == "u8"
    assert [layer.name for layer in ctx.options["quant.layers"]] == ["conv1", "gap", "fc"]


def test_per_vector_groups_for_linear_weights():
    rng = np.random.default_rng(2)
    b = GraphBuilder()
    x = b.input((3, 16), "f32", "x")
    w = rng.normal(0, 1, (4, 16)).astype(np.float32)
    w[:, :4] *= 20  # one group of large weights: per-vector scales help the others
    y = b.emit("linear", [x, b.param(w, "w")], name="fc")
    g = b.output(b.emit("relu", [y], name="r"))
    data = [rng.normal(0, 1, (3, 16)).astype(np.float32)]
    q, _ = _run(g, [Quantize(group_size=4, bits=4)], data)
    dq = next(n for n in q.nodes if n.op == "dequantize" and n.name == "fc.w")
    assert len(dq.inputs) == 4 and dq.attrs == {"group_size": 4, "axis": 1}
    gs = q.params[dq.inputs[3]]
    assert gs.shape == (4, 4) and gs.max() == 255 and gs.min() >= 1
    real = interpret(Graph(params=q.params, nodes=[dq], outputs=[dq.output]), [])[0]
    flat, _ = _run(g, [Quantize(bits=4)], data)
    dq2 = next(n for n in flat.nodes if n.op == "dequantize" and n.name == "fc.w")
    real2 = interpret(Graph(params=flat.params, nodes=[dq2], outputs=[dq2.output]), [])[0]
    assert np.sum((real - w)[:, 4:] ** 2) < 0.2 * np.sum((real2 - w)[:, 4:] ** 2)


def _attention(rng):
    b = GraphBuilder()
    x = b.input((1, 4, 8), "f32", "x")
    wq = b.param(rng.normal(0, 0.5, (8, 8)).astype(np.float32), "wq")
    q = b.emit("linear", [x, wq], name="q")
    s = b.emit("matmul", [q, b.emit("transpose", [q], {"perm": (0, 2, 1)}, name="t")], name="scores")
    s = b.emit("mul", [s, b.param(np.array(0.35, np.float32), "scale")], name="scaled")
    p = b.emit("softmax", [s], {"axis": 2}, name="softmax")
    y = b.emit("matmul", [p, q], name="context")
    return b.output(y)


def test_softmax_chain_is_16_bit_and_its_output_is_fixed_u8():
    rng = np.random.default_rng(3)
    g = _attention(rng)
    q, _ = _run(g, [Quantize()], [rng.normal(0, 1, (1, 4, 8)).astype(np.float32)])
    quants = {n.name: n for n in q.nodes if n.op == "quantize"}
    assert quants["scores"].attrs["dtype"] == quants["scaled"].attrs["dtype"] == "i16"
    assert quants["q"].attrs["dtype"] == "i8" and quants["context"].attrs["dtype"] == "i8"
    assert quants["softmax"].attrs["dtype"] == "u8" and q.params[quants["softmax"].inputs[1]] == np.float32(1 / 256)
    assert q.param_by_name("scale").dtype == "f32"  # the scalar stays float for realize-integer to fold


def test_asymmetric_activations_get_a_zero_point():
    rng = np.random.default_rng(4)
    g = _attention(rng)
    q, _ = _run(g, [Quantize(symmetric=False)], [rng.normal(0.5, 1, (1, 4, 8)).astype(np.float32)])
    x = next(n for n in q.nodes if n.op == "quantize" and n.name == "x")
    assert x.attrs["dtype"] == "u8" and 0 < int(q.params[x.inputs[2]]) < 255


def test_keep_float_by_name_and_by_op_kind():
    rng = np.random.default_rng(5)
    g = _cnn(rng)
    data = [rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)]
    q, ctx = _run(g, [Quantize(keep_float=("fc",))], data)
    assert "fc" not in [layer.name for layer in ctx.options["quant.layers"]]
    fc = next(n for n in q.nodes if n.name == "fc" and n.op == "linear")
    assert fc.inputs[1].dtype == "f32"  # float weight
    assert q.producers()[fc.inputs[0]].op == "dequantize"  # reads the quantized mean, dequantized
    q, ctx = _run(g, [Quantize(keep_float=("conv2d",))], data)
    assert [layer.name for layer in ctx.options["quant.layers"]] == ["gap", "fc"]
    q, ctx = _run(g, [get_pass("quantize", keep_float="conv2d, fc")], data)  # as the command line gives it
    assert [layer.name for layer in ctx.options["quant.layers"]] == ["gap"]


def test_weight_only_needs_no_calibration():
    g = _cnn(np.random.default_rng(6))
    ctx = PassContext()
    q = run_passes(g, [Quantize(weight_only=True)], ctx)
    assert q.op_counts()["dequantize"] == 2 and "quantize" not in q.op_counts()
    assert {v.dtype for v in q.params} == {"i8", "i32", "f32"}  # int weights, their scales; biases stay float
    assert [layer.weight.bits for layer in ctx.options["quant.layers"]] == [8, 8]


def test_errors():
    g = _cnn(np.random.default_rng(7))
    with pytest.raises(CalibrationError, match="run the calibrate pass first"):
        run_passes(g, [Quantize()])
    with pytest.raises(OptionError, match=r"keep_float names \['nope'\] match no node"):
        run_passes(g, [Quantize(weight_only=True, keep_float=("nope",))])
    with pytest.raises(OptionError, match="bits must be"):
        run_passes(g, [Quantize(bits=16, weight_only=True)])
    with pytest.raises(OptionError, match="weight_method"):
        run_passes(g, [Quantize(weight_method="l1", weight_only=True)])
    with pytest.raises(OptionError, match="group_size"):
        run_passes(g, [Quantize(group_size=-1, weight_only=True)])
