"""Integer targets end to end: qcc.compile(..., "cpu-int8"/"cpu-int4", calibration=...) builds an integer-only
library whose output equals the reference interpreter's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.errors import CalibrationError, OptionError

torch = pytest.importorskip("torch")
from tests.zoo import accuracy, digits_data, train_digits_cnn  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tvm]


@pytest.fixture(scope="module")
def digits():
    xtr, _, xte, yte = digits_data()
    return train_digits_cnn(), xtr, xte[:64], yte[:64]


@pytest.mark.parametrize("target", ["cpu-int8", "cpu-int4"])
def test_integer_library_is_bit_exact_with_the_interpreter(digits, target, tmp_path):
    model, xtr, xte, yte = digits
    batch = xte[:8]
    calib = [xtr[i:i + 8] for i in range(0, 160, 8)]
    lib = qcc.compile(model, target, example_inputs=(batch,), calibration=calib, progress=False)
    assert "integer-only: yes" in lib.report()
    outs = [lib(xte[i:i + 8]) for i in range(0, len(xte), 8)]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, qcc.interpret(lib.graph, [xte[i * 8:i * 8 + 8]])[0])
    with torch.no_grad():
        float_acc = accuracy(model(torch.from_numpy(xte)), yte)
    assert accuracy(np.concatenate(outs), yte) >= float_acc - (0.02 if target == "cpu-int8" else 0.05)
    path = tmp_path / "q.so"
    lib.export_library(path)
    lib2 = qcc.load(path)
    np.testing.assert_array_equal(lib2(batch), lib(batch))
    assert "integer-only: yes" in lib2.report()


def test_no_calibration_is_weight_only_and_says_so(digits):
    model, _, xte, _ = digits
    lib = qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],))
    assert "weight-only" in lib.report()
    with torch.no_grad():
        expected = model(torch.from_numpy(xte[:8])).numpy()
    np.testing.assert_allclose(lib(xte[:8]), expected, atol=0.2 * float(np.abs(expected).max()))


def test_bad_calibration_and_options(digits):
    model, xtr, xte, _ = digits
    with pytest.raises(CalibrationError):
        qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],), calibration=[], progress=False)
    bad = xtr[:8].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError):
        qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],), calibration=[bad], progress=False)
    with pytest.raises(CalibrationError):
        qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],), calibration=[xtr[:8, :, :4]], progress=False)
    with pytest.raises(OptionError):
        qcc.compile(model, "cpu-fp32", example_inputs=(xte[:8],), calibration=[xtr[:8]])
    with pytest.raises(OptionError):
        qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],), calibration=[xtr[:8]], nonlinear="exact")
