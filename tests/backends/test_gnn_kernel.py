"""The CSR gather_aggregate kernels: TVM builds against the interpreter (empty vertices, duplicate and unsorted
edges, every reduction, softmax, integers, a constant graph), the zoo GNNs end to end, and the CUDA export."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qcc
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import get_pass
from qcc.target import Target

pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

N, E = 9, 40
RNG = np.random.default_rng(7)
DST = RNG.integers(0, N - 2, E)  # unsorted; vertices N-2 and N-1 get no in-edges
DST[:4] = 3  # duplicate edges 5 -> 3
SRC = RNG.integers(0, N, E)
SRC[:4] = 5


def _graph(src: Any, dst: Any) -> tuple[Graph, list[np.ndarray]]:
    """Unfused message passing (gathers, edge ops, index_add / index_reduce, a segment softmax), then fused."""
    b = GraphBuilder()
    h = b.input((N, 2, 3), "f32", "h")
    el, er = b.input((N, 2), "f32", "el"), b.input((N, 2), "f32", "er")
    w = b.input((E, 1), "f32", "w")
    k = b.input((N, 4), "i32", "k")
    s = b.input((E,), "i64", "src") if src is None else b.param(src, "src")
    d = b.input((E,), "i64", "dst") if dst is None else b.param(dst, "dst")
    g = lambda t, i: b.emit("gather", [t, i], {"axis": 0})  # noqa: E731
    z = lambda *shape, dt=np.float32: b.param(np.zeros(shape, dt), "z")  # noqa: E731
    # GAT-style softmax aggregation
    ex = b.emit("exp", [b.emit("leaky_relu", [b.emit("add", [g(el, d), g(er, s)])], {"alpha": 0.2})])
    alpha = b.emit("div", [ex, g(b.emit("index_add", [z(N, 2), d, ex], {"axis": 0}), d)])
    outs = [b.emit("index_add", [z(N, 2, 3), d, b.emit("mul", [g(h, s), b.emit("unsqueeze", [alpha], {"axes": (2,)})])],
                   {"axis": 0})]
    # weighted messages onto a base (sum), and every plain reduction
    hf = b.emit("reshape", [h], {"shape": (N, 6)})
    msg = b.emit("mul", [b.emit("sigmoid", [g(hf, s)]), w])
    outs.append(b.emit("index_add", [hf, d, msg], {"axis": 0}))
    for red in ("mean", "amax", "amin"):
        outs.append(b.emit("index_reduce", [z(N, 6), d, msg], {"axis": 0, "reduce": red, "include_self": False}))
    outs.append(b.emit("index_reduce", [hf, d, msg], {"axis": 0, "reduce": "amax"}))  # base max(base, ·)
    # integers (exact): max and sum of gathered rows
    outs.append(b.emit("index_reduce", [z(N, 4, dt=np.int32), d, b.emit("sub", [g(k, s), g(k, d)])],
                       {"axis": 0, "reduce": "amax", "include_self": False}))
    outs.append(b.emit("index_add", [k, d, g(k, s)], {"axis": 0}))
    unfused = b.output(*outs)
    feeds = [RNG.standard_normal((N, 2, 3)).astype(np.float32), RNG.standard_normal((N, 2)).astype(np.float32),
             RNG.standard_normal((N, 2)).astype(np.float32), RNG.random((E, 1)).astype(np.float32),
             RNG.integers(-50, 50, (N, 4)).astype(np.int32)]
    if src is None:
        feeds += [SRC, DST]
    return unfused, feeds


def _check(unfused: Graph, feeds: list[np.ndarray], expected_fused: int) -> list[str]:
    from qcc.backends.tvm import build

    fused = run_passes(unfused, [get_pass("gnn-fuse")], PassContext())
    assert fused.op_counts()["gather_aggregate"] == expected_fused
    assert fused.op_counts()["segment_csr"] == 1
    want = qcc.interpret(unfused, feeds)
    exe = build(fused, Target("cpu-fp32", num_threads=2))
    got = exe.run(feeds)
    for i, (a, r) in enumerate(zip(got, want)):
        assert a.dtype == r.dtype and a.shape == r.shape
        if np.issubdtype(r.dtype, np.floating):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(a, r, err_msg=f"output {i}")
    return sorted(exe.kernels)


def test_kernels_match_interpreter_with_index_inputs() -> None:
    unfused, feeds = _graph(None, None)
    assert "segment_csr" in _check(unfused, feeds, 8)  # built once per call, shared by the 8 kernels


def test_constant_graph_builds_its_csr_at_compile_time() -> None:
    unfused, feeds = _graph(SRC, DST)
    assert "segment_csr" not in _check(unfused, feeds, 8)  # TVM folded the counting sort on constants


@pytest.mark.torch
@pytest.mark.parametrize("name", ["gcn_tiny", "gat_tiny"])
def test_zoo_gnn_compiles_to_fused_kernels(name: str) -> None:
    import torch

    from tests import zoo

    model = getattr(zoo, name)()
    x, s, d = zoo.tiny_graph(seed=3)
    lib = qcc.compile(model, Target("cpu-fp32", num_threads=2), example_inputs=(x, s, d))
    kernels = lib._exe.kernels
    assert sum(ops[0] == "gather_aggregate" for ops in kernels.values()) >= 2
    assert not any(op in ("index_add", "index_reduce") for ops in kernels.values() for op in ops[1])
    with torch.no_grad():
        ref = model(x, s, d).numpy()
    np.testing.assert_allclose(lib(x, s, d), ref, rtol=1e-5, atol=1e-5)


def _cuda_source(module: Any) -> str:
    if module.kind == "cuda":
        return str(module.inspect_source(""))
    return next((s for s in (_cuda_source(m) for m in module.imports) if s), "")


@pytest.mark.slow
def test_cuda_build_exports(tmp_path: Path) -> None:
    """The CUDA variant (one block per destination vertex, one thread per output element for both the softmax
    and the aggregation) compiles to CUDA C, exports, and the source compiles with nvcc."""
    from qcc.backends.tvm import build, load_library

    unfused, feeds = _graph(None, None)
    fused = run_passes(unfused, [get_pass("gnn-fuse")], PassContext())
    exe = build(fused, Target("cuda-fp32", arch="sm_80"))
    src = _cuda_source(exe.module.mod)
    assert src.count("gather_aggregate") >= 8 and "blockIdx.x" in src and "threadIdx.x" in src
    path = tmp_path / "gnn.so"
    exe.export_library(str(path), {"t": "cuda-fp32"})
    assert path.stat().st_size > 0
    _, meta = load_library(str(path))
    assert meta == {"t": "cuda-fp32"}
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: the generated CUDA source was not compiled")
    cu = tmp_path / "gnn.cu"
    cu.write_text(src)
    res = subprocess.run(["nvcc", "-arch=sm_80", "-cubin", "-o", str(tmp_path / "gnn.cubin"), str(cu)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
