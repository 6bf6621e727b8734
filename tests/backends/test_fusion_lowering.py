"""Materialising the fuse pass in the TVM backend (lower_fused): kernel launches counted from the built Relax
module with fusion on and off, and the built library against the interpreter (1e-5) with fusion on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcc  # noqa: E402
from qcc.backends.tvm import build  # noqa: E402
from qcc.ir.graph import Graph, GraphBuilder  # noqa: E402

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(1)


def _p(b: GraphBuilder, array: np.ndarray) -> Any:
    _p.count += 1  # type: ignore[attr-defined]
    return b.param(np.asarray(array, np.float32), f"p{_p.count}")  # type: ignore[attr-defined]


_p.count = 0  # type: ignore[attr-defined]


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32) * 0.3


def _run(graph: Graph, fusion: str, target: str = "cpu-fp32", **kw: Any) -> Any:
    inputs = [RNG.standard_normal(v.shape).astype(np.float32) for v in graph.inputs]
    exe = build(graph, target, fusion=fusion, **kw)
    for got, ref in zip(exe.run(inputs), qcc.interpret(graph, inputs)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    return exe


def _layer_norm_decomposed() -> Graph:
    b = GraphBuilder()
    x = b.input((8, 32), "f32", "x")
    mean = b.emit("reduce_mean", [x], {"axes": (1,), "keepdims": True})
    d = b.emit("sub", [x, mean])
    var = b.emit("reduce_mean", [b.emit("mul", [d, d])], {"axes": (1,), "keepdims": True})
    std = b.emit("sqrt", [b.emit("add", [var, _p(b, np.array(1e-5))])])
    y = b.emit("add", [b.emit("mul", [b.emit("div", [d, std]), _p(b, _w(32))]), _p(b, _w(32))])
    return b.output(y)


def _elementwise_chain() -> Graph:
    b = GraphBuilder()
    x = b.input((4, 6, 8), "f32", "x")
    r = b.input((4, 6, 8), "f32", "r")
    t = b.emit("transpose", [b.emit("exp", [b.emit("mul", [x, _p(b, np.array(0.5))])])], {"perm": (0, 2, 1)})
    y = b.emit("tanh", [b.emit("add", [t, b.emit("transpose", [r], {"perm": (0, 2, 1)})])])
    return b.output(y)


def _scaled_softmax() -> Graph:
    b = GraphBuilder()
    s = b.input((2, 4, 8, 8), "f32", "s")
    m = b.input((2, 1, 1, 8), "f32", "mask")
    p = b.emit("softmax", [b.emit("add", [b.emit("mul", [s, _p(b, np.array(0.25))]), m])], {"axis": 3})
    return b.output(p)


def _linear_gelu() -> Graph:
    b = GraphBuilder()
    x = b.input((2, 5, 16), "f32", "x")
    h = b.emit("add", [b.emit("linear", [x, _p(b, _w(24, 16))]), _p(b, _w(24))])
    return b.output(b.emit("sigmoid", [b.emit("gelu", [h])]))


# (graph, launches with fusion "auto", launches with "off") on the cpu-fp32 template path.
CASES = {
    "elementwise_chain": (_elementwise_chain, 1, 6),
    "layer_norm_decomposed": (_layer_norm_decomposed, 2, 9),
    "scaled_softmax": (_scaled_softmax, 1, 3),
    # the dense template folds bias + gelu; sigmoid is no template step: the tail is one fused kernel
    "linear_gelu_sigmoid": (_linear_gelu, 2, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_launches_and_results(case: str) -> None:
    make, fused, unfused = CASES[case]
    graph = make()
    auto, off = _run(graph, "auto"), _run(graph, "off")
    assert (auto.launches, off.launches) == (fused, unfused)


def test_generic_path_fuses_the_anchor_with_its_epilogue() -> None:
    exe = _run(_linear_gelu(), "auto", templates=False)
    assert exe.launches == 1
    (ops,) = [ops for _, ops in exe.kernels.values()]
    assert ops == ["linear", "add", "gelu", "sigmoid"]
    assert _run(_linear_gelu(), "off", templates=False).launches == 4


def test_fused_kernels_carry_their_ops_and_inline_their_stages() -> None:
    import tvm

    from qcc.backends.tvm.lower import lower

    lowered = lower(_elementwise_chain(), fusion="auto")
    prims = [f for _, f in lowered.mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == 1
    func = prims[0]
    assert [str(o) for o in func.attrs["qcc.ops"]] == ["mul", "exp", "transpose", "transpose", "add", "tanh"]
    text = func.script()
    assert text.count("T.sblock(") - text.count('T.sblock("root")') == 1  # every stage inlined: one loop nest
    assert int(func.attrs["op_pattern"]) == 8


def test_compile_option_and_report() -> None:
    graph = _scaled_softmax()
    from qcc.api import CompiledModel
    from qcc.errors import OptionError
    from qcc.ir.pass_manager import PassContext
    from qcc.pipeline import fuse
    from qcc.target import Target

    ctx = PassContext(options={"fusion": "auto"})
    fused = fuse(graph, Target("cpu-fp32"), ctx)
    assert ctx.stats["fuse"]["kernels_after"] == 1
    exe = build(fused, "cpu-fp32", fusion="auto")
    lib = CompiledModel(exe, Target("cpu-fp32"), "", ["s", "mask"], fused)
    text = lib.report()
    assert "3 ops -> 1 kernels after fusion, 1 launches per run" in text
    assert "reduction" in text and "[mul, add, softmax]" in text
    with pytest.raises(OptionError, match="fusion"):
        fuse(graph, Target("cpu-fp32"), PassContext(options={"fusion": "maybe"}))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["layer_norm_decomposed", "linear_gelu_sigmoid"])
def test_cuda_builds_compile_with_fusion(case: str) -> None:
    make, fused, _ = CASES[case]
    exe = build(make(), "cuda-fp32", fusion="auto")
    assert exe.launches == (1 if case == "linear_gelu_sigmoid" else fused)


def test_template_epilogues_follow_the_fuse_pass() -> None:
    from qcc.backends.tvm.epilogue_groups import describe, find_groups
    from qcc.ir.pass_manager import PassContext
    from qcc.passes import get_pass

    graph = _linear_gelu()
    fused = get_pass("fuse").run(graph, PassContext())
    (g,) = find_groups(fused, "auto")
    assert describe([g]) == ["linear[bias,gelu]"] and [n.op for n in g.tail] == ["sigmoid"]
    assert describe(find_groups(fused, "off")) == ["linear[]"]
    # without the pass's decisions "auto" behaves like the template rule
    assert describe(find_groups(graph, "auto")) == describe(find_groups(graph)) == ["linear[bias,gelu]"]


def test_integer_requantize_qadd_chain_is_one_bit_exact_kernel() -> None:
    b = GraphBuilder()
    x = b.input((4, 16), "i32", "x")
    y = b.input((4, 16), "i32", "y")
    m = b.param(RNG.integers(1 << 20, 1 << 21, 16).astype(np.int32), "m")
    s = b.param(np.array(28, np.int32), "s")
    qa = b.emit("requantize", [x, m, s], {"dtype": "i8", "zero_point": 3})
    qb = b.emit("requantize", [y, m, s], {"dtype": "i8", "min": 0})
    out = b.emit("qadd", [qa, qb], {"dtype": "u8", "a_multiplier": 3 << 20, "b_multiplier": -(5 << 19), "shift": 22,
                                    "a_zero_point": 3, "zero_point": 128})
    graph = b.output(out)
    inputs = [RNG.integers(-(1 << 14), 1 << 14, (4, 16)).astype(np.int32) for _ in range(2)]
    ref = qcc.interpret(graph, inputs)[0]
    for fusion, launches in (("auto", 1), ("off", 3)):
        exe = build(graph, "cpu-int8", fusion=fusion)
        np.testing.assert_array_equal(exe.run(inputs)[0], ref)
        assert exe.launches == launches
