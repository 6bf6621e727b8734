"""Workloads, CPU facts and the enumerable parameter spaces of qcc's CPU kernel templates.

Everything here is plain Python (no TVM import), so a cost model can enumerate and rank `candidates(kind,
shape)` without building anything. `default_params(kind, shape, cpu)` is the rule used until a cost model or a
tuning record (`tune.lookup`) says otherwise: register tiles sized to the vector register file, the channel /
column block equal to the vector width, cache tiles from the L1/L2 sizes.

Kinds: "dense" (y = x·Wᵀ, W constant), "batch_matmul" (both operands activations), "conv2d_direct" (NCHW[x]c),
"conv2d_im2col" (im2col + GEMM into NCHW[x]c), "depthwise_conv2d" (NCHW[x]c).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace

from qcc.errors import BackendError

# ------------------------------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class CpuInfo:
    """What the kernel rules need to know about a CPU: fp32 vector lanes, vector registers, caches, cores."""

    lanes: int = 16  # fp32 lanes of the widest usable vector (16 with AVX-512, 8 with AVX2, 4 with SSE/NEON)
    vregs: int = 32  # architectural vector registers (32 zmm, 16 ymm)
    l1d: int = 32 * 1024  # bytes, per core
    l2: int = 1024 * 1024  # bytes, per core
    l3: int = 32 * 1024 * 1024  # bytes, shared
    cores: int = 2

    @staticmethod
    def from_flags(flags: frozenset[str] | set[str], cores: int = 1, caches: dict[int, int] | None = None) -> CpuInfo:
        """CpuInfo from /proc/cpuinfo flags (see `qcc.backends.tvm.host.cpu_flags`) and cache sizes by level."""
        if "avx512f" in flags:
            lanes, vregs = 16, 32
        elif "avx2" in flags or "avx" in flags:
            lanes, vregs = 8, 16
        else:
            lanes, vregs = 4, 16 if ("sse2" in flags or not flags) else 32  # NEON has 32 q registers
        caches = caches or {}
        return CpuInfo(lanes=lanes, vregs=vregs, l1d=caches.get(1, 32 * 1024), l2=caches.get(2, 1024 * 1024),
                       l3=caches.get(3, 8 * 1024 * 1024), cores=max(1, cores))

    @staticmethod
    def from_llvm_target(target: dict, cores: int | None = None) -> CpuInfo:
        """CpuInfo for a TVM LLVM target dict (`host.llvm_target`): the vector width from its `mattr`, caches of
        this machine, cores from `num-cores`. Use it when the qcc Target overrides mcpu/mattr."""
        mattr = set(target.get("mattr", ()))
        flags = {f for f, a in (("avx512f", "+avx512f"), ("avx2", "+avx2"), ("avx", "+avx"), ("neon", "+neon"))
                 if a in mattr}
        if not flags and not mattr:  # no explicit features: this machine's
            return CpuInfo.detect()
        if not flags:
            flags = {"sse2"}
        return CpuInfo.from_flags(flags, cores or int(target.get("num-cores", 1)), _sysfs_caches())

    @staticmethod
    def detect() -> CpuInfo:
        """This machine's CpuInfo (flags from /proc/cpuinfo, caches from sysfs, cores from the affinity mask)."""
        from qcc.backends.tvm.host import cpu_flags, num_cores

        return CpuInfo.from_flags(cpu_flags(), num_cores(), _sysfs_caches())


def _sysfs_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict[int, int]:
    """Data/unified cache sizes in bytes by level, read from sysfs; empty when unavailable."""
    out: dict[int, int] = {}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return out
    for e in entries:
        if not e.startswith("index"):
            continue
        try:
            with open(os.path.join(root, e, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, e, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(root, e, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
        out[level] = int(text.rstrip("KM")) * mult
    return out


# ------------------------------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class DenseShape:
    """y[M, N] = x[M, K] · W[N, K]ᵀ."""

    M: int
    N: int
    K: int

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K


@dataclass(frozen=True)
class BatchMatmulShape:
    """y[B, M, N] = a[B, M, K] · b[B, K, N] (b given as [B, N, K] when `transpose_b`)."""

    B: int
    M: int
    N: int
    K: int
    transpose_b: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.B * self.M * self.N * self.K


@dataclass(frozen=True)
class Conv2dShape:
    """conv2d of x [N, C, H, W] with w [O, C/groups, KH, KW] (docs/ops.md semantics)."""

    N: int
    C: int
    H: int
    W: int
    O: int  # noqa: E741 - the ops.md letter for output channels
    KH: int
    KW: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def OH(self) -> int:
        pt, _, pb, _ = self.padding
        return (self.H + pt + pb - self.dilation[0] * (self.KH - 1) - 1) // self.stride[0] + 1

    @property
    def OW(self) -> int:
        _, pl, _, pr = self.padding
        return (self.W + pl + pr - self.dilation[1] * (self.KW - 1) - 1) // self.stride[1] + 1

    @property
    def depthwise(self) -> bool:
        return self.groups == self.C and self.groups == self.O and self.groups > 1

    @property
    def flops(self) -> int:
        return 2 * self.N * self.O * self.OH * self.OW * (self.C // self.groups) * self.KH * self.KW


Shape = DenseShape | BatchMatmulShape | Conv2dShape

# ------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DenseParams:
    """Register tile `mb` rows × `nv` vectors of `lanes` columns; W packed [N/bn, K, bn] with bn = nv·lanes;
    K tiled by `kc` (a divisor of K); `order` "mn" keeps an x row-block while sweeping W panels ("nm": the
    reverse); the fused outer loop runs in parallel. Also the parameters of batch_matmul (no packing there)."""

    mb: int
    nv: int
    lanes: int
    kc: int
    order: str = "mn"

    @property
    def bn(self) -> int:
        return self.nv * self.lanes


@dataclass(frozen=True)
class ConvParams:
    """Direct NCHW[x]c convolution: input block `ic_bn`, output block `oc_bn` (= the layout block, a multiple of
    `lanes`), register tile `ow_bn` output columns × `oc_tile` output blocks; kh/kw loops unrolled when
    `unroll_kw`. `oc_bn`/`ic_bn` are also the blocks of the NCHW[x]c layouts the kernel reads and writes."""

    ic_bn: int
    oc_bn: int
    ow_bn: int
    oc_tile: int
    lanes: int
    unroll_kw: bool = True


@dataclass(frozen=True)
class Im2colParams:
    """im2col + GEMM: one output row's im2col matrix [OW, C·KH·KW] is built once and reused for every output
    block; register tile `ow_bn` output columns × `oc_tile` blocks of `oc_bn` channels; reduction split by `kc`
    (a divisor of the reduction length)."""

    ow_bn: int
    oc_bn: int
    oc_tile: int
    lanes: int
    kc: int


@dataclass(frozen=True)
class DepthwiseParams:
    """Depthwise NCHW[x]c convolution: channel block `c_bn` (a multiple of `lanes`), register tile `ow_bn`."""

    c_bn: int
    ow_bn: int
    lanes: int


Params = DenseParams | ConvParams | Im2colParams | DepthwiseParams

KINDS = ("dense", "batch_matmul", "conv2d_direct", "conv2d_im2col", "depthwise_conv2d")


# ------------------------------------------------------------------------------------------------- validity


def _divisors(n: int, limit: int | None = None) -> list[int]:
    return [d for d in range(1, (limit or n) + 1) if n % d == 0]


def _dense_ok(p: DenseParams, M: int, N: int, K: int, cpu: CpuInfo) -> bool:
    # accumulators + the loaded W vectors + one broadcast must fit the register file
    return (p.mb >= 1 and p.nv >= 1 and p.kc >= 1 and K % p.kc == 0 and p.order in ("mn", "nm")
            and p.mb * p.nv + p.nv + 1 <= cpu.vregs and p.lanes == cpu.lanes)


def check_params(kind: str, shape: Shape, params: Params, cpu: CpuInfo) -> None:
    """Raise BackendError when `params` do not fit `kind`/`shape` on `cpu`."""
    ok = False
    if kind in ("dense", "batch_matmul") and isinstance(params, DenseParams):
        assert isinstance(shape, (DenseShape, BatchMatmulShape))
        ok = _dense_ok(params, shape.M, shape.N, shape.K, cpu)
    elif kind == "conv2d_direct" and isinstance(params, ConvParams):
        assert isinstance(shape, Conv2dShape)
        cg, og = shape.C // shape.groups, shape.O // shape.groups
        grouped_ok = shape.groups == 1 or (cg % params.ic_bn == 0 and og % params.oc_bn == 0)
        ok = (params.oc_bn % params.lanes == 0 and params.lanes == cpu.lanes and params.ow_bn >= 1
              and params.oc_tile >= 1 and params.ic_bn >= 1 and grouped_ok
              and _ceil(shape.O, params.oc_bn) % params.oc_tile == 0
              and params.ow_bn * params.oc_tile * (params.oc_bn // params.lanes) + 2 <= cpu.vregs)
    elif kind == "conv2d_im2col" and isinstance(params, Im2colParams):
        assert isinstance(shape, Conv2dShape)
        red = shape.C // shape.groups * shape.KH * shape.KW
        ok = (shape.groups == 1 and params.oc_bn % params.lanes == 0 and params.lanes == cpu.lanes
              and _ceil(shape.O, params.oc_bn) % params.oc_tile == 0 and red % params.kc == 0
              and params.ow_bn * params.oc_tile * (params.oc_bn // params.lanes) + 2 <= cpu.vregs)
    elif kind == "depthwise_conv2d" and isinstance(params, DepthwiseParams):
        assert isinstance(shape, Conv2dShape)
        ok = (shape.depthwise and params.c_bn % params.lanes == 0 and params.lanes == cpu.lanes
              and params.ow_bn * (params.c_bn // params.lanes) + 2 <= cpu.vregs)
    if not ok:
        raise BackendError(f"parameters {params} are not valid for {kind} {shape} on a CPU with "
                           f"{cpu.lanes} fp32 lanes and {cpu.vregs} vector registers")


# ------------------------------------------------------------------------------------------------- spaces


def candidates(kind: str, shape: Shape, cpu: CpuInfo | None = None) -> list[Params]:
    """Every parameter set of the `kind` template that is valid for `shape` (deterministic order; the default
    rule's choice is always included)."""
    cpu = cpu or CpuInfo()
    out: list[Params] = []
    L = cpu.lanes
    if kind in ("dense", "batch_matmul"):
        assert isinstance(shape, (DenseShape, BatchMatmulShape))
        kcs = sorted({shape.K} | {d for d in _divisors(shape.K) if d >= 32 and d % 16 == 0})
        for mb, nv, kc, order in itertools.product((1, 2, 4, 6, 8, 12), (1, 2, 3, 4), kcs, ("mn", "nm")):
            p = DenseParams(mb, nv, L, kc, order)
            if _dense_ok(p, shape.M, shape.N, shape.K, cpu) and (mb <= shape.M or mb == 1) and \
                    (nv == 1 or (nv - 1) * L < shape.N):
                out.append(p)
    elif kind == "conv2d_direct":
        assert isinstance(shape, Conv2dShape)
        ic_bns = sorted({L, _conv_ic_bn(shape, L)})
        for ic_bn, ow_bn, oc_tile in itertools.product(ic_bns, (1, 2, 4, 7, 8, 14, 16, 28), (1, 2)):
            if ow_bn > shape.OW or (oc_tile > 1 and shape.O <= L):
                continue
            for p in (ConvParams(ic_bn, L, ow_bn, oc_tile, L, True), ConvParams(ic_bn, L, ow_bn, oc_tile, L, False)):
                if _valid(kind, shape, p, cpu):
                    out.append(p)
    elif kind == "conv2d_im2col":
        assert isinstance(shape, Conv2dShape)
        red = shape.C // max(shape.groups, 1) * shape.KH * shape.KW
        kcs = sorted({red} | {d for d in _divisors(red) if d >= 64})
        for ow_bn, oc_tile, kc in itertools.product((1, 2, 4, 7, 8, 14, 16, 28), (1, 2, 3, 4), kcs):
            p = Im2colParams(ow_bn, L, oc_tile, L, kc)
            if ow_bn <= shape.OW and (oc_tile - 1) * L < shape.O and _valid(kind, shape, p, cpu):
                out.append(p)
    elif kind == "depthwise_conv2d":
        assert isinstance(shape, Conv2dShape)
        for c_bn, ow_bn in itertools.product((L, 2 * L), (1, 2, 4, 7, 8, 14, 16, 28)):
            p = DepthwiseParams(c_bn, ow_bn, L)
            if ow_bn <= shape.OW and _valid(kind, shape, p, cpu):
                out.append(p)
    else:
        raise BackendError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")
    d = default_params(kind, shape, cpu)
    if d not in out:
        out.insert(0, d)
    return out


def _valid(kind: str, shape: Shape, p: Params, cpu: CpuInfo) -> bool:
    try:
        check_params(kind, shape, p, cpu)
    except BackendError:
        return False
    return True


def _conv_ic_bn(shape: Conv2dShape, lanes: int) -> int:
    """Input channel block: the layout block, or the whole (small) input channel count of a stem conv."""
    cg = shape.C // shape.groups
    if shape.groups > 1:
        return lanes if cg % lanes == 0 else max(d for d in _divisors(cg) if d <= lanes)
    return cg if cg < lanes else lanes


def _best_tile(extent: int, choices: tuple[int, ...], overhead: float = 2.0) -> int:
    """The tile minimising (number of tiles) × (tile + per-tile overhead): big tiles amortise the loads of a
    tile, but a tile past the end computes padding."""
    return min(choices, key=lambda c: (_ceil(extent, c) * (c + overhead), -c))


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _ow_choices(ow: int, budget: int, choices: tuple[int, ...] = (16, 14, 8, 7, 4, 2, 1)) -> tuple[int, ...]:
    """Register-tile widths no wider than the output row and within the accumulator register budget."""
    return tuple(c for c in choices if c <= ow and c <= budget) or (1,)


def default_params(kind: str, shape: Shape, cpu: CpuInfo | None = None) -> Params:
    """The rule-based parameters of a kernel: register tiles filling about 3/4 of the vector registers, blocks
    of the vector width, cache tiles from L1/L2 (see the comments for each rule)."""
    cpu = cpu or CpuInfo()
    L = cpu.lanes
    if kind in ("dense", "batch_matmul"):
        assert isinstance(shape, (DenseShape, BatchMatmulShape))
        M, N, K = shape.M, shape.N, shape.K
        # 2 vectors of columns when N allows; rows so that mb·nv accumulators fill ~half the register file
        # (more rows re-use each W vector more; beyond that the broadcasts dominate).
        nv = 2 if N > L else 1
        row_choices = tuple(r for r in (8, 6, 4, 2, 1) if r * nv + nv + 1 <= cpu.vregs // 2 + nv + 1)
        mb = 1 if M == 1 else _best_tile(M, row_choices)
        # K tile: the W panel kc×bn stays in half of L2 (the x rows stream from L1).
        kc = K
        if K * nv * L * 4 > cpu.l2 // 2:
            kc = max([d for d in _divisors(K) if d * nv * L * 4 <= cpu.l2 // 2] or [K])
        # Loop order: keep W (N·K) resident in L2 and sweep it under each x row block, unless only x fits.
        wbytes, xbytes = N * K * 4, M * K * 4
        order = "nm" if (wbytes > cpu.l2 and xbytes <= cpu.l2) else "mn"
        return DenseParams(mb, nv, L, kc, order)
    if kind == "conv2d_direct":
        assert isinstance(shape, Conv2dShape)
        ic_bn = _conv_ic_bn(shape, L)
        # ow tile: up to 16 output columns (ow_bn·oc_tile accumulators), exact when OW allows; a second output
        # block when the ow tile is short, so each broadcast input feeds >= 14 FMAs. Unrolling the kw loop helps
        # 3-tap windows a little and hurts the 7-tap stem (measured on Zen 4: 115 vs 80 GFLOP/s, 1 thread).
        ow_bn = _best_tile(shape.OW, _ow_choices(shape.OW, cpu.vregs - 2))
        ob = _ceil(shape.O, L)
        oc_tile = 2 if (ow_bn <= 8 and 2 * ow_bn + 2 <= cpu.vregs and ob % 2 == 0
                        and (shape.groups == 1 or (shape.O // shape.groups) % (2 * L) == 0)) else 1
        return ConvParams(ic_bn, L, ow_bn, oc_tile, L, shape.KW <= 3)
    if kind == "conv2d_im2col":
        assert isinstance(shape, Conv2dShape)
        red = shape.C // shape.groups * shape.KH * shape.KW
        oc_tile = 2 if _ceil(shape.O, L) % 2 == 0 else 1
        ow_bn = _best_tile(shape.OW, _ow_choices(shape.OW, (cpu.vregs - 2) // oc_tile, (8, 7, 6, 4, 2, 1)))
        kc = red if red * oc_tile * L * 4 <= cpu.l2 // 2 else max(
            [d for d in _divisors(red) if d * oc_tile * L * 4 <= cpu.l2 // 2] or [red])
        return Im2colParams(ow_bn, L, oc_tile, L, kc)
    if kind == "depthwise_conv2d":
        assert isinstance(shape, Conv2dShape)
        return DepthwiseParams(L, _best_tile(shape.OW, _ow_choices(shape.OW, cpu.vregs - 2)), L)
    raise BackendError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")


def with_lanes(p: Params, lanes: int) -> Params:
    """The same parameters for another vector width (blocks that equal the width follow it)."""
    if isinstance(p, ConvParams):
        return replace(p, lanes=lanes, oc_bn=lanes * max(1, p.oc_bn // p.lanes))
    if isinstance(p, Im2colParams):
        return replace(p, lanes=lanes, oc_bn=lanes * max(1, p.oc_bn // p.lanes))
    if isinstance(p, DepthwiseParams):
        return replace(p, lanes=lanes, c_bn=lanes * max(1, p.c_bn // p.lanes))
    return replace(p, lanes=lanes)
