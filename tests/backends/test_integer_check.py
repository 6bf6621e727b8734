"""The TIR no-float check (qcc.backends.tvm.integer_check) on integer builds: it passes on an integer-only
digits CNN and fails where a float op was left between the input quantize and the output dequantize."""

from __future__ import annotations

import numpy as np
import pytest

import qcc

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
from qcc.backends.tvm import build  # noqa: E402
from qcc.backends.tvm.integer_check import check_integer_tir, float_blocks  # noqa: E402
from qcc.ir import GraphBuilder  # noqa: E402
from qcc.target import Target  # noqa: E402
from tests.zoo import digits_cnn, digits_data  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tvm]


@pytest.fixture(scope="module")
def data():
    xtr, _, xte, _ = digits_data()
    return digits_cnn(), [xtr[i:i + 8] for i in range(0, 32, 8)], xte[:8]


def test_passes_on_an_integer_only_cnn(data):
    model, calib, x = data
    lib = qcc.compile(model, "cpu-int8", example_inputs=(x,), calibration=calib, progress=False)
    check = lib.tir_check
    assert check is not None and check.ok, check.text()
    assert check.boundary_in and check.boundary_out and check.kernels >= 5
    assert "TIR no-float check: passed" in lib.report()


def test_fails_when_a_layer_is_kept_in_float(data, tmp_path):
    model, calib, x = data
    lib = qcc.compile(model, "cpu-int8", example_inputs=(x,), calibration=calib, progress=False,
                      keep_float=["conv2d"])
    check = lib.tir_check
    assert not check.ok
    assert any("conv2d" in ops for _, ops, _ in check.offending), check.text()
    assert "TIR no-float check: FAILED" in lib.report()
    lib.export_library(tmp_path / "k.so")  # the verdict travels with the library
    assert "TIR no-float check: FAILED" in qcc.load(tmp_path / "k.so").report()


def _qdq_graph(middle: str | None):
    """quantize → [dequantize → middle → quantize] → dequantize on a 4×8 float input."""
    b = GraphBuilder()
    x = b.input((4, 8), "f32", "x")
    s, z = b.param(np.array(0.05, np.float32), "s"), b.param(np.array(0, np.int32), "z")
    q = b.emit("quantize", [x, s, z], {"dtype": "i8"})
    if middle is not None:
        f = b.emit(middle, [b.emit("dequantize", [q, s, z])])
        q = b.emit("quantize", [f, s, z], {"dtype": "i8"})
    return b.output(b.emit("dequantize", [q, s, z]))


def test_fails_on_a_float_tanh_between_quantize_and_dequantize():
    ok = build(_qdq_graph(None), Target("cpu-int8")).tir_check
    assert ok.ok, ok.text()
    bad = build(_qdq_graph("tanh"), Target("cpu-int8")).tir_check
    assert not bad.ok
    assert "tanh" in bad.text()


def test_float_blocks_reads_tir_dtypes():
    from tvm import te

    a = te.placeholder((4,), "float32", name="a")
    q = te.compute((4,), lambda i: (a[i] * 2.0).astype("int8"), name="quantize")
    r = te.compute((4,), lambda i: q[i] + np.int8(1), name="inc")
    found = float_blocks(te.create_prim_func([a, r]))
    assert found[""] == {"float32"} and found["quantize"] == {"float32"} and "inc" not in found
    import tvm

    mod = tvm.IRModule({"k": te.create_prim_func([a, r])})
    report = check_integer_tir(mod)  # no relax main: nothing is a boundary, so the float kernel is reported
    assert not report.ok and report.offending[0][0] == "k"


def test_integer_inputs_need_no_input_quantize():
    from tests.zoo import bert_inputs, bert_tiny

    ids = bert_inputs(16, 2, vocab=100)[0].numpy()  # int64 token ids into an int8 embedding table
    calib = [bert_inputs(16, 2, vocab=100, seed=s)[0].numpy() for s in (1, 2)]
    lib = qcc.compile(bert_tiny(), "cpu-int8", example_inputs=(ids,), calibration=calib, progress=False)
    assert lib.tir_check.ok and not lib.tir_check.boundary_in, lib.tir_check.text()
