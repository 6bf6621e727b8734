"""`CompiledModel.export_onnx` / qcc.frontends.onnx_export: the quantized model in ONNX QDQ form runs in ONNX
Runtime and agrees with qcc's integer library."""

from __future__ import annotations

import numpy as np
import pytest

import qcc

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from tests.zoo import bert_inputs, bert_tiny, digits_data, train_digits_cnn  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.onnx, pytest.mark.tvm]


def sqnr(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30)))


def run_ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def digits():
    xtr, _, xte, _ = digits_data()
    return train_digits_cnn(epochs=5), [xtr[i:i + 16] for i in range(0, 160, 16)], xte[:16]


@pytest.mark.parametrize("target", ["cpu-int8", "cpu-int4"])
def test_digits_cnn_qdq_runs_in_onnxruntime(digits, target, tmp_path):
    model, calib, x = digits
    lib = qcc.compile(model, target, example_inputs=(x,), calibration=calib, progress=False)
    path = tmp_path / "q.onnx"
    lib.export_onnx(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) == 5  # the conv weights stay int8
    ours, theirs = lib(x), run_ort(path, x)
    assert sqnr(ours, theirs) > 30
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.9
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left nothing behind


def test_encoder_with_integer_nonlinears_exports(tmp_path):
    model = bert_tiny(embed=False)
    x = bert_inputs(16, 2, hidden=32)[0].numpy()
    calib = [bert_inputs(16, 2, hidden=32, seed=s)[0].numpy() for s in range(1, 5)]
    lib = qcc.compile(model, "cpu-int8", example_inputs=(x,), calibration=calib, progress=False)
    lib.export_onnx(tmp_path / "e.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "e.onnx")).graph.node}
    assert {"Softmax", "Gelu", "LayerNormalization", "MatMul"} <= ops
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    theirs = run_ort(tmp_path / "e.onnx", x)
    # ORT computes softmax/GELU/LayerNorm in float, so it matches the float model about as well as qcc does.
    assert sqnr(ref, theirs) > sqnr(ref, lib(x)) - 3 > 20


def test_loaded_library_cannot_export(digits, tmp_path):
    model, calib, x = digits
    lib = qcc.compile(model, "cpu-int8", example_inputs=(x,), calibration=calib, progress=False)
    lib.export_library(tmp_path / "q.so")
    with pytest.raises(qcc.errors.OptionError):
        qcc.load(tmp_path / "q.so").export_onnx(tmp_path / "q.onnx")
