"""accel-int8 end to end: qcc.compile builds an accelerator program whose simulated output equals the reference
interpreter's on the optimized integer graph bit for bit; .qbin export / load / `qcc disasm`; report and plot; the
clear errors (no calibration, corrupt library, scratchpad too small)."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.backends.accel.build import build
from qcc.cli import main
from qcc.errors import LibraryLoadError, OptionError, ScratchpadError
from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext
from qcc.pipeline import optimize
from qcc.target import Target

torch = pytest.importorskip("torch")
from tests.onnx_models import small_gemm_onnx  # noqa: E402
from tests.zoo import digits_cnn, digits_data, image_input, resnet_tiny  # noqa: E402

pytestmark = [pytest.mark.torch]


@pytest.fixture(scope="module")
def digits():
    """The digits CNN compiled once for accel-int8 (64 KiB scratchpad, Belady schedule), and a test batch."""
    xtr, _, xte, _ = digits_data()
    lib = qcc.compile(digits_cnn(), "accel-int8", example_inputs=(xte[:8],),
                      calibration=[xtr[i:i + 8] for i in range(0, 32, 8)], progress=False, schedule="belady",
                      scratchpad_kb=64)
    return lib, xte[:8]


def _assert_bit_exact(lib, x):
    y = lib(x)
    np.testing.assert_array_equal(y, qcc.interpret(lib.graph, [x])[0])
    return y


def test_digits_cnn_is_bit_exact_and_round_trips_through_qbin(digits, tmp_path, capsys):
    lib, x = digits
    y = _assert_bit_exact(lib, x)
    rep = lib.report()
    for what in ("schedule: belady", "scratchpad peak", "non-compulsory", "cycles", "integer-only"):
        assert what in rep, rep
    info = lib._exe.info
    assert info["sim"]["spm_peak"] <= 64 * 1024 and info["traffic"]["noncompulsory"] == 0
    path = tmp_path / "m.qbin"
    lib.export_library(path)
    lib2 = qcc.load(path)
    np.testing.assert_array_equal(lib2(x), y)
    assert "scratchpad peak" in lib2.report()
    capsys.readouterr()
    assert main(["disasm", str(path)]) == 0
    text = capsys.readouterr().out
    assert "conv" in text and "load" in text and "halt" in text
    qcc.plot_schedule(lib, tmp_path / "mem.png")
    assert (tmp_path / "mem.png").stat().st_size > 1000
    # A flipped byte in the weights, a truncated file, a foreign file: LibraryLoadError.
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.qbin").write_bytes(bytes(data))
    with pytest.raises(LibraryLoadError, match="checksum"):
        qcc.load(tmp_path / "bad.qbin")
    (tmp_path / "short.qbin").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LibraryLoadError, match="truncated"):
        qcc.load(tmp_path / "short.qbin")
    assert main(["disasm", str(tmp_path / "short.qbin")]) != 0


def test_digits_cnn_tiled_on_a_small_scratchpad(digits):
    lib, x = digits
    # The same integer graph on a 3 KiB scratchpad: convs split by batch / rows / channels, bits unchanged.
    small = build(lib.graph, Target("accel-int8", scratchpad_kb=3), method="lru")
    np.testing.assert_array_equal(small.run([x])[0], qcc.interpret(lib.graph, [x])[0])
    assert small.info["tiles"] and small.info["sim"]["spm_peak"] <= 3 * 1024
    with pytest.raises(ScratchpadError, match="smallest tile"):
        build(lib.graph, Target("accel-int8", scratchpad_kb=1), method="lru")


def test_resnet_tiny_ilp_schedule_is_bit_exact():
    model, (x,) = resnet_tiny(), image_input(32)
    calib = [image_input(32, seed=s)[0].numpy() for s in (1, 2)]
    lib = qcc.compile(model, "accel-int8", example_inputs=(x,), calibration=calib, progress=False,
                      schedule_time_limit=5.0)
    _assert_bit_exact(lib, x.numpy())
    _assert_bit_exact(lib, image_input(32, seed=7)[0].numpy())
    info = lib._exe.info
    assert info["method"] == "ilp" and info["status"] in ("optimal", "feasible")
    assert info["sim"]["spm_peak"] <= 256 * 1024
    # On a 6 KiB scratchpad the deeper convs are tiled (weights by output channels); same bits.
    small = build(lib.graph, Target("accel-int8", scratchpad_kb=6), method="belady")
    x2 = image_input(32, seed=9)[0].numpy()
    np.testing.assert_array_equal(small.run([x2])[0], qcc.interpret(lib.graph, [x2])[0])
    assert small.info["tiles"] and small.info["sim"]["spm_peak"] <= 6 * 1024


def test_accel_needs_calibration():
    b = GraphBuilder()
    x = b.input((2, 3), "f32", "x")
    g = b.output(b.emit("relu", [x]))
    tgt = Target("accel-int8")
    with pytest.raises(OptionError, match="calibration"):
        optimize(g, tgt, PassContext(target=tgt, options={}))


@pytest.mark.onnx
def test_cli_compiles_onnx_to_qbin_and_disassembles(tmp_path, capsys):
    pytest.importorskip("onnx")
    rng = np.random.default_rng(0)
    small_gemm_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", rng.standard_normal((2, 6)).astype(np.float32))
    out = tmp_path / "m.qbin"
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "accel-int8", "--calibration",
                 str(tmp_path / "calib.npy"), "--scratchpad-kb", "16", "--schedule", "belady", "--quiet",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["disasm", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gemm" in text and "scratchpad 16384 B" in text
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    lib = qcc.compile(str(tmp_path / "m.onnx"), "accel-int8", calibration=[np.load(tmp_path / "calib.npy")],
                      progress=False, schedule="belady", scratchpad_kb=16)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), qcc.interpret(lib.graph, [x])[0])
