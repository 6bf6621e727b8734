"""cuda-int8 / cuda-int4 builds of the digits CNN compile to PTX with nvcc and export here, without a GPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import qcc
from qcc.errors import BackendError

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")
from tests.zoo import digits_cnn, digits_data  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tvm, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")]


@pytest.mark.parametrize("target", ["cuda-int8", "cuda-int4"])
def test_cuda_integer_build_compiles_and_exports(target, tmp_path):
    xtr, _, xte, _ = digits_data()
    lib = qcc.compile(digits_cnn(), target, example_inputs=(xte[:8],), calibration=[xtr[:16], xtr[16:32]],
                      progress=False)
    report = lib.report()
    assert "integer-only: yes" in report and "TIR no-float check: passed" in report
    path = tmp_path / "q.so"
    lib.export_library(path)
    assert path.stat().st_size > 0
    meta = json.loads((tmp_path / "q.so.json").read_text())
    assert "cuda" in json.dumps(meta)
    lib2 = qcc.load(path)
    assert lib2.target.name == target and "TIR no-float check: passed" in lib2.report()
    from qcc.backends.tvm.executable import cuda_available

    if cuda_available():  # on a GPU machine the library must also agree with the interpreter bit for bit
        np.testing.assert_array_equal(lib2(xte[:8]), qcc.interpret(lib.graph, [xte[:8]])[0])
    else:
        with pytest.raises(BackendError):
            lib2(xte[:8])
