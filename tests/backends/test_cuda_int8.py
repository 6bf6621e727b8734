"""CUDA int8 GEMM kernels (lower_cuda_int8 + schedules/cuda_int8): `__dp4a` for qconv2d / qlinear / qmatmul.

Without a GPU here, four things are checked: (1) the kernel each node lowers to, before scheduling, compiled for
the CPU, equals the interpreter bit for bit (zero points, padding, im2col, tile padding, int32 wrap-around);
(2) the scheduled kernel, tensorized with intrinsics whose implementation is their own description and with its
thread bindings made serial, still equals it on the CPU; (3) with the real intrinsics the CUDA source calls
`__dp4a` / `wmma::mma_sync`, and nvcc's PTX holds `dp4a` / `wmma.mma.sync ... s8`; (4) a whole cuda-int8 graph
routes those ops to these kernels (and an arch without dp4a does not). Not checked here: the hardware
instructions' own results and the parallel execution (barriers), which need a GPU."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from qcc.ir.graph import GraphBuilder
from qcc.ir.ops import evaluate
from qcc.target import Target

tvm = pytest.importorskip("tvm")
from qcc.backends.tvm.lower_cuda_int8 import plan_int8_gemm  # noqa: E402
from qcc.backends.tvm.schedules.cuda_int8 import cuda_sources, has_dp4a, has_int8_tensor_cores  # noqa: E402

pytestmark = pytest.mark.tvm
RNG = np.random.default_rng(0)
NP = {"i8": np.int8, "u8": np.uint8, "i4": np.int8, "u4": np.uint8, "i32": np.int32}
LIMITS = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}


def rand(shape, dtype):
    lo, hi = LIMITS[dtype]
    return RNG.integers(lo, hi + 1, size=shape).astype(NP[dtype])


def node_for(op, arrays, dtypes, consts, attrs):
    """A one-node graph: runtime inputs where `consts[i]` is False, params elsewhere."""
    b = GraphBuilder()
    ins = []
    for i, (a, dt, c) in enumerate(zip(arrays, dtypes, consts)):
        ins.append(b.param(a, f"p{i}") if c else b.input(a.shape, dt, f"in{i}"))
    b.emit(op, ins, attrs)
    return b.graph.nodes[0]


def run_on_cpu(plan, arrays):
    """Compile the unscheduled kernel for the CPU and run it on the node's arrays."""
    lib = tvm.compile(tvm.IRModule({"main": plan.func}), target="llvm")
    args = [np.ascontiguousarray(spec[1]) if spec[0] == "const" else arrays[spec[1]].reshape(spec[2])
            for spec in plan.args]
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(plan.out_shape, np.int32), dev)
    lib(*[tvm.runtime.tensor(a, dev) for a in args], out)
    return out.numpy()


CONV = {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1}
CASES = [
    # op, arrays, dtypes, constant?, attrs
    ("qconv2d", [rand((1, 5, 7, 6), "u8"), rand((20, 5, 3, 3), "i8"), rand((20,), "i8").astype(np.int32)],
     ["u8", "i8", "i32"], [False, True, True], {**CONV, "x_zero_point": 131}),
    ("qconv2d", [rand((2, 3, 9, 9), "i8"), rand((8, 3, 3, 2), "i4")], ["i8", "i4"], [False, True],
     {"stride": (2, 1), "padding": (2, 0, 1, 1), "dilation": (2, 1), "groups": 1, "x_zero_point": -5,
      "w_zero_point": 3}),
    ("qlinear", [rand((2, 3, 40), "u8"), rand((33, 40), "i8"), rand((33,), "i8").astype(np.int32) * 1000],
     ["u8", "i8", "i32"], [False, True, True], {"x_zero_point": 7}),
    ("qlinear", [rand((1, 300), "u4"), rand((10, 300), "i8")], ["u4", "i8"], [False, True], {"x_zero_point": 0}),
    ("qmatmul", [rand((4, 17), "i8"), rand((17, 9), "i4")], ["i8", "i8"], [False, True],  # w − zw fits int8
     {"a_zero_point": 2, "b_zero_point": -1}),
    ("qmatmul", [rand((2, 3, 12, 20), "u8"), rand((2, 3, 20, 18), "i8")], ["u8", "i8"], [False, False],
     {"a_zero_point": 0, "b_zero_point": 0}),
    ("qmatmul", [rand((3, 12, 20), "u8"), rand((20, 70), "u8")], ["u8", "u8"], [False, False],
     {"a_zero_point": 0, "b_zero_point": 0}),
    ("qmatmul", [rand((2, 40, 24), "i8"), rand((2, 24, 33), "i4")], ["i8", "i4"], [False, False],
     {"a_zero_point": 0, "b_zero_point": 0}),
]


@pytest.mark.parametrize("tensor_cores", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_unscheduled_kernel_equals_the_interpreter(case, tensor_cores):
    op, arrays, dtypes, consts, attrs = CASES[case]
    node = node_for(op, arrays, dtypes, consts, attrs)
    plan = plan_int8_gemm(node, [a if c else None for a, c in zip(arrays, consts)], tensor_cores)
    assert plan is not None
    # tensor cores take s8 × s8: u8 activations against a constant weight are shifted; two activations need s8
    signed = all(NP[d] == np.int8 for d in dtypes[:2])
    assert plan.kind == ("wmma" if tensor_cores and (consts[1] or signed) else "dp4a")
    want = evaluate(op, arrays, node.attrs)[0]
    got = run_on_cpu(plan, arrays).reshape(want.shape)
    np.testing.assert_array_equal(got, want)


def test_int32_accumulation_wraps_like_the_reference():
    # 2048 products of 255·127 plus a large bias overflow int32: both sides wrap the same way.
    x, w = np.full((1, 2048), 255, np.uint8), np.full((4, 2048), 127, np.int8)
    bias = np.full((4,), 2**31 - 1, np.int32)
    node = node_for("qlinear", [x, w, bias], ["u8", "i8", "i32"], [False, True, True], {"x_zero_point": 0})
    plan = plan_int8_gemm(node, [None, w, bias])
    want = evaluate("qlinear", [x, w, bias], node.attrs)[0]
    np.testing.assert_array_equal(run_on_cpu(plan, [x, w, bias]), want)


def test_declines_what_dp4a_cannot_take():
    x, w = rand((1, 4, 5, 5), "u8"), rand((4, 1, 3, 3), "i8")
    grouped = node_for("qconv2d", [x, w], ["u8", "i8"], [False, True], {**CONV, "groups": 4, "x_zero_point": 0})
    assert plan_int8_gemm(grouped, [None, w]) is None
    wide = rand((4, 4, 3, 3), "i8")
    big_zw = node_for("qconv2d", [x, wide], ["u8", "i8"], [False, True], {**CONV, "x_zero_point": 0,
                                                                          "w_zero_point": 100})
    assert plan_int8_gemm(big_zw, [None, wide]) is None  # w − zw overflows int8
    a, b = rand((4, 8), "u8"), rand((8, 4), "u8")
    zp = node_for("qmatmul", [a, b], ["u8", "u8"], [False, False], {"a_zero_point": 3, "b_zero_point": 0})
    assert plan_int8_gemm(zp, [None, None]) is None
    assert not has_dp4a(tvm.target.Target({"kind": "cuda", "arch": "sm_52"}))
    assert has_dp4a(tvm.target.Target({"kind": "cuda", "arch": "sm_61"}))
    assert not has_dp4a(tvm.target.Target("llvm"))
    assert has_int8_tensor_cores(tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}))
    assert not has_int8_tensor_cores(tvm.target.Target({"kind": "cuda", "arch": "sm_75"}))


@pytest.mark.parametrize(("case", "tensor_cores"), [(0, False), (6, False), (0, True), (7, True)])
def test_scheduled_kernel_is_tensorized(case, tensor_cores):
    op, arrays, dtypes, consts, attrs = CASES[case]
    node = node_for(op, arrays, dtypes, consts, attrs)
    plan = plan_int8_gemm(node, [a if c else None for a, c in zip(arrays, consts)], tensor_cores)
    arch = "sm_80" if tensor_cores else "sm_75"
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    ex = tvm.compile(tvm.IRModule({"main": plan.schedule()}), target=target)
    body = "\n".join(cuda_sources(ex)).split("extern \"C\" __global__")[-1]  # the kernel definition
    assert ("nvcuda::wmma::mma_sync(" if plan.kind == "wmma" else "__dp4a(") in body


@pytest.fixture
def intrinsics_as_loops(monkeypatch):
    """Tensorize with each intrinsic's own description as its implementation: the same region matching as the
    real dp4a / WMMA intrinsics, but plain loops the CPU can run."""
    from tvm import s_tir

    real = s_tir.Schedule.tensorize

    def tensorize(self, loop, name, preserve_unit_iters=True):
        emulated = f"qcc_test_loops_{name}"
        try:
            s_tir.TensorIntrin.get(emulated)
        except Exception:  # not registered yet
            desc = s_tir.TensorIntrin.get(name).desc
            s_tir.TensorIntrin.register(emulated, desc, desc)
        return real(self, loop, emulated, preserve_unit_iters)

    monkeypatch.setattr(s_tir.Schedule, "tensorize", tensorize)


@pytest.mark.parametrize(("case", "tensor_cores"), [(0, False), (1, False), (2, False), (5, False), (6, False),
                                                   (0, True), (3, True), (4, True), (7, True)])
def test_scheduled_kernel_simulated_on_the_cpu_equals_the_interpreter(case, tensor_cores, intrinsics_as_loops):
    # The whole schedule (tiles, shared-memory fetches with the im2col / padding inlined, register or fragment
    # accumulators, the inlined epilogue) with thread bindings turned into serial loops: each simulated thread
    # redoes its block's cooperative fetch, which is what the barrier-separated parallel fetch produces.
    op, arrays, dtypes, consts, attrs = CASES[case]
    node = node_for(op, arrays, dtypes, consts, attrs)
    plan = plan_int8_gemm(node, [a if c else None for a, c in zip(arrays, consts)], tensor_cores)
    text = tvm.IRModule({"main": plan.schedule()}).script()
    assert "T.thread_binding" in text
    serial = re.sub(r'T\.thread_binding\((\d+), thread="[a-zA-Z.]+"\)', r"range(\1)", text)
    plan.func = tvm.script.from_source(serial)["main"]
    want = evaluate(op, arrays, node.attrs)[0]
    np.testing.assert_array_equal(run_on_cpu(plan, arrays).reshape(want.shape), want)


def tiny_int8_cnn():
    """quantize → qconv2d → requantize → qlinear, the shape of a realize-integer output."""
    b = GraphBuilder()
    x = b.input((1, 4, 8, 8), "u8", "x")
    w = b.param(rand((16, 4, 3, 3), "i8"), "w")
    bias = b.param(rand((16,), "i8").astype(np.int32), "b")
    acc = b.emit("qconv2d", [x, w, bias], {**CONV, "x_zero_point": 0})
    mult = b.param(np.full((16, 1, 1), 1 << 30, np.int32), "m")
    shift = b.param(np.full((16, 1, 1), 38, np.int32), "s")
    y = b.emit("requantize", [acc, mult, shift], {"dtype": "u8", "zero_point": 0, "input_zero_point": 0})
    flat = b.emit("reshape", [y], {"shape": (1, 16 * 64)})
    wf = b.param(rand((10, 16 * 64), "i8"), "wf")
    return b.output(b.emit("qlinear", [flat, wf], {"x_zero_point": 0}))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_int8_graph_uses_dp4a_or_tensor_cores_and_exports(tmp_path):
    from qcc.backends.tvm import build

    exe = build(tiny_int8_cnn(), Target("cuda-int8", arch="sm_75"))
    dp4a_kernels = sorted(k for k in exe.kernels if "dp4a" in k)
    assert len(dp4a_kernels) == 2, exe.kernels
    assert "__dp4a(" in "\n".join(cuda_sources(exe.module))
    path = exe.export_library(str(tmp_path / "q.so"))
    assert (tmp_path / "q.so").stat().st_size > 0 and path
    ptx = _ptx("\n".join(cuda_sources(exe.module)), "sm_75", tmp_path)
    assert "dp4a.u32.s32" in ptx  # the u8 × s8 form (activations u8, weights i8)
    fused = build(tiny_int8_cnn(), Target("cuda-int8", arch="sm_75"), fusion="auto")  # qcc's fuse pass groups
    assert {"qconv2d_dp4a", "qlinear_dp4a"} <= set(fused.kernels)  # the anchor runs alone, requantize fused
    ampere = build(tiny_int8_cnn(), Target("cuda-int8", arch="sm_80"))  # int8 tensor cores
    assert sorted(k for k in ampere.kernels if "wmma" in k) == ["qconv2d_wmma", "qlinear_wmma"]
    ptx = _ptx("\n".join(cuda_sources(ampere.module)), "sm_80", tmp_path)
    assert "wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32" in ptx
    old = build(tiny_int8_cnn(), Target("cuda-int8", arch="sm_52"))  # Maxwell: no dp4a, the generic kernels
    assert not any("dp4a" in k or "wmma" in k for k in old.kernels)


def _ptx(source: str, arch: str, tmp_path) -> str:
    """nvcc's PTX for a CUDA source (what the exported library embeds, compiled the same way)."""
    src, out = tmp_path / "k.cu", tmp_path / "k.ptx"
    src.write_text(source)
    done = subprocess.run(["nvcc", "--ptx", f"-arch={arch}", "-o", str(out), str(src)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text()
