"""Quantized GNNs end to end (issue #8): GAT (multi-head) and EdgeConv compile for cpu-int8 with calibration into
integer-only libraries (IR and TIR no-float checks), bit-exact with the interpreter and close to the float model
(the GCN is checked in tests/e2e/test_gnn.py); EdgeConv's integer message passing runs fused (gather_aggregate
with the qadd edge op); the qgnn kernels alone match their references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qcc
from qcc.ir.graph import GraphBuilder
from qcc.target import Target

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
from tests import zoo  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.torch, pytest.mark.filterwarnings("ignore:index_reduce():UserWarning")]


def check_int8_gnn(model, min_sqnr: float = 18.0) -> qcc.api.Library:
    """Compile `model` for cpu-int8 on the tiny graph and check integer-only, bit-exactness and accuracy."""
    calib = [tuple(t.numpy() for t in zoo.tiny_graph(seed)) for seed in range(1, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = qcc.compile(model, Target("cpu-int8", num_threads=2), example_inputs=zoo.tiny_graph(),
                          calibration=calib, progress=False, quiet=True)
    report = lib.report()
    assert "integer-only" in report and "not integer-only" not in report
    assert lib.tir_check is not None and lib.tir_check.ok, lib.tir_check
    for seed in (0, 7):
        feeds = [t.numpy() for t in zoo.tiny_graph(seed)]
        out = lib(*feeds)
        np.testing.assert_array_equal(out, qcc.interpret(lib.graph, feeds)[0])
        with torch.no_grad():
            want = model(*(torch.from_numpy(a) for a in feeds)).numpy()
        sqnr = 10 * np.log10((want**2).sum() / ((want - out) ** 2).sum())
        assert sqnr > min_sqnr and (want.argmax(1) == out.argmax(1)).mean() >= 0.9, sqnr
    return lib


@pytest.mark.slow
def test_int8_gat_and_edgeconv_are_integer_only_and_bit_exact() -> None:
    lib = check_int8_gnn(zoo.gat_tiny(2))
    assert lib.graph.op_counts()["qsegment_softmax"] == 2
    lib = check_int8_gnn(zoo.edgeconv_tiny())
    # the integer max of qadd(A[src], B[dst]) runs as gather_aggregate kernels: no edge tensor, no index_reduce
    ops = lib.graph.op_counts()
    assert ops["gather_aggregate"] == 2 and "index_reduce" not in ops and "qadd" not in ops


def test_qgnn_kernels_match_the_references() -> None:
    from qcc.backends.tvm import build

    n, e = 6, 30
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    sq = b.input((e, 2), "i16", "sq")
    sf = b.input((e, 2), "f32", "sf")
    idx = b.input((e,), "i64", "idx")
    deg = b.input((n,), "i32", "deg")
    outs = [b.emit("qsegment_softmax", [sq, idx], {"num_segments": n, "ln2": 700, "b": 1320, "c": 2500000,
                                                    "k": 0}),
            b.emit("segment_softmax", [sf, idx], {"num_segments": n}),
            b.emit("irsqrt", [deg], {"bits": 15})]
    g = b.output(*outs)
    feeds = [rng.integers(-20000, 20000, (e, 2)).astype(np.int16), rng.standard_normal((e, 2)).astype(np.float32),
             rng.integers(-1, n - 1, e).astype(np.int64), np.array([0, 1, 2, 7, 1000, 2**30 + 5], np.int32)]
    got = build(g, Target("cpu-fp32", num_threads=2)).run(feeds)
    want = qcc.interpret(g, feeds)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])
