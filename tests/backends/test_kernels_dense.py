"""Dense and batched-matmul kernel templates against the op references (qcc.ir.ops.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import BackendError
from qcc.ir.ops import evaluate

pytestmark = pytest.mark.tvm
pytest.importorskip("tvm")

from qcc.backends.tvm.kernels import make_kernel  # noqa: E402
from qcc.backends.tvm.kernels.dense import pack_dense_weight, unpack_dense_weight  # noqa: E402
from qcc.backends.tvm.kernels.epilogue import reference  # noqa: E402
from qcc.backends.tvm.kernels.params import CpuInfo, DenseParams  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,k,n,params", [
    (7, 13, 17, None),                                   # primes: x rows padded, W columns padded
    (1, 5, 3, None),                                     # a single row (classifier head)
    (33, 64, 40, DenseParams(mb=4, nv=1, lanes=16, kc=32, order="nm")),  # K tiled, other loop order
])
def test_dense_bias_residual_relu(m: int, k: int, n: int, params: DenseParams | None) -> None:
    x, w, b, r = rand(m, k), rand(n, k), rand(n), rand(m, n)
    epi = (("bias",), ("add",), ("relu",))
    kern = make_kernel("dense", [x.shape, w.shape], params=params, epilogue=epi, use_db=False)
    assert [a.role for a in kern.args] == ["data", "weight", "bias", "residual", "output"]
    y = kern.build()(x, kern.pack_weight(w), kern.pack_bias(b), r)
    ref = np.maximum(evaluate("linear", [x, w, b], {})[0] + r, 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_dense_constant_matmul_operand_and_activations() -> None:
    # x @ W with W [K, N] (a constant matmul operand, packed from "KN"), through every activation step
    x, w = rand(6, 19), rand(19, 23) * 0.5
    for epi in ((("gelu",),), (("hardswish",),), (("relu6",), ("scale", 0.5)), (("clip", -0.25, 0.75),)):
        kern = make_kernel("dense", [x.shape, w.shape], attrs={"w_layout": "KN"}, epilogue=epi, use_db=False)
        y = kern.build()(x, kern.pack_weight(w))
        ref = reference(evaluate("matmul", [x, w], {})[0], epi, None, [], 1)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5, err_msg=str(epi))


def test_dense_flattens_leading_dims_and_checks_shapes() -> None:
    kern = make_kernel("dense", [(2, 3, 8), (5, 8)], use_db=False)
    assert kern.shape.M == 6 and kern.arg("data").shape == (6, 8)
    with pytest.raises(BackendError, match="does not match"):
        make_kernel("dense", [(2, 9), (5, 8)], use_db=False)
    with pytest.raises(BackendError, match="expected shape"):
        kern.build()(np.zeros((6, 9), np.float32), np.zeros(kern.arg("weight").shape, np.float32))


def test_dense_weight_pack_round_trip() -> None:
    w = rand(37, 11)
    wp = pack_dense_weight(w, 32)
    assert wp.shape == (2, 11, 32)
    np.testing.assert_array_equal(unpack_dense_weight(wp, 37), w)
    assert not wp[1, :, 5:].any()  # padding columns are zero
    np.testing.assert_array_equal(pack_dense_weight(w.T, 32, "KN"), wp)


@pytest.mark.parametrize("b,m,k,n,transpose_b", [
    (2, 7, 13, 17, False),    # odd N: b copied into padded panels
    (3, 16, 8, 32, False),    # direct rows of b, no copy
    (2, 9, 16, 12, True),     # Q·Kᵀ form: b given [B, N, K]
])
def test_batch_matmul(b: int, m: int, k: int, n: int, transpose_b: bool) -> None:
    a = rand(b, m, k)
    bm = rand(b, n, k) if transpose_b else rand(b, k, n)
    epi = (("scale", 0.125), ("add",))
    r = rand(b, m, n)
    kern = make_kernel("batch_matmul", [a.shape, bm.shape], attrs={"transpose_b": transpose_b}, epilogue=epi,
                       use_db=False)
    y = kern.build()(a, bm, r)
    bb = bm.transpose(0, 2, 1) if transpose_b else bm
    np.testing.assert_allclose(y, evaluate("matmul", [a, bb], {})[0] * 0.125 + r, rtol=1e-4, atol=1e-4)


def test_avx2_width_kernel_builds_and_matches() -> None:
    # The AVX2 rule (8 lanes, 16 registers) gives other tiles; they run on any x86-64 with AVX2.
    cpu = CpuInfo.from_flags({"avx2", "fma"}, cores=2)
    assert cpu.lanes == 8 and cpu.vregs == 16
    x, w = rand(10, 24), rand(21, 24)
    kern = make_kernel("dense", [x.shape, w.shape], cpu=cpu, use_db=False)
    assert kern.params.lanes == 8 and kern.params.mb * kern.params.nv + kern.params.nv + 1 <= 16
    np.testing.assert_allclose(kern.build()(x, kern.pack_weight(w)), x @ w.T, rtol=1e-4, atol=1e-4)
