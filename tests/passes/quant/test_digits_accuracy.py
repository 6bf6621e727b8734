"""Issue 4's accuracy criteria at the IR level (reference interpreter): a digits CNN (conv/BN/residual/depthwise)
and a ViT-style encoder (LayerNorm, softmax attention, GELU) trained in seconds, then quantized with the cpu-int8
settings: integer-only top-1 within 1 point of FP32 for both, W4A8 within 3 points for the CNN."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from qcc.passes.quant import quantize_graph  # noqa: E402
from tests import zoo  # noqa: E402
from tests.digits_graphs import BATCH, accuracy, float_graph  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]



@pytest.fixture(scope="module")
def digits():
    return zoo.digits_data()


def _calibration(xtr):
    return [xtr[i:i + BATCH].copy() for i in range(0, 500, BATCH)]  # 500 training digits


def test_digits_cnn_int8_and_int4(digits):
    xtr, _, xte, yte = digits
    model = zoo.train_digits_cnn()
    with torch.no_grad():
        fp32 = zoo.accuracy(model(torch.from_numpy(xte)), yte)
    g = float_graph(model)
    assert accuracy(g, xte, yte) == pytest.approx(fp32, abs=1e-9)
    q8, r8 = quantize_graph(g, calibration=_calibration(xtr), progress=False)
    q4, r4 = quantize_graph(g, bits=4, calibration=_calibration(xtr), progress=False)
    acc8, acc4 = accuracy(q8, xte, yte), accuracy(q4, xte, yte)
    print(f"\ndigits CNN: fp32 {fp32:.4f}  int8 (integer-only) {acc8:.4f}  W4A8 (integer-only) {acc4:.4f}")
    print(r8.text())
    assert r8.integer_only and r4.integer_only
    assert {"qconv2d", "qadd", "qmean", "qlinear", "requantize"} <= set(q8.op_counts())
    assert acc8 >= fp32 - 0.01
    assert acc4 >= fp32 - 0.03


@pytest.mark.parametrize("nonlinear,points", [("ibert", 0.01), ("ivit", 0.03)])
def test_digits_vit_int8(digits, nonlinear, points):
    xtr, _, xte, yte = digits
    model = _vit()
    with torch.no_grad():
        fp32 = zoo.accuracy(model(torch.from_numpy(xte)), yte)
    g = float_graph(model)
    q8, r8 = quantize_graph(g, calibration=_calibration(xtr), progress=False, nonlinear=nonlinear)
    acc8 = accuracy(q8, xte, yte)
    print(f"\ndigits ViT: fp32 {fp32:.4f}  int8 integer-only ({nonlinear}) {acc8:.4f}")
    assert r8.integer_only, r8.text()
    ops = set(q8.op_counts())
    assert {"ilayer_norm", "qmatmul", "qlinear"} <= ops
    assert ({"isoftmax", "igelu"} if nonlinear == "ibert" else {"shiftmax", "shiftgelu"}) <= ops
    assert acc8 >= fp32 - points


_VIT: list = []


def _vit():
    if not _VIT:  # trained once for both parametrizations
        _VIT.append(zoo.train_digits_vit())
    return _VIT[0]
