"""A ViT-style encoder (tests/zoo.py digits_vit: patch embedding, LayerNorm, softmax attention, GELU MLP, mean
pooling) compiles for accel-int8 with every op on the accelerator, and the simulated program's output equals the
interpreter's on the optimized integer graph bit for bit, untiled and on a 2 KiB scratchpad; the digits CNN on
accel-int4 runs with its 4-bit weights packed two per byte, bit-exact, moving half the weight bytes."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.backends.accel.build import build
from qcc.backends.accel.isa import packed_bytes
from qcc.target import Target

torch = pytest.importorskip("torch")
from tests.zoo import digits_cnn, digits_data, digits_vit  # noqa: E402

pytestmark = [pytest.mark.torch]


@pytest.fixture(scope="module")
def data():
    xtr, _, xte, _ = digits_data()
    return [xtr[i:i + 8] for i in range(0, 24, 8)], xte[:4], xte[4:8]


@pytest.mark.slow
@pytest.mark.parametrize("target,nonlinear", [("accel-int8", "ibert"), ("accel-int4", "ivit")])
def test_digits_vit_is_bit_exact(data, target, nonlinear, tmp_path):
    calib, x, x2 = data
    lib = qcc.compile(digits_vit(), target, example_inputs=(x,), calibration=calib, progress=False,
                      schedule="belady", nonlinear=nonlinear)
    softmax, gelu = ("isoftmax", "igelu") if nonlinear == "ibert" else ("shiftmax", "shiftgelu")
    ops = {n.op for n in lib.graph.nodes}
    assert {softmax, gelu, "ilayer_norm", "qmatmul", "transpose"} <= ops, ops
    for inp in (x, x2):
        assert np.array_equal(lib(inp), qcc.interpret(lib.graph, [inp])[0])
    text = lib._exe.disassemble()
    for mnemonic in (softmax, gelu, "lnorm", "bmm", "permute", "qaddb", "rmean", "gemm"):
        assert f" {mnemonic} " in text or f": {mnemonic}" in text, mnemonic
    by_op = lib._exe.info["sim"]["by_op"]
    assert by_op[softmax] > 0 and by_op["lnorm"] > 0
    if target == "accel-int4":  # 4-bit linear weights travel packed
        assert "wdt=i4x2" in text
        return
    assert "cycles by instruction: lnorm" in lib.report() or "isoftmax" in lib.report()
    lib.export_library(tmp_path / "vit.qbin")  # the new instructions survive the binary encoding
    assert np.array_equal(qcc.load(tmp_path / "vit.qbin")(x2), lib(x2))
    # The same graph on a 2 KiB scratchpad: GEMMs, softmax and LayerNorm rows tiled, bits unchanged.
    small = build(lib.graph, Target("accel-int8", scratchpad_kb=2), method="lru")
    assert np.array_equal(small.run([x2])[0], qcc.interpret(lib.graph, [x2])[0])
    assert small.info["sim"]["spm_peak"] <= 2048
    assert any(k.startswith("softmax") for k in small.info["tiles"])
    assert any(k.startswith("layer_norm") for k in small.info["tiles"])


def test_digits_cnn_int4_packed_weights_bit_exact(data):
    calib, x, x2 = data
    lib = qcc.compile(digits_cnn(), "accel-int4", example_inputs=(x,), calibration=calib, progress=False,
                      schedule="belady", scratchpad_kb=64)
    for inp in (x, x2):
        assert np.array_equal(lib(inp), qcc.interpret(lib.graph, [inp])[0])
    weights = [n.inputs[1] for n in lib.graph.nodes if n.op in ("qconv2d", "qlinear")]
    assert weights and all(w.type.dtype in ("i4", "u4") for w in weights)
    text = lib._exe.disassemble()
    assert "wdt=i4x2" in text and "wdt=i4 " not in text
    # Every weight tensor is stored (and DMA'd) in ceil(K / 2) bytes per output channel.
    unpacked = sum(int(np.prod(w.type.shape)) for w in weights)
    packed = sum(packed_bytes(tuple(w.type.shape), "i4x2") for w in weights)
    assert packed <= unpacked // 2 + len(weights) * max(w.type.shape[0] for w in weights)
    loads = sum(i["n2"] * i["n1"] * i["n0"] for i in lib._exe.program.code if i.op == "load")
    assert loads == lib._exe.info["sim"]["dram_read"]
    assert len(lib._exe.program.weights) < unpacked  # the weights image holds the packed bytes
    assert f"{unpacked - packed} B less DRAM and DMA" in lib.report()
