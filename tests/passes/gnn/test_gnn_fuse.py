"""gnn-fuse and the fused ops' references: gather_aggregate / segment_csr against the unfused interpreter,
golden IR, kernel counts and interpreter equivalence on the zoo's GCN and GAT."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import OptionError, VerificationError
from qcc.interpreter import interpret
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.ops import evaluate
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.passes import get_pass

N, E, F = 7, 24, 5
RNG = np.random.default_rng(0)
SRC = RNG.integers(0, N, E)
DST = np.concatenate([RNG.integers(0, N - 1, E - 3), [2, 2, 2]])  # vertex N-1 has no in-edges; duplicates
SRC[-3:] = 4  # three duplicate edges 4 -> 2


def _fuse(g: Graph, ctx: PassContext | None = None) -> Graph:
    return run_passes(g, [get_pass("gnn-fuse")], ctx or PassContext())


def _gcn_layer() -> tuple[Graph, dict[str, np.ndarray]]:
    """out = h·inv² + Σ_{j→i} h_j·inv_j·inv_i  (index_add onto a base), plus the degree count."""
    b = GraphBuilder()
    h, inv = b.input((N, F), "f32", "h"), b.input((N,), "f32", "inv")
    src, dst = b.input((E,), "i64", "src"), b.input((E,), "i64", "dst")
    deg = b.emit("index_add", [b.param(np.ones(N, np.float32), "one"), dst, b.param(np.ones(E, np.float32), "e1")],
                 {"axis": 0})
    norm = b.emit("mul", [b.emit("gather", [inv, src], {"axis": 0}), b.emit("gather", [inv, dst], {"axis": 0})])
    msg = b.emit("mul", [b.emit("gather", [h, src], {"axis": 0}), b.emit("unsqueeze", [norm], {"axes": (1,)})])
    base = b.emit("mul", [h, b.emit("unsqueeze", [b.emit("mul", [inv, inv])], {"axes": (1,)})])
    out = b.emit("index_add", [base, dst, msg], {"axis": 0})
    feeds = {"h": RNG.standard_normal((N, F)).astype(np.float32), "inv": RNG.random(N).astype(np.float32) + 0.5,
             "src": SRC, "dst": DST}
    return b.output(out, deg), feeds


def _gat_layer(shift: bool) -> tuple[Graph, dict[str, np.ndarray]]:
    """Reorganised GAT: e = leaky(el[dst] + er[src]), alpha = segment softmax, out = Σ alpha·h[src] (2 heads)."""
    b = GraphBuilder()
    h, el, er = b.input((N, 2, F), "f32", "h"), b.input((N, 2), "f32", "el"), b.input((N, 2), "f32", "er")
    src, dst = b.input((E,), "i64", "src"), b.input((E,), "i64", "dst")
    g = lambda t, i: b.emit("gather", [t, i], {"axis": 0})  # noqa: E731
    s = b.emit("leaky_relu", [b.emit("add", [g(el, dst), g(er, src)])], {"alpha": 0.2})
    if shift:
        m = b.emit("index_reduce", [b.param(np.zeros((N, 2), np.float32), "z0"), dst, s],
                   {"axis": 0, "reduce": "amax", "include_self": False})
        s = b.emit("sub", [s, g(m, dst)])
    ex = b.emit("exp", [s])
    den = b.emit("index_add", [b.param(np.zeros((N, 2), np.float32), "z1"), dst, ex], {"axis": 0})
    alpha = b.emit("div", [ex, g(den, dst)])
    msg = b.emit("mul", [g(h, src), b.emit("unsqueeze", [alpha], {"axes": (2,)})])
    out = b.emit("index_add", [b.param(np.zeros((N, 2, F), np.float32), "z2"), dst, msg], {"axis": 0})
    feeds = {"h": RNG.standard_normal((N, 2, F)).astype(np.float32),
             "el": RNG.standard_normal((N, 2)).astype(np.float32),
             "er": RNG.standard_normal((N, 2)).astype(np.float32), "src": SRC, "dst": DST}
    return b.output(out), feeds


def _csr(dst: np.ndarray = DST, src: np.ndarray = SRC) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ptr, order = evaluate("segment_csr", [dst], {"num_segments": N})
    return ptr, order, src[order]


# -- the ops' references ------------------------------------------------------------------------------------
def test_segment_csr_is_a_stable_sort_with_offsets() -> None:
    ptr, order = evaluate("segment_csr", [np.array([2, 0, -1, 2, 0])], {"num_segments": 3})
    assert ptr.tolist() == [0, 2, 2, 5] and order.tolist() == [1, 4, 0, 2, 3]  # -1 wraps to 2


@pytest.mark.parametrize("reduce,index_reduce", [("max", "amax"), ("min", "amin"), ("mean", "mean"), ("sum", "sum")])
def test_reference_matches_index_reduce(reduce: str, index_reduce: str) -> None:
    x = RNG.standard_normal((N, 3)).astype(np.float32)
    w = RNG.standard_normal((E, 3)).astype(np.float32)
    want = evaluate("index_reduce", [np.zeros((N, 3), np.float32), DST, x[SRC] * w],
                    {"axis": 0, "reduce": index_reduce, "include_self": False})[0]
    got = evaluate("gather_aggregate", [*_csr(), x, w],
                   {"kinds": ("src", "edge"), "message": (("mul", ("x0", "x1"), None),), "reduce": reduce})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(got[N - 1] == 0)  # no in-edges


def test_reference_base_and_include_self() -> None:
    x, base = RNG.standard_normal((N, 3)).astype(np.float32), RNG.standard_normal((N, 3)).astype(np.float32)
    attrs = {"kinds": ("src",), "message": (("id", ("x0",), None),), "reduce": "max", "base": True}
    got = evaluate("gather_aggregate", [*_csr(), x, base], attrs)[0]
    np.testing.assert_array_equal(got, evaluate("index_reduce", [base, DST, x[SRC]], {"axis": 0, "reduce": "amax"})[0])
    only_empty = evaluate("gather_aggregate", [*_csr(), x, base], {**attrs, "include_self": False})[0]
    np.testing.assert_array_equal(only_empty[N - 1], base[N - 1])


def test_type_rule_rejects_bad_programs() -> None:
    b = GraphBuilder()
    ptr, order = b.emit_node("segment_csr", [b.input((E,), "i64", "d")], {"num_segments": N}).outputs
    x, xi = b.input((N, 3), "f32", "x"), b.input((N, 3), "i32", "xi")
    with pytest.raises(VerificationError, match="operand kinds"):
        b.emit("gather_aggregate", [ptr, order, order, x],
               {"kinds": ("src", "dst"), "message": (("id", ("x0",), None),)})
    with pytest.raises(VerificationError, match="unknown value"):
        b.emit("gather_aggregate", [ptr, order, order, x], {"kinds": ("src",), "message": (("id", ("x1",), None),)})
    with pytest.raises(VerificationError, match="float"):
        b.emit("gather_aggregate", [ptr, order, order, xi], {"kinds": ("src",), "message": (("exp", ("x0",), None),)})
    with pytest.raises(VerificationError, match="broadcast"):
        b.emit("gather_aggregate", [ptr, order, order, x, b.input((4,), "f32", "c")],
               {"kinds": ("src", "const"), "message": (("add", ("x0", "x1"), None),)})


# -- the pass ---------------------------------------------------------------------------------------------
def test_gcn_layer_fuses_with_one_shared_csr() -> None:
    g, feeds = _gcn_layer()
    ctx = PassContext()
    f = _fuse(g, ctx)
    assert f.op_counts() == {"gather": 1, "gather_aggregate": 2, "mul": 2, "segment_csr": 1, "unsqueeze": 1}
    assert ctx.stats["gnn-fuse"] == {"csr": 1, "fused": 2, "softmax": 0}
    # the CSR and the source ids in CSR order come first, ahead of every layer
    assert [n.op for n in f.nodes[:2]] == ["segment_csr", "gather"]
    deg = next(n for n in f.nodes if n.op == "gather_aggregate" and n.outputs[0].shape == (N,))
    assert deg.attrs["kinds"] == ("const",)  # ones(E) became one constant row: no per-edge read at all
    for want, got in zip(interpret(g, feeds), interpret(f, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


GOLDEN_GAT = """\
  %0, %1 = segment_csr(%dst) {num_segments=7} : i64[8], i64[24]  // csr_dst
  %2 = gather(%src, %1) {axis=0} : i64[24]  // col_src
  %3 = gather_aggregate(%0, %1, %2, %h, %el, %er) {base=False, include_self=True, kinds=("src", "dst", "src"), \
message=(("unsqueeze", ("alpha",), (1,)), ("mul", ("x0", "t0"), None)), reduce="sum", \
score=(("add", ("x1", "x2"), None), ("leaky_relu", ("t0",), 0.2))} : f32[7,2,5]
  return %3"""


@pytest.mark.parametrize("shift", [False, True])
def test_gat_softmax_fuses_into_one_op(shift: bool) -> None:
    g, feeds = _gat_layer(shift)
    f = _fuse(g)
    assert f.op_counts() == {"gather": 1, "gather_aggregate": 1, "segment_csr": 1}
    assert GOLDEN_GAT in print_graph(f.rename())
    np.testing.assert_allclose(interpret(f, feeds)[0], interpret(g, feeds)[0], rtol=1e-5, atol=1e-6)


def test_noop_without_graph_ops() -> None:
    b = GraphBuilder()
    x = b.input((3, 4), "f32", "x")
    g = b.output(b.emit("relu", [b.emit("gather", [x, b.param(np.array([2, 0]), "i")], {"axis": 0})]))
    assert print_graph(_fuse(g)) == print_graph(g)


def test_edge_tensor_inputs_stay_operands() -> None:
    """A per-edge input (edge weights) is read in place; a second source index stays a materialised gather."""
    b = GraphBuilder()
    x, w = b.input((N, 3), "f32", "x"), b.input((E, 1), "f32", "w")
    src, dst, other = (b.input((E,), "i64", n) for n in ("src", "dst", "other"))
    m = b.emit("add", [b.emit("mul", [b.emit("gather", [x, src], {"axis": 0}), w]),
                       b.emit("gather", [x, other], {"axis": 0})])
    g = b.output(b.emit("index_reduce", [b.param(np.zeros((N, 3), np.float32), "z"), dst, m],
                        {"axis": 0, "reduce": "amax", "include_self": False}))
    f = _fuse(g)
    node = next(n for n in f.nodes if n.op == "gather_aggregate")
    assert node.attrs["kinds"] == ("src", "edge", "edge") and node.attrs["reduce"] == "max"
    feeds = {"x": RNG.standard_normal((N, 3)).astype(np.float32), "w": RNG.random((E, 1)).astype(np.float32),
             "src": SRC, "dst": DST, "other": RNG.integers(0, N, E)}
    np.testing.assert_allclose(interpret(f, feeds)[0], interpret(g, feeds)[0], rtol=1e-6)


# -- the zoo models, through the float pipeline ---------------------------------------------------------------
_IMPORTED: dict[str, tuple[Graph, tuple]] = {}  # the torch import is the slow part: once per model


def _zoo(name: str, gnn_fuse: str = "auto") -> tuple[Graph, Graph, tuple]:
    torch = pytest.importorskip("torch")
    from qcc.frontends import import_model
    from qcc.pipeline import optimize
    from qcc.target import Target
    from tests import zoo

    if name not in _IMPORTED:
        model = getattr(zoo, name)()
        x, s, d = zoo.tiny_graph()
        with torch.no_grad():
            ref = model(x, s, d).numpy()
        _IMPORTED[name] = (import_model(model, (x, s, d)), (x.numpy(), s.numpy(), d.numpy(), ref))
    g, data = _IMPORTED[name]
    opt = optimize(g, Target("cpu-fp32"), PassContext(target=Target("cpu-fp32"), options={"gnn_fuse": gnn_fuse}))
    return g, opt, data


@pytest.mark.torch
@pytest.mark.parametrize("name,fused,softmax", [("gcn_tiny", 4, 0), ("gat_tiny", 2, 2)])
def test_zoo_models_fuse_every_aggregation(name: str, fused: int, softmax: int) -> None:
    _, opt, (x, s, d, ref) = _zoo(name)
    counts = opt.op_counts()
    assert counts["gather_aggregate"] == fused and counts["segment_csr"] == 1
    assert sum(bool(n.attrs["score"]) for n in opt.nodes if n.op == "gather_aggregate") == softmax
    # no graph operator is left unfused: every gather left is the CSR's source ids
    assert not {"index_add", "index_reduce", "exp"} & set(counts) and counts.get("gather", 0) == 1
    np.testing.assert_allclose(interpret(opt, [x, s, d])[0], ref, rtol=1e-5, atol=1e-5)


def test_pipeline_folds_the_csr_of_a_constant_graph() -> None:
    from qcc.pipeline import optimize
    from qcc.target import Target

    g, feeds = _gcn_layer()
    src, dst = g.inputs[2:]
    g.replace_uses({src: g.add_param(SRC, "src_c"), dst: g.add_param(DST, "dst_c")})
    opt = optimize(g, Target("cpu-fp32"), PassContext(target=Target("cpu-fp32")))
    # the degree count is folded away altogether; the aggregation keeps a precomputed CSR
    assert opt.op_counts()["gather_aggregate"] == 1 and "segment_csr" not in opt.op_counts()
    for want, got in zip(interpret(g, feeds), interpret(opt, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.torch
def test_pipeline_option_turns_the_pass_off() -> None:
    _, opt, _ = _zoo("gcn_tiny", gnn_fuse="off")
    assert "gather_aggregate" not in opt.op_counts()
    with pytest.raises(OptionError, match="gnn_fuse"):
        _zoo("gcn_tiny", gnn_fuse="on")


def test_analysis_counts_no_edge_tensor_after_fusion() -> None:
    from qcc.passes.gnn.analysis import analyze

    g, _ = _gat_layer(True)
    before, after = analyze(g), analyze(_fuse(g))
    assert before.edge_bytes > 0 and after.edge_bytes == 0
    assert after.bytes_moved < before.bytes_moved / 2 and after.peak_bytes < before.peak_bytes
    assert after.flops > 0
