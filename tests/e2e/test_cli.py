"""The qcc command line: compile / run / inspect, and one-line errors with non-zero exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcc.cli import main
from tests.onnx_models import small_gemm_onnx

onnx = pytest.importorskip("onnx")
pytestmark = [pytest.mark.onnx, pytest.mark.tvm]




def _unsupported_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Det", ["x"], ["d"], name="det0"),
             helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Hardmax", ["r"], ["h"], name="hardmax0")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("h", TensorProto.FLOAT, [3, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_compile_run_round_trip(tmp_path, capsys):
    model = small_gemm_onnx(tmp_path / "m.onnx")
    lib = tmp_path / "m.so"
    assert main(["compile", str(model), "--target", "cpu-fp32", "-o", str(lib), "--num-threads", "1"]) == 0
    assert lib.exists() and Path(str(lib) + ".json").exists()
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(lib), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["run", str(lib), "--input", str(tmp_path / "x.npy")]) == 0
    assert "output 0: float32[2, 4]" in capsys.readouterr().out


def test_inspect_print_after_all(tmp_path, capsys):
    model = small_gemm_onnx(tmp_path / "m.onnx")
    assert main(["inspect", str(model), "--print-after-all"]) == 0
    out = capsys.readouterr().out
    assert "imported from" in out and "IR after canonicalize" in out and "linear(" in out


def test_corrupt_model_exits_nonzero(tmp_path, capsys):
    good = small_gemm_onnx(tmp_path / "m.onnx").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good[: len(good) // 2])
    code = main(["compile", str(bad), "-o", str(tmp_path / "x.so")])
    assert code != 0
    assert "ModelLoadError" in _error_line(capsys)
    assert not (tmp_path / "x.so").exists()


def test_unsupported_ops_listed_in_one_line(tmp_path, capsys):
    model = _unsupported_onnx(tmp_path / "u.onnx")
    assert main(["compile", str(model), "-o", str(tmp_path / "u.so")]) != 0
    line = _error_line(capsys)
    assert "UnsupportedOperatorError" in line and "Det" in line and "Hardmax" in line and "det0" in line


def test_unknown_target_and_wrong_shape(tmp_path, capsys):
    model = small_gemm_onnx(tmp_path / "m.onnx")
    assert main(["compile", str(model), "--target", "tpu-fp32", "-o", str(tmp_path / "a.so")]) != 0
    assert "TargetError" in _error_line(capsys)
    lib = tmp_path / "m.so"
    assert main(["compile", str(model), "-o", str(lib)]) == 0
    capsys.readouterr()
    np.save(tmp_path / "bad.npy", np.zeros((3, 6), np.float32))
    assert main(["run", str(lib), "--input", str(tmp_path / "bad.npy")]) != 0
    line = _error_line(capsys)
    assert "ShapeMismatchError" in line and "'x'" in line


def test_console_script_exit_code(tmp_path):
    """The installed entry point exits non-zero with one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "qcc.cli", "run", str(tmp_path / "missing.so"), "--input", "x.npy"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "LibraryLoadError" in proc.stderr


def test_compile_int8_with_calibration_file(tmp_path, capsys):
    model = small_gemm_onnx(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((16, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    lib = tmp_path / "q.so"
    assert main(["compile", str(model), "--target", "cpu-int8", "--calibration", str(tmp_path / "calib.npz"),
                 "--quiet", "-o", str(lib)]) == 0
    import qcc

    q = qcc.load(lib)
    assert "integer-only: yes" in q.report()
    x = calib[:2]  # inside the calibrated range (outside it the int8 output saturates by design)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(q(x), expected, atol=0.05 * float(np.abs(expected).max()) + 0.05)
