"""Batched matmul of two activations (attention): y[B, M, N] = epilogue(a[B, M, K] · b[B, K, N]).

b is an activation, so nothing is packed at compile time. In the row-major [B, K, N] case the micro-kernel of
`dense.schedule_gemm` reads b's rows directly: for a fixed k, the nv·lanes columns of a tile are contiguous,
exactly like a packed weight panel. When b arrives transposed ([B, N, K], `transpose_b`, e.g. Q·Kᵀ without a
separate transpose) or N is not a multiple of the tile, b is first copied into panels [B, N/bn, K, bn] (a pass
over b, 1/M of the multiply's work).
"""

from __future__ import annotations

from qcc.backends.tvm.kernels.dense import schedule_gemm
from qcc.backends.tvm.kernels.epilogue import Epilogue, apply_steps, has_bias, num_residuals
from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, shape_str
from qcc.backends.tvm.kernels.params import BatchMatmulShape, DenseParams


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def batch_matmul_kernel(shape: BatchMatmulShape, p: DenseParams, epilogue: Epilogue = ()) -> Kernel:
    """The scheduled batched matmul. Args: a [B, M, K], b [B, K, N] (or [B, N, K] when transpose_b),
    bias [N] (if the epilogue has one), residuals [B, M, N], output y [B, M, N]."""
    from tvm import s_tir, te

    Bt, M, N, K = shape.B, shape.M, shape.N, shape.K
    bn = p.bn
    No, Mp = _ceil(N, bn), _ceil(M, p.mb) * p.mb
    A = te.placeholder((Bt, M, K), "float32", "a")
    b_shape = (Bt, N, K) if shape.transpose_b else (Bt, K, N)
    Bm = te.placeholder(b_shape, "float32", "b")
    pads: list[str] = []
    Ap = A
    if Mp != M:
        Ap = te.compute((Bt, Mp, K), lambda z, i, j: te.if_then_else(i < M, A[z, te.min(i, M - 1), j], 0.0),
                        name="a_pad")
        pads.append("a_pad")
    k = te.reduce_axis((0, K), "k")
    if shape.transpose_b or N % bn:
        def b_at(z, q, kk, j):  # noqa: ANN001, ANN202 - TE index callback
            n = q * bn + j
            nn = te.min(n, N - 1)
            v = Bm[z, nn, kk] if shape.transpose_b else Bm[z, kk, nn]
            return v if N % bn == 0 else te.if_then_else(n < N, v, 0.0)

        Bp = te.compute((Bt, No, K, bn), b_at, name="b_pack")
        pads.append("b_pack")
        C = te.compute((Bt, Mp, No * bn), lambda z, i, j: te.sum(Ap[z, i, k] * Bp[z, j // bn, k, j % bn], axis=k),
                       name="gemm")
    else:
        C = te.compute((Bt, Mp, N), lambda z, i, j: te.sum(Ap[z, i, k] * Bm[z, k, j], axis=k), name="gemm")
    bias = te.placeholder((N,), "float32", "bias") if has_bias(epilogue) else None
    R = [te.placeholder((Bt, M, N), "float32", f"residual{i}") for i in range(num_residuals(epilogue))]
    Y = te.compute((Bt, M, N), lambda z, i, j: apply_steps(
        C[z, i, j], epilogue, (lambda: bias[j]) if bias is not None else None, [lambda r=r: r[z, i, j] for r in R]),
        name="out")
    ins = [A, Bm] + ([bias] if bias is not None else []) + R
    t = "_nt" if shape.transpose_b else ""
    func = te.create_prim_func(ins + [Y]).with_attr("global_symbol",
                                                    f"qcc_batch_matmul{t}_{shape_str((Bt, M, N, K))}")
    sch = s_tir.Schedule(func)
    schedule_gemm(sch, "gemm", "out", 1, p, tuple(pads))
    args = [ArgSpec("a", (Bt, M, K), "data", "BMK"),
            ArgSpec("b", b_shape, "b", "BNK" if shape.transpose_b else "BKN")]
    if bias is not None:
        args.append(ArgSpec("bias", (N,), "bias", "N"))
    args += [ArgSpec(f"residual{i}", (Bt, M, N), "residual", "BMN") for i in range(len(R))]
    args.append(ArgSpec("y", (Bt, M, N), "output", "BMN"))
    return Kernel("batch_matmul", shape, p, epilogue, sch.mod["main"], tuple(args))
