"""Host CPU detection, target dicts, the TVM thread pool settings, and the tvm-ffi pin smoke test."""

from __future__ import annotations

import threading

import pytest

from qcc.backends.tvm import host
from qcc.errors import BackendError
from qcc.target import Target

pytestmark = pytest.mark.tvm

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 fma avx avx2 avx512f avx512bw avx512vl avx512_vnni f16c
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse
"""


def test_parse_cpuinfo_takes_first_processor() -> None:
    flags = host.parse_cpuinfo_flags(CPUINFO)
    assert {"avx2", "avx512f", "avx512_vnni", "fma"} <= flags
    assert host.parse_cpuinfo_flags("processor: 0\nmodel name: x\n") == frozenset()


def test_llvm_features_map_flags() -> None:
    feats = host.llvm_features(host.parse_cpuinfo_flags(CPUINFO))
    assert {"+avx2", "+fma", "+avx512f", "+avx512vnni", "+avx512bw"} <= set(feats)
    assert feats == sorted(feats) and len(feats) == len(set(feats))
    assert host.llvm_features({"avx512vnni", "avx512_vnni"}) == ["+avx512vnni"]  # both spellings, once


def test_fallback_mcpu_prefers_most_capable() -> None:
    assert host.fallback_mcpu({"avx2", "avx512f", "avx512_vnni"}) == "cascadelake"
    assert host.fallback_mcpu({"avx2", "fma"}) == "haswell"
    assert host.fallback_mcpu({"sse2"}) is None


def test_llvm_target_detects_and_options_override() -> None:
    flags = host.parse_cpuinfo_flags(CPUINFO)
    t = host.llvm_target(Target("cpu-fp32", num_threads=3), flags=flags, system_cpu="znver4")
    assert t["kind"] == "llvm" and t["mcpu"] == "znver4" and t["num-cores"] == 3
    assert "+avx512vnni" in t["mattr"]
    t = host.llvm_target(Target("cpu-fp32", mcpu="haswell", mattr=["+avx2"], num_threads=1), flags=flags,
                         system_cpu="znver4")
    assert t["mcpu"] == "haswell" and t["mattr"] == ["+avx2"]


def test_real_host_target_is_accepted_by_tvm() -> None:
    from qcc.backends.tvm.build import make_tvm_target

    tdict = host.target_dict(Target("cpu-fp32", num_threads=2))
    tgt = make_tvm_target(tdict)
    assert tgt.kind.name == "llvm"
    assert host.missing_features(tdict.get("mattr", [])) == []  # what we detect, we have


def test_cuda_target_dict() -> None:
    assert host.cuda_target(Target("cuda-fp16"))["arch"] == host.DEFAULT_CUDA_ARCH
    t = host.target_dict(Target("cuda-fp32", arch="sm_90"))
    assert t["kind"] == "cuda" and t["arch"] == "sm_90" and t["host"]["kind"] == "llvm"
    with pytest.raises(BackendError, match="cpu and cuda"):
        host.target_dict(Target("accel-int8"))


def test_missing_features() -> None:
    flags = {"avx2", "fma"}
    assert host.missing_features(["+avx2", "+fma"], flags) == []
    assert host.missing_features(["+avx2", "+avx512f"], flags) == ["+avx512f"]
    assert host.missing_features(["+some-unknown-feature"], flags) == []  # unknown: trusted


def test_save_json_smoke() -> None:
    """The tvm-ffi pin: with ffi 0.1.15 this segfaults (compiler.md §0.1)."""
    tvm = pytest.importorskip("tvm")
    text = tvm.ir.save_json(tvm.tirx.Var("x", "int32"))
    assert '"root_index"' in text


def test_thread_pool_env_and_per_thread_count() -> None:
    import os

    from qcc.backends.tvm import runtime

    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == runtime.ENV_DEFAULTS["TVM_THREAD_POOL_SPIN_COUNT"]
    assert os.environ.get("TVM_BIND_THREADS") is not None
    seen: dict[int, int] = {}

    def work(n: int) -> None:  # TVM's pool is thread-local: a fresh thread gets a fresh pool
        seen[n] = runtime.configure_threads(n)
        assert runtime.current_threads() == seen[n]

    for n in (1, 2):
        t = threading.Thread(target=work, args=(n,))
        t.start()
        t.join()
    assert seen == {1: 1, 2: 2}


def test_importing_the_backend_package_does_not_import_tvm() -> None:
    import subprocess
    import sys

    code = ("import sys, qcc.backends, qcc.backends.tvm, qcc.backends.tvm.host; "
            "assert 'tvm' not in sys.modules, 'tvm imported eagerly'; "
            "import os; assert os.environ['TVM_THREAD_POOL_SPIN_COUNT'] == '0'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("TVM_")})
    assert res.returncode == 0, res.stderr
