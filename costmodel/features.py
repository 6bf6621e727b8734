"""Versioned feature vectors of kernels (a fused group with its schedule) and of single IR nodes.

A kernel is described by a plain dict, so this module needs neither TVM nor the backends:

    {"kind": "conv2d_direct",                       # the template kind (qcc.backends.tvm.kernels.params.KINDS)
     "shape": {"type": "Conv2dShape", "N": 1, "C": 64, ...},        # the workload dataclass as a dict
     "params": {"type": "ConvParams", "ic_bn": 16, ...},            # the schedule parameters as a dict
     "epilogue": [["bias"], ["relu"]],              # fused elementwise steps (fusion size = its length)
     "dtype": "f32", "layout": "NCHWc",
     "target": {"lanes": 16, "vregs": 32, "l1d": 32768, "l2": 1048576, "l3": 33554432, "cores": 1}}

`kernel_features(k)` returns FEATURE_NAMES-ordered floats: op kind, GEMM-view shapes, FLOPs, bytes read and
written, arithmetic intensity, bit widths, fusion size, layout, tile / schedule parameters with derived
quantities (register-tile size, padded work, parallel tasks, cache footprints, an analytic cycle estimate) and
target features. Change anything about them and bump FEATURE_VERSION: saved models refuse other versions.

Integer kernels (INT_KINDS: "qlinear", "qconv2d", the integer graph's GEMM / convolution with its requantize
epilogue) use the same dict; their shape adds the operand widths and the params name the lowering:

    {"kind": "qconv2d", "shape": {"type": "QConv2dShape", ...Conv2dShape fields..., "x_dtype": "u8", "w_bits": 4,
     "out_dtype": "u8"}, "params": {"type": "IntParams", "impl": "vnni"}, "epilogue": [["requantize"]],
     "dtype": "u8", "layout": "NCHW"}

Version 2 added the integer kinds and the bit widths of weights / activations / accumulator / output.
Version 3 added the tiled attention kernel (kind "attention", ATTN_KINDS), its tiles as schedule parameters:

    {"kind": "attention", "shape": {"type": "AttentionShape", "bh": 4, "heads": 4, "n": 128, "m": 128, "d": 64,
     "dv": 64, "causal": false}, "params": {"type": "AttentionParams", "br": 32, "bc": 64}, "epilogue": []}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.errors import CostModelError

FEATURE_VERSION = 3

KINDS = ("dense", "batch_matmul", "conv2d_direct", "conv2d_im2col", "depthwise_conv2d")
INT_KINDS = ("qlinear", "qconv2d")
ATTN_KINDS = ("attention",)
ALL_KINDS = KINDS + INT_KINDS + ATTN_KINDS
INT_IMPLS = ("vnni", "generic")  # the CPU lowerings of an integer kernel (kernels/int8.py template, TE rule)
EPILOGUE_STEPS = ("bias", "add", "scale", "relu", "relu6", "clip", "hardswish", "gelu", "requantize")
DTYPE_BITS = {"f64": 64, "f32": 32, "f16": 16, "i64": 64, "i32": 32, "i16": 16, "i8": 8, "u8": 8, "i4": 4, "u4": 4,
              "bool": 8, "float32": 32, "float16": 16, "int8": 8, "int32": 32}
DEFAULT_TARGET = {"lanes": 16, "vregs": 32, "l1d": 32 * 1024, "l2": 1024 * 1024, "l3": 32 * 1024 * 1024, "cores": 1}


def _ceil(a: float, b: float) -> int:
    return -(-int(a) // max(int(b), 1))


def _lg(x: float) -> float:
    return math.log2(max(float(x), 0.0) + 1.0)


def gemm_view(kind: str, s: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(B, M, N, K) of a kernel seen as a (batched) GEMM; convolutions as implicit GEMMs per group."""
    try:
        if kind in ("dense", "qlinear"):
            return 1, int(s["M"]), int(s["N"]), int(s["K"])
        if kind == "batch_matmul":
            return int(s["B"]), int(s["M"]), int(s["N"]), int(s["K"])
        if kind == "attention":  # Q·Kᵀ and P·V: n × m scores over d + dv (causal: about half the keys)
            k = (int(s["d"]) + int(s["dv"])) // (2 if s.get("causal") else 1)
            return int(s["bh"]), int(s["n"]), int(s["m"]), max(k, 1)
        if kind in ALL_KINDS:
            oh, ow = conv_out(s)
            g = int(s.get("groups", 1))
            return g, int(s["N"]) * oh * ow, int(s["O"]) // g, int(s["C"]) // g * int(s["KH"]) * int(s["KW"])
    except (KeyError, TypeError, ValueError) as e:
        raise CostModelError(f"kernel shape {dict(s)} does not describe a {kind} workload: {e}") from e
    raise CostModelError(f"unknown kernel kind {kind!r}; known: {', '.join(ALL_KINDS)}")


def conv_out(s: Mapping[str, Any]) -> tuple[int, int]:
    """(OH, OW) of a Conv2dShape dict (docs/ops.md conv2d)."""
    pt, pl, pb, pr = s.get("padding", (0, 0, 0, 0))
    sh, sw = s.get("stride", (1, 1))
    dh, dw = s.get("dilation", (1, 1))
    oh = (int(s["H"]) + pt + pb - dh * (int(s["KH"]) - 1) - 1) // sh + 1
    ow = (int(s["W"]) + pl + pr - dw * (int(s["KW"]) - 1) - 1) // sw + 1
    return oh, ow


def operand_bits(kind: str, s: Mapping[str, Any], dtype: str = "f32") -> tuple[int, int, int, int]:
    """(activation, weight, accumulator, output) bit widths of a kernel: all `dtype` for float kernels; for
    integer kernels the shape's x_dtype / w_bits / out_dtype and a 32-bit accumulator."""
    if kind not in INT_KINDS:
        bits = DTYPE_BITS.get(str(dtype))
        if bits is None:
            raise CostModelError(f"unknown dtype {dtype!r} in kernel features")
        return bits, bits, bits, bits
    try:
        x = DTYPE_BITS[str(s.get("x_dtype", "u8"))]
        w = int(s.get("w_bits", 8))
        out = DTYPE_BITS[str(s.get("out_dtype", "i32"))]
    except (KeyError, TypeError, ValueError) as e:
        raise CostModelError(f"integer kernel shape {dict(s)} has bad operand widths: {e}") from e
    if not 1 <= w <= 16:
        raise CostModelError(f"integer kernel weight width must be 1..16 bits, got {w}")
    return x, w, 32, out


def traffic(kind: str, s: Mapping[str, Any], bits: int = 32) -> tuple[float, float, float]:
    """(FLOPs, bytes read, bytes written) of a kernel: compulsory traffic, each operand read once (integer
    kernels: each operand at its own width, the weights packed to w_bits)."""
    b, m, n, k = gemm_view(kind, s)
    flops = 2.0 * b * m * n * k
    ex = ew = eo = bits / 8.0
    if kind in INT_KINDS:
        xb, wb, _, ob = operand_bits(kind, s)
        ex, ew, eo = xb / 8.0, wb / 8.0, ob / 8.0
    if kind == "attention":
        read = ex * b * (m * int(s["d"]) + n * (int(s["d"]) + int(s["dv"])))
        return flops, read, eo * b * m * int(s["dv"])
    if kind in ("dense", "batch_matmul", "qlinear"):
        read = ex * b * m * k + ew * b * k * n
    else:
        read = (ex * int(s["N"]) * int(s["C"]) * int(s["H"]) * int(s["W"])
                + ew * int(s["O"]) * (int(s["C"]) // int(s.get("groups", 1))) * int(s["KH"]) * int(s["KW"]))
    return flops, read, eo * b * m * n


def analytic_cycles(kind: str, s: Mapping[str, Any], p: Mapping[str, Any], t: Mapping[str, Any]) -> float:
    """A rough cycle count of the register-tiled loop nest (1 vector FMA and 2 loads per cycle, a per-tile
    loop overhead, padded work, parallel imbalance over the cores): the backends' analytic rule, restated on
    plain dicts so the cost model does not import them."""
    cores = max(int(t.get("cores", 1)), 1)
    lanes = max(int(p.get("lanes", t.get("lanes", 16))), 1)

    def tile(acc: float, loads: float, reps: float) -> float:
        return reps * max(acc, loads / 2.0) + 4.0

    def imbalance(tasks: int) -> float:
        return _ceil(tasks, cores) * cores / max(tasks, 1)

    ptype = p.get("type", "")
    if ptype == "AttentionParams":
        # Per (batch·head, query tile): for each key tile, the S tile (br × bc over d), an exp per score and
        # the P·V update (br × dv over bc), register-tiled 4 rows × bc/lanes vectors.
        br, bc = int(p["br"]), int(p["bc"])
        n, m, d, dv = int(s["n"]), int(s["m"]), int(s["d"]), int(s["dv"])
        tasks = int(s["bh"]) * _ceil(n, br)
        nkt = _ceil(m, bc) // (2 if s.get("causal") else 1) or 1
        qk = tile(4 * _ceil(bc, lanes), 4 + _ceil(bc, lanes), d) * _ceil(br, 4)
        pv = tile(4 * _ceil(dv, lanes), 4 + _ceil(dv, lanes), bc) * _ceil(br, 4)
        ex = br * _ceil(bc, lanes) * 12.0
        return tasks * nkt * (qk + pv + ex) * imbalance(tasks) / cores
    if ptype == "IntParams":
        # VNNI: one vpdpbusd = lanes × 4 int8 MACs per cycle; the generic TE rule widens to int64 and runs
        # roughly scalar (about 1 MAC per cycle). Tasks: output rows (and channels' blocks) over the cores.
        g, m, n, k = gemm_view(kind, s)
        macs = float(g) * m * n * k
        per_cycle = lanes * 4.0 if p.get("impl") == "vnni" else 1.0
        return macs / per_cycle / cores + 4.0 * g * m
    if ptype == "DenseParams":
        b = int(s.get("B", 1))
        mb, nv = int(p["mb"]), int(p["nv"])
        tasks = b * _ceil(s["M"], mb) * _ceil(s["N"], nv * lanes)
        return tasks * tile(mb * nv, mb + nv, int(s["K"])) * imbalance(tasks) / cores
    oh, ow = conv_out(s)
    g = int(s.get("groups", 1))
    if ptype == "ConvParams":
        icb = max(int(p["ic_bn"]), 1)
        red = _ceil(int(s["C"]) // g, icb) * icb * int(s["KH"]) * int(s["KW"])
        nv = int(p["oc_bn"]) // lanes
        tasks = int(s["N"]) * max(_ceil(s["O"], p["oc_bn"]) // int(p["oc_tile"]), 1) * oh
        per = _ceil(ow, p["ow_bn"]) * tile(p["ow_bn"] * p["oc_tile"] * nv, p["ow_bn"] + p["oc_tile"] * nv, red)
        return tasks * per * imbalance(tasks) / cores
    if ptype == "Im2colParams":
        nv = int(p["oc_bn"]) // lanes
        red = int(s["C"]) * int(s["KH"]) * int(s["KW"])
        tasks = int(s["N"]) * oh
        owp = _ceil(ow, p["ow_bn"]) * int(p["ow_bn"])
        gemm = max(_ceil(s["O"], p["oc_bn"]) // int(p["oc_tile"]), 1) * (owp // int(p["ow_bn"])) * tile(
            p["ow_bn"] * p["oc_tile"] * nv, p["ow_bn"] + p["oc_tile"] * nv, red)
        return tasks * (gemm + owp * red) * imbalance(tasks) / cores
    if ptype == "DepthwiseParams":
        nv = int(p["c_bn"]) // lanes
        tasks = int(s["N"]) * _ceil(s["C"], p["c_bn"]) * oh
        per = _ceil(ow, p["ow_bn"]) * tile(p["ow_bn"] * nv, 2 * p["ow_bn"] * nv, int(s["KH"]) * int(s["KW"]))
        return tasks * per * imbalance(tasks) / cores
    raise CostModelError(f"unknown schedule parameter type {ptype!r} for {kind}")


def _schedule(kind: str, s: Mapping[str, Any], p: Mapping[str, Any], t: Mapping[str, Any],
              gemm: tuple[int, int, int, int]) -> dict[str, float]:
    """Tile / schedule parameters and what they imply (register tile, padding waste, tasks, cache panels)."""
    b, m, n, k = gemm
    lanes = int(p.get("lanes", t["lanes"]))
    f: dict[str, float] = {name: 0.0 for name in SCHEDULE_NAMES}
    ptype = p.get("type", "")
    if ptype == "AttentionParams":
        br, bc = int(p["br"]), int(p["bc"])
        d, dv = int(s["d"]), int(s["dv"])
        f.update(p_br=br, p_bc=bc, rows=br, cols=bc, acc=4 * _ceil(bc, lanes),
                 pad=_ceil(m, br) * br / max(m, 1) * _ceil(n, bc) * bc / max(n, 1), tasks=_lg(b * _ceil(m, br)),
                 panel_l1=4 * br * (d + bc + dv) / float(t["l1d"]), panel_l2=4 * bc * (d + dv) / float(t["l2"]))
    elif ptype == "IntParams":
        impl = str(p.get("impl", "vnni"))
        if impl not in INT_IMPLS:
            raise CostModelError(f"unknown integer kernel lowering {impl!r}; known: {', '.join(INT_IMPLS)}")
        # The VNNI template's register tile: 16 int32 lanes × 4-byte groups of K (kernels/int8.py).
        f.update(p_vnni=float(impl == "vnni"), rows=1.0, cols=16.0 if impl == "vnni" else 1.0,
                 pad=(_ceil(n, 16) * 16 / max(n, 1)) * (_ceil(k, 4) * 4 / max(k, 1)) if impl == "vnni" else 1.0,
                 tasks=_lg(b * m))
    elif ptype == "DenseParams":
        mb, nv, kc = int(p["mb"]), int(p["nv"]), int(p["kc"])
        f.update(p_mb=mb, p_nv=nv, p_kc=_lg(kc), p_kc_frac=kc / max(k, 1), p_order_nm=float(p.get("order") == "nm"),
                 rows=mb, cols=nv * lanes, acc=mb * nv,
                 pad=(_ceil(m, mb) * mb * _ceil(n, nv * lanes) * nv * lanes) / max(m * n, 1),
                 tasks=_lg(b * _ceil(m, mb) * _ceil(n, nv * lanes)),
                 panel_l2=kc * nv * lanes * 4 / float(t["l2"]), panel_l1=kc * (mb + nv * lanes) * 4 / float(t["l1d"]))
    elif ptype in ("ConvParams", "Im2colParams"):
        oh, ow = conv_out(s)
        ow_bn, oc_tile, oc_bn = int(p["ow_bn"]), int(p["oc_tile"]), int(p["oc_bn"])
        nv = oc_bn // lanes
        f.update(p_ow_bn=ow_bn, p_oc_tile=oc_tile, p_oc_bn=oc_bn, rows=ow_bn, cols=oc_tile * oc_bn,
                 acc=ow_bn * oc_tile * nv, pad=_ceil(ow, ow_bn) * ow_bn / max(ow, 1),
                 tasks=_lg(int(s["N"]) * oh * max(_ceil(s["O"], oc_bn) // oc_tile, 1)))
        if ptype == "ConvParams":
            f.update(p_ic_bn=int(p["ic_bn"]), p_unroll=float(bool(p.get("unroll_kw", True))), p_direct=1.0)
        else:
            kc = int(p["kc"])
            f.update(p_kc=_lg(kc), p_kc_frac=kc / max(k, 1), panel_l2=kc * oc_tile * oc_bn * 4 / float(t["l2"]),
                     panel_l1=kc * (ow_bn + oc_tile * oc_bn) * 4 / float(t["l1d"]))
    elif ptype == "DepthwiseParams":
        oh, ow = conv_out(s)
        c_bn, ow_bn = int(p["c_bn"]), int(p["ow_bn"])
        f.update(p_ow_bn=ow_bn, p_c_bn=c_bn, rows=ow_bn, cols=c_bn, acc=ow_bn * c_bn // lanes,
                 pad=_ceil(ow, ow_bn) * ow_bn / max(ow, 1), tasks=_lg(int(s["N"]) * _ceil(s["C"], c_bn) * oh))
    else:
        raise CostModelError(f"unknown schedule parameter type {ptype!r} for {kind}")
    f["reg_pressure"] = (f["acc"] + f["rows"] + f["cols"] / lanes) / float(t["vregs"])
    return f


SCHEDULE_NAMES = ("p_mb", "p_nv", "p_kc", "p_kc_frac", "p_order_nm", "p_ow_bn", "p_oc_tile", "p_oc_bn", "p_ic_bn",
                  "p_unroll", "p_direct", "p_c_bn", "p_vnni", "p_br", "p_bc", "rows", "cols", "acc", "pad", "tasks",
                  "panel_l2", "panel_l1", "reg_pressure")
FEATURE_NAMES = (
    *(f"kind_{k}" for k in ALL_KINDS), "is_int", "x_bits", "w_bits", "acc_bits", "out_bits",
    "log_B", "log_M", "log_N", "log_K", "log_C", "log_HW", "log_O", "KH", "KW", "stride", "groups_log", "OW",
    "log_flops", "log_read", "log_write", "intensity", "bits", "fusion", *(f"epi_{e}" for e in EPILOGUE_STEPS),
    "layout_blocked", *SCHEDULE_NAMES, "log_analytic_cycles", "analytic_per_flop",
    "t_lanes", "t_vregs", "t_l1d", "t_l2", "t_cores",
)


def kernel_features(k: Mapping[str, Any]) -> np.ndarray:
    """The FEATURE_NAMES-ordered float64 feature vector of one kernel dict (see the module docstring)."""
    try:
        kind, s, p = k["kind"], k["shape"], k["params"]
    except (KeyError, TypeError) as e:
        raise CostModelError(f"a kernel needs 'kind', 'shape' and 'params', got {k!r}") from e
    t = {**DEFAULT_TARGET, **dict(k.get("target") or {})}
    integer = kind in INT_KINDS
    xb, wb, ab, ob = operand_bits(kind, s, str(k.get("dtype", "f32")))
    bits = xb
    gemm = gemm_view(kind, s)
    flops, read, write = traffic(kind, s, bits)
    epi = [str(step[0] if isinstance(step, (list, tuple)) else step) for step in k.get("epilogue") or ()]
    cyc = analytic_cycles(kind, s, p, t)
    conv = kind not in ("dense", "batch_matmul", "qlinear", "attention")
    f: dict[str, float] = {f"kind_{x}": float(kind == x) for x in ALL_KINDS}
    f.update(is_int=float(integer), x_bits=float(xb), w_bits=float(wb), acc_bits=float(ab), out_bits=float(ob))
    f.update(log_B=_lg(gemm[0]), log_M=_lg(gemm[1]), log_N=_lg(gemm[2]), log_K=_lg(gemm[3]),
             log_C=_lg(s.get("C", 0)), log_HW=_lg(int(s.get("H", 0)) * int(s.get("W", 0))), log_O=_lg(s.get("O", 0)),
             KH=float(s.get("KH", 0)), KW=float(s.get("KW", 0)), stride=float(s.get("stride", (0, 0))[0]),
             groups_log=_lg(s.get("groups", 1)), OW=float(conv_out(s)[1]) if conv else 0.0,
             log_flops=_lg(flops), log_read=_lg(read), log_write=_lg(write),
             intensity=flops / max(read + write, 1.0), bits=float(bits), fusion=float(len(epi)),
             layout_blocked=float(k.get("layout", "NCHWc") == "NCHWc" and conv),
             log_analytic_cycles=_lg(cyc), analytic_per_flop=cyc / max(flops, 1.0) * 1e3,
             t_lanes=float(t["lanes"]), t_vregs=float(t["vregs"]), t_l1d=_lg(t["l1d"]), t_l2=_lg(t["l2"]),
             t_cores=float(t["cores"]))
    f.update({f"epi_{e}": float(epi.count(e)) for e in EPILOGUE_STEPS})
    f.update(_schedule(kind, s, p, t, gemm))
    return np.array([f[name] for name in FEATURE_NAMES], dtype=np.float64)


def feature_matrix(kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Stacked `kernel_features` rows, shape [len(kernels), len(FEATURE_NAMES)]."""
    if not kernels:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.stack([kernel_features(k) for k in kernels])


# ---------------------------------------------------------------------------------------------- IR node level

NODE_FEATURE_NAMES = ("op_index", "num_inputs", "num_outputs", "rank", "log_out_elems", "log_in_elems",
                      "log_bytes_read", "log_bytes_written", "log_flops", "intensity", "in_bits", "out_bits",
                      "quantized")


def node_flops(node: Any) -> float:
    """FLOPs of one IR node: 2·MACs for conv2d / linear / matmul, else one per output element."""
    out = node.outputs[0].type.shape if node.outputs else ()
    elems = float(np.prod(out)) if out else 1.0
    if node.op in ("conv2d", "qconv2d") and len(node.inputs) >= 2:
        w = node.inputs[1].type.shape
        return 2.0 * elems * float(np.prod(w[1:]))
    if node.op in ("linear", "matmul", "qlinear", "qmatmul") and len(node.inputs) >= 2:
        k = node.inputs[0].type.shape[-1] if node.inputs[0].type.shape else 1
        return 2.0 * elems * float(k)
    return elems


def node_features(node: Any) -> np.ndarray:
    """NODE_FEATURE_NAMES-ordered features of one IR node (any op in qcc.ir.ops.OPS): its op, sizes, traffic,
    FLOPs and bit widths. Used for per-node latency terms (fusion, bit allocation) before kernels exist."""
    from qcc.ir.ops import OPS

    if node.op not in OPS:
        raise CostModelError(f"node {node.name!r}: unknown op {node.op!r}")
    names = sorted(OPS)
    ins = [v.type for v in node.inputs]
    outs = [v.type for v in node.outputs]

    def nbytes(t: Any) -> float:
        return float(np.prod(t.shape) if t.shape else 1) * DTYPE_BITS.get(t.dtype, 32) / 8.0

    read, write = sum(nbytes(t) for t in ins), sum(nbytes(t) for t in outs)
    flops = node_flops(node)
    f = [float(names.index(node.op)), float(len(ins)), float(len(outs)), float(len(outs[0].shape) if outs else 0),
         _lg(np.prod(outs[0].shape) if outs and outs[0].shape else 1),
         _lg(sum(float(np.prod(t.shape) if t.shape else 1) for t in ins)), _lg(read), _lg(write), _lg(flops),
         flops / max(read + write, 1.0), float(min((DTYPE_BITS.get(t.dtype, 32) for t in ins), default=32)),
         float(DTYPE_BITS.get(outs[0].dtype, 32) if outs else 32),
         float(any(getattr(t, "quant", None) is not None for t in ins + outs))]
    return np.array(f, dtype=np.float64)
