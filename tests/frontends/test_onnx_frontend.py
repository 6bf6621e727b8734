"""ONNX frontend: tiny models built with onnx.helper, imported and run by qcc's interpreter, compared to ONNX Runtime.

`CASES` is the op table: one line per single-node model. `F`/`I`/`B` are runtime inputs (float / int64 / bool),
NumPy arrays become initializers, None leaves an optional input out; keyword arguments are node attributes
(`opset=`, `outs=` and `inputs_shapes=` are reserved).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import qcc  # noqa: E402
from qcc.errors import ModelLoadError, ShapeMismatchError, UnsupportedOperatorError  # noqa: E402
from qcc.frontends.onnx_frontend import import_onnx  # noqa: E402

pytestmark = pytest.mark.onnx
RNG = np.random.default_rng(0)


@dataclass(frozen=True)
class Spec:
    """A runtime graph input: its kind ('f', 'i', 'b'), shape and value range."""

    kind: str
    shape: tuple[int, ...]
    lo: float = -2.0
    hi: float = 2.0

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "f":
            return np.asarray(rng.uniform(self.lo, self.hi, self.shape), np.float32)
        if self.kind == "i":
            return np.asarray(rng.integers(int(self.lo), int(self.hi), self.shape), np.int64)
        if self.kind == "q":
            return np.asarray(rng.integers(-128, 128, self.shape), np.int8)
        return np.asarray(rng.random(self.shape) < 0.5)

    @property
    def elem(self) -> int:
        return {"f": TensorProto.FLOAT, "i": TensorProto.INT64, "b": TensorProto.BOOL, "q": TensorProto.INT8}[self.kind]


def F(*shape: int, lo: float = -2.0, hi: float = 2.0) -> Spec:
    return Spec("f", shape, lo, hi)


def I(*shape: int, lo: int = 0, hi: int = 4) -> Spec:  # noqa: E743
    return Spec("i", shape, lo, hi)


def B(*shape: int) -> Spec:
    return Spec("b", shape)


def Q(*shape: int) -> Spec:
    return Spec("q", shape)


def W(*shape: int) -> np.ndarray:
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def L(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def make_model(nodes, inputs, outputs, inits=None, opset=17, name="m") -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, name, inputs, [helper.make_empty_tensor_value_info(o) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run_ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches_ort(model, feeds, input_shapes=None):
    graph = import_onnx(model, input_shapes)
    got = qcc.interpret(graph, feeds)
    want = run_ort(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, w)
    return graph


def C(op: str, *operands, opset: int = 17, outs: int = 1, **attrs):
    """One single-node model case."""
    _IDS[op] = _IDS.get(op, 0) + 1
    return pytest.param(op, operands, attrs, opset, outs, id=f"{op}-{_IDS[op]}")


_IDS: dict[str, int] = {}
CASES = [
    *(C(op, F(2, 3, 4)) for op in ["Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Floor", "Ceil", "Erf", "Sin",
                                   "Cos", "Round", "HardSwish", "Softplus", "Softsign", "Sign", "Identity"]),
    *(C(op, F(2, 3, lo=0.1)) for op in ["Log", "Sqrt", "Reciprocal"]),
    C("Not", B(3, 4)), C("Mish", F(2, 5), opset=18),
    C("Elu", F(2, 3), alpha=0.5), C("LeakyRelu", F(2, 3), alpha=0.2), C("LeakyRelu", F(4)),
    C("HardSigmoid", F(2, 3), alpha=0.3, beta=0.4), C("HardSigmoid", F(2, 3, lo=-4, hi=4)),
    C("Gelu", F(2, 3), opset=20), C("Gelu", F(2, 3), opset=20, approximate="tanh"), C("Selu", F(2, 3)),
    C("PRelu", F(1, 3, 2, 2), W(3, 1, 1)), C("ThresholdedRelu", F(3, 3), alpha=0.5),
    C("Clip", F(2, 3), np.float32(-0.5), np.float32(0.7)), C("Clip", F(2, 3), None, np.float32(0.1)),
    C("Clip", F(2, 3)), C("Clip", F(2, 3), F(), F()),
    C("Pow", F(2, 3, lo=0.1), np.float32(1.5)), C("Pow", F(2, 3), L(2)),
    C("Mod", I(2, 5, lo=-9, hi=9), np.asarray([3, -4, 5, -2, 7], np.int64)),
    C("Mod", F(2, 5, lo=-9, hi=9), np.asarray([3, -4, 5, -2, 7.5], np.float32), fmod=1),
    C("Mod", I(6, lo=-9, hi=9), np.asarray(4, np.int64), fmod=1),
    *(C(op, F(2, 3, 4), F(3, 1)) for op in ["Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean"]),
    C("Div", F(2, 3), F(3, lo=0.5)), C("Div", I(2, 3, lo=-9, hi=9), np.asarray([2, -3, 4], np.int64)),
    C("Max", F(3), F(2, 3), F(1, 1)), C("Mean", F(3), F(3), F(3)),
    *(C(op, I(2, 3), I(3)) for op in ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]),
    *(C(op, B(2, 3), B(3)) for op in ["And", "Or", "Xor"]),
    C("Where", B(2, 3), F(2, 3), F(3)),
    C("MatMul", F(2, 3, 4), F(4, 5)), C("MatMul", F(2, 1, 3, 4), F(3, 4, 2)), C("MatMul", F(3, 4), W(4)),
    C("Gemm", F(3, 4), W(5, 4), W(5), transB=1), C("Gemm", F(3, 4), W(4, 5), W(1, 5), alpha=0.5, beta=2.0),
    C("Gemm", F(4, 3), W(4, 5), W(3, 5), transA=1), C("Gemm", F(3, 4), F(5, 4), F(1), transB=1, alpha=2.0),
    C("Gemm", F(3, 4), W(4, 5)),
    C("Conv", F(1, 3, 7, 7), W(4, 3, 3, 3), W(4), pads=[1, 1, 1, 1]),
    C("Conv", F(1, 4, 8, 8), W(4, 1, 3, 3), None, group=4, strides=[2, 2], pads=[1, 0, 1, 2]),
    C("Conv", F(2, 4, 9, 9), W(6, 2, 3, 2), W(6), group=2, dilations=[2, 1], strides=[1, 2]),
    C("Conv", F(1, 2, 7, 8), W(3, 2, 4, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    C("Conv", F(1, 2, 7, 8), W(3, 2, 4, 3), auto_pad="SAME_LOWER", strides=[2, 3]),
    C("Conv", F(1, 2, 7, 8), W(3, 2, 3, 3), auto_pad="VALID"),
    C("Conv", F(2, 3, 10), W(4, 3, 3), W(4), pads=[2, 1], strides=[2]),
    C("BatchNormalization", F(2, 3, 4, 4), W(3), W(3), W(3), np.abs(W(3)) + 0.5, epsilon=1e-3),
    C("BatchNormalization", F(2, 3), W(3), W(3), W(3), np.abs(W(3)) + 0.5),
    C("InstanceNormalization", F(2, 3, 4, 5), W(3), W(3)),
    C("LayerNormalization", F(2, 3, 8), W(8), W(8)), C("LayerNormalization", F(2, 3, 8), W(8)),
    C("LayerNormalization", F(2, 3, 4), W(3, 4), W(4), axis=-2, epsilon=1e-3),
    C("MaxPool", F(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    C("MaxPool", F(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    C("MaxPool", F(1, 2, 9, 9), kernel_shape=[2, 3], dilations=[2, 2], strides=[1, 2]),
    C("MaxPool", F(1, 2, 8, 7), kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    C("AveragePool", F(1, 2, 8, 7), kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
    C("MaxPool", F(2, 3, 9), kernel_shape=[3], strides=[2]),
    C("AveragePool", F(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    C("AveragePool", F(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    C("AveragePool", F(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    C("AveragePool", F(1, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    C("GlobalAveragePool", F(2, 3, 4, 5)), C("GlobalMaxPool", F(2, 3, 4, 5)), C("GlobalAveragePool", F(2, 3, 6)),
    C("Softmax", F(2, 3, 4)), C("Softmax", F(2, 3, 4), axis=1), C("LogSoftmax", F(2, 3, 4), axis=0),
    C("Reshape", F(2, 3, 4), L(0, -1)), C("Reshape", F(2, 3, 4), L(1, 0, -1)),
    C("Reshape", F(0, 3), L(3, 0), allowzero=1),
    C("Flatten", F(2, 3, 4, 5), axis=2), C("Flatten", F(2, 3, 4), axis=-1), C("Flatten", F(2, 3), axis=0),
    C("Transpose", F(2, 3, 4), perm=[1, 2, 0]), C("Transpose", F(2, 3, 4)),
    C("Concat", F(2, 3), F(2, 1), W(2, 2), axis=-1),
    C("Split", F(2, 6), L(1, 5), axis=1, outs=2), C("Split", F(6, 2), outs=3),
    C("Split", F(2, 7), axis=-1, num_outputs=3, opset=18, outs=3),
    C("Slice", F(5, 6), L(1, -4), L(100, -1), L(0, 1)), C("Slice", F(5, 6), L(-1), L(-100), L(1), L(-2)),
    C("Slice", F(4, 5, 6), L(0, 1, 9), L(3, 5, -9), L(0, 1, 2), L(2, 3, -2)), C("Slice", F(4, 3), L(2), L(1), L(0)),
    C("Squeeze", F(2, 1, 3, 1), L(-1)), C("Squeeze", F(1, 3, 1)), C("Unsqueeze", F(2, 3), L(0, -1)),
    C("Expand", F(3, 1), L(2, 1, 4)), C("Expand", F(2, 3), L(1)),
    C("Pad", F(2, 3, 4), L(0, 1, 2, 1, 0, 1), np.float32(1.5)),
    C("Pad", F(1, 2, 4, 5), L(0, 0, 1, 2, 0, 0, 2, 1), mode="reflect"),
    C("Pad", F(2, 4), L(1, 2, 3, 0), mode="edge"), C("Pad", F(2, 3, 4), L(1, 2), None, L(-1), opset=18),
    C("Gather", F(5, 3), L(4, -1, 0)), C("Gather", F(3, 5), I(2, 2, hi=5), axis=-1),
    C("GatherElements", F(3, 4), I(3, 2, hi=4), axis=1),
    C("ScatterElements", F(3, 4), L(0, 2, 1, 2).reshape(2, 2), F(2, 2), axis=1, reduction="add"),
    C("ScatterElements", F(3, 4), np.asarray([[1, 0, 2, 0]], np.int64), F(1, 4)),
    C("ScatterND", F(4, 3), L(3, 0).reshape(2, 1), F(2, 3)),
    C("ScatterND", F(2, 3, 4), L(1, 2, 0, 0).reshape(2, 2), F(2, 4), reduction="add", opset=18),
    C("ScatterND", F(2, 3), I(2, 2, hi=2), F(2)),
    C("ScatterND", F(5, 3), I(7, 1, lo=-5, hi=5), F(7, 3), reduction="add", opset=16),
    C("ScatterND", F(5, 2, 2), I(2, 3, 1, hi=5), F(2, 3, 2, 2), reduction="max", opset=18),
    C("ScatterND", F(5, 3), L(1, 1, 4).reshape(3, 1), F(3, 3), reduction="mul", opset=16),
    *(C(op, F(2, 3, 4), L(1, -1)) for op in ["ReduceSum"]),
    *(C(op, F(2, 3, 4), axes=[1, -1], keepdims=0) for op in ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                                             "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                                             "ReduceLogSumExp"]),
    C("ReduceLogSum", F(2, 3, lo=0.1), axes=[0]), C("ReduceMean", F(2, 3, 4), L(0), opset=18),
    C("ReduceMax", F(2, 3, 4), opset=18), C("ReduceSum", F(2, 3), L(), noop_with_empty_axes=1),
    C("ReduceSum", I(2, 3), keepdims=0),
    C("ArgMax", F(3, 4), axis=1), C("ArgMin", F(3, 4), keepdims=0),
    C("ArgMax", I(3, 6, hi=3), axis=1, select_last_index=1), C("ArgMin", I(3, 6, hi=3), select_last_index=1),
    C("Cast", F(2, 3, lo=-5, hi=5), to=TensorProto.INT32), C("Cast", I(2, 3), to=TensorProto.FLOAT),
    C("Cast", F(3), to=TensorProto.BOOL), C("CastLike", I(3), W(1)), C("Dropout", F(2, 3), outs=2),
    C("Tile", F(2, 3), L(2, 1)), C("CumSum", F(2, 5), L(1)), C("CumSum", F(4, 3), L(0), exclusive=1, reverse=1),
    C("Einsum", F(2, 3), F(3, 4), equation="ij,jk->ik"), C("Einsum", F(2, 3, 4), equation="bij->jbi"),
    C("Einsum", F(5, 2, 3), F(5, 3, 4), equation="bij,bjk->bik"), C("Einsum", F(2, 3), equation="ij->"),
    C("Einsum", F(2, 2, 3), F(2, 3, 4), equation="...ij,...jk"), C("Einsum", F(3, 4), F(5, 4), equation="ik,jk"),
    C("Einsum", F(2, 3, 4), F(4, 5), equation="abc,cd->abd"), C("Einsum", F(3), F(4), equation="i,j->ij"),
    C("OneHot", L(0, 2, -1, 1), L(3), np.asarray([-1.0, 2.0], np.float32)),
    C("ConvTranspose", F(1, 2, 4, 4), W(2, 3, 3, 3), W(3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
    C("ConvTranspose", F(1, 4, 3, 3), W(4, 2, 3, 2), group=2, strides=[2, 1], dilations=[1, 2]),
    C("ConvTranspose", F(1, 2, 4, 4), W(2, 3, 3, 3), strides=[2, 2], output_shape=[8, 9]),
    C("ConvTranspose", F(1, 2, 4, 5), W(2, 3, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    C("ConvTranspose", F(1, 2, 5, 5), W(2, 2, 2, 2), strides=[3, 3], pads=[2, 1, 2, 2]),
    C("ConvTranspose", F(2, 2, 5), W(2, 3, 3), W(3), strides=[3]),
    C("Resize", F(1, 2, 3, 4), None, np.asarray([1, 1, 2, 1.5], np.float32)),
    C("Resize", F(1, 2, 3, 4), None, None, L(1, 2, 7, 5), coordinate_transformation_mode="asymmetric",
      nearest_mode="floor"),
    C("Resize", F(1, 2, 4, 6), None, np.asarray([1, 1, 2, 0.5], np.float32), mode="linear"),
    C("Resize", F(1, 2, 4, 6), None, None, L(1, 2, 7, 9), mode="linear",
      coordinate_transformation_mode="align_corners"),
    C("Resize", F(2, 3, 5), None, None, L(2, 3, 8), mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    C("Resize", F(1, 1, 4, 5), None, np.asarray([1, 1, 1.5, 2], np.float32), mode="cubic"),
    C("Resize", F(1, 1, 4, 5), None, None, L(1, 1, 6, 3), mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5),
    C("Resize", F(3, 4, 5), None, None, L(6, 5), mode="linear", axes=[0, 2], opset=18),
    C("Resize", F(1, 1, 4, 5), None, np.asarray([1, 1, 1.7, 0.6], np.float32), mode="linear", opset=19,
      coordinate_transformation_mode="half_pixel_symmetric"),
    C("Celu", F(2, 3), alpha=0.7), C("Trilu", F(2, 4, 5), L(1)), C("Trilu", F(4, 4), upper=0),
    C("GatherND", F(3, 4, 5), L(0, 2, -1, 1).reshape(2, 2)), C("GatherND", F(3, 4), I(2, 3, 1, hi=3)),
    C("GroupNormalization", F(2, 6, 3, 3), W(6), W(6), num_groups=3, epsilon=1e-3, opset=21),
    C("GroupNormalization", F(2, 6, 4), W(2), W(2), num_groups=2, opset=18),
    C("QuantizeLinear", F(2, 3, lo=-3, hi=3), np.float32(0.02), np.uint8(128)),
    C("QuantizeLinear", F(2, 3, 4), np.asarray([0.01, 0.02, 0.05], np.float32), np.asarray([0, 1, -2], np.int8)),
    C("DequantizeLinear", Q(2, 3, 4), np.asarray([0.1, 0.2, 0.3], np.float32), np.asarray([1, -2, 3], np.int8)),
    C("DequantizeLinear", Q(5), np.float32(0.5)),
    C("DepthToSpace", F(1, 8, 2, 3), blocksize=2), C("DepthToSpace", F(1, 8, 2, 3), blocksize=2, mode="CRD"),
    C("SpaceToDepth", F(1, 2, 4, 6), blocksize=2),
]


@pytest.mark.parametrize(("op", "operands", "attrs", "opset", "outs"), CASES)
def test_op_matches_onnxruntime(op, operands, attrs, opset, outs):
    rng = np.random.default_rng(1)
    inputs, feeds, inits, names = [], {}, {}, []
    for i, x in enumerate(operands):
        name = f"in{i}"
        if x is None:
            name = ""
        elif isinstance(x, Spec):
            inputs.append(helper.make_tensor_value_info(name, x.elem, list(x.shape)))
            feeds[name] = x.sample(rng)
        else:
            inits[name] = np.asarray(x)
        names.append(name)
    while names and names[-1] == "":
        names.pop()
    outputs = [f"out{k}" for k in range(outs)]
    node = helper.make_node(op, names, outputs, name="node", **attrs)
    assert_matches_ort(make_model([node], inputs, outputs, inits, opset), feeds)


# -- shape arithmetic is folded ---------------------------------------------------------------------------------
def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def shape_chain_model(opset=17):
    """x[N, 3, 4] -> reshape(x, [shape(x)[0], -1]) + expand(b, concat(shape(x)[:1], [12])) + range/ConstantOfShape."""
    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["s"]), n("Gather", ["s", "zero"], ["n0"], axis=0), n("Unsqueeze", ["n0", "ax0"], ["n"]),
        n("Concat", ["n", "minus1"], ["target"], axis=0), n("Reshape", ["x", "target"], ["flat"]),
        n("Shape", ["flat"], ["fs"], start=1), n("Concat", ["n", "fs"], ["eshape"], axis=0),
        n("Expand", ["b", "eshape"], ["bb"]), n("Add", ["flat", "bb"], ["y0"]),
        n("Cast", ["fs"], ["fsf"], to=TensorProto.FLOAT), n("Div", ["fsf", "two"], ["half"]),
        n("Cast", ["half"], ["halfi"], to=TensorProto.INT64),
        n("ConstantOfShape", ["halfi"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        n("Range", ["zero", "six", "one"], ["r"]), n("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        n("Add", ["ones", "rf"], ["c"]), n("Concat", ["c", "c"], ["cc"], axis=0), n("Mul", ["y0", "cc"], ["y"]),
    ]
    inits = {"zero": np.asarray(0, np.int64), "ax0": L(0), "minus1": L(-1), "b": W(12), "two": np.float32(2),
             "six": np.asarray(6, np.int64), "one": np.asarray(1, np.int64)}
    return make_model(nodes, [vi("x", ["N", 3, 4])], ["y"], inits, opset)


def test_shape_chain_folds_for_concrete_batch():
    model = shape_chain_model()
    x = RNG.normal(size=(5, 3, 4)).astype(np.float32)
    graph = assert_matches_ort(model, {"x": x}, {"x": [5, 3, 4]})
    assert set(graph.op_counts()) == {"reshape", "add", "mul"}, graph.op_counts()
    assert graph.inputs[0].name == "x" and graph.inputs[0].shape == (5, 3, 4)
    # Expand(b, computed shape) has constant inputs: it folds into one param named after its ONNX output.
    assert {p.name for p in graph.params} == {"bb", "cc"}
    assert graph.outputs[0].shape == (5, 12)


def test_dynamic_dim_defaults_to_one_and_symbols_are_shared():
    n = helper.make_node
    model = make_model([n("Add", ["x", "y"], ["z"])], [vi("x", ["N", 3]), vi("y", ["N", 3])], ["z"])
    graph = import_onnx(model)
    assert [v.shape for v in graph.inputs] == [(1, 3), (1, 3)]
    graph = import_onnx(model, {"x": [4, 3]})
    assert [v.shape for v in graph.inputs] == [(4, 3), (4, 3)]


def test_input_shape_conflicts_raise_shape_mismatch():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 3])], ["y"])
    with pytest.raises(ShapeMismatchError, match="'x'.*axis 1"):
        import_onnx(model, {"x": [2, 4]})
    with pytest.raises(ShapeMismatchError, match="'x'.*rank"):
        import_onnx(model, {"x": [2, 3, 1]})
    with pytest.raises(ShapeMismatchError, match="nope"):
        import_onnx(model, {"nope": [1]})


@pytest.mark.parametrize("opset", range(13, 22))
def test_every_supported_opset(opset):
    n = helper.make_node
    if opset >= 18:
        reduce = n("ReduceMean", ["h", "axes"], ["m"], keepdims=1)
    else:
        reduce = n("ReduceMean", ["h"], ["m"], axes=[-1], keepdims=1)
    nodes = [n("MatMul", ["x", "w"], ["h0"]), n("Clip", ["h0", "lo", ""], ["h"]), reduce,
             n("Sub", ["h", "m"], ["d"]), n("Softmax", ["d"], ["s"], axis=-1),
             n("Split", ["s", "sizes"], ["s0", "s1"], axis=-1), n("Squeeze", ["s0", "ax"], ["q"]),
             n("ReduceSum", ["s1", "axes"], ["r"], keepdims=0), n("Add", ["q", "r"], ["y"])]
    inits = {"w": W(4, 6), "lo": np.float32(0.0), "axes": L(-1), "sizes": L(1, 5), "ax": L(2)}
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    assert_matches_ort(make_model(nodes, [vi("x", [2, 3, 4])], ["y"], inits, opset), {"x": x})


def test_old_opset_is_upgraded_and_new_opset_refused():
    n = helper.make_node
    old = make_model([n("Unsqueeze", ["x"], ["u"], axes=[0]), n("Clip", ["u"], ["y"], min=-0.5, max=0.5)],
                     [vi("x", [2, 3])], ["y"], opset=10)
    old.ir_version = 5
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    graph = import_onnx(old)
    np.testing.assert_allclose(qcc.interpret(graph, [x])[0], np.clip(x, -0.5, 0.5)[None])
    with pytest.raises(ModelLoadError, match="opset 22"):
        import_onnx(make_model([n("Relu", ["x"], ["y"])], [vi("x", [2])], ["y"], opset=22))


def test_unknown_op_on_constants_is_folded_with_the_reference():
    n = helper.make_node
    nodes = [n("NonZero", ["mask"], ["nz"]), n("Squeeze", ["nz", "ax"], ["idx"]),
             n("Gather", ["x", "idx"], ["y"], axis=1)]
    inits = {"mask": np.asarray([1, 0, 1, 1], np.bool_), "ax": L(0)}
    graph = assert_matches_ort(make_model(nodes, [vi("x", [2, 4])], ["y"], inits), {"x": W(2, 4)})
    assert graph.op_counts() == {"gather": 1}


def test_names_params_and_attribute_types():
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], name="conv1", pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("Mul", ["r", "w_in"], ["y"])]
    inits = {"w": W(2, 1, 3, 3), "b": W(2), "w_in": np.float32(2.0), "unused": W(3)}
    model = make_model(nodes, [vi("x", [1, 1, 5, 5]), vi("w_in", [])], ["y"], inits)
    graph = import_onnx(model.SerializeToString())
    assert [v.name for v in graph.inputs] == ["x"]  # an input that is also an initializer is a param
    assert {p.name for p in graph.params} == {"w", "b", "w_in"}
    assert [nd.name for nd in graph.nodes] == ["conv1", "Relu_1", "Mul_2"]
    for nd in graph.nodes:
        for v in nd.attrs.values():
            assert not isinstance(v, (list, np.generic, np.ndarray)), (nd, v)
            if isinstance(v, tuple):
                assert all(isinstance(e, (int, float, str, bool)) for e in v)


# -- errors -----------------------------------------------------------------------------------------------------
def small_model():
    n = helper.make_node
    return make_model([n("MatMul", ["x", "w"], ["h"]), n("Relu", ["h"], ["y"])], [vi("x", [2, 8])], ["y"],
                      {"w": W(8, 16)})


def test_missing_truncated_and_random_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")
    data = small_model().SerializeToString()
    for name, blob in [("truncated.onnx", data[: len(data) // 2]), ("random.onnx", RNG.bytes(4096)),
                       ("tail.onnx", data[:-5]), ("empty.onnx", b"")]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ModelLoadError, match=name):
            import_onnx(path)
    with pytest.raises(ModelLoadError, match="bytes"):
        import_onnx(RNG.bytes(1000))


def test_all_unsupported_ops_are_listed():
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["a"]), n("MyOp", ["a"], ["b"], domain="com.example", name="custom"),
             n("STFT", ["b", "step"], ["c"], name="stft"), n("Relu", ["c"], ["d"]),
             n("Einsum", ["x"], ["e"], equation="ii->i", name="diag"), n("Add", ["d", "e"], ["y"])]
    model = make_model(nodes, [vi("x", [4, 4])], ["y"], {"step": np.asarray(2, np.int64)}, name="two_bad")
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    listed = info.value.unsupported
    assert [node for _, node in listed] == ["custom", "stft", "diag"]
    assert [op for op, _ in listed] == ["com.example::MyOp", "STFT", "Einsum"]
    assert "two_bad" in str(info.value) and "repeated letter" in str(info.value)


def test_external_data_inside_folder_loads_and_escapes_are_refused(tmp_path):
    model = small_model()
    w = numpy_helper.to_array(model.graph.initializer[0])
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    assert (folder / "w.bin").exists()
    x = W(2, 8)
    graph = import_onnx(path)
    want = np.maximum(x @ w, 0)
    np.testing.assert_allclose(qcc.interpret(graph, [x])[0], want, rtol=1e-5, atol=1e-6)
    (tmp_path / "x").write_bytes((folder / "w.bin").read_bytes())
    (folder / "link.bin").symlink_to(tmp_path / "x")  # a link out of the folder is refused too
    for location in ["../x", os.path.abspath(tmp_path / "x"), "sub/../../x", "link.bin"]:
        tampered = onnx.load_model(path, load_external_data=False)
        for e in tampered.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = location
        bad = folder / "bad.onnx"
        onnx.save_model(tampered, bad)
        with pytest.raises(ModelLoadError, match="outside the model's folder"):
            import_onnx(bad)
        with pytest.raises(ModelLoadError, match="outside the model's folder"):
            import_onnx(str(bad))
    with pytest.raises(ModelLoadError, match="external"):
        import_onnx(onnx.load_model(path, load_external_data=False))


# -- a model exported from PyTorch ------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_exported_cnn_with_dynamic_batch(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            y = y.reshape(y.shape[0], -1)  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape
            return torch.softmax(self.fc(y), dim=-1)

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "net.onnx"
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    x = RNG.normal(size=(3, 3, 8, 8)).astype(np.float32)
    model = onnx.load_model(path)
    assert {"Shape", "Gather", "Concat", "Reshape"} <= {nd.op_type for nd in model.graph.node}
    graph = assert_matches_ort(model, {"x": x}, {"x": [3, 3, 8, 8]})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(qcc.interpret(graph, [x])[0], want, rtol=1e-4, atol=1e-5)
    ops = graph.op_counts()
    assert ops.keys() <= {"conv2d", "batch_norm", "relu", "max_pool2d", "reshape", "linear", "softmax"}, ops
    assert import_onnx(path, {"x": [3, 3, 8, 8]}).op_counts() == ops


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_torch_dynamo_exported_gcn_uses_index_add(tmp_path):
    """The dynamo exporter writes index_add as ScatterND(reduction='add') with computed indices."""
    torch = pytest.importorskip("torch")
    from tests.zoo import TINY_ZOO

    make, inputs = TINY_ZOO["gcn"]
    net, xs = make(), inputs()
    path = tmp_path / "gcn.onnx"
    torch.onnx.export(net, xs, str(path), dynamo=True, opset_version=18, verbose=False)
    graph = import_onnx(path)
    assert graph.op_counts().get("index_add") == 3 and "scatter_elements" not in graph.op_counts()
    model = onnx.load_model(path)
    feeds = {v.name: x.numpy() for v, x in zip(model.graph.input, xs)}
    with torch.no_grad():
        want = net(*xs).numpy()
    np.testing.assert_allclose(qcc.interpret(graph, feeds)[0], want, rtol=1e-4, atol=1e-5)
    assert_matches_ort(model, feeds)
