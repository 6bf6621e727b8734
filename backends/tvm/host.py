"""Host detection and qcc Target -> TVM target dicts.

CPU builds target the machine they run on: the features come from `/proc/cpuinfo` and the LLVM CPU name
from TVM's bundled LLVM (`llvm_get_system_cpu`). The qcc Target options `mcpu` and `mattr` override the
detected values. CUDA builds use `{"kind": "cuda", "arch": ...}` with an LLVM host.

Everything here except `llvm_system_cpu` is plain Python, so feature mapping is testable with a fake
`/proc/cpuinfo` text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from qcc.target import Target

DEFAULT_CUDA_ARCH = "sm_80"

# /proc/cpuinfo flag -> LLVM target feature. Only features that change TVM's code generation for the
# kernels qcc emits (vector width, FMA contraction, the int8 dot-product instructions).
CPUINFO_TO_LLVM: dict[str, str] = {
    "sse4_2": "+sse4.2",
    "avx": "+avx",
    "avx2": "+avx2",
    "fma": "+fma",
    "f16c": "+f16c",
    "avx512f": "+avx512f",
    "avx512bw": "+avx512bw",
    "avx512dq": "+avx512dq",
    "avx512vl": "+avx512vl",
    "avx512cd": "+avx512cd",
    "avx512_vnni": "+avx512vnni",
    "avx512vnni": "+avx512vnni",  # spelling of some kernels
    "avx_vnni": "+avxvnni",
    "avx512_bf16": "+avx512bf16",
    "avx512_fp16": "+avx512fp16",
    "amx_int8": "+amx-int8",
    "neon": "+neon",
    "asimd": "+neon",
    "asimddp": "+dotprod",
}

# Fallback CPU names when LLVM cannot tell (most capable feature first).
_MCPU_BY_FEATURE = (
    ("avx512_vnni", "cascadelake"),
    ("avx512f", "skylake-avx512"),
    ("avx2", "haswell"),
    ("avx", "sandybridge"),
)


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The feature flags of the first processor in a `/proc/cpuinfo` text (`flags` on x86, `Features` on Arm)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """Feature flags of this machine's CPU; empty when the file cannot be read (non-Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo_flags(f.read())
    except OSError:
        return frozenset()


def llvm_features(flags: Iterable[str]) -> list[str]:
    """LLVM `mattr` entries for cpuinfo flags, sorted and without duplicates."""
    return sorted({CPUINFO_TO_LLVM[f] for f in flags if f in CPUINFO_TO_LLVM})


def fallback_mcpu(flags: Iterable[str]) -> str | None:
    """A conservative LLVM CPU name implied by the feature flags, or None (generic)."""
    flags = set(flags)
    for feature, mcpu in _MCPU_BY_FEATURE:
        if feature in flags:
            return mcpu
    return None


def llvm_system_cpu() -> str | None:
    """LLVM's name for the host CPU (e.g. "znver4"), asked from TVM's bundled LLVM; None if unknown."""
    try:
        from tvm.target import codegen

        name = str(codegen.llvm_get_system_cpu())
    except Exception:  # an LLVM-less TVM or an odd platform: fall back to the flags
        return None
    return None if name in ("", "generic") else name


def num_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def llvm_target(target: Target, flags: Iterable[str] | None = None, system_cpu: str | None = None) -> dict[str, Any]:
    """The TVM LLVM target dict for a CPU qcc target.

    `mcpu` and `mattr` from the target options win; otherwise they are detected. `num-cores` is the
    target's thread count, which TVM uses to size parallel loops.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    opts = target.options
    mcpu = opts.get("mcpu") or system_cpu or llvm_system_cpu() or fallback_mcpu(flags)
    mattr = list(opts["mattr"]) if "mattr" in opts else llvm_features(flags)
    out: dict[str, Any] = {"kind": "llvm", "num-cores": int(target.num_threads)}
    if mcpu:
        out["mcpu"] = str(mcpu)
    if mattr:
        out["mattr"] = [str(a) for a in mattr]
    return out


def host_llvm_target() -> dict[str, Any]:
    """The LLVM target of host-side code for GPU builds: generic x86/Arm, so the library loads anywhere."""
    return {"kind": "llvm"}


def cuda_target(target: Target) -> dict[str, Any]:
    """The TVM CUDA target dict for a CUDA qcc target (`arch` option, default sm_80)."""
    # The limits dlight reads; 48 KiB static shared memory and 1024 threads hold on every arch since sm_20.
    return {"kind": "cuda", "arch": str(target.options.get("arch", DEFAULT_CUDA_ARCH)),
            "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024, "thread_warp_size": 32}


def target_dict(target: Target) -> dict[str, Any]:
    """The TVM target of a qcc target as a JSON-able dict (`host` nested for GPU targets)."""
    if target.device == "cpu":
        return llvm_target(target)
    if target.device == "cuda":
        return {**cuda_target(target), "host": host_llvm_target()}
    from qcc.errors import BackendError

    raise BackendError(f"the TVM backend builds for cpu and cuda targets, not {target.name!r}")


def missing_features(mattr: Iterable[str], flags: Iterable[str] | None = None) -> list[str]:
    """The `+feature` entries of a library's mattr that this host's CPU lacks."""
    have = set(llvm_features(cpu_flags() if flags is None else flags))
    known = set(CPUINFO_TO_LLVM.values())
    # Only judge features we know how to detect; an unknown one (user-given) is trusted.
    return sorted(a for a in mattr if a.startswith("+") and a in known and a not in have)
