"""TVM backend: build, run, time, export/load round trip, library errors, fp16, CUDA builds, schedule registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcc  # noqa: E402
from qcc.errors import BackendError, LibraryLoadError, ShapeMismatchError  # noqa: E402
from qcc.ir import GraphBuilder  # noqa: E402
from qcc.ir.graph import Graph  # noqa: E402
from qcc.target import Target  # noqa: E402

pytestmark = pytest.mark.tvm


def conv_matmul_graph(seed: int = 0) -> Graph:
    """A small CNN head: conv+bias+relu, pooling, linear, matmul, softmax; two outputs."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    x = b.input((2, 3, 8, 8), "f32", "x")
    w = b.param((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "conv.w")
    bias = b.param(rng.standard_normal(8).astype(np.float32), "conv.b")
    y = b.emit("relu", [b.emit("conv2d", [x, w, bias], {"padding": (1, 1, 1, 1)})])
    y = b.emit("adaptive_avg_pool2d", [y], {"output_size": (1, 1)})
    y = b.emit("reshape", [y], {"shape": (2, 8)})
    y = b.emit("linear", [y, b.param(rng.standard_normal((5, 8)).astype(np.float32), "fc.w")])
    m = b.emit("matmul", [y, b.param(rng.standard_normal((5, 70)).astype(np.float32), "proj")])
    return b.output(b.emit("softmax", [m], {"axis": 1}), y)


X = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return conv_matmul_graph()


@pytest.fixture(scope="module")
def exe(graph: Graph) -> Any:
    from qcc.backends.tvm import build

    return build(graph, Target("cpu-fp32", num_threads=2))


@pytest.fixture(scope="module")
def exported(exe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lib") / "model.so"
    exe.export_library(str(path), {"model": "conv_matmul", "scales": [0.5, 0.25]})
    return path


def _copy_pair(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copyfile(src, dst)
    shutil.copyfile(str(src) + ".json", str(dst) + ".json")
    return dst


# -- build and run -------------------------------------------------------------------------------------
def test_run_matches_interpreter(graph: Graph, exe: Any) -> None:
    got, ref = exe.run([X]), qcc.interpret(graph, [X])
    assert len(got) == 2
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exe.run({"x": X})[0], ref[0], rtol=1e-4, atol=1e-5)  # by name


def test_kernels_tagged_with_qcc_ops(exe: Any) -> None:
    anchors = {anchor for anchor, _ in exe.kernels.values()}
    assert {"conv2d", "linear", "matmul", "softmax"} <= anchors
    fused = [ops for anchor, ops in exe.kernels.values() if anchor == "conv2d"]
    assert fused and "relu" in fused[0]  # conv+relu fused, conv is the anchor


def test_time_returns_seconds(exe: Any) -> None:
    times = exe.time([X], number=2, repeat=3)
    assert len(times) == 3 and all(0 < t < 5 for t in times)


def test_wrong_inputs_raise_shape_mismatch(exe: Any) -> None:
    with pytest.raises(ShapeMismatchError, match="'x'.*shape"):
        exe.run([X[:1]])
    with pytest.raises(ShapeMismatchError, match="'x'.*dtype"):
        exe.run([X.astype(np.complex64)])
    with pytest.raises(ShapeMismatchError, match="expected 1 input"):
        exe.run([X, X])
    with pytest.raises(ShapeMismatchError, match="missing input"):
        exe.run({"y": X})


def test_build_rejects_accel_target(graph: Graph) -> None:
    from qcc.backends.tvm import build

    with pytest.raises(BackendError, match="cpu and cuda"):
        build(graph, Target("accel-int8"))


def test_cpu_fp16_computes_in_half(graph: Graph) -> None:
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower

    mod = lower(graph, float16=True).mod
    conv = next(f for gv, f in mod.functions_items() if gv.name_hint == "conv2d")
    assert "float16" in conv.script()
    exe16 = build(graph, "cpu-fp16")
    got, ref = exe16.run([X]), qcc.interpret(graph, [X])
    for g, r in zip(got, ref):
        assert g.dtype == np.float32  # the user-facing signature stays f32
        np.testing.assert_allclose(g, r, rtol=2e-2, atol=2e-2)
        assert not np.array_equal(g, r)  # it really computed in half precision


def test_schedule_registry_sees_anchor_ops(graph: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    from qcc.backends.tvm import build, schedules

    calls: list[tuple[str, list[str]]] = []

    def spy(func: Any, target: Any) -> Any:
        calls.append((str(func.attrs[schedules.OP_ATTR]), [str(o) for o in func.attrs[schedules.OPS_ATTR]]))
        return func if calls[-1][0] == "softmax" else None  # take softmax, decline conv2d

    monkeypatch.setitem(schedules.SCHEDULES, "conv2d", spy)
    monkeypatch.setitem(schedules.SCHEDULES, "softmax", spy)
    # Generic lowering: with the kernel templates (the cpu-fp32 default) conv2d arrives already scheduled.
    exe2 = build(graph, Target("cpu-fp32", num_threads=2), templates=False)
    assert ("conv2d", ["conv2d", "relu"]) in calls and ("softmax", ["softmax"]) in calls
    np.testing.assert_allclose(exe2.run([X])[0], qcc.interpret(graph, [X])[0], rtol=1e-4, atol=1e-5)


# -- export / load ---------------------------------------------------------------------------------------
def test_export_load_round_trip(exe: Any, exported: Path) -> None:
    from qcc.backends.tvm import load_library

    side = json.loads(Path(str(exported) + ".json").read_text())
    assert side["format_version"] == 1 and side["qcc_version"] == qcc.__version__
    assert side["inputs"] == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "f32"}]
    assert [o["shape"] for o in side["outputs"]] == [[2, 70], [2, 5]]
    assert side["target"]["name"] == "cpu-fp32" and side["tvm_target"]["kind"] == "llvm"
    assert not [p for p in os.listdir(exported.parent) if p.startswith(".qcc-export-")]  # no temp files left
    exe2, meta = load_library(str(exported))
    assert meta == {"model": "conv_matmul", "scales": [0.5, 0.25]}
    for a, b in zip(exe.run([X]), exe2.run([X])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ShapeMismatchError):
        exe2.run([np.zeros((1, 3, 8, 8), np.float32)])


def test_reexport_of_loaded_library(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import load_library

    exe2, _ = load_library(str(exported))
    again = tmp_path / "again.so"
    exe2.export_library(str(again), {"v": 2})
    exe3, meta = load_library(str(again))
    assert meta == {"v": 2}
    np.testing.assert_array_equal(exe3.run([X])[1], exe2.run([X])[1])


def test_load_missing_files(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import load_library

    with pytest.raises(LibraryLoadError, match="does not exist"):
        load_library(str(tmp_path / "nope.so"))
    lone = tmp_path / "lone.so"
    shutil.copyfile(exported, lone)
    with pytest.raises(LibraryLoadError, match="sidecar.*missing"):
        load_library(str(lone))


def test_load_corrupt_sidecar(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import load_library

    lib = _copy_pair(exported, tmp_path)
    Path(str(lib) + ".json").write_text('{"format": "qcc-tvm-library", "format_ver')
    with pytest.raises(LibraryLoadError, match="corrupt"):
        load_library(str(lib))
    Path(str(lib) + ".json").write_text('{"format": "qcc-tvm-library", "format_version": 1}')
    with pytest.raises(LibraryLoadError, match="lacks"):
        load_library(str(lib))


def _edit_sidecar(lib: Path, **changes: Any) -> None:
    side = Path(str(lib) + ".json")
    data = json.loads(side.read_text())
    data.update(changes)
    side.write_text(json.dumps(data))


def test_load_hash_mismatch(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import load_library

    lib = _copy_pair(exported, tmp_path)
    with open(lib, "ab") as f:
        f.write(b"\0")
    with pytest.raises(LibraryLoadError, match="does not match its sidecar"):
        load_library(str(lib))


def test_load_newer_format_version(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import load_library

    lib = _copy_pair(exported, tmp_path)
    _edit_sidecar(lib, format_version=99)
    with pytest.raises(LibraryLoadError, match="newer"):
        load_library(str(lib))


def test_load_foreign_target(exported: Path, tmp_path: Path) -> None:
    from qcc.backends.tvm import host, load_library

    lib = _copy_pair(exported, tmp_path)
    _edit_sidecar(lib, target={"name": "accel-int8", "options": {}})
    with pytest.raises(LibraryLoadError, match="accel-int8"):
        load_library(str(lib))
    have = set(host.llvm_features(host.cpu_flags()))
    lacking = sorted(set(host.CPUINFO_TO_LLVM.values()) - have)
    if lacking:  # a library for CPU features this host lacks
        _edit_sidecar(lib, target={"name": "cpu-fp32", "options": {}},
                      tvm_target={"kind": "llvm", "mattr": [lacking[0]]})
        with pytest.raises(LibraryLoadError, match="lacks"):
            load_library(str(lib))


# -- CUDA ----------------------------------------------------------------------------------------------
def _cuda_source(module: Any) -> str:
    if module.kind == "cuda":
        return str(module.inspect_source(""))
    for m in module.imports:
        src = _cuda_source(m)
        if src:
            return src
    return ""


@pytest.mark.parametrize("target", ["cuda-fp32", "cuda-fp16"])
def test_cuda_build_exports(graph: Graph, target: str, tmp_path: Path) -> None:
    from qcc.backends.tvm import build, load_library
    from qcc.backends.tvm.executable import cuda_available

    t0 = time.perf_counter()
    exe_cuda = build(graph, Target(target, arch="sm_80"))
    assert time.perf_counter() - t0 < 60
    src = _cuda_source(exe_cuda.module.mod)
    assert "threadIdx.x" in src and "__global__" in src
    if target == "cuda-fp16":
        assert "half" in src
    path = tmp_path / f"{target}.so"
    exe_cuda.export_library(str(path), {"t": target})
    exe2, meta = load_library(str(path))
    assert meta == {"t": target} and exe2.target.name == target
    if cuda_available():  # pragma: no cover - only on GPU machines
        ref = qcc.interpret(graph, [X])
        tol = 2e-2 if target == "cuda-fp16" else 1e-4
        for g, r in zip(exe2.run([X]), ref):
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
    else:
        with pytest.raises(BackendError, match="built for cuda; no CUDA device here"):
            exe2.run([X])
        with pytest.raises(BackendError, match="no CUDA device"):
            exe_cuda.run([X])
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: the generated CUDA source was not compiled")
    cu = tmp_path / "kernels.cu"
    cu.write_text(src)
    res = subprocess.run(["nvcc", "-arch=sm_80", "-cubin", "-o", str(tmp_path / "k.cubin"), str(cu)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


# -- a ResNet-18-size network ------------------------------------------------------------------------------
def resnet18(hw: int = 224, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder()
    count = [0]

    def conv(x: Any, cin: int, cout: int, k: int, s: int, p: int) -> Any:
        count[0] += 1
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        bias = b.param(np.zeros(cout, np.float32), f"b{count[0]}")
        return b.emit("conv2d", [x, b.param(w, f"w{count[0]}"), bias], {"stride": (s, s), "padding": (p,) * 4})

    x = b.input((1, 3, hw, hw), "f32", "x")
    y = b.emit("relu", [conv(x, 3, 64, 7, 2, 3)])
    y = b.emit("max_pool2d", [y], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)})
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for blk in range(2):
            s = stride if blk == 0 else 1
            h = conv(b.emit("relu", [conv(y, cin, cout, 3, s, 1)]), cout, cout, 3, 1, 1)
            short = conv(y, cin, cout, 1, s, 0) if (s != 1 or cin != cout) else y
            y = b.emit("relu", [b.emit("add", [h, short])])
            cin = cout
    y = b.emit("reshape", [b.emit("adaptive_avg_pool2d", [y], {"output_size": (1, 1)})], {"shape": (1, 512)})
    return b.output(b.emit("linear", [y, b.param((rng.standard_normal((10, 512)) * 0.05).astype(np.float32), "fc")]))


@pytest.mark.slow
def test_resnet18_builds_quickly_and_runs() -> None:
    from qcc.backends.tvm import build

    g = resnet18()
    for target in ("cpu-fp32", "cuda-fp16"):
        t0 = time.perf_counter()
        exe = build(g, Target(target))
        assert time.perf_counter() - t0 < 30, f"{target} build too slow"
    exe = build(g, Target("cpu-fp32", num_threads=2))
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(exe.run([x])[0], qcc.interpret(g, [x])[0], rtol=1e-3, atol=1e-3)
