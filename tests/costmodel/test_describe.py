"""Kernel descriptions of IR nodes (qcc.costmodel.describe): integer and float kernels, the requantize epilogue,
predictions over a group of nodes with any CostModel."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.costmodel.describe import describe_node, float_kernel, int_kernel, predict_nodes
from qcc.costmodel.features import kernel_features
from qcc.costmodel.model import AnalyticCostModel
from qcc.errors import CostModelError
from qcc.ir.graph import GraphBuilder
from qcc.ir.types import TensorType

rng = np.random.default_rng(0)


def _int_graph(w_dtype="i8"):
    b = GraphBuilder()
    x = b.input((1, 8, 10, 10), "u8", "x")
    w = b.param(rng.integers(-8, 8, (16, 8, 3, 3)).astype(np.int8), "w")
    w.type = TensorType((16, 8, 3, 3), w_dtype)
    acc = b.emit("qconv2d", [x, w, b.param(np.zeros(16, np.int32), "b")],
                 {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1, "x_zero_point": 128,
                  "w_zero_point": 0})
    y = b.emit("requantize", [acc, b.param(np.array([1 << 14], np.int32), "m"),
                              b.param(np.array([20], np.int32), "s")], {"dtype": "u8", "zero_point": 0})
    r = b.emit("reshape", [y], {"shape": (1, 1600)})
    z = b.emit("qlinear", [r, b.param(rng.integers(-9, 9, (10, 1600)).astype(np.int8), "w2")],
               {"x_zero_point": 0, "w_zero_point": 0})
    return b.output(z)


@pytest.mark.parametrize("w_dtype,bits", [("i8", 8), ("i4", 4)])
def test_describe_integer_nodes(w_dtype, bits):
    g = _int_graph(w_dtype)
    conv, rq, _, lin = g.nodes
    k = describe_node(conv, g)
    assert k["kind"] == "qconv2d" and k["shape"]["w_bits"] == bits and k["epilogue"] == [["requantize"]]
    assert k["shape"]["out_dtype"] == "u8" and kernel_features(k).shape[0] > 0
    kl = describe_node(lin, g)
    assert kl["kind"] == "qlinear" and kl["epilogue"] == [] and kl["shape"]["out_dtype"] == "i32"
    assert describe_node(rq, g) is None


def test_predict_nodes_counts_each_kernel_once():
    g = _int_graph()

    class Count:
        def __init__(self):
            self.kinds = []

        def predict(self, kernels):
            self.kinds += [k["kind"] for k in kernels]
            return np.full(len(kernels), 1e-3)

    m = Count()
    secs = predict_nodes(m, g.nodes, g)
    # two kernels at 1 ms; the fused requantize is not counted again, the reshape costs its roofline
    assert m.kinds == ["qconv2d", "qlinear"] and 2e-3 < secs < 2.01e-3
    assert predict_nodes(None, g.nodes, g) == pytest.approx(predict_nodes(AnalyticCostModel(), g.nodes, g))


def test_float_kernels_and_errors():
    k = float_kernel("conv2d", (1, 32, 14, 14), (32, 1, 3, 3), {"groups": 32, "padding": (1, 1, 1, 1)})
    assert k["kind"] == "depthwise_conv2d" and kernel_features(k).shape[0] > 0
    d = float_kernel("linear", (4, 7, 64), (48, 64))
    assert d["kind"] == "dense" and (d["shape"]["M"], d["shape"]["N"]) == (28, 48)
    bm = float_kernel("matmul", (2, 8, 16), (2, 16, 4))
    assert bm["kind"] == "batch_matmul" and AnalyticCostModel().predict([k, d, bm]).min() > 0
    with pytest.raises(CostModelError, match="no integer kernel"):
        int_kernel("qmatmul", (2, 3), (3, 2))
    with pytest.raises(CostModelError, match="qlinear needs"):
        int_kernel("qlinear", (2, 3), (4, 5))
    with pytest.raises(CostModelError, match="lowering"):
        int_kernel("qlinear", (2, 3), (4, 3), impl="x")
