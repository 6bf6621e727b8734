"""The latency term of the bit allocation: the layers' integer kernels, the cost model's predictions in the ILP's
latency budget (a fake CostModel steers it), and the analytic fallback when no model covers the target."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes.mixed import AllocateBits, AllocationProblem, find_layers
from qcc.passes.mixed.costs import analytic_latency, covers_integer, latency_term, layer_kernel

pytest.importorskip("ortools")
rng = np.random.default_rng(3)


def _graph():
    b = GraphBuilder()
    x = b.input((2, 3, 8, 8), "f32", "x")
    h = b.emit("conv2d", [x, b.param(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1"),
                          b.param(np.zeros(8, np.float32), "b1")],
               {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1}, name="conv1")
    h = b.emit("relu", [h], name="relu1")
    h = b.emit("conv2d", [h, b.param(rng.normal(size=(16, 8, 3, 3)).astype(np.float32), "w2")],
               {"stride": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1}, name="conv2")
    h = b.emit("reshape", [h], {"shape": (2, 256)}, name="flat")
    y = b.emit("linear", [h, b.param(rng.normal(size=(10, 256)).astype(np.float32), "w3")], name="fc")
    return b.output(y), [[rng.normal(size=(2, 3, 8, 8)).astype(np.float32)] for _ in range(2)]


class FakeModel:
    """A CostModel whose seconds depend only on the weight width (and count its calls)."""

    def __init__(self, secs_by_bits):
        self.secs_by_bits, self.seen = secs_by_bits, []

    def predict(self, kernels):
        self.seen += list(kernels)
        return np.array([self.secs_by_bits[k["shape"]["w_bits"]] for k in kernels])


def test_layer_kernels_are_the_integer_kernels():
    graph, _ = _graph()
    layers = find_layers(graph)
    k = layer_kernel(layers[1], 4)
    assert k["kind"] == "qconv2d" and k["shape"]["w_bits"] == 4 and k["shape"]["x_dtype"] == "u8"
    assert (k["shape"]["C"], k["shape"]["O"], k["shape"]["stride"]) == (8, 16, [2, 2])
    assert k["epilogue"] == [["requantize"]]
    fc = layer_kernel(layers[2], 8)
    assert fc["kind"] == "qlinear" and (fc["shape"]["M"], fc["shape"]["N"], fc["shape"]["K"]) == (2, 10, 256)


def test_ilp_latency_budget_follows_the_cost_model():
    graph, batches = _graph()
    # Model A: 4-bit kernels are 3x slower than 8-bit ones (as unpacked int4 can be); model B: 4x faster.
    slow4, fast4 = FakeModel({4: 3e-3, 8: 1e-3}), FakeModel({4: 0.25e-3, 8: 1e-3})
    pa = AllocationProblem.build(graph, batches, (4, 8), pin_first_last=False, tie=False, cost_model=slow4)
    pb = AllocationProblem.build(graph, batches, (4, 8), pin_first_last=False, tie=False, cost_model=fast4)
    assert slow4.seen and all(k["kind"] in ("qconv2d", "qlinear") for k in slow4.seen)
    assert pa.costs.latency == [{4: 3.0, 8: 1.0}] * 3 and pb.costs.latency == [{4: 0.25, 8: 1.0}] * 3
    assert pa.costs.latency_source == "cost model FakeModel"
    # Within 3 ms only all-8 fits under A; within 0.75 ms only all-4 under B; the analytic term admits neither.
    assert set(pa.solve({"latency_ms": 3.0}).bits.values()) == {8}
    assert set(pb.solve({"latency_ms": 0.75}).bits.values()) == {4}
    text = pa.solve({"latency_ms": 3.0}).text()
    assert "latency term: cost model FakeModel" in text and "budget latency_ms: used 3" in text


def test_allocate_bits_reads_the_compile_option():
    graph, batches = _graph()
    ctx = PassContext(options={"calibration": batches, "cost_model": FakeModel({4: 2e-3, 8: 1e-3})})
    run_passes(graph, [AllocateBits(latency_ms=3.0, pin_first_last=False, tie=False)], ctx)
    alloc = ctx.options["mixed.allocation"]
    assert alloc.costs.latency_source == "cost model FakeModel" and set(alloc.bits.values()) == {8}


def test_analytic_fallback_when_no_model_covers_the_target():
    from qcc.costmodel.model import AnalyticCostModel

    layer = find_layers(_graph()[0])[0]
    fn, src = latency_term("cuda", FakeModel({4: 1.0, 8: 1.0}))
    assert src.startswith("analytic roofline (cuda)") and fn(layer, 4) == analytic_latency("cuda")(layer, 4)
    for model in ("analytic", AnalyticCostModel()):
        assert latency_term("cpu", model)[1].startswith("analytic roofline (cpu")

    class FloatOnly(FakeModel):
        meta = {"kinds": ["dense", "conv2d_direct"]}

    assert not covers_integer(FloatOnly({}))
    assert "no cost model covers integer kernels" in latency_term("cpu", FloatOnly({}))[1]
    assert covers_integer(FakeModel({}))
    bad = FakeModel({4: -1.0, 8: 1.0})
    with pytest.raises(ValueError, match="predicted"):
        latency_term("cpu", bad)[0](layer, 4)
