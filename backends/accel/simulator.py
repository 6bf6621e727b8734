"""A functional, bit-exact simulator of the accelerator ISA with a simple cycle model.

The scratchpad and DRAM are `bytearray`s; every instruction reads its operands from scratchpad bytes (NumPy views
with the operand's dtype), computes in int64 exactly as docs/accel-isa.md specifies, and writes its result back.
An access past the scratchpad capacity raises `ScratchpadError`; one past the DRAM image raises `BackendError`.
The simulator counts DRAM bytes read and written, the scratchpad high-water mark and cycles (`TimingModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from qcc.backends.accel.isa import ITEMSIZE, NUMPY, PACKED, RANGES, Instr, dtype_name
from qcc.errors import BackendError, ScratchpadError

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class TimingModel:
    """Cycle costs (documented in docs/accel-isa.md). Instructions run one after another (no overlap): the total
    is the sum; the report also gives the DMA and compute sums, whose maximum bounds a perfectly overlapped run."""

    clock_mhz: float = 1000.0
    dram_gbps: float = 25.6
    dma_latency: int = 64       # cycles per DMA instruction (descriptor + DRAM latency)
    dma_row_overhead: int = 2   # cycles per contiguous row of a strided DMA
    macs_per_cycle: int = 256   # 16 x 16 MAC array
    lanes: int = 16             # vector unit width
    op_overhead: int = 16       # pipeline fill per compute instruction
    divide: int = 34            # cycles of the iterative 64-bit divider (one quotient bit per cycle, + setup)
    sqrt: int = 40              # cycles of the integer square-root unit

    @property
    def bytes_per_cycle(self) -> float:
        return self.dram_gbps * 1e3 / self.clock_mhz

    def dma(self, nbytes: int, rows: int) -> int:
        return self.dma_latency + rows * self.dma_row_overhead + int(np.ceil(nbytes / self.bytes_per_cycle))

    def gemm(self, macs: int, outputs: int) -> int:
        return self.op_overhead + -(-macs // self.macs_per_cycle) + -(-outputs // self.lanes)

    def vector(self, elements: int) -> int:
        return self.op_overhead + -(-elements // self.lanes)

    def rows(self, elements: int, passes: int, rows: int, per_row: int) -> int:
        """A row-wise vector op: `passes` sweeps over the elements plus `per_row` cycles of scalar work per row
        (the divider / square-root unit)."""
        return self.op_overhead + passes * -(-elements // self.lanes) + rows * per_row


@dataclass
class Stats:
    """What one run measured."""

    dram_read: int = 0
    dram_write: int = 0
    spm_peak: int = 0
    cycles: int = 0
    dma_cycles: int = 0
    compute_cycles: int = 0
    instructions: int = 0
    by_op: dict[str, int] = field(default_factory=dict)  # cycles per opcode


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 a @ b, through float64 BLAS when every partial sum is an integer below 2^53 (then exact in any
    summation order), else in int64."""
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * a.shape[-1]
    if bound < 2.0**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def round_shift(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(x + 2^(c-1)) >> c for c > 0, x << -c otherwise (int64, arithmetic shift)."""
    right = np.maximum(c, 0)
    half = np.where(c > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    return np.where(c > 0, (x + half) >> right, x << np.maximum(-c, 0))


class Simulator:
    """Executes programs on a scratchpad of `capacity` bytes and a DRAM image."""

    def __init__(self, capacity: int, timing: TimingModel | None = None) -> None:
        self.capacity = int(capacity)
        self.timing = timing or TimingModel()
        self.spm = bytearray(self.capacity)

    # -- memory -------------------------------------------------------------------------------------------
    def _spm(self, addr: int, count: int, dt: str, what: str, ins: Instr) -> np.ndarray:
        nbytes = count * ITEMSIZE[dt]
        if addr < 0 or addr + nbytes > self.capacity:
            raise ScratchpadError(f"{ins.op} operand {what} [{addr}, {addr + nbytes}) is outside the "
                                  f"{self.capacity}-byte scratchpad")
        self.stats.spm_peak = max(self.stats.spm_peak, addr + nbytes)
        return np.frombuffer(self.spm, NUMPY[dt], count, addr)

    def _read(self, addr: int, count: int, dt: str, what: str, ins: Instr) -> np.ndarray:
        return self._spm(addr, count, dt, what, ins).astype(np.int64)

    def _weights(self, addr: int, rows: int, k: int, dt: str, ins: Instr) -> np.ndarray:
        """int64 [rows, k] weights; packed dtypes hold each row in ceil(k / 2) bytes, low nibble first, and are
        sign-extended (i4) by the MAC array's unpacker."""
        if dt not in PACKED:
            return self._read(addr, rows * k, dt, "w", ins).reshape(rows, k)
        half = -(-k // 2)
        raw = self._read(addr, rows * half, "u8", "w", ins).reshape(rows, half)
        nib = np.empty((rows, 2 * half), np.int64)
        nib[:, 0::2], nib[:, 1::2] = raw & 0xF, raw >> 4
        if PACKED[dt] == "i4":
            nib = np.where(nib >= 8, nib - 16, nib)
        return nib[:, :k]

    def _write(self, addr: int, values: np.ndarray, dt: str, ins: Instr) -> None:
        flat = np.ascontiguousarray(values).reshape(-1)
        self._spm(addr, flat.size, dt, "y", ins)[:] = flat.astype(NUMPY[dt])

    def _dma(self, ins: Instr, dram: bytearray) -> None:
        f = ins.fields()
        n2, n1, n0, s2, s1 = f["n2"], f["n1"], f["n0"], f["s2"], f["s1"]
        total = n2 * n1 * n0
        if min(n2, n1, n0) < 0 or f["spm"] < 0 or f["spm"] + total > self.capacity:
            raise ScratchpadError(f"{ins.op}: scratchpad range [{f['spm']}, {f['spm'] + total}) is outside the "
                                  f"{self.capacity}-byte scratchpad")
        last = f["dram"] + (n2 - 1) * s2 + (n1 - 1) * s1 + n0 if total else f["dram"]
        if f["dram"] < 0 or last > len(dram):
            raise BackendError(f"{ins.op}: DRAM range starting at {f['dram']} ends at {last}, past the "
                               f"{len(dram)}-byte DRAM image")
        self.stats.spm_peak = max(self.stats.spm_peak, f["spm"] + total)
        pos = f["spm"]
        for i in range(n2):
            for j in range(n1):
                d = f["dram"] + i * s2 + j * s1
                if ins.op == "load":
                    self.spm[pos:pos + n0] = dram[d:d + n0]
                else:
                    dram[d:d + n0] = self.spm[pos:pos + n0]
                pos += n0
        if ins.op == "load":
            self.stats.dram_read += total
        else:
            self.stats.dram_write += total
        self._cycles(ins.op, self.timing.dma(total, n2 * n1), dma=True)

    def _cycles(self, op: str, n: int, dma: bool = False) -> None:
        self.stats.cycles += n
        if dma:
            self.stats.dma_cycles += n
        else:
            self.stats.compute_cycles += n
        self.stats.by_op[op] = self.stats.by_op.get(op, 0) + n

    # -- compute ------------------------------------------------------------------------------------------
    def _epilogue(self, ins: Instr, acc: np.ndarray, channel: np.ndarray) -> None:
        """Requantize int64 `acc` (channel index per element) and write it, or write the raw i32 accumulator."""
        f = ins.fields()
        ydt = dtype_name(f["ydt"])
        if f["mul"] < 0:
            if ydt != "i32":
                raise BackendError(f"{ins.op}: without a requantize table the output must be i32, not {ydt}")
            self._write(f["y"], acc.astype(np.int32), "i32", ins)  # wraps like an int32 accumulator
            return
        acc = acc.astype(np.int32).astype(np.int64)  # the accumulator register is int32
        mul = self._read(f["mul"], f["mlen"], "i32", "mul", ins)[channel]
        shf = self._read(f["shf"], f["mlen"], "i32", "shf", ins)[channel]
        y = round_shift((acc - f["izp"]) * mul, shf) + f["yzp"]
        lo, hi = max(f["lo"], RANGES[ydt][0]), min(f["hi"], RANGES[ydt][1])
        self._write(f["y"], np.clip(y, lo, hi), ydt, ins)

    def _conv(self, ins: Instr) -> None:
        f = ins.fields()
        n, c, h, wd, o, kh, kw, oh, ow = (f[k] for k in ("n", "c", "h", "wd", "o", "kh", "kw", "oh", "ow"))
        g = f["groups"]
        if g < 1 or c % g or o % g:
            raise BackendError(f"conv: groups={g} must divide c={c} and o={o}")
        cg, og = c // g, o // g
        x = self._read(f["x"], n * c * h * wd, dtype_name(f["xdt"]), "x", ins).reshape(n, c, h, wd) - f["xzp"]
        w = self._weights(f["w"], o, cg * kh * kw, dtype_name(f["wdt"]), ins).reshape(o, cg, kh, kw) - f["wzp"]
        sh, sw, dh, dw, pt, pl = f["sh"], f["sw"], f["dh"], f["dw"], f["pt"], f["pl"]
        # Zero-pad (the real value 0 after the zero point) to cover every window.
        hp = max((oh - 1) * sh + (kh - 1) * dh + 1, pt + h)
        wp = max((ow - 1) * sw + (kw - 1) * dw + 1, pl + wd)
        xp = np.zeros((n, c, hp, wp), np.int64)
        xp[:, :, pt:pt + h, pl:pl + wd] = x
        # im2col: cols[n, c, kh, kw, oh, ow]
        cols = np.empty((n, c, kh, kw, oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
        acc = np.empty((n, o, oh, ow), np.int64)
        for gi in range(g):
            cg_cols = cols[:, gi * cg:(gi + 1) * cg].reshape(n, cg * kh * kw, oh * ow)
            wg = w[gi * og:(gi + 1) * og].reshape(og, cg * kh * kw)
            acc[:, gi * og:(gi + 1) * og] = exact_matmul(wg, cg_cols).reshape(n, og, oh, ow)
        if f["bias"] >= 0:
            acc += self._read(f["bias"], o, "i32", "bias", ins).reshape(1, o, 1, 1)
        channel = np.broadcast_to(np.arange(o).reshape(1, o, 1, 1) % max(f["mlen"], 1), acc.shape)
        self._epilogue(ins, acc, channel)
        self._cycles("conv", self.timing.gemm(n * o * oh * ow * cg * kh * kw, acc.size))

    def _gemm(self, ins: Instr) -> None:
        f = ins.fields()
        m, k, nn = f["m"], f["k"], f["n"]
        x = self._read(f["x"], m * k, dtype_name(f["xdt"]), "x", ins).reshape(m, k) - f["xzp"]
        w = self._weights(f["w"], nn, k, dtype_name(f["wdt"]), ins) - f["wzp"]
        acc = exact_matmul(x, w.T)
        if f["bias"] >= 0:
            acc = acc + self._read(f["bias"], nn, "i32", "bias", ins)
        channel = np.broadcast_to(np.arange(nn) % max(f["mlen"], 1), acc.shape)
        self._epilogue(ins, acc, channel)
        self._cycles("gemm", self.timing.gemm(m * k * nn, m * nn))

    def _req(self, ins: Instr) -> None:
        f = ins.fields()
        if f["mul"] < 0 or f["inner"] < 1:
            raise BackendError("req needs a multiplier table and inner >= 1")
        x = self._read(f["x"], f["count"], dtype_name(f["xdt"]), "x", ins)
        channel = ((f["base"] + np.arange(f["count"])) // f["inner"]) % max(f["mlen"], 1)
        self._epilogue(ins, x, channel)
        self._cycles("req", self.timing.vector(f["count"]))

    def _qadd(self, ins: Instr) -> None:
        f = ins.fields()
        a = self._read(f["a"], f["count"], dtype_name(f["adt"]), "a", ins)
        b = self._read(f["b"], f["count"], dtype_name(f["bdt"]), "b", ins)
        acc = (a - f["azp"]) * f["am"] + (b - f["bzp"]) * f["bm"]
        ydt = dtype_name(f["ydt"])
        y = round_shift(acc, np.int64(f["shift"])) + f["yzp"]
        self._write(f["y"], np.clip(y, max(f["lo"], RANGES[ydt][0]), min(f["hi"], RANGES[ydt][1])), ydt, ins)
        self._cycles("qadd", self.timing.vector(f["count"]))

    def _clip(self, ins: Instr) -> None:
        f = ins.fields()
        dt = dtype_name(f["dt"])
        x = self._read(f["x"], f["count"], dt, "x", ins)
        self._write(f["y"], np.clip(x, f["lo"], f["hi"]), dt, ins)
        self._cycles("clip", self.timing.vector(f["count"]))

    def _maxpool(self, ins: Instr) -> None:
        f = ins.fields()
        p, h, wd, oh, ow, kh, kw = (f[k] for k in ("planes", "h", "wd", "oh", "ow", "kh", "kw"))
        sh, sw, dh, dw, pt, pl = f["sh"], f["sw"], f["dh"], f["dw"], f["pt"], f["pl"]
        dt = dtype_name(f["dt"])
        x = self._read(f["x"], p * h * wd, dt, "x", ins).reshape(p, h, wd)
        hp = max((oh - 1) * sh + (kh - 1) * dh + 1, pt + h)
        wp = max((ow - 1) * sw + (kw - 1) * dw + 1, pl + wd)
        xp = np.full((p, hp, wp), RANGES[dt][0] - 1, np.int64)  # padding never wins
        xp[:, pt:pt + h, pl:pl + wd] = x
        y = np.full((p, oh, ow), np.iinfo(np.int64).min, np.int64)
        for i in range(kh):
            for j in range(kw):
                y = np.maximum(y, xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw])
        # A window made only of padding yields the dtype minimum (as the reference pads with it).
        self._write(f["y"], np.maximum(y, RANGES[dt][0]), dt, ins)
        self._cycles("maxpool", self.timing.vector(p * oh * ow * kh * kw))

    def _mean(self, ins: Instr) -> None:
        f = ins.fields()
        dt, outer, inner = dtype_name(f["dt"]), f["outer"], f["inner"]
        if inner < 1:
            raise BackendError("mean needs inner >= 1")
        s = self._read(f["x"], outer * inner, dt, "x", ins).reshape(outer, inner).sum(axis=1)
        self._write(f["y"], (s + inner // 2) // inner, dt, ins)
        self._cycles("mean", self.timing.vector(outer * inner))

    def _copy(self, ins: Instr) -> None:
        f = ins.fields()
        data = self._spm(f["x"], f["nbytes"], "u8", "x", ins).copy()
        self._spm(f["y"], f["nbytes"], "u8", "y", ins)[:] = data
        self._cycles("copy", self.timing.vector(f["nbytes"]))

    # -- driver -------------------------------------------------------------------------------------------
    def run(self, program: list[Instr], dram: bytearray) -> Stats:
        """Execute `program` against `dram` (modified in place); returns the run's statistics."""
        self.stats = Stats()
        handlers = {"conv": self._conv, "gemm": self._gemm, "req": self._req, "qadd": self._qadd,
                    "clip": self._clip, "maxpool": self._maxpool, "mean": self._mean, "copy": self._copy,
                    **vector_handlers(self)}
        for ins in program:
            self.stats.instructions += 1
            if ins.op in ("load", "store"):
                self._dma(ins, dram)
            elif ins.op == "barrier":
                self._cycles("barrier", 1)
            elif ins.op == "halt":
                break
            else:
                handlers[ins.op](ins)
        return self.stats


def vector_handlers(sim: Simulator) -> dict[str, Callable[[Instr], None]]:
    """The transformer / integer-nonlinear instructions (`qcc.backends.accel.sim_vector`)."""
    from qcc.backends.accel.sim_vector import handlers

    return handlers(sim)
