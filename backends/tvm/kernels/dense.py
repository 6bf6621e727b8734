"""Dense (fully connected) kernel: y[M, N] = epilogue(x[M, K] · W[N, K]ᵀ) with W packed at compile time.

Layout: W becomes [N/bn, K, bn] (bn = nv·lanes, N zero padded to a multiple of bn), so the micro-kernel's
vector loads of W are contiguous. Schedule (`schedule_gemm`, shared with batch_matmul and im2col):

    parallel for (row block mo, column panel no)            # order "mn"; "nm" swaps them
      for k:                                                 # split by kc
        for mi < mb (unrolled), for v < nv (unrolled), for lane (vectorized):
          C[mo·mb+mi, no·bn+v·L+lane] += x[.., k] · Wp[no, k, v·L+lane]
      epilogue stage on the mb×bn tile (bias / residual / activation) -> y

LLVM keeps the mb×nv accumulator tile in vector registers (the tile buffer never reaches memory): the
inner loop is nv vector loads, mb broadcasts and mb·nv FMAs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.backends.tvm.kernels.epilogue import Epilogue, apply_steps, has_bias, num_residuals
from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, shape_str
from qcc.backends.tvm.kernels.params import DenseParams, DenseShape


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_dense_weight(w: np.ndarray, bn: int, w_layout: str = "NK") -> np.ndarray:
    """W [N, K] ("NK", linear's layout) or [K, N] ("KN", a constant matmul operand) -> [ceil(N/bn), K, bn]."""
    w = np.asarray(w, np.float32)
    if w_layout == "KN":
        w = w.T
    n, k = w.shape
    no = _ceil(n, bn)
    out = np.zeros((no * bn, k), np.float32)
    out[:n] = w
    return np.ascontiguousarray(out.reshape(no, bn, k).transpose(0, 2, 1))


def unpack_dense_weight(wp: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_dense_weight` (NK): [N/bn, K, bn] -> [N, K]."""
    no, k, bn = wp.shape
    return np.ascontiguousarray(wp.transpose(0, 2, 1).reshape(no * bn, k)[:n])


def schedule_gemm(sch: Any, c_name: str, y_name: str, n_batch: int, p: DenseParams,
                  pad_names: tuple[str, ...] = ()) -> None:
    """Schedule a GEMM block `c_name` (loops: n_batch batch loops, m, n, k; m and n already padded to multiples
    of mb and bn) and its elementwise consumer `y_name` as the register-blocked micro-kernel above.
    `pad_names`: producer stages (padding / packing copies) to compute at the parallel loop's top."""
    c = sch.get_sblock(c_name)
    y = sch.get_sblock(y_name)
    loops = sch.get_loops(c)
    batch, (m, n, k) = loops[:n_batch], loops[n_batch:]
    mo, mi = sch.split(m, [None, p.mb])
    no, nvl, nl = sch.split(n, [None, p.nv, p.lanes])
    ko, ki = sch.split(k, [None, p.kc])
    outer = [mo, no] if p.order == "mn" else [no, mo]
    sch.reorder(*batch, *outer, ko, ki, mi, nvl, nl)
    sch.vectorize(nl)
    sch.unroll(nvl)
    sch.unroll(mi)
    sch.reverse_compute_at(y, outer[-1])
    ycols = sch.get_loops(y)[-1]
    _, yl = sch.split(ycols, [None, p.lanes])
    sch.vectorize(yl)
    par = sch.fuse(*batch, *outer)
    sch.parallel(par)
    sch.decompose_reduction(c, ko)
    for name in pad_names:
        _schedule_copy(sch, name, p.lanes)


def _schedule_copy(sch: Any, name: str, lanes: int) -> None:
    """A root-level copy / padding stage: parallel over its outer loop, vectorized inner when it divides."""
    blk = sch.get_sblock(name)
    loops = sch.get_loops(blk)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    inner = loops[-1]
    ext = sch.get(inner).extent
    if int(ext) % lanes == 0:
        _, il = sch.split(inner, [None, lanes])
        sch.vectorize(il)


def dense_kernel(shape: DenseShape, p: DenseParams, epilogue: Epilogue = (), w_layout: str = "NK") -> Kernel:
    """The scheduled dense kernel. Args: x [M, K], W packed [N/bn, K, bn], bias [N] (if the epilogue has one),
    residuals [M, N] (one per "add"), output y [M, N]."""
    from tvm import s_tir, te

    M, N, K = shape.M, shape.N, shape.K
    bn = p.bn
    No, Mp = _ceil(N, bn), _ceil(M, p.mb) * p.mb
    X = te.placeholder((M, K), "float32", "x")
    W = te.placeholder((No, K, bn), "float32", "w_packed")
    pads: tuple[str, ...] = ()
    Xp = X
    if Mp != M:
        Xp = te.compute((Mp, K), lambda i, j: te.if_then_else(i < M, X[te.min(i, M - 1), j], 0.0), name="x_pad")
        pads = ("x_pad",)
    k = te.reduce_axis((0, K), "k")
    C = te.compute((Mp, No * bn), lambda i, j: te.sum(Xp[i, k] * W[j // bn, k, j % bn], axis=k), name="gemm")
    B = te.placeholder((N,), "float32", "bias") if has_bias(epilogue) else None
    R = [te.placeholder((M, N), "float32", f"residual{i}") for i in range(num_residuals(epilogue))]
    Y = te.compute((M, N), lambda i, j: apply_steps(
        C[i, j], epilogue, (lambda: B[j]) if B is not None else None, [lambda r=r: r[i, j] for r in R]),
        name="out")
    ins = [X, W] + ([B] if B is not None else []) + R
    func = te.create_prim_func(ins + [Y]).with_attr("global_symbol", f"qcc_dense_{shape_str((M, N, K))}")
    sch = s_tir.Schedule(func)
    schedule_gemm(sch, "gemm", "out", 0, p, pads)
    args = [ArgSpec("x", (M, K), "data", "MK"),
            ArgSpec("w_packed", (No, K, bn), "weight", f"packed[N/{bn},K,{bn}]")]
    if B is not None:
        args.append(ArgSpec("bias", (N,), "bias", "N"))
    args += [ArgSpec(f"residual{i}", (M, N), "residual", "MN") for i in range(len(R))]
    args.append(ArgSpec("y", (M, N), "output", "MN"))
    return Kernel("dense", shape, p, epilogue, sch.mod["main"], tuple(args),
                  weight_packer=lambda w: pack_dense_weight(w, bn, w_layout),
                  notes={"w_layout": w_layout})
