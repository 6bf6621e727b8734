"""Simulator semantics of the transformer / integer-nonlinear instructions (docs/accel-isa.md, "Vector extension").

Each handler reads its operands from scratchpad bytes through the `Simulator`, computes in int64 exactly as the
ISA document specifies (the same integer algorithms as the IR's references in `qcc.ir.ops.quant_nonlinear`, written
out here again as the hardware would run them: no IR function is called), writes the result back and charges
cycles from the `TimingModel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from qcc.backends.accel.isa import RANGES, Instr, dtype_name
from qcc.errors import BackendError

if TYPE_CHECKING:
    from qcc.backends.accel.simulator import Simulator

SOFTMAX_NORM = 62   # softmax rows are normalized by floor(2^62 / sum)
SOFTMAX_OUT = 8     # ... and written as u8 at scale 2^-8
SIGMOID_BITS = 14   # shiftgelu's sigmoid is an integer at scale 2^-14


def _rshift(x: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """Round-half-up arithmetic right shift by c > 0, left shift by -c otherwise (int64)."""
    c = np.asarray(c, np.int64)
    right = np.maximum(c, 0)
    half = np.where(c > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    return np.where(c > 0, (x + half) >> right, np.left_shift(x, np.maximum(-c, 0)))


def _sat(x: np.ndarray, dt: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    tlo, thi = RANGES[dt]
    return np.clip(x, tlo if lo is None else max(lo, tlo), thi if hi is None else min(hi, thi))


def _shift_exp(x: np.ndarray, one: int, nexp: int, k: int) -> np.ndarray:
    """The shift-exp unit: x·log2(e) by shifts (1 + 1/2 − 1/16), split x = −z·one + r, 2^r ≈ 1 + r/2."""
    x = x + (x >> 1) - (x >> 4)
    x = np.maximum(x, -nexp * one)
    z = (-x) // one
    r = x + z * one
    return np.left_shift((r >> 1) + one, k) >> z


def _poly_exp(x: np.ndarray, ln2: int, pb: int, pc: int, nexp: int, k: int) -> np.ndarray:
    """The polynomial-exp unit: x = −z·ln2 + p, ((p + pb)² + pc)·2^k >> z."""
    x = np.maximum(x, -nexp * ln2)
    z = (-x) // ln2
    p = x + z * ln2
    return np.left_shift((p + pb) ** 2 + pc, k) >> z


def _normalize_rows(e: np.ndarray) -> np.ndarray:
    """u8 rows at 2^-8 from non-negative int64 e [rows, cols]: one divide per row, then multiply-shift."""
    total = np.maximum(e.sum(axis=1, keepdims=True), 1)
    factor = (np.int64(1) << SOFTMAX_NORM) // total
    shift = SOFTMAX_NORM - SOFTMAX_OUT
    return np.clip((e * factor + (np.int64(1) << (shift - 1))) >> shift, 0, 255)


def _isqrt_ivit(n: np.ndarray) -> np.ndarray:
    k = np.full(n.shape, 1 << 16, np.int64)
    for _ in range(10):
        k = np.maximum((k + n // k) >> 1, 1)
    return np.where(n == 0, 0, k)


def handlers(sim: Simulator) -> dict[str, Callable[[Instr], None]]:
    """Instruction handlers bound to `sim` (its scratchpad, stats and timing model)."""
    t = sim.timing

    def read(ins: Instr, fld: str, count: int, dt_field: str | None = None, dt: str | None = None) -> np.ndarray:
        return sim._read(ins[fld], count, dt or dtype_name(ins[dt_field or fld + "dt"]), fld, ins)

    def bmm(ins: Instr) -> None:
        f = ins.fields()
        b, m, k, n = f["batch"], f["m"], f["k"], f["n"]
        x = read(ins, "x", b * m * k).reshape(b, m, k) - f["xzp"]
        w = read(ins, "w", b * k * n).reshape(b, k, n) - f["wzp"]
        acc = np.matmul(x, w)  # int64; operands are activations of at most 16 bits
        sim._epilogue(ins, acc, np.broadcast_to(np.arange(n) % max(f["mlen"], 1), acc.shape))
        sim._cycles("bmm", t.gemm(b * m * k * n, b * m * n))

    def gemmg(ins: Instr) -> None:
        f = ins.fields()
        m, k, n, gs = f["m"], f["k"], f["n"], f["gs"]
        if gs < 1 or k % gs:
            raise BackendError(f"gemmg: group size {gs} must divide k={k}")
        x = read(ins, "x", m * k).reshape(m, k // gs, gs) - f["xzp"]
        w = sim._weights(f["w"], n, k, dtype_name(f["wdt"]), ins).reshape(n, k // gs, gs) - f["wzp"]
        gsc = sim._read(f["gsc"], n * (k // gs), "i32", "gsc", ins).reshape(n, k // gs)
        acc = (np.einsum("mgk,ngk->mng", x, w) * gsc).sum(-1)
        if f["bias"] >= 0:
            acc = acc + sim._read(f["bias"], n, "i32", "bias", ins)
        sim._epilogue(ins, acc, np.broadcast_to(np.arange(n) % max(f["mlen"], 1), acc.shape))
        sim._cycles("gemmg", t.gemm(m * k * n, m * n * (k // gs)))

    def qaddb(ins: Instr) -> None:
        f = ins.fields()
        if f["binner"] < 1 or f["bcount"] < 1:
            raise BackendError("qaddb needs binner >= 1 and bcount >= 1")
        a = read(ins, "a", f["count"])
        b = read(ins, "b", f["bcount"])[((f["base"] + np.arange(f["count"])) // f["binner"]) % f["bcount"]]
        acc = (a - f["azp"]) * f["am"] + (b - f["bzp"]) * f["bm"]
        ydt = dtype_name(f["ydt"])
        sim._write(f["y"], _sat(_rshift(acc, f["shift"]) + f["yzp"], ydt, f["lo"], f["hi"]), ydt, ins)
        sim._cycles("qaddb", t.vector(f["count"]))

    def permute(ins: Instr) -> None:
        f = ins.fields()
        dims = tuple(f[f"d{i}"] for i in range(6))
        perm = tuple(f[f"p{i}"] for i in range(6))
        if sorted(perm) != list(range(6)) or min(dims) < 1:
            raise BackendError(f"permute: bad dims {dims} or permutation {perm}")
        dt = dtype_name(f["dt"])
        x = read(ins, "x", math.prod(dims), dt=dt).reshape(dims)
        sim._write(f["y"], x.transpose(perm), dt, ins)
        sim._cycles("permute", t.vector(x.size))

    def rmean(ins: Instr) -> None:
        f = ins.fields()
        o, r, i, dt = f["outer"], f["red"], f["inner"], dtype_name(f["dt"])
        if r < 1:
            raise BackendError("rmean needs red >= 1")
        s = read(ins, "x", o * r * i, dt=dt).reshape(o, r, i).sum(axis=1)
        sim._write(f["y"], (s + r // 2) // r, dt, ins)
        sim._cycles("rmean", t.vector(o * r * i))

    def softmax(ins: Instr) -> None:
        f = ins.fields()
        rows, cols = f["rows"], f["cols"]
        q = read(ins, "x", rows * cols).reshape(rows, cols)
        q = q - q.max(axis=1, keepdims=True)
        e = (_poly_exp(q, f["ln2"], f["pb"], f["pc"], f["nexp"], f["k"]) if ins.op == "isoftmax"
             else _shift_exp(q, f["one"], f["nexp"], f["k"]))
        sim._write(f["y"], _normalize_rows(e), "u8", ins)
        sim._cycles(ins.op, t.rows(rows * cols, 3, rows, t.divide))

    def igelu(ins: Instr) -> None:
        f = ins.fields()
        q = read(ins, "x", f["count"])
        poly = (np.minimum(np.abs(q), f["pb"]) - f["pb"]) ** 2
        erf = np.sign(q) * (f["one"] - poly)
        sim._write(f["y"], q * ((f["one"] + erf) >> f["shift"]), "i32", ins)  # wraps like the i32 register
        sim._cycles("igelu", t.vector(2 * f["count"]))

    def shiftgelu(ins: Instr) -> None:
        f = ins.fields()
        q = read(ins, "x", f["count"])
        e = _shift_exp(-np.abs(q), f["one"], f["nexp"], f["k"])
        e0 = _shift_exp(np.zeros(1, np.int64), f["one"], f["nexp"], f["k"])
        den = e0 + e
        sig = ((np.where(q >= 0, e0, e) << SIGMOID_BITS) + den // 2) // den
        sim._write(f["y"], q * sig, "i32", ins)
        sim._cycles("shiftgelu", t.rows(f["count"], 3, 1, t.divide))

    def lnorm(ins: Instr) -> None:
        f = ins.fields()
        rows, cols = f["rows"], f["cols"]
        q = read(ins, "x", rows * cols).reshape(rows, cols)
        y = cols * q - q.sum(axis=1, keepdims=True)
        var = (y * y).sum(axis=1, keepdims=True)
        if f["sqrt"] == 0:  # exact floor square root
            std = np.array([[math.isqrt(int(v))] for v in var[:, 0]], np.int64).reshape(rows, 1)
        elif f["sqrt"] == 1:
            std = _isqrt_ivit(var)
        else:
            raise BackendError(f"lnorm: unknown square-root mode {f['sqrt']}")
        factor = (np.int64(1) << 31) // np.maximum(std, 1)
        normed = (y * factor) >> 1
        mul, shf, bias = (sim._read(f[k], cols, "i32", k, ins) for k in ("mul", "shf", "bias"))
        ydt = dtype_name(f["ydt"])
        sim._write(f["y"], _sat(_rshift(normed * mul, shf) + bias + f["yzp"], ydt), ydt, ins)
        sim._cycles("lnorm", t.rows(rows * cols, 3, rows, t.sqrt + t.divide))

    def qcat(ins: Instr) -> None:
        f = ins.fields()
        o, ia, ib, ydt = f["outer"], f["ia"], f["ib"], dtype_name(f["ydt"])
        a = read(ins, "a", o * ia).reshape(o, ia)
        b = read(ins, "b", o * ib).reshape(o, ib)
        ya = _rshift((a - f["azp"]) * f["am"], f["ash"]) + f["yzp"]
        yb = _rshift((b - f["bzp"]) * f["bm"], f["bsh"]) + f["yzp"]
        sim._write(f["y"], _sat(np.concatenate([ya, yb], axis=1), ydt), ydt, ins)
        sim._cycles("qcat", t.vector(o * (ia + ib)))

    def avgpool(ins: Instr) -> None:
        f = ins.fields()
        p, h, wd, oh, ow, kh, kw = (f[k] for k in ("planes", "h", "wd", "oh", "ow", "kh", "kw"))
        sh, sw, pt, pl, pb, pr = (f[k] for k in ("sh", "sw", "pt", "pl", "pb", "pr"))
        dt = dtype_name(f["dt"])
        hp = max((oh - 1) * sh + kh, pt + h)
        wp = max((ow - 1) * sw + kw, pl + wd)
        xp = np.zeros((p, hp, wp), np.int64)
        xp[:, pt:pt + h, pl:pl + wd] = read(ins, "x", p * h * wd, dt=dt).reshape(p, h, wd)
        ones = np.zeros((hp, wp), np.int64)
        if f["incpad"]:  # padding cells count, the extra ceil-mode cells never do
            ones[:min(pt + h + pb, hp), :min(pl + wd + pr, wp)] = 1
        else:
            ones[pt:pt + h, pl:pl + wd] = 1
        sums = np.zeros((p, oh, ow), np.int64)
        counts = np.zeros((oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                sums += xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
                counts += ones[i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
        sim._write(f["y"], (sums + counts // 2) // np.maximum(counts, 1), dt, ins)
        sim._cycles("avgpool", t.vector(p * oh * ow * (kh * kw + 1)))

    return {"bmm": bmm, "gemmg": gemmg, "qaddb": qaddb, "permute": permute, "rmean": rmean, "isoftmax": softmax,
            "shiftmax": softmax, "igelu": igelu, "shiftgelu": shiftgelu, "lnorm": lnorm, "qcat": qcat,
            "avgpool": avgpool}
