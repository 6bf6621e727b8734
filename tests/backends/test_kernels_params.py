"""Parameter spaces, the default rule, the tuning database and the thread settings of the kernel templates."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.tvm.kernels import analytic_cost, rank_candidates
from qcc.backends.tvm.kernels.epilogue import normalize
from qcc.backends.tvm.kernels.params import (
    BatchMatmulShape,
    Conv2dShape,
    CpuInfo,
    DenseParams,
    DenseShape,
    candidates,
    check_params,
    default_params,
)
from qcc.errors import BackendError

SHAPES = [
    ("dense", DenseShape(7, 17, 13)),
    ("dense", DenseShape(128, 1024, 256)),
    ("batch_matmul", BatchMatmulShape(4, 128, 128, 64)),
    ("conv2d_direct", Conv2dShape(1, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1))),
    ("conv2d_direct", Conv2dShape(1, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3, 3, 3))),
    ("conv2d_direct", Conv2dShape(1, 32, 7, 7, 64, 3, 3, groups=2)),
    ("conv2d_im2col", Conv2dShape(1, 5, 9, 11, 17, 3, 3, (2, 2), (1, 1, 1, 1))),
    ("depthwise_conv2d", Conv2dShape(1, 96, 28, 28, 96, 3, 3, padding=(1, 1, 1, 1), groups=96)),
]


@pytest.mark.parametrize("cpu", [CpuInfo(), CpuInfo.from_flags({"avx2", "fma"}, 2)], ids=["avx512", "avx2"])
@pytest.mark.parametrize("kind,shape", SHAPES)
def test_candidates_are_valid_and_include_the_default(kind: str, shape, cpu: CpuInfo) -> None:
    cands = candidates(kind, shape, cpu)
    assert len(cands) == len(set(cands)) >= 2
    for p in cands:
        check_params(kind, shape, p, cpu)  # raises when invalid
        assert p.lanes == cpu.lanes
    assert default_params(kind, shape, cpu) in cands
    ranked = rank_candidates(kind, shape, cpu)
    assert ranked[0] == default_params(kind, shape, cpu) and sorted(map(str, ranked)) == sorted(map(str, cands))
    assert all(analytic_cost(kind, shape, p, cpu) > 0 for p in cands)


def test_default_rules() -> None:
    cpu = CpuInfo()
    d = default_params("dense", DenseShape(128, 256, 256), cpu)
    assert (d.mb, d.nv, d.lanes, d.kc) == (8, 2, 16, 256)
    assert default_params("dense", DenseShape(7, 17, 13), cpu).mb == 8  # pad 7 rows to 8 rather than 1-row tiles
    c = default_params("conv2d_direct", Conv2dShape(1, 64, 56, 56, 64, 3, 3, padding=(1, 1, 1, 1)), cpu)
    assert (c.ic_bn, c.oc_bn, c.ow_bn, c.unroll_kw) == (16, 16, 14, True)
    stem = default_params("conv2d_direct", Conv2dShape(1, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3, 3, 3)), cpu)
    assert stem.ic_bn == 3 and not stem.unroll_kw
    avx2 = default_params("dense", DenseShape(128, 256, 256), CpuInfo.from_flags({"avx2"}))
    assert avx2.lanes == 8 and avx2.mb * avx2.nv + avx2.nv + 1 <= 16


def test_check_params_rejects() -> None:
    s = DenseShape(16, 32, 24)
    with pytest.raises(BackendError, match="not valid"):
        check_params("dense", s, DenseParams(8, 2, 16, 7), CpuInfo())  # kc does not divide K
    with pytest.raises(BackendError, match="not valid"):
        check_params("dense", s, DenseParams(16, 4, 16, 24), CpuInfo())  # 64 accumulators > 32 registers
    with pytest.raises(BackendError, match="unknown kernel kind"):
        candidates("winograd", s)


def test_epilogue_normalize() -> None:
    assert normalize(["relu", ("clip", 0, 6)]) == (("relu",), ("clip", 0.0, 6.0))
    with pytest.raises(BackendError, match="unknown epilogue step"):
        normalize([("swish",)])
    with pytest.raises(BackendError, match="takes 2"):
        normalize([("clip", 1)])


def test_cpuinfo_from_flags() -> None:
    assert CpuInfo.from_flags({"avx512f", "avx2"}, 4, {1: 48 * 1024, 2: 2 << 20}).l1d == 48 * 1024
    assert CpuInfo.from_flags({"sse2"}).lanes == 4
    assert CpuInfo.detect().cores >= 1


def test_tuning_database_round_trip_and_concurrent_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qcc.backends.tvm.kernels import tune

    db = tmp_path / "sub" / "tuning.json"
    monkeypatch.setenv("QCC_TUNE_DB", str(db))
    assert tune.db_path() == db
    s = DenseShape(8, 32, 16)
    assert tune.lookup("dense", s, {"kind": "llvm"}) is None
    p = DenseParams(4, 1, 16, 16, "nm")
    tune.save_record("dense", s, p, 1e-5, {"kind": "llvm"})
    assert tune.lookup("dense", s, {"kind": "llvm"}) == p
    assert tune.lookup("dense", s, {"kind": "llvm", "mcpu": "other"}) is None  # keyed by target

    def writer(i: int) -> None:
        tune.save_record("dense", DenseShape(i + 100, 32, 16), p, float(i), {"kind": "llvm"})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads(db.read_text())
    assert len(data["records"]) == 9  # no writer lost another's record
    assert not [f for f in os.listdir(db.parent) if f.startswith(".tuning-")]  # no temp files left
    db.write_text("{broken")
    with pytest.raises(BackendError, match="cannot read"):
        tune.lookup("dense", s, {"kind": "llvm"})


@pytest.mark.tvm
def test_tune_records_winner_that_make_kernel_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tvm")
    from qcc.backends.tvm.kernels import host_target, make_kernel, tune

    monkeypatch.setenv("QCC_TUNE_DB", str(tmp_path / "t.json"))
    shapes = [(9, 24), (40, 24)]
    cands = [DenseParams(2, 1, 16, 24), DenseParams(4, 2, 16, 24, "nm")]
    best, results = tune.tune("dense", shapes, candidates=cands)
    assert len(results) == 2 and all(t > 0 for _, t in results) and best in cands
    assert tune.lookup("dense", DenseShape(9, 40, 24), host_target()) == best
    k = make_kernel("dense", shapes, target=host_target())
    assert k.params == best  # the database wins over the rule
    x, w = np.ones((9, 24), np.float32), np.ones((40, 24), np.float32)
    np.testing.assert_allclose(k.build()(x, k.pack_weight(w)), np.full((9, 40), 24.0))


@pytest.mark.tvm
def test_non_default_candidates_build_and_match() -> None:
    pytest.importorskip("tvm")
    from qcc.backends.tvm.kernels import make_kernel

    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 16, 6, 6)).astype(np.float32), rng.standard_normal((32, 16, 3, 3)).astype(
        np.float32)
    from qcc.backends.tvm.kernels.layout import from_nchwc
    from qcc.ir.ops import evaluate

    ref = evaluate("conv2d", [x, w], {"padding": (1, 1, 1, 1)})[0]
    shape = Conv2dShape(1, 16, 6, 6, 32, 3, 3, padding=(1, 1, 1, 1))
    for p in rank_candidates("conv2d_direct", shape)[1:3]:
        k = make_kernel("conv2d_direct", [x.shape, w.shape], attrs={"padding": (1, 1, 1, 1)}, params=p,
                        data_layout="NCHW", use_db=False)
        np.testing.assert_allclose(from_nchwc(k.build()(x, k.pack_weight(w)), 32), ref, rtol=1e-4, atol=1e-4)


def test_configure_threads_sets_the_pool_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcc.backends.tvm.kernels import configure_threads

    for key in ("TVM_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT", "TVM_BIND_THREADS"):
        monkeypatch.delenv(key, raising=False)
    configure_threads(2)
    assert os.environ["TVM_NUM_THREADS"] == "2" and os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "0"
    assert os.environ["TVM_BIND_THREADS"] == "0"
    with pytest.raises(BackendError):
        configure_threads(0)
