"""The cpu-fp32 template lowering: epilogue grouping, the layout pass, and odd shapes through whole graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcc  # noqa: E402
from qcc.ir import GraphBuilder  # noqa: E402
from qcc.target import Target  # noqa: E402

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)
T2 = Target("cpu-fp32", num_threads=2)


_COUNT = itertools.count()


def _p(b: GraphBuilder, arr: np.ndarray):  # noqa: ANN202
    return b.param(arr, f"p{next(_COUNT)}")


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _check(graph, inputs, rtol=1e-4, atol=1e-4):  # noqa: ANN001, ANN202
    from qcc.backends.tvm import build

    exe = build(graph, T2)
    got, ref = exe.run(inputs), qcc.interpret(graph, inputs)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
    return exe


def _resnet_like() -> tuple:
    """stem conv (NCHW input) -> relu -> max pool -> residual block with a 1×1/2 projection -> global mean ->
    reshape -> linear: the ResNet pattern at toy size (prime channel counts)."""
    b = GraphBuilder()
    x = b.input((1, 3, 17, 17), "f32", "x")
    y = b.emit("conv2d", [x, _p(b, _w(13, 3, 3, 3)), _p(b, _w(13))], {"stride": (2, 2), "padding": (1, 1, 1, 1)})
    y = b.emit("relu", [y])
    y = b.emit("max_pool2d", [y], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)})
    z = b.emit("conv2d", [y, _p(b, _w(19, 13, 3, 3))], {"stride": (2, 2), "padding": (1, 1, 1, 1)})
    z = b.emit("add", [z, _p(b, _w(1, 19, 1, 1))])  # a per-channel constant: the bias step
    z = b.emit("relu", [z])
    z = b.emit("conv2d", [z, _p(b, _w(19, 19, 3, 3))], {"padding": (1, 1, 1, 1)})
    s = b.emit("conv2d", [y, _p(b, _w(19, 13, 1, 1))], {"stride": (2, 2)})
    z = b.emit("relu", [b.emit("add", [z, s])])
    z = b.emit("reduce_mean", [z], {"axes": (2, 3), "keepdims": True})
    z = b.emit("reshape", [z], {"shape": (1, 19)})
    out = b.emit("linear", [z, _p(b, _w(7, 19)), _p(b, _w(7))])
    return b.output(out), [RNG.standard_normal((1, 3, 17, 17)).astype(np.float32)]


def test_epilogue_groups_fold_bias_residual_and_activation() -> None:
    from qcc.backends.tvm.epilogue_groups import describe, find_groups

    graph, _ = _resnet_like()
    assert describe(find_groups(graph)) == [
        "conv2d[bias,relu]", "conv2d[bias,relu]", "conv2d[add,relu]", "conv2d[]", "linear[bias]"]


def test_layout_pass_needs_one_transform_back_before_the_head() -> None:
    graph, inputs = _resnet_like()
    exe = _check(graph, inputs)
    st = exe.lowering_stats
    # The stem conv reads the NCHW input and writes NCHW16c itself (the NCHW -> NCHWc conversion happens in
    # its padding copy: no separate kernel); the only transform is NCHW16c -> NCHW of the pooled features.
    assert st.get("nchwc_to_nchw") == 1 and st.get("nchw_to_nchwc", 0) == 0
    assert st["template:conv2d"] == 4 and st["template:dense"] == 1
    assert st["nchwc_ops"] == 2  # max pool and global mean run on NCHW16c
    assert st["fused_steps"] == 7  # bias+relu, bias+relu, add+relu, bias


@pytest.mark.torch
@pytest.mark.slow
def test_resnet_tiny_layouts_and_kernel_count() -> None:
    from qcc.backends.tvm.epilogue_groups import find_groups
    from qcc.backends.tvm.layout import BLOCKED, assign_layouts

    torch = pytest.importorskip("torch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import zoo

    model, make_inputs = zoo.TINY_ZOO["resnet18"]
    x = make_inputs()
    compiled = qcc.compile(model(), "cpu-fp32", x, num_threads=2)
    with torch.no_grad():
        ref = model()(*x).numpy()
    np.testing.assert_allclose(compiled(*[t.numpy() for t in x]), ref, rtol=1e-4, atol=1e-4)
    graph = compiled.graph
    groups = find_groups(graph)
    layouts = assign_layouts(graph, groups, 16)
    convs = [g for g in groups if g.kind == "conv2d"]
    assert len(convs) == 20 and all(layouts[g.output] == BLOCKED for g in convs)
    # 20 convs, 8 residual adds and 17 relus fold into 20 conv kernels.
    assert sum(len(g.members) for g in convs) == 20 + 8 + 17
    st = compiled._exe.lowering_stats
    assert st["nchwc_to_nchw"] == 1 and st.get("nchw_to_nchwc", 0) == 0


@pytest.mark.parametrize("case", ["depthwise_s2", "grouped", "grouped_generic", "pointwise_odd", "dilated"])
def test_odd_convs_in_a_graph(case: str) -> None:
    b = GraphBuilder()
    x = b.input((1, 32, 11, 9), "f32", "x")
    y = b.emit("conv2d", [x, _p(b, _w(32, 32, 1, 1))], {})  # into NCHW16c
    if case == "depthwise_s2":
        y = b.emit("conv2d", [y, _p(b, _w(32, 1, 3, 3)), _p(b, _w(32))],
                   {"stride": (2, 2), "padding": (1, 1, 1, 1), "groups": 32})
        y = b.emit("clip", [y], {"min": 0.0, "max": 6.0})
    elif case == "grouped":
        y = b.emit("conv2d", [y, _p(b, _w(32, 16, 3, 3))], {"padding": (0, 1, 2, 1), "groups": 2})
        y = b.emit("hardswish", [y])
    elif case == "grouped_generic":  # channel groups of 8: the template declines, generic kernel, NCHW
        y = b.emit("conv2d", [y, _p(b, _w(32, 8, 3, 3))], {"padding": (1, 1, 1, 1), "groups": 4})
    elif case == "pointwise_odd":
        y = b.emit("conv2d", [y, _p(b, _w(7, 32, 1, 1))], {"stride": (2, 2)})
    else:
        y = b.emit("conv2d", [y, _p(b, _w(17, 32, 3, 3))], {"padding": (2, 2, 2, 2), "dilation": (2, 2)})
    y = b.emit("relu", [y])
    graph = b.output(y)
    exe = _check(graph, [RNG.standard_normal((1, 32, 11, 9)).astype(np.float32)])
    st = exe.lowering_stats
    assert st.get("declined", 0) == (1 if case == "grouped_generic" else 0)
    assert st["template:conv2d"] == (1 if case == "grouped_generic" else 2)


def test_attention_matmuls_and_dense_fuse() -> None:
    b = GraphBuilder()
    x = b.input((1, 10, 24), "f32", "x")
    q = b.emit("transpose", [b.emit("reshape", [b.emit("linear", [x, _p(b, _w(24, 24)), _p(b, _w(24))])],
                                    {"shape": (1, 10, 2, 12)})], {"perm": (0, 2, 1, 3)})
    k = b.emit("transpose", [b.emit("reshape", [b.emit("linear", [x, _p(b, _w(24, 24))])],
                                    {"shape": (1, 10, 2, 12)})], {"perm": (0, 2, 3, 1)})
    s = b.emit("mul", [b.emit("matmul", [q, k]), _p(b, np.array(0.25, np.float32))])
    p = b.emit("softmax", [s], {"axis": 3})
    o = b.emit("matmul", [p, q])
    o = b.emit("reshape", [b.emit("transpose", [o], {"perm": (0, 2, 1, 3)})], {"shape": (1, 10, 24)})
    h = b.emit("gelu", [b.emit("linear", [o, _p(b, _w(24, 24)), _p(b, _w(24))])])
    out = b.emit("add", [x, b.emit("matmul", [h, _p(b, _w(24, 24))])])
    graph = b.output(out)
    exe = _check(graph, [RNG.standard_normal((1, 10, 24)).astype(np.float32)])
    st = exe.lowering_stats
    assert st["template:batch_matmul"] == 2 and st["template:dense"] == 4
    assert st["fused_steps"] == 5  # q bias, scale, bias+gelu, residual


def test_tune_records_winners_that_later_builds_reuse(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import json

    from qcc.backends.tvm import build
    from qcc.backends.tvm.kernels import tune as tune_mod

    db = tmp_path / "tuning.json"
    monkeypatch.setenv("QCC_TUNE_DB", str(db))
    b = GraphBuilder()
    x = b.input((5, 24), "f32", "x")
    graph = b.output(b.emit("relu", [b.emit("linear", [x, _p(b, _w(40, 24)), _p(b, _w(40))])]))
    xs = [RNG.standard_normal((5, 24)).astype(np.float32)]
    exe = build(graph, T2, tune=True, quiet=True)
    np.testing.assert_allclose(exe.run(xs)[0], qcc.interpret(graph, xs)[0], rtol=1e-4, atol=1e-4)
    records = json.loads(db.read_text())["records"]
    assert len(records) == 1 and next(iter(records.values()))["kind"] == "dense"
    calls: list[object] = []
    monkeypatch.setattr(tune_mod, "measure", lambda *a, **k: calls.append(a) or 1.0)
    build(graph, T2, tune=True, quiet=True)
    assert calls == []  # recorded: nothing measured again
