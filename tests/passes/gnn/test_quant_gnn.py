"""Quantized GNNs (issue #8): the qgnn op references, gnn-quant-prep's rewrites, and GCN / GAT / EdgeConv quantized
integer-only by the GNN rules (interpreter only; TVM builds are in tests/e2e/test_gnn_int8.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import qcc
from qcc.ir.graph import GraphBuilder
from qcc.ir.ops import evaluate
from qcc.ir.ops.qgnn import isqrt_fixed
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes.quant import check_integer_only, quantize_graph
from qcc.passes.quant.quantize import Quantize
from qcc.pipeline import pipeline_for
from qcc.target import Target

RNG = np.random.default_rng(3)


def test_isqrt_fixed_is_the_exact_floor_square_root() -> None:
    n = np.concatenate([np.arange(0, 5000), RNG.integers(0, 2**31, 20000), [2**31 - 1, 2**30, 2**30 - 1]])
    np.testing.assert_array_equal(isqrt_fixed(n), [math.isqrt(int(v)) for v in n])


def test_irsqrt_is_one_over_sqrt_at_two_to_minus_bits() -> None:
    d = np.array([0, 1, 2, 3, 4, 9, 100, 12345, 2**30, 2**30 + 1], np.int32)
    got = evaluate("irsqrt", [d], {"bits": 15})[0]
    assert got.dtype == np.int32
    want = 2.0**15 / np.sqrt(np.maximum(d, 1))
    assert np.all(np.abs(got - want) <= 1.0)
    assert got[-1] == 0  # d > 4^bits: floor(4^bits / d) = 0


def test_qsegment_softmax_matches_the_float_segment_softmax() -> None:
    n, e = 7, 60
    index = RNG.integers(0, n - 1, e)  # the last vertex has no edge
    s = RNG.standard_normal((e, 3)).astype(np.float32) * 2
    scale = float(np.abs(s).max()) / 32767
    q = np.rint(s / scale).astype(np.int16)
    nl = dict(ln2=round(math.log(2) / scale), b=round(1.353 / scale), c=round(0.344 / (0.3585 * scale * scale)), n=30)
    nl["k"] = max(0, 22 - int(nl["b"] ** 2 + nl["c"]).bit_length())
    got = evaluate("qsegment_softmax", [q, index], {"num_segments": n, **nl})[0]
    want = evaluate("segment_softmax", [s, index], {"num_segments": n})[0]
    assert got.dtype == np.uint8
    assert np.abs(got / 256.0 - want).max() < 0.01
    for v in range(n - 1):  # each segment's probabilities sum to 1 per column
        np.testing.assert_allclose(want[index == v].sum(0), 1.0, rtol=1e-5)


def test_quant_ops_check_their_inputs() -> None:
    b = GraphBuilder()
    x = b.input((4, 2), "f32", "x")
    i = b.input((4,), "i64", "i")
    with pytest.raises(qcc.errors.VerificationError):
        b.emit("qsegment_softmax", [x, i], {"num_segments": 3, "ln2": 1, "b": 1, "c": 1})
    with pytest.raises(qcc.errors.VerificationError):
        b.emit("segment_softmax", [x, b.input((5,), "i64", "j")], {"num_segments": 3})
    with pytest.raises(qcc.errors.VerificationError):
        b.emit("irsqrt", [i], {"bits": 20})


torch = pytest.importorskip("torch")
from tests import zoo  # noqa: E402

MODELS = {"gcn": zoo.gcn_tiny, "gat2": zoo.gat_tiny, "gat1": lambda: zoo.gat_tiny(1), "edgeconv": zoo.edgeconv_tiny}


def _optimized(name: str):
    from qcc.frontends import import_model

    model = MODELS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = import_model(model, zoo.tiny_graph())
    target = Target("cpu-int8")
    ctx = PassContext(target=target)
    return model, run_passes(graph, pipeline_for(target, ctx), ctx), ctx


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:index_reduce():UserWarning")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gnns_quantize_integer_only_and_close_to_float(name: str) -> None:
    model, graph, ctx = _optimized(name)
    stats = ctx.stats["gnn-quant-prep"]
    if name == "gcn":
        assert stats["degree"] == 2
    if name.startswith("gat"):
        assert stats["segment_softmax"] == 2 and stats["score_linear"] == 4
    assert not any(n.op in ("exp", "div", "reduce_sum") for n in graph.nodes)
    calib = [tuple(t.numpy() for t in zoo.tiny_graph(seed)) for seed in range(1, 4)]
    q, report = quantize_graph(graph, calibration=calib, ctx=ctx, progress=False)
    assert check_integer_only(q).ok and report.integer_only, check_integer_only(q).text()
    ops = q.op_counts()
    if name.startswith("gat"):
        assert ops["qsegment_softmax"] == 2
    if name == "gcn":
        assert ops["irsqrt"] == 2
    sqnr, agree = [], []
    for seed in (0, 7):
        feeds = [t.numpy() for t in zoo.tiny_graph(seed)]
        got = qcc.interpret(q, feeds)[0]
        with torch.no_grad():
            want = model(*(torch.from_numpy(a) for a in feeds)).numpy()
        sqnr.append(10 * np.log10((want**2).sum() / ((want - got) ** 2).sum()))
        agree.append((want.argmax(1) == got.argmax(1)).mean())
    assert min(sqnr) > 18.0 and min(agree) >= 0.9, (sqnr, agree)


@pytest.mark.torch
def test_prep_rewrites_keep_the_float_semantics() -> None:
    for name in ("gcn", "gat2"):
        model, graph, _ = _optimized(name)
        feeds = [t.numpy() for t in zoo.tiny_graph(5)]
        with torch.no_grad():
            want = model(*(torch.from_numpy(a) for a in feeds)).numpy()
        np.testing.assert_allclose(qcc.interpret(graph, feeds)[0], want, rtol=1e-4, atol=1e-5)


def test_gnn_kinds_stay_off_for_graphs_without_graph_operators() -> None:
    """A product of two activations and a tanh stay float outside message-passing graphs (as before)."""
    b = GraphBuilder()
    x = b.input((4, 8), "f32", "x")
    y = b.emit("mul", [b.emit("tanh", [x]), x])
    g = b.output(y)
    ctx = PassContext(options={"calibration": [(RNG.standard_normal((4, 8)).astype(np.float32),)]})
    out = run_passes(g, [Quantize()], ctx)
    assert out.op_counts().get("quantize", 0) == 0


def _quantized(name: str, gnn_fuse: str):
    from qcc.frontends import import_model
    from qcc.pipeline import optimize

    model = MODELS[name]()
    calib = [tuple(t.numpy() for t in zoo.tiny_graph(seed)) for seed in range(1, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = import_model(model, zoo.tiny_graph())
    target = Target("cpu-int8")
    ctx = PassContext(target=target, options={"calibration": calib, "progress": False, "gnn_fuse": gnn_fuse,
                                              "calibration_runner": "interpreter"})
    return optimize(graph, target, ctx), ctx


@pytest.mark.torch
def test_integer_gcn_sums_fuse_into_gather_aggregate_bit_exactly() -> None:
    fused, ctx = _quantized("gcn", "auto")
    unfused, _ = _quantized("gcn", "off")
    ops = fused.op_counts()
    assert ctx.stats["gnn-integer-fuse"]["cast_moved"] == 2
    assert ops["gather_aggregate"] == 4 and "index_add" not in ops and ops["segment_csr"] == 1
    assert check_integer_only(fused).ok
    aggs = [n for n in fused.nodes if n.op == "gather_aggregate"]
    assert all("edge" not in n.attrs["kinds"] for n in aggs)  # no |E|-row operand: nothing edge-sized is written
    assert "gather_aggregate" not in unfused.op_counts()
    for seed in (0, 9):
        feeds = [t.numpy() for t in zoo.tiny_graph(seed)]
        np.testing.assert_array_equal(qcc.interpret(fused, feeds)[0], qcc.interpret(unfused, feeds)[0])


@pytest.mark.torch
def test_gat_scores_of_one_input_become_one_linear_and_move_less() -> None:
    from qcc.frontends import import_model
    from qcc.passes.gnn.analysis import analyze
    from qcc.pipeline import optimize

    model = zoo.gat_tiny(2)
    graph = import_model(model, zoo.tiny_graph())
    target = Target("cpu-fp32")
    ctx = PassContext(target=target)
    out = optimize(graph, target, ctx)
    stats = ctx.stats["gnn-score-linear"]
    assert stats["scores"] == 4 and stats["linears"] == 2
    assert "reduce_sum" not in out.op_counts() and out.op_counts()["split"] == 2
    feeds = [t.numpy() for t in zoo.tiny_graph(4)]
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in feeds)).numpy()
    np.testing.assert_allclose(qcc.interpret(out, feeds)[0], want, rtol=1e-4, atol=1e-5)
    from qcc.passes import get_pass
    from qcc.passes.gnn.quant_prep import GnnScoreLinear

    reorganized = optimize(graph, target, PassContext(target=target, options={"gnn_fuse": "off"}))
    plain = run_passes(reorganized, [get_pass("gnn-fuse")], PassContext())
    merged = run_passes(reorganized, [GnnScoreLinear(), get_pass("gnn-fuse")], PassContext())
    assert analyze(merged).bytes_moved < analyze(plain).bytes_moved
