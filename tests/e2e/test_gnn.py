"""GNNs end to end (issue #8): GCN, GAT (single and multi-head) and EdgeConv written with index_select /
index_add / index_reduce, and a GAT exported to ONNX (Gather / ScatterElements), are reorganised by gnn-reorganize
(golden IR), still match PyTorch, and build with TVM; a cpu-int8 GCN is integer-only and bit-exact with the
interpreter (GAT and EdgeConv: tests/e2e/test_gnn_int8.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qcc
from qcc.frontends import import_model
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.passes import get_pass
from qcc.passes.gnn import EdgeGather, SegmentReduce, SegmentSoftmax, find_graph_ops
from qcc.passes.gnn.analysis import analyze

torch = pytest.importorskip("torch")
from tests import zoo  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:index_reduce():UserWarning")]

E = 200  # edges of zoo.tiny_graph (50 vertices)
MODELS = {
    "gcn": zoo.gcn_tiny,
    "gat2": zoo.gat_tiny,
    "edgeconv": zoo.edgeconv_tiny,
    "onnx_gat": lambda: zoo.scatter_gat_tiny(heads=2),
}
# The rules that must fire on each model.
RULES = {
    "gcn": {"regroup", "postscale_segment_sum", "push_shape_through_binary"},
    "gat2": {"split_concat_score", "move_binary_const", "move_unary"},
    "edgeconv": {"distribute_linear", "move_linear", "regroup", "merge_linear"},
    "onnx_gat": {"split_concat_score", "move_binary_const", "move_unary"},
}
CLEANUP = ("constant-folding", "canonicalize", "dead-code-elimination")


@pytest.fixture(scope="module")
def graph_inputs():
    return zoo.tiny_graph()


def _export_onnx(model, args, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=["x", "src", "dst"], dynamo=True,
                          external_data=False, verbose=False)
    return str(path)


@pytest.fixture(scope="module")
def onnx_gat(tmp_path_factory, graph_inputs):
    pytest.importorskip("onnx")
    return _export_onnx(MODELS["onnx_gat"](), graph_inputs, tmp_path_factory.mktemp("gnn") / "gat.onnx")


def _source(name, graph_inputs, onnx_gat):
    model = MODELS[name]()
    return (onnx_gat if name == "onnx_gat" else model), model


def _reorganize(source, args) -> tuple[Graph, Graph, PassContext]:
    graph = import_model(source, args if not isinstance(source, str) else None)
    ctx = PassContext()
    before = run_passes(graph, [get_pass(p) for p in ("constant-folding", "canonicalize")], ctx)
    after = run_passes(before, [get_pass("gnn-reorganize"), *(get_pass(p) for p in CLEANUP)], ctx)
    return before, after, ctx


def _edge_dense_ops(graph: Graph) -> list[str]:
    """Dense neural ops (GEMMs, concats, reductions over features, layer norms) applied to edge rows."""
    dense = ("linear", "matmul", "concat", "reduce_sum", "reduce_mean", "layer_norm", "softmax")
    return [n.op for n in graph.nodes if n.op in dense and any(v.shape[:1] == (E,) for v in n.inputs)]


def _edge_ops(graph: Graph) -> int:
    """Nodes computing on edge rows (gathers and views aside)."""
    return sum(1 for n in graph.nodes if n.op not in ("gather", "reshape", "unsqueeze", "squeeze")
               and any(v.shape[:1] == (E,) for v in n.outputs))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reorganization_fires_and_matches_pytorch(name, graph_inputs, onnx_gat):
    source, model = _source(name, graph_inputs, onnx_gat)
    before, after, ctx = _reorganize(source, graph_inputs)
    assert RULES[name] <= set(ctx.stats["gnn-reorganize"]), ctx.stats["gnn-reorganize"]
    assert not _edge_dense_ops(after) and (_edge_dense_ops(before) or name == "gcn")  # GCN's GEMM is per vertex
    assert _edge_ops(after) < _edge_ops(before)
    _matches_pytorch(model, after, graph_inputs)
    cost_before, cost_after = analyze(before), analyze(after)
    assert cost_after.flops < cost_before.flops and cost_after.edge_bytes < cost_before.edge_bytes
    assert cost_after.peak_bytes <= cost_before.peak_bytes


    _check_graph_ops(name, after)


def _check_graph_ops(name: str, after: Graph) -> None:
    """The recognisers find the gathers, segment reductions and (GAT) segment softmaxes of the model."""
    ops = find_graph_ops(after)
    gathers = [o for o in ops if isinstance(o, EdgeGather)]
    reduces = [o for o in ops if isinstance(o, SegmentReduce)]
    softmaxes = [o for o in ops if isinstance(o, SegmentSoftmax)]
    assert gathers and all(g.out.shape[0] == E for g in gathers)
    assert all(r.num_segments == 50 and r.src.shape[0] == E for r in reduces)
    assert len(softmaxes) == (2 if "gat" in name else 0)  # one per GAT layer, at the final divide
    want = {"gcn": {"sum"}, "edgeconv": {"max"}}.get(name, {"sum", "max"} if name == "onnx_gat" else {"sum"})
    assert {r.reduce for r in reduces} == want


def _matches_pytorch(model, graph: Graph, graph_inputs) -> None:
    with torch.no_grad():
        expected = model(*graph_inputs).numpy()
    got = qcc.interpret(graph, [a.numpy() for a in graph_inputs])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _body(graph: Graph) -> str:
    return "\n".join(ln.strip() for ln in print_graph(graph).splitlines()[1:-1] if " = param " not in ln)


def test_golden_ir_of_one_single_head_gat_layer(graph_inputs):
    """a·[Wh_dst ‖ Wh_src] became (a_l·Wh)[dst] + (a_r·Wh)[src]: the score GEMV runs on the 50 vertices (the
    multi-head GAT is checked above)."""
    torch.manual_seed(0)
    layer = zoo.GATConv(16, 4, heads=1).eval()
    _, after, _ = _reorganize(layer, graph_inputs)
    _matches_pytorch(layer, after, graph_inputs)
    assert _body(after) == """\
%0 = linear(%x, %"lin.weight") : f32[50,4]  // linear
%1 = reshape(%0) {shape=(50, 1, 4)} : f32[50,1,4]  // view
%2 = gather(%1, %src) {axis=0} : f32[200,1,4]  // index_select
%3 = mul(%1, %"sum_1.const0") : f32[50,1,4]  // sum_1
%4 = reduce_sum(%3) {axes=(2,), keepdims=False} : f32[50,1]  // sum_1
%5 = gather(%4, %dst) {axis=0} : f32[200,1]  // sum_1
%6 = mul(%1, %"sum_1.const1") : f32[50,1,4]  // sum_1
%7 = reduce_sum(%6) {axes=(2,), keepdims=False} : f32[50,1]  // sum_1
%8 = gather(%7, %src) {axis=0} : f32[200,1]  // sum_1
%9 = add(%5, %8) : f32[200,1]  // sum_1
%10 = leaky_relu(%9) {alpha=0.2} : f32[200,1]  // leaky_relu
%11 = exp(%10) : f32[200,1]  // exp
%12 = index_add(%full, %dst, %11) {axis=0} : f32[50,1]  // index_add
%13 = gather(%12, %dst) {axis=0} : f32[200,1]  // index_select_2
%14 = div(%11, %13) : f32[200,1]  // div
%15 = unsqueeze(%14) {axes=(2,)} : f32[200,1,1]  // unsqueeze
%16 = mul(%2, %15) : f32[200,1,4]  // mul_1
%17 = index_add(%full_1, %dst, %16) {axis=0} : f32[50,1,4]  // index_add_1
%18 = reshape(%17) {shape=(50, 4)} : f32[50,4]  // view_1
%19 = add(%18, %bias) : f32[50,4]  // add
return %19"""


def test_golden_ir_of_one_edgeconv_layer(graph_inputs):
    """Θ(x_j − x_i) + Φx_i became (Θx + b)[src] + ((Φ − Θ)x)[dst]: two GEMMs over vertices, as in dgNN."""
    torch.manual_seed(0)
    layer = zoo.EdgeConv(16, 8).eval()
    _, after, _ = _reorganize(layer, graph_inputs)
    _matches_pytorch(layer, after, graph_inputs)
    assert _body(after) == """\
%0 = linear(%x, %"theta.weight", %"theta.bias") : f32[50,8]  // linear
%1 = gather(%0, %src) {axis=0} : f32[200,8]  // add
%2 = linear(%x, %"add.const0") : f32[50,8]  // add
%3 = gather(%2, %dst) {axis=0} : f32[200,8]  // add
%4 = add(%1, %3) : f32[200,8]  // add
%5 = index_reduce(%full, %dst, %4) {axis=0, include_self=False, reduce="amax"} : f32[50,8]  // index_reduce
return %5"""


def test_golden_ir_of_one_gcn_layer(graph_inputs):
    """h[src]·d_src^-½·d_dst^-½ summed onto dst became d^-½ · segment_sum((h·d^-½)[src]): a plain SpMM."""
    torch.manual_seed(0)
    layer = zoo.GCNConv(16, 8).eval()
    _, after, _ = _reorganize(layer, graph_inputs)
    _matches_pytorch(layer, after, graph_inputs)
    body = _body(after)
    assert body == """\
%0 = index_add(%full, %dst, %full_1) {axis=0} : f32[50]  // index_add
%1 = rsqrt(%0) : f32[50]  // rsqrt
%2 = linear(%x, %"lin.weight") : f32[50,8]  // linear
%3 = unsqueeze(%1) {axes=(1,)} : f32[50,1]  // unsqueeze
%4 = mul(%2, %3) : f32[50,8]  // mul_1
%5 = gather(%4, %src) {axis=0} : f32[200,8]  // mul_1
%6 = mul(%1, %1) : f32[50]  // mul_2
%7 = unsqueeze(%6) {axes=(1,)} : f32[50,1]  // unsqueeze_1
%8 = mul(%2, %7) : f32[50,8]  // mul_3
%9 = index_add(%"index_add_1.const0", %dst, %5) {axis=0} : f32[50,8]  // index_add_1
%10 = mul(%9, %3) : f32[50,8]  // index_add_1
%11 = add(%8, %10) : f32[50,8]  // index_add_1
%12 = add(%11, %bias) : f32[50,8]  // add
return %12"""


def test_no_op_on_a_graph_without_graph_operators():
    torch.manual_seed(0)
    model = zoo.digits_cnn().eval()
    args = (torch.randn(1, 1, 8, 8),)
    graph = import_model(model, args)
    ctx = PassContext()
    out = run_passes(graph, [get_pass("gnn-reorganize")], ctx)
    assert print_graph(out) == print_graph(graph) and "gnn-reorganize" not in ctx.stats


@pytest.mark.slow
@pytest.mark.tvm
def test_tvm_builds_match_pytorch_and_report_the_analysis(graph_inputs, onnx_gat):
    """EdgeConv and the ONNX GAT build for cpu-fp32 (GCN and GAT are built by tests/e2e/test_zoo.py through the
    same pipeline) and match PyTorch; the report shows the GNN analysis."""
    feeds = [a.numpy() for a in graph_inputs]
    for name in ("edgeconv", "onnx_gat"):  # the ONNX GAT is multi-head
        source, model = _source(name, graph_inputs, onnx_gat)
        lib = qcc.compile(source, "cpu-fp32", example_inputs=None if name == "onnx_gat" else graph_inputs,
                          num_threads=1, quiet=True)
        with torch.no_grad():
            expected = model(*graph_inputs).numpy()
        np.testing.assert_allclose(lib(*feeds), expected, rtol=1e-4, atol=1e-5)
        report = lib.report()
        assert "GNN analysis" in report and "FLOPs" in report and "x less" in report and "reorganized" in report


@pytest.mark.slow
@pytest.mark.tvm
def test_int8_gcn_is_bit_exact_with_the_interpreter(graph_inputs):
    model = zoo.gcn_tiny()
    calib = [tuple(t.numpy() for t in zoo.tiny_graph(seed)) for seed in range(1, 4)]
    lib = qcc.compile(model, "cpu-int8", example_inputs=graph_inputs, calibration=calib, progress=False, quiet=True)
    assert "gnn-reorganize" in lib.pass_timings and "gnn-quant-prep" in lib.pass_timings
    assert "integer-only" in lib.report() and "not integer-only" not in lib.report()
    assert lib.tir_check is not None and lib.tir_check.ok, lib.tir_check
    ops = lib.graph.op_counts()
    assert ops["irsqrt"] == 2  # the degree scaling 1/√d in integers
    assert ops["gather_aggregate"] == 4 and "index_add" not in ops  # integer sums fused (2 degrees, 2 messages)
    for seed in (0, 7):
        feeds = [t.numpy() for t in zoo.tiny_graph(seed)]
        out = lib(*feeds)
        np.testing.assert_array_equal(out, qcc.interpret(lib.graph, feeds)[0])
        with torch.no_grad():
            expected = model(*(torch.from_numpy(a) for a in feeds)).numpy()
        assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max()


def test_zoo_layers_compute_what_they_claim(graph_inputs):
    """EdgeConv is max_{j→i} Θ(x_j − x_i) + Φx_i (0 without in-edges); ScatterGATConv equals GATConv."""
    x, src, dst = graph_inputs
    torch.manual_seed(0)
    layer = zoo.EdgeConv(16, 8).eval()
    with torch.no_grad():
        got = layer(x, src, dst).numpy()
        msg = layer.theta(x[src] - x[dst]) + layer.phi(x[dst])
    want = np.zeros_like(got)
    for i in range(x.shape[0]):
        rows = msg[dst == i]
        if len(rows):
            want[i] = rows.max(0).values.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(zoo.scatter_gat_tiny(2)(x, src, dst).numpy(), zoo.gat_tiny(2)(x, src, dst).numpy(),
                                   rtol=1e-5, atol=1e-6)
