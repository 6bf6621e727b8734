"""The model zoo through both frontends: interpreter and CPU library vs PyTorch and ONNX Runtime.

The tiny variants keep the structure of the benchmark models (ResNet-18, MobileNet-V2, BERT encoder, GCN,
GAT) at test size. Tolerances: float32 end to end, rtol 1e-4 / atol 1e-4 relative to the output scale.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import qcc
from qcc.frontends import import_model

torch = pytest.importorskip("torch")
from tests.zoo import TINY_ZOO  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tvm]


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def _model(name: str):
    factory, inputs = TINY_ZOO[name]
    model = factory()
    args = inputs()
    with torch.no_grad():
        expected = model(*args)
    return model, args, expected.numpy()


@pytest.mark.parametrize("name", sorted(TINY_ZOO))
def test_torch_frontend_interpreter_and_cpu_library(name):
    model, args, expected = _model(name)
    graph = import_model(model, args)
    _close(qcc.interpret(graph, [a.numpy() for a in args])[0], expected)
    lib = qcc.compile(model, "cpu-fp32", example_inputs=args, num_threads=1)
    _close(lib(*args), expected)


@pytest.mark.onnx
@pytest.mark.parametrize("name", sorted(TINY_ZOO))
def test_onnx_frontend_interpreter_and_cpu_library(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, args, _ = _model(name)
    path = tmp_path / f"{name}.onnx"
    names = [f"in{i}" for i in range(len(args))]
    # The TorchScript exporter cannot express index_add_ with repeated indices; the GNNs go through dynamo.
    gnn = name in ("gcn", "gat")
    torch.onnx.export(model, args, str(path), input_names=names, dynamo=gnn, external_data=False)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    graph = import_model(str(path))
    _close(qcc.interpret(graph, feeds)[0], expected)
    lib = qcc.compile(str(path), "cpu-fp32", num_threads=1)
    _close(lib(**feeds), expected)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("target", ["cuda-fp32", "cuda-fp16"])
def test_cuda_builds_of_the_zoo_export(target, tmp_path):
    for name in ("resnet18", "bert"):
        model, args, _ = _model(name)
        lib = qcc.compile(model, target, example_inputs=args, arch="sm_80")
        path = tmp_path / f"{name}-{target}.so"
        lib.export_library(path)
        assert path.stat().st_size > 0
        assert qcc.load(path).target.name == target
