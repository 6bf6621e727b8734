"""qcc's CPU kernel templates: TE compute + s_tir schedule + compile-time weight packing, float32.

    k = make_kernel("conv2d", [(1, 64, 56, 56), (64, 64, 3, 3)],
                    attrs={"stride": (1, 1), "padding": (1, 1, 1, 1)}, epilogue=(("bias",), ("relu",)))
    k.func            # scheduled tvm.tirx.PrimFunc: bb.add_func(k.func, name); relax.call_tir(gv, args, out_ty)
    k.args            # ArgSpec per argument (inputs in call order, the output last): shape, role, layout
    k.pack_weight(w)  # OIHW -> the packed layout k.arg("weight") describes (run once, at compile time)

Kinds: "dense", "batch_matmul", "conv2d" (picks "conv2d_direct" / "conv2d_im2col" / "depthwise_conv2d" with
`choose_conv_impl`), the three conv kinds by name, and the layout transforms "nchw_to_nchwc" /
"nchwc_to_nchw". Parameters come from the caller, else the tuning database (`tune.lookup`), else the cost
model's pick (`choose_params`: `qcc.costmodel`'s active or shipped model), else the rule
`params.default_params`. Nothing here imports TVM until a kernel is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qcc.backends.tvm.kernels import params as P
from qcc.backends.tvm.kernels.epilogue import normalize
from qcc.backends.tvm.kernels.kernel import ArgSpec, Kernel, host_target
from qcc.backends.tvm.kernels.params import (
    BatchMatmulShape,
    Conv2dShape,
    CpuInfo,
    DenseShape,
    candidates,
    check_params,
    default_params,
)
from qcc.backends.tvm.runtime import configure_threads  # the one thread-pool setting (spin count, pinning)
from qcc.errors import BackendError

__all__ = ["ArgSpec", "Kernel", "CpuInfo", "make_kernel", "workload", "choose_conv_impl", "supports",
           "candidates", "default_params", "choose_params", "rank_candidates", "analytic_cost", "configure_threads",
           "host_target",
           "DenseShape", "BatchMatmulShape", "Conv2dShape"]

CONV_KINDS = ("conv2d_direct", "conv2d_im2col", "depthwise_conv2d")
LAYOUT_KINDS = ("nchw_to_nchwc", "nchwc_to_nchw")


def _conv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {"stride": tuple(attrs.get("stride", (1, 1))), "padding": tuple(attrs.get("padding", (0, 0, 0, 0))),
            "dilation": tuple(attrs.get("dilation", (1, 1))), "groups": int(attrs.get("groups", 1))}


def workload(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None) -> P.Shape:
    """The workload record of a kernel from its operand shapes (docs/ops.md layouts) and op attributes.

    dense: x [..., K] (leading dims flattened into M), w [N, K] (or [K, N] with attrs w_layout="KN");
    batch_matmul: a [B, M, K], b [B, K, N] (or [B, N, K] with attrs transpose_b=True);
    conv kinds: x [N, C, H, W], w [O, C/groups, KH, KW] with stride / padding / dilation / groups."""
    attrs = attrs or {}
    shapes = [tuple(int(d) for d in s) for s in shapes]
    try:
        if kind == "dense":
            x, w = shapes[0], shapes[1]
            n, k = (w[1], w[0]) if attrs.get("w_layout", "NK") == "KN" else w
            if x[-1] != k:
                raise BackendError(f"dense: x {list(x)} does not match w {list(w)}")
            m = 1
            for d in x[:-1]:
                m *= d
            return DenseShape(m, n, k)
        if kind == "batch_matmul":
            a, b = shapes[0], shapes[1]
            tb = bool(attrs.get("transpose_b", False))
            n, kb = (b[1], b[2]) if tb else (b[2], b[1])
            if len(a) != 3 or len(b) != 3 or a[0] != b[0] or a[2] != kb:
                raise BackendError(f"batch_matmul: a {list(a)} and b {list(b)} (transpose_b={tb}) do not match")
            return BatchMatmulShape(a[0], a[1], n, a[2], tb)
        if kind in ("conv2d",) + CONV_KINDS:
            x, w = shapes[0], shapes[1]
            ca = _conv_attrs(attrs)
            if len(x) != 4 or len(w) != 4 or x[1] != w[1] * ca["groups"] or w[0] % ca["groups"]:
                raise BackendError(f"conv2d: x {list(x)} and w {list(w)} with groups={ca['groups']} do not match")
            s = Conv2dShape(x[0], x[1], x[2], x[3], w[0], w[2], w[3], **ca)
            if s.OH < 1 or s.OW < 1:
                raise BackendError(f"conv2d output of {s} would be empty")
            return s
        if kind in LAYOUT_KINDS:
            n, c, h, w_ = shapes[0]
            return Conv2dShape(n, c, h, w_, c, 1, 1)
    except (IndexError, ValueError, TypeError) as e:
        raise BackendError(f"{kind}: bad operand shapes {shapes}: {e}") from e
    raise BackendError(f"unknown kernel kind {kind!r}")


def choose_conv_impl(shape: Conv2dShape, cpu: CpuInfo | None = None) -> str:
    """The conv template for a shape, or raise BackendError when none applies (the caller falls back).

    Rule from measurements on this machine (Zen 4 EPYC, AVX-512; GFLOP/s of direct vs im2col with the default
    parameters; `python benchmarks/bench_kernels.py --calibrate` re-measures, interleaved):
                                      1 thread      2 threads
      1×64×56×56 3×3 pad 1           115 vs 87     106 vs 82
      1×128×28×28 3×3                114 vs 101    110 vs 96
      1×256×14×14 3×3                115 vs 107    108 vs 103
      1×512×7×7 3×3                  114 vs 109    198 vs 168
      stem 1×3×224×224 7×7/2         115 vs 92*    188 vs 162          (* best of 20 im2col candidates)
      1×64×56×56 → 128 1×1/2         116 vs 97     150 vs 128
    (The first three 2-thread rows ran while another process held one of the two cores.) The direct template
    won every shape measured, so im2col is used only where the direct one cannot run."""
    cpu = cpu or CpuInfo()
    if shape.depthwise:
        return "depthwise_conv2d"
    if supports("conv2d_direct", shape, cpu):
        return "conv2d_direct"
    if supports("conv2d_im2col", shape, cpu):
        return "conv2d_im2col"
    raise BackendError(f"no conv2d template for {shape} (groups={shape.groups} with channel groups that are not "
                       f"multiples of the {cpu.lanes}-channel block): use the generic lowering")


def supports(kind: str, shape: P.Shape, cpu: CpuInfo | None = None) -> bool:
    """Whether the `kind` template can run this workload with its default parameters."""
    cpu = cpu or CpuInfo()
    try:
        check_params(kind, shape, default_params(kind, shape, cpu), cpu)
    except BackendError:
        return False
    return True


def analytic_cost(kind: str, shape: P.Shape, p: P.Params, cpu: CpuInfo | None = None) -> float:
    """A rough cycle estimate (FMA issue vs loads per register tile, padded work, parallel imbalance) used to
    order candidates until the learned cost model ranks them."""
    cpu = cpu or CpuInfo()

    def tile_cycles(acc: int, loads: int, reps: int) -> float:
        return reps * max(acc, loads / 2.0) + 4.0  # 1 vector FMA / cycle, 2 loads / cycle, loop overhead

    def imbalance(tasks: int) -> float:
        return -(-tasks // cpu.cores) * cpu.cores / max(tasks, 1)

    if isinstance(p, P.DenseParams) and isinstance(shape, (DenseShape, BatchMatmulShape)):
        b = getattr(shape, "B", 1)
        tm, tn = -(-shape.M // p.mb), -(-shape.N // p.bn)
        tasks = b * tm * tn
        return tasks * tile_cycles(p.mb * p.nv, p.mb + p.nv, shape.K) * imbalance(tasks) / cpu.cores
    if isinstance(shape, Conv2dShape):
        s = shape
        red = -(-s.C // s.groups // max(getattr(p, "ic_bn", 1), 1)) * getattr(p, "ic_bn", 1) * s.KH * s.KW
        if isinstance(p, P.ConvParams):
            nv = p.oc_bn // p.lanes
            tasks = s.N * (-(-s.O // p.oc_bn) // p.oc_tile) * s.OH
            per = -(-s.OW // p.ow_bn) * tile_cycles(p.ow_bn * p.oc_tile * nv, p.ow_bn + p.oc_tile * nv, red)
            return tasks * per * imbalance(tasks) / cpu.cores * (1.0 if p.unroll_kw == (s.KW <= 3) else 1.05)
        if isinstance(p, P.Im2colParams):
            nv = p.oc_bn // p.lanes
            red = s.C * s.KH * s.KW
            tasks = s.N * s.OH
            owp = -(-s.OW // p.ow_bn) * p.ow_bn
            gemm = (-(-s.O // p.oc_bn) // p.oc_tile) * (owp // p.ow_bn) * tile_cycles(
                p.ow_bn * p.oc_tile * nv, p.ow_bn + p.oc_tile * nv, red)
            return tasks * (gemm + owp * red) * imbalance(tasks) / cpu.cores
        if isinstance(p, P.DepthwiseParams):
            nv = p.c_bn // p.lanes
            tasks = s.N * -(-s.C // p.c_bn) * s.OH
            per = -(-s.OW // p.ow_bn) * tile_cycles(p.ow_bn * nv, 2 * p.ow_bn * nv, s.KH * s.KW)
            return tasks * per * imbalance(tasks) / cpu.cores
    raise BackendError(f"no cost rule for {kind} with {p}")


def rank_candidates(kind: str, shape: P.Shape, cpu: CpuInfo | None = None) -> list[P.Params]:
    """`candidates(kind, shape)`, the default rule's choice first, the rest by `analytic_cost`."""
    cpu = cpu or CpuInfo()
    cands = candidates(kind, shape, cpu)
    d = default_params(kind, shape, cpu)
    rest = sorted((c for c in cands if c != d), key=lambda c: analytic_cost(kind, shape, c, cpu))
    return [d, *rest]


def choose_params(kind: str, shape: P.Shape, cpu: CpuInfo | None = None, epilogue: Any = (),
                  model: Any = None) -> P.Params:
    """The parameters a cost model expects to be fastest among `candidates(kind, shape)`: `model`, else the
    active one (`qcc.costmodel.using(...)`, e.g. `qcc.compile(..., cost_model="model.lgb")`), else the model
    shipped for the CPU; the rule `default_params` when there is none or it fails. Predicting every
    candidate takes milliseconds and measures nothing."""
    from qcc.costmodel.model import active_model, choose
    from qcc.errors import CostModelError

    cpu = cpu or CpuInfo()
    model = model if model is not None else active_model()
    if model is None:
        return default_params(kind, shape, cpu)
    from qcc.backends.tvm.kernels.tune import _shape_dict, params_to_json

    cands = candidates(kind, shape, cpu)
    target = {"lanes": cpu.lanes, "vregs": cpu.vregs, "l1d": cpu.l1d, "l2": cpu.l2, "l3": cpu.l3, "cores": cpu.cores}
    epi = [list(s) for s in normalize(epilogue)]
    sd = _shape_dict(shape)
    kernels = [{"kind": kind, "shape": sd, "params": params_to_json(c), "epilogue": epi, "target": target}
               for c in cands]
    try:
        return cands[choose(model, kernels)]
    except CostModelError:
        return default_params(kind, shape, cpu)


def make_kernel(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
                params: P.Params | None = None, epilogue: Sequence[Any] = (), data_layout: str = "NCHWc",
                out_layout: str = "NCHWc", cpu: CpuInfo | None = None, target: Any = None,
                use_db: bool = True) -> Kernel:
    """The scheduled kernel for `kind` on operands of these shapes (see `workload`). `params`: explicit
    parameters, else the tuning database's record for (kind, workload, target), else the rule.
    `data_layout` / `out_layout` ("NCHWc" or "NCHW") apply to the conv kinds: an NCHW input is packed inside
    the kernel's padding copy and an NCHW output is written directly, so a lone conv needs no transform
    kernels. Layout kinds take shapes [(N, C, H, W)] and attrs {"block": 16}."""
    from qcc.backends.tvm.kernels.batch_matmul import batch_matmul_kernel
    from qcc.backends.tvm.kernels.conv2d import conv2d_direct, conv2d_im2col
    from qcc.backends.tvm.kernels.dense import dense_kernel
    from qcc.backends.tvm.kernels.depthwise import depthwise_kernel
    from qcc.backends.tvm.kernels.layout import layout_kernel

    attrs = dict(attrs or {})
    epi = normalize(epilogue)
    cpu = cpu or CpuInfo.detect()
    if kind in LAYOUT_KINDS:
        return layout_kernel(kind, tuple(shapes[0]), int(attrs.get("block", cpu.lanes)), cpu.lanes)  # type: ignore
    shape = workload(kind, shapes, attrs)
    if kind == "conv2d":
        kind = choose_conv_impl(shape, cpu)  # type: ignore[arg-type]
    if params is None and use_db:
        from qcc.backends.tvm.kernels.tune import lookup

        params = lookup(kind, shape, target)
    if params is None:  # no tuning record: the cost model's pick (the rule without a model)
        params = choose_params(kind, shape, cpu, epi) if use_db else default_params(kind, shape, cpu)
    check_params(kind, shape, params, cpu)
    if kind == "dense":
        return dense_kernel(shape, params, epi, attrs.get("w_layout", "NK"))  # type: ignore[arg-type]
    if kind == "batch_matmul":
        return batch_matmul_kernel(shape, params, epi)  # type: ignore[arg-type]
    if kind == "conv2d_direct":
        return conv2d_direct(shape, params, epi, data_layout, out_layout)  # type: ignore[arg-type]
    if kind == "conv2d_im2col":
        return conv2d_im2col(shape, params, epi, data_layout, out_layout)  # type: ignore[arg-type]
    if kind == "depthwise_conv2d":
        return depthwise_kernel(shape, params, epi, data_layout, out_layout)  # type: ignore[arg-type]
    raise BackendError(f"unknown kernel kind {kind!r}")
