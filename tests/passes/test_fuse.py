"""The fuse pass: kernel counts on small graphs (like tinygrad's schedule tests), the rules that keep values
materialised (branch points, graph outputs), the cost-model and memory-limit decisions, interpreter equivalence."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.errors import OptionError
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import print_graph
from qcc.passes import get_pass
from qcc.passes.fuse import describe, groups_of, summary

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _p(b: GraphBuilder, array: np.ndarray) -> object:
    _p.count += 1  # type: ignore[attr-defined]
    return b.param(array, f"p{_p.count}")  # type: ignore[attr-defined]


_p.count = 0  # type: ignore[attr-defined]


def _fuse(graph: Graph, **opts: object) -> Graph:
    ctx = PassContext()
    out = get_pass("fuse", **opts).run(graph, ctx)
    # Fusion only annotates: same program, same outputs.
    assert print_graph(out) == print_graph(graph)
    inputs = [RNG.standard_normal(v.shape).astype(np.float32) for v in graph.inputs]
    for a, b in zip(qcc.interpret(graph, inputs), qcc.interpret(out, inputs)):
        np.testing.assert_array_equal(a, b)
    assert all("fusion_group" not in n.meta for n in graph.nodes)  # the input graph is untouched
    return out


def kernels(graph: Graph) -> int:
    return summary(graph)["kernels_after"]


def test_linear_bias_gelu_is_one_kernel() -> None:
    b = GraphBuilder()
    x = b.input((4, 16), "f32", "x")
    y = b.emit("gelu", [b.emit("add", [b.emit("linear", [x, _p(b, _w(8, 16))]), _p(b, _w(8))])])
    g = _fuse(b.output(y))
    assert kernels(g) == 1 and describe(g) == ["anchor+epilogue[linear,add,gelu]"]
    info = g.nodes[-1].meta["fusion"]
    assert info["ops"] == ["linear", "add", "gelu"] and info["predicted_s"] < info["unfused_s"]


def test_layer_norm_decomposition() -> None:
    b = GraphBuilder()
    x = b.input((8, 32), "f32", "x")
    mean = b.emit("reduce_mean", [x], {"axes": (1,), "keepdims": True})
    d = b.emit("sub", [x, mean])
    var = b.emit("reduce_mean", [b.emit("mul", [d, d])], {"axes": (1,), "keepdims": True})
    std = b.emit("sqrt", [b.emit("add", [var, _p(b, np.array(1e-5, np.float32))])])
    y = b.emit("add", [b.emit("mul", [b.emit("div", [d, std]), _p(b, _w(32))]), _p(b, _w(32))])
    g = _fuse(b.output(y))
    # d feeds two consumers: it stays materialised. mean+sub is one kernel, the variance and the rest another.
    assert kernels(g) == 2 and len(g.nodes) == 9
    assert describe(g) == ["reduction[reduce_mean,sub]", "reduction[mul,reduce_mean,add,sqrt,div,mul,add]"]


def test_residual_block() -> None:
    b = GraphBuilder()
    x = b.input((1, 8, 6, 6), "f32", "x")
    attrs = {"padding": (1, 1, 1, 1)}
    h = b.emit("relu", [b.emit("conv2d", [x, _p(b, _w(8, 8, 3, 3)), _p(b, _w(8))], attrs)])
    h = b.emit("conv2d", [h, _p(b, _w(8, 8, 3, 3))], attrs)
    y = b.emit("relu", [b.emit("add", [h, x])])
    g = _fuse(b.output(y))
    assert kernels(g) == 2 and describe(g) == ["anchor+epilogue[conv2d,relu]", "anchor+epilogue[conv2d,add,relu]"]


def test_diamond_branch_point_stays_materialised() -> None:
    b = GraphBuilder()
    x = b.input((4, 4), "f32", "x")
    e = b.emit("exp", [x])
    y = b.emit("add", [b.emit("neg", [e]), b.emit("abs", [e])])
    g = _fuse(b.output(y))
    groups = groups_of(g)
    assert kernels(g) == 2 and [[n.op for n in grp] for grp in groups] == [["exp"], ["neg", "abs", "add"]]
    assert g.nodes[0].meta["fusion_kind"] == "single"


def test_graph_output_in_the_middle_is_not_fused_away() -> None:
    b = GraphBuilder()
    x = b.input((4, 4), "f32", "x")
    r = b.emit("relu", [x])
    y = b.emit("sigmoid", [b.emit("mul", [r, _p(b, np.array(2.0, np.float32))])])
    g = _fuse(b.output(r, y))
    assert kernels(g) == 2 and describe(g) == ["injective[mul,sigmoid]"]


def test_injective_chain_with_transposes() -> None:
    b = GraphBuilder()
    x = b.input((2, 6, 4), "f32", "x")
    t = b.emit("transpose", [b.emit("reshape", [x], {"shape": (2, 6, 2, 2)})], {"perm": (0, 2, 1, 3)})
    y = b.emit("tanh", [b.emit("reshape", [t], {"shape": (2, 2, 12)})])
    g = _fuse(b.output(y))
    assert kernels(g) == 1 and describe(g) == ["injective[reshape,transpose,reshape,tanh]"]


def test_scale_mask_softmax_is_one_reduction_kernel() -> None:
    b = GraphBuilder()
    s = b.input((2, 8, 8), "f32", "s")
    m = b.input((2, 1, 8), "f32", "mask")
    p = b.emit("softmax", [b.emit("add", [b.emit("mul", [s, _p(b, np.array(0.25, np.float32))]), m])], {"axis": 2})
    g = _fuse(b.output(p))
    assert kernels(g) == 1 and describe(g) == ["reduction[mul,add,softmax]"]


def test_cost_model_declines_recomputing_an_expensive_broadcast_producer() -> None:
    b = GraphBuilder()
    big = b.input((1024, 1024), "f32", "big")
    small = b.input((1, 1), "f32", "small")
    t = b.emit("tanh", [b.emit("exp", [b.emit("log", [b.emit("exp", [small])])])])
    y = b.emit("add", [big, t])
    g = _fuse(b.output(y))
    add = g.nodes[-1]
    assert add.meta["fusion_kind"] == "single"
    assert any("predicted slower" in d for d in add.meta["fusion"]["declined"])
    assert describe(g) == ["injective[exp,log,exp,tanh]"]  # the small chain still fuses on its own


def test_cuda_shared_memory_limit_declines_long_reduction_rows() -> None:
    def graph() -> Graph:
        b = GraphBuilder()
        x = b.input((2, 20000), "f32", "x")
        return b.output(b.emit("softmax", [b.emit("mul", [x, _p(b, np.array(0.5, np.float32))])], {"axis": 1}))

    assert kernels(_fuse(graph(), device="cpu")) == 1
    g = _fuse(graph(), device="cuda")
    assert kernels(g) == 2
    assert any("shared memory" in d for d in g.nodes[-1].meta["fusion"]["declined"])


def test_off_mode_and_bad_mode() -> None:
    b = GraphBuilder()
    x = b.input((4,), "f32", "x")
    g = b.output(b.emit("relu", [b.emit("neg", [x])]))
    off = _fuse(g, mode="off")
    assert kernels(off) == 2 and describe(off) == []
    with pytest.raises(OptionError, match="fusion"):
        get_pass("fuse", mode="sometimes").run(g, PassContext())


def test_stats_count_kernels_before_and_after() -> None:
    b = GraphBuilder()
    x = b.input((4, 4), "f32", "x")
    g = b.output(b.emit("sigmoid", [b.emit("exp", [b.emit("neg", [x])])]))
    ctx = PassContext()
    get_pass("fuse").run(g, ctx)
    assert ctx.stats["fuse"] == {"fused_groups": 1, "kernels_after": 1, "kernels_before": 3}
