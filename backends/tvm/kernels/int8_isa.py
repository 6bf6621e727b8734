"""Instruction-set side of the int8 templates (kernels/int8.py): the tensor intrinsics and which one a build uses.

`vnni`: AVX-512 VNNI `vpdpbusd`, 16 int32 lanes × 4 u8·s8 products per instruction. `avx2`: the exact fallback
for CPUs without it, 8 lanes × 2 products, operands widened to int16 and multiplied with `vpmaddwd` (int16 ×
int16 → int32, the pair summed in int32: exact, since |u8| ≤ 255 and |s8| ≤ 128 give pair sums below 2^17;
`vpmaddubsw` would saturate its int16 pair sums and is not used). `isa()` reads the build target's features.
"""

from __future__ import annotations

from qcc.errors import BackendError

INTRIN = "qcc_dot_16x4_vnni"
INTRIN_AVX2 = "qcc_dot_8x2_avx2"  # the exact AVX2 fallback: int16 widening + vpmaddwd
# per ISA: (output lanes per instruction, K bytes per instruction, intrinsic)
_ISA = {"vnni": (16, 4, INTRIN), "avx2": (8, 2, INTRIN_AVX2)}
_registered = False


def _register_intrin() -> None:
    """Register the VNNI dot-product intrinsic with i8x64 operands (compiler.md §5.6; the stock one needs a fix
    for LLVM ≥ 20) and the AVX2 vpmaddwd one."""
    global _registered
    if _registered:
        return
    # Importing tensor_intrin directly costs minutes in a process that has torch loaded (inspect.stack per
    # TVMScript function); the preload patches that away.
    from qcc.backends.tvm.schedules import preload_tensor_intrinsics

    preload_tensor_intrinsics()
    from tvm import s_tir
    from tvm.s_tir.tensor_intrin.x86 import dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni_impl(A: T.Buffer((4,), "uint8", offset_factor=1),  # type: ignore[valid-type]
                  B: T.Buffer((16, 4), "int8", offset_factor=1),  # type: ignore[valid-type]
                  C: T.Buffer((16,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="uint8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    @T.prim_func(s_tir=True)
    def avx2_desc(A: T.Buffer((2,), "uint8", offset_factor=1),  # type: ignore[valid-type]
                  B: T.Buffer((8, 2), "int8", offset_factor=1),  # type: ignore[valid-type]
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def avx2_impl(A: T.Buffer((2,), "uint8", offset_factor=1),  # type: ignore[valid-type]
                  B: T.Buffer((8, 2), "int8", offset_factor=1),  # type: ignore[valid-type]
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:  # type: ignore[valid-type]
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # (a0, a1) widened to int16 and broadcast as one 32-bit pair; the 8×2 weights sign-extended to int16:
            # vpmaddwd then gives a0·w0 + a1·w1 per int32 lane, exactly (|products| ≤ 255·128).
            a = T.reinterpret(T.broadcast(T.reinterpret(T.Cast("int16x2", A.vload([0], "uint8x2")), dtype="int32"),
                                          8), dtype="int16x16")
            b = T.Cast("int16x16", B.vload([0, 0], dtype="int8x16"))
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, b, dtype="int32x8")

    for name, desc, impl in ((INTRIN, dot_product_16x4_u8i8i32_desc, vnni_impl),
                             (INTRIN_AVX2, avx2_desc, avx2_impl)):
        try:
            s_tir.TensorIntrin.register(name, desc, impl)
        except Exception:  # already registered by an earlier import in this process
            pass
    _registered = True


def _threads() -> int:
    """Worker threads the kernels will run on: the current TVM target's num-cores, else this machine's cores."""
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is not None and tgt.attrs.get("num-cores"):
        return max(int(tgt.attrs["num-cores"]), 1)
    from qcc.backends.tvm.host import num_cores

    return num_cores()


def enabled() -> bool:
    """The VNNI template is on when this CPU has AVX-512 VNNI, unless QCC_INT8_VNNI=0 (default-on switch).

    The kernels are compiled for the host's LLVM target (host.target_dict); a build for a CPU without VNNI must
    set QCC_INT8_VNNI=0. (The int4 kernels use this; the int8 template asks `isa()`, which also knows AVX2.)"""
    import os

    from qcc.backends.tvm.host import cpu_flags

    if os.environ.get("QCC_INT8_VNNI", "1") == "0":
        return False
    return "avx512_vnni" in cpu_flags()


def isa() -> str | None:
    """The instruction set of the int8 template for the build in progress: "vnni" (AVX-512 VNNI vpdpbusd),
    "avx2" (exact int16 widening + vpmaddwd) or None (the generic integer rules).

    QCC_INT8_VNNI=0 turns the template off; QCC_INT8_ISA=vnni|avx2 forces one (tests, cross builds). Otherwise
    the features come from the current TVM target (the build lowers inside `with target:`, whose mattr comes
    from the qcc Target's mcpu / mattr options or the host), or from this CPU's flags outside a build."""
    import os

    if os.environ.get("QCC_INT8_VNNI", "1") == "0":
        return None
    forced = os.environ.get("QCC_INT8_ISA", "")
    if forced:
        if forced not in _ISA:
            raise BackendError(f"QCC_INT8_ISA must be one of {sorted(_ISA)}, got {forced!r}")
        return forced
    import tvm

    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is not None and tgt.kind.name == "llvm" and tgt.attrs.get("mattr"):
        feats = {str(a) for a in tgt.attrs["mattr"]}
        return "vnni" if "+avx512vnni" in feats else "avx2" if "+avx2" in feats else None
    from qcc.backends.tvm.host import cpu_flags

    flags = cpu_flags()
    return "vnni" if "avx512_vnni" in flags else "avx2" if "avx2" in flags else None
