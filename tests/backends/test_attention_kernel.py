"""The tiled attention kernel (backends/tvm/kernels/attention.py) against the interpreter: small odd shapes (N and M
not multiples of the tiles), causal, the mask layouts, fully masked rows; the tile rule; the CUDA build."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import qcc
from qcc.errors import BackendError
from qcc.ir.graph import GraphBuilder

pytest.importorskip("tvm")
from qcc.backends.tvm import build  # noqa: E402
from qcc.backends.tvm.kernels.attention import AttentionShape, check_tiles, choose_tiles  # noqa: E402
from qcc.target import Target  # noqa: E402

pytestmark = pytest.mark.tvm
rng = np.random.default_rng(7)


def _f(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# (name, lead dims, n, m, d, dv, mask shape or None, causal, forced tiles or None)
CASES = [
    ("odd-forced-tiles", (2, 3), 13, 29, 7, 5, None, False, (8, 16)),
    ("causal-rank3", (3,), 37, 37, 16, 16, None, True, (16, 16)),
    ("causal-longer-keys", (1, 2), 9, 21, 8, 8, None, True, (4, 16)),
    ("key-padding-mask", (2, 2), 11, 19, 8, 6, (2, 1, 1, 19), False, None),
    ("full-mask-causal", (1, 3), 10, 10, 4, 4, (1, 3, 10, 10), True, (8, 16)),
    ("mask-expanded", (2, 3, 2), 5, 6, 4, 3, (2, 1, 2, 5, 6), False, (4, 16)),
    ("rule-tiles", (1, 2), 70, 70, 16, 16, (70, 70), False, None),
]


def _graph():
    b = GraphBuilder()
    inputs, nodes = [], []
    for name, lead, n, m, d, dv, mask, causal, tiles in CASES:
        arrays = [_f(*lead, n, d), _f(*lead, m, d), _f(*lead, m, dv)]
        if mask is not None:
            mk = _f(*mask)
            mk[..., :2] = -np.inf  # the first keys hidden everywhere
            if mask[-2] > 1:
                mk[..., 1, :] = -np.inf  # and query row 1 entirely: its output must be 0
            arrays.append(mk)
        vals = [b.input(a.shape, "f32", f"{name}_{i}") for i, a in enumerate(arrays)]
        node = b.emit_node("attention", vals, {"scale": 0.3, "causal": causal}, name=name)
        if tiles:
            node.meta["attention_tile"] = tiles
        inputs += arrays
        nodes.append(node)
    return b.output(*(nd.output for nd in nodes)), inputs, nodes


@pytest.fixture(scope="module")
def results():
    graph, inputs, nodes = _graph()
    with np.errstate(all="ignore"):
        want = qcc.interpret(graph, inputs)
    got = build(graph, Target("cpu-fp32", num_threads=2)).run(inputs)
    return {c[0]: (g, w, nd) for c, g, w, nd in zip(CASES, got, want, nodes)}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_kernel_matches_interpreter(results, case):
    got, want, node = results[case]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    if node.meta.get("attention_tile"):
        assert node.meta["attention_tiles"] == node.meta["attention_tile"]
    assert node.meta["attention_workspace"] > 0


def test_fully_masked_rows_are_zero(results):
    got, _, _ = results["full-mask-causal"]
    assert np.all(got[..., 1, :] == 0) and np.all(got[..., 0, :] == 0)  # row 0 sees only keys 0, 1: both hidden


def test_tile_rule_follows_the_caches_and_workspace_is_linear():
    s = AttentionShape(bh=8, heads=8, n=8192, m=8192, d=64, dv=64, scale=0.125)
    br, bc = choose_tiles(s, l1d=32 * 1024, l2=1 << 20, lanes=16)
    assert (br, bc) == (32, 64)
    assert bc % 16 == 0 and 4 * br * (s.d + bc + s.dv) <= 32 * 1024  # Q, S/P and acc tiles fit L1
    small = choose_tiles(s, l1d=8 * 1024, l2=256 * 1024, lanes=8)
    assert small[0] * small[1] < br * bc and small[1] % 8 == 0
    tiny = AttentionShape(bh=2, heads=2, n=5, m=5, d=4, dv=4, scale=1.0)
    assert choose_tiles(tiny, lanes=16) == (8, 16)  # never past the sequence (rounded to lanes / powers of two)
    assert choose_tiles(s, "cuda") == (64, 32)  # 48 KB shared: K and V tiles of 32 keys × 64
    ws = [AttentionShape(8, 8, n, n, 64, 64, 0.1).workspace_bytes(br, bc, 2) for n in (512, 8192)]
    assert ws[0] == ws[1]  # tile buffers do not grow with the sequence
    with pytest.raises(BackendError, match="br"):
        check_tiles(s, 0, 16)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_attention_builds_and_exports(tmp_path):
    from qcc.backends.tvm.executable import cuda_available

    b = GraphBuilder()
    q, k, v = (b.input((1, 2, 40, 16), "f32", n) for n in "qkv")
    mask = b.input((1, 1, 1, 40), "f32", "mask")
    g = b.output(b.emit("attention", [q, k, v, mask], {"scale": 0.25, "causal": True}))
    for target in ("cuda-fp32", "cuda-fp16"):
        exe = build(g, Target(target, arch="sm_80"))
        path = tmp_path / f"attn-{target}.so"
        exe.export_library(str(path), {})
        assert path.stat().st_size > 0
        if cuda_available():  # on a GPU machine: the shared-memory kernel against the interpreter
            ins = [_f(1, 2, 40, 16) for _ in range(3)] + [np.zeros((1, 1, 1, 40), np.float32)]
            tol = 2e-2 if target == "cuda-fp16" else 1e-5
            np.testing.assert_allclose(exe.run(ins)[0], qcc.interpret(g, ins)[0], rtol=tol, atol=tol)


def test_qattention_kernel_is_bit_exact():
    """The integer kernel (three passes over the keys, scores recomputed) against the reference chain."""
    req = ("requantize", 1 << 30, 35, "i16", 0, 0, None, None)
    add = ("qadd", 1 << 29, 3 << 28, 30, 0, 1, 0, "i16", None, None)
    cases = [  # (lead, n, m, d, dv, mask shape, softmax)
        ((2, 3), 7, 13, 5, 3, (2, 1, 1, 13), ("isoftmax", 693, 1353, 959554, 30, 0)),
        ((1, 2), 9, 9, 8, 4, (9, 9), ("shiftmax", 20, 30, 4)),
        ((3,), 4, 6, 16, 16, None, ("isoftmax", 693, 1353, 959554, 30, 0)),
    ]
    b = GraphBuilder()
    ins, outs = [], []
    for ci, (lead, n, m, d, dv, mask, soft) in enumerate(cases):
        arrays = [rng.integers(-128, 128, (*lead, n, d)).astype(np.int8),
                  rng.integers(-128, 128, (*lead, m, d)).astype(np.int8),
                  rng.integers(0, 256, (*lead, m, dv)).astype(np.uint8)]
        if mask is not None:
            arrays.append(rng.integers(-20000, 100, mask).astype(np.int16))
        vals = [b.input(a.shape, {"int8": "i8", "uint8": "u8", "int16": "i16"}[str(a.dtype)], f"c{ci}_{i}")
                for i, a in enumerate(arrays)]
        attrs = {"q_zero_point": 2, "k_zero_point": -1, "v_zero_point": 128, "softmax": soft,
                 "steps": (req, add) if mask is not None else (req,)}
        outs.append(b.emit("qattention", vals, attrs))
        ins += arrays
    g = b.output(*outs)
    got = build(g, Target("cpu-int8", num_threads=2)).run(ins)
    for a, w in zip(got, qcc.interpret(g, ins)):
        assert a.dtype == np.int32
        np.testing.assert_array_equal(a, w)
