"""Issue 6's accuracy criterion on the digits CNN and the ViT-style encoder (reference interpreter): a size budget
halfway between uniform W4A8 and W8A8 gives a model within budget, at least as accurate as W4A8 and within 1.5
points of W8A8."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ortools")

from qcc.passes.mixed import AllocationProblem, mixed_quantize_graph, tie_constraints  # noqa: E402
from qcc.passes.quant import quantize_graph  # noqa: E402
from tests import zoo  # noqa: E402
from tests.digits_graphs import BATCH, accuracy, float_graph  # noqa: E402

pytestmark = [pytest.mark.torch]


def test_sensitivity_and_ties_on_the_untrained_cnn():
    xtr, _, _, _ = zoo.digits_data()
    g = float_graph(zoo.digits_cnn().eval())
    ties = tie_constraints(g)
    assert ("convolution", "convolution_2") in ties  # both inputs of the residual add
    problem = AllocationProblem.build(g, [xtr[:BATCH]], (4, 8))
    sens = problem.sensitivity
    assert [layer.name for layer in sens.layers][0] == "convolution" and sens.layers[-1].op == "linear"
    for i in range(len(sens.layers)):
        assert sens.nsr[i][4] > sens.nsr[i][8] > 0  # 4-bit weights are noisier than 8-bit ones
    assert problem.pins == {"convolution": 8, "linear": 8}


def _trained(train):
    # One torch thread: the training is then fast on a shared machine and its result does not depend on the
    # thread count (float reductions split differently across threads give a slightly different model).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name,train", [("digits CNN", zoo.train_digits_cnn), ("digits ViT", zoo.train_digits_vit)])
def test_half_budget_accuracy_between_int4_and_int8(name, train):
    xtr, _, xte, yte = zoo.digits_data()
    g = float_graph(_trained(train))
    calib = [xtr[i:i + BATCH].copy() for i in range(0, 500, BATCH)]
    q8, r8 = quantize_graph(g, calibration=calib, progress=False)
    q4, r4 = quantize_graph(g, bits=4, calibration=calib, progress=False)
    half = (r8.total_bytes + r4.total_bytes) / 2
    qm, rm = mixed_quantize_graph(g, budget={"size_mb": half / 1e6}, calibration=calib, progress=False)
    acc8, acc4, accm = accuracy(q8, xte, yte), accuracy(q4, xte, yte), accuracy(qm, xte, yte)
    print(f"\n{name}: W8A8 {acc8:.4f} ({r8.total_bytes} B)  W4A8 {acc4:.4f} ({r4.total_bytes} B)  "
          f"mixed {accm:.4f} ({rm.total_bytes} B, budget {half:.0f} B)\n{rm.text()}")
    assert rm.integer_only
    assert rm.total_bytes <= half
    assert rm.allocation is not None and rm.allocation.allocation.used["size_bytes"] == rm.total_bytes
    assert set(rm.allocation.bits.values()) == {4, 8}
    assert accm >= acc4
    assert accm >= acc8 - 0.015
