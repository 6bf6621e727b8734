"""cpu-mixed through qcc.compile: the library is integer-only, within budget and bit-exact with the interpreter;
report, infeasible budgets, option errors, pareto and plot_bits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import qcc
from qcc.errors import InfeasibleBudgetError, OptionError

torch = pytest.importorskip("torch")
pytest.importorskip("ortools")
from tests.zoo import digits_cnn, digits_data  # noqa: E402

pytestmark = [pytest.mark.torch]


@pytest.fixture(scope="module")
def setup():
    xtr, _, xte, _ = digits_data()
    return digits_cnn().eval(), [xtr[i:i + 8] for i in range(0, 64, 8)], xte[:32]


@pytest.mark.tvm
def test_mixed_library_is_bit_exact_and_within_budget(setup, tmp_path):
    model, calib, xte = setup
    budget = qcc.Budget(size_mb=0.005)
    lib = qcc.compile(model, "cpu-mixed", example_inputs=(xte[:8],), calibration=calib, budget=budget,
                      progress=False)
    text = lib.report()
    assert "integer-only: yes" in text and "mixed precision (allocate-bits)" in text
    assert "budget size_bytes: used" in text and "(pinned)" in text
    report = lib.quant_report
    assert report.total_bytes <= 5000 and set(report.allocation.bits.values()) == {4, 8}
    for i in range(0, len(xte), 8):
        np.testing.assert_array_equal(lib(xte[i:i + 8]), qcc.interpret(lib.graph, [xte[i:i + 8]])[0])
    qcc.plot_bits(lib, str(tmp_path / "bits.png"))
    assert (tmp_path / "bits.png").stat().st_size > 1000


def test_infeasible_and_bad_options(setup):
    model, calib, xte = setup
    with pytest.raises(InfeasibleBudgetError, match="smallest achievable") as e:
        qcc.compile(model, "cpu-mixed", example_inputs=(xte[:8],), calibration=calib,
                    budget=qcc.Budget(size_mb=0.001), progress=False)
    assert 3000 < e.value.minimum["size_bytes"] < 6000
    with pytest.raises(OptionError, match="budget"):
        qcc.compile(model, "cpu-mixed", example_inputs=(xte[:8],), calibration=calib, progress=False)
    with pytest.raises(OptionError, match="integer targets"):  # a budget on a float target
        qcc.compile(model, "cpu-fp32", example_inputs=(xte[:8],), budget=qcc.Budget(size_mb=1.0))
    with pytest.raises(OptionError, match="need a budget"):  # allocation options on an integer target, no budget
        qcc.compile(model, "cpu-int8", example_inputs=(xte[:8],), calibration=calib, candidate_bits=(4, 8))


@pytest.mark.tvm
def test_budget_on_a_uniform_integer_target_allocates_bits(setup):
    """cpu-int4 + Budget(size_ratio=...) runs the same allocation as cpu-mixed (issue 6's `cuda-int4` example)."""
    model, calib, xte = setup
    lib = qcc.compile(model, "cpu-int4", example_inputs=(xte[:8],), calibration=calib,
                      budget=qcc.Budget(size_ratio=0.25), progress=False)
    report = lib.quant_report
    text = lib.report()
    assert "integer-only: yes" in text and "mixed precision (allocate-bits)" in text and "budget size_bytes" in text
    assert report.integer_only and set(report.allocation.bits.values()) == {4, 8}
    limit = report.allocation.limits["size_bytes"]
    assert limit == pytest.approx(0.25 * report.float_total_bytes)
    assert report.total_bytes <= limit and report.allocation.allocation.used["size_bytes"] == report.total_bytes
    assert set(lib.graph.op_counts()) >= {"qconv2d", "qlinear"}
    for i in range(0, len(xte), 8):
        np.testing.assert_array_equal(lib(xte[i:i + 8]), qcc.interpret(lib.graph, [xte[i:i + 8]])[0])


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_int4_with_a_budget_compiles_and_exports(setup, tmp_path):
    model, calib, xte = setup
    lib = qcc.compile(model, "cuda-int4", example_inputs=(xte[:8],), calibration=calib,
                      budget=qcc.Budget(size_ratio=0.25), progress=False)
    text = lib.report()
    assert "integer-only: yes" in text and "TIR no-float check: passed" in text and "(allocate-bits)" in text
    assert set(lib.quant_report.allocation.bits.values()) == {4, 8}
    assert lib.quant_report.total_bytes <= 0.25 * lib.quant_report.float_total_bytes
    lib.export_library(tmp_path / "q.so")
    lib2 = qcc.load(tmp_path / "q.so")
    assert lib2.target.name == "cuda-int4" and "mixed precision (allocate-bits)" in lib2.report()
    from qcc.backends.tvm.executable import cuda_available

    if cuda_available():  # on a GPU machine the library must also agree with the interpreter bit for bit
        np.testing.assert_array_equal(lib2(xte[:8]), qcc.interpret(lib.graph, [xte[:8]])[0])


def test_pareto_rows_and_plot(setup, tmp_path):
    model, calib, xte = setup
    budgets = [qcc.Budget(size_mb=v) for v in (0.001, 0.0047, 0.0052, 0.0070)]
    rows = qcc.pareto(model, (xte[:8],), calib, budgets)
    assert rows[0].status.startswith("infeasible")
    feasible = rows[1:]
    assert all(r.status == "OPTIMAL" and r.size_bytes <= b.size_mb * 1e6 for r, b in zip(feasible, budgets[1:]))
    predicted = [r.predicted_sqnr_db for r in feasible]
    assert predicted == sorted(predicted)  # a looser budget never predicts worse
    assert all(np.isfinite(r.measured_sqnr_db) and r.measured_sqnr_db > 5 for r in feasible)
    assert feasible[-1].bits and set(feasible[-1].bits.values()) == {8}
    qcc.plot_bits(rows, str(tmp_path / "front.png"))
    assert (tmp_path / "front.png").stat().st_size > 1000
