"""qcc.compile / qcc.load end to end on small models (PyTorch and ONNX inputs, cpu-fp32)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import qcc
from qcc.errors import LibraryLoadError, OptionError, ShapeMismatchError, TargetError
from qcc.ir.parser import parse

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.tvm]


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.fc(y)


class TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return torch.sigmoid(x), x.sum(dim=1)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 12, 12)
    return model, x


@pytest.fixture(scope="module")
def cnn_lib(cnn):
    model, x = cnn
    return qcc.compile(model, target="cpu-fp32", example_inputs=(x,), num_threads=1)


def test_compile_matches_pytorch(cnn, cnn_lib):
    model, x = cnn
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(cnn_lib(x.numpy()), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cnn_lib(x), expected, rtol=1e-4, atol=1e-5)  # torch tensors accepted
    assert "batch_norm" not in cnn_lib.ir  # folded into the conv
    assert "conv2d" in cnn_lib.ir
    assert "cpu-fp32" in cnn_lib.report()


def test_ir_text_parses_back(cnn_lib):
    graph = parse(cnn_lib.ir, allow_missing_params=True)
    assert [n.op for n in graph.nodes] == [n.op for n in cnn_lib.graph.nodes]


def test_export_and_load_round_trip(cnn, cnn_lib, tmp_path):
    model, x = cnn
    path = tmp_path / "m.so"
    cnn_lib.export_library(path)
    lib2 = qcc.load(path)
    assert lib2.target.name == "cpu-fp32"
    np.testing.assert_array_equal(lib2(x.numpy()), cnn_lib(x.numpy()))
    assert lib2.ir == cnn_lib.ir


def test_load_missing_library(tmp_path):
    with pytest.raises(LibraryLoadError):
        qcc.load(tmp_path / "nope.so")


def test_wrong_input_shape_names_the_input(cnn_lib):
    with pytest.raises(ShapeMismatchError, match=r"expected shape \[2, 3, 12, 12\]"):
        cnn_lib(np.zeros((1, 3, 12, 12), np.float32))
    with pytest.raises(ShapeMismatchError):
        cnn_lib()


def test_several_outputs_return_a_tuple():
    x = torch.randn(3, 4)
    lib = qcc.compile(TwoOutputs(), "cpu-fp32", example_inputs=(x,))
    a, b = lib(x)
    np.testing.assert_allclose(a, torch.sigmoid(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, x.sum(dim=1).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["gpu-fp32", "cpu", "cpu-int3", "cpu-fp32-x", "accel-fp32"])
def test_bad_targets(cnn, target):
    model, x = cnn
    with pytest.raises(TargetError):
        qcc.compile(model, target=target, example_inputs=(x,))


def test_accelerator_needs_calibration(cnn):
    model, x = cnn
    with pytest.raises(OptionError, match="calibration"):
        qcc.compile(model, target="accel-int8", example_inputs=(x,))


def test_bad_options(cnn):
    model, x = cnn
    with pytest.raises(OptionError, match="calibraton"):
        qcc.compile(model, target="cpu-fp32", example_inputs=(x,), calibraton=[])
    with pytest.raises(TargetError):
        qcc.compile(model, target="cpu-fp32", example_inputs=(x,), num_threads=0)
    with pytest.raises(OptionError):
        qcc.compile(model, target="cpu-fp32", example_inputs=(x,), arch="sm_80")  # a CUDA-only option


def test_print_after_all(cnn):
    model, x = cnn
    out = io.StringIO()
    qcc.compile(model, target="cpu-fp32", example_inputs=(x,), print_after_all=True, out=out)
    text = out.getvalue()
    for name in ("constant-folding", "canonicalize", "fold-batchnorm", "dead-code-elimination"):
        assert f"IR after {name}" in text


@pytest.mark.onnx
def test_compile_onnx_path_matches_onnxruntime(cnn, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = cnn
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    lib = qcc.compile(str(path), target="cpu-fp32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(lib(x.numpy()), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lib(input=x.numpy()), expected, rtol=1e-4, atol=1e-5)
