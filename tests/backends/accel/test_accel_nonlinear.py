"""The vector extension of the accelerator ISA (integer nonlinears, attention, broadcasting add, permute, concat,
average pool, per-vector GEMM) and 4-bit weight packing: each instruction, emitted from a one-op integer graph,
equals the IR reference bit for bit, untiled and row-tiled on a tiny scratchpad; a row that cannot fit raises
ScratchpadError; packed int4 weights halve the weight DMA bytes."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.backends.accel.build import build
from qcc.backends.accel.isa import Instr, pack_int4, packed_bytes
from qcc.backends.accel.simulator import Simulator
from qcc.errors import ScratchpadError, UnsupportedOperatorError
from qcc.ir.graph import GraphBuilder
from qcc.target import Target

RNG = np.random.default_rng(1)


def _ints(shape, dtype, lo=None, hi=None):
    info = np.iinfo(dtype)
    return RNG.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


def run_both(graph, inputs, kb=64):
    """Accelerator output == interpreter output (dtype, shape, bits); returns the executable."""
    exe = build(graph, Target("accel-int8", scratchpad_kb=kb), method="belady")
    got, want = exe.run(inputs), qcc.interpret(graph, inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    info, sim = exe.info, exe.last_stats
    assert sim.dram_read + sim.dram_write == info["traffic"]["load"] + info["traffic"]["store"] + info["tile_traffic"]
    assert sim.spm_peak <= kb * 1024
    return exe


def _one(op, shape, dtype, attrs, extra=(), x=None):
    b = GraphBuilder()
    xv = b.input(shape, dtype, "x")
    y = b.emit(op, [xv, *(b.param(a, f"p{i}") for i, a in enumerate(extra))], attrs, name=op)
    return b.output(y), [_ints(shape, np.dtype({"i8": np.int8, "u8": np.uint8, "i16": np.int16}[dtype]))
                         if x is None else x]


def _ln_params(c):
    return (RNG.integers(2**20, 2**22, c).astype(np.int32), RNG.integers(40, 44, c).astype(np.int32),
            RNG.integers(-50, 50, c).astype(np.int32))


CASES = {
    "isoftmax": lambda: _one("isoftmax", (3, 5, 24), "i16", {"axis": 2, "ln2": 17654, "b": 34460, "c": 622438184},
                             x=_ints((3, 5, 24), np.int16, -30000, 30000)),
    "shiftmax": lambda: _one("shiftmax", (16, 40), "i8", {"axis": 1, "one": 23, "n": 15, "k": 2}),
    "igelu": lambda: _one("igelu", (4, 50), "i8", {"b": 166, "one": 30657, "shift": 1}),
    "shiftgelu": lambda: _one("shiftgelu", (4, 50), "i8", {"one": 19, "n": 20, "k": 3}),
    "ilayer_norm": lambda: _one("ilayer_norm", (4, 8, 16), "i8", {"axis": 2}, _ln_params(16)),
    "ilayer_norm_ivit": lambda: _one("ilayer_norm", (12, 4, 8), "u8",
                                     {"axis": 1, "sqrt": "ivit", "zero_point": 5, "dtype": "u8"},
                                     tuple(p.reshape(4, 8) for p in _ln_params(32))),
    "transpose": lambda: _one("transpose", (4, 4, 5, 6), "i8", {"perm": (0, 2, 3, 1)}),
    "transpose_lead": lambda: _one("transpose", (4, 5, 6, 7), "u8", {"perm": (2, 0, 3, 1)}),
    "qmean_mid": lambda: _one("qmean", (6, 7, 5, 4), "i8", {"axes": (1, 2), "keepdims": True}),
    "avg_pool2d": lambda: _one("avg_pool2d", (2, 8, 9, 10), "u8",
                               {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 0, 1, 1), "ceil_mode": True}),
    "avg_pool2d_nopad": lambda: _one("avg_pool2d", (2, 8, 9, 10), "i8",
                                     {"kernel": (3, 3), "stride": (2, 1), "padding": (1, 1, 1, 1),
                                      "count_include_pad": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_nonlinear_and_vector_ops_match_reference(case):
    g, xs = CASES[case]()
    run_both(g, xs)
    assert run_both(g, xs, kb=1).info["tiles"]


def _attention(fused, per_channel=False):
    b = GraphBuilder()
    q = b.input((2, 3, 5, 8), "i8", "q")
    k = b.input((2, 3, 8, 5), "u8", "k")
    y = b.emit("qmatmul", [q, k], {"a_zero_point": -3, "b_zero_point": 7}, name="mm")
    if fused:
        shape = (5,) if per_channel else ()
        mul = b.param(RNG.integers(2**29, 2**30, shape).astype(np.int32), "mul")
        shf = b.param(np.full(shape, 38, np.int32), "shf")
        y = b.emit("requantize", [y, mul, shf], {"dtype": "i16", "zero_point": 4}, name="rq")
    return b.output(y), [_ints((2, 3, 5, 8), np.int8), _ints((2, 3, 8, 5), np.uint8)]


@pytest.mark.parametrize("fused,per_channel", [(True, False), (True, True), (False, False)])
def test_qmatmul_is_bmm_with_fused_requantize(fused, per_channel):
    g, xs = _attention(fused, per_channel)
    exe = run_both(g, xs)
    assert [i.op for i in exe.program.code].count("bmm") == 1 and "req" not in exe.disassemble()
    assert run_both(g, xs, kb=1).info["tiles"]  # split by batch


@pytest.mark.parametrize("bshape", [(1, 6, 1, 1), (5,), (1, 1, 8, 5), ()])
def test_broadcasting_qadd(bshape):
    b = GraphBuilder()
    x = b.input((4, 6, 8, 5), "i8", "x")
    other = b.input(bshape, "u8", "o")
    attrs = {"a_multiplier": 1 << 29, "b_multiplier": 3 << 27, "shift": 30, "a_zero_point": 2, "b_zero_point": 9,
             "zero_point": -1, "dtype": "i8", "min": None, "max": None}
    g = b.output(b.emit("qadd", [other, x], attrs, name="add"))  # the broadcast operand first: swapped
    xs = [_ints((4, 6, 8, 5), np.int8), _ints(bshape, np.uint8)]
    run_both(g, xs)
    assert run_both(g, xs, kb=1).info["tiles"]


def test_qconcat_chain_and_constant_input():
    b = GraphBuilder()
    x1, x2 = b.input((2, 3, 4), "i8", "a"), b.input((2, 5, 4), "u8", "b")
    c = b.param(_ints((2, 2, 4), np.int8), "c")
    g = b.output(b.emit("qconcat", [x1, x2, c], {"axis": 1, "multipliers": (1 << 30, 3 << 28, 1 << 29),
                                                 "shifts": (30, 31, 29), "input_zero_points": (0, 128, -2),
                                                 "zero_point": 3, "dtype": "i8"}, name="cat"))
    xs = [_ints((2, 3, 4), np.int8), _ints((2, 5, 4), np.uint8)]
    run_both(g, xs)
    run_both(g, xs, kb=1)


@pytest.mark.parametrize("wdt", ["i8", "i4"])
def test_per_vector_qlinear(wdt):
    b = GraphBuilder()
    x = b.input((6, 12), "u8", "x")
    lo, hi = (-8, 7) if wdt == "i4" else (-100, 100)
    w = b.param(_ints((10, 12), np.int8, lo, hi), "w")
    w.type = w.type.with_dtype(wdt) if wdt == "i4" else w.type
    bias = b.param(_ints((10,), np.int32, -500, 500), "bias")
    gs = b.param(_ints((10, 3), np.int32, 1, 40), "gs")
    y = b.emit("qlinear", [x, w, bias, gs], {"x_zero_point": 7, "w_zero_point": 0, "group_size": 4}, name="fc")
    mul, shf = b.param(np.int32(1 << 30), "m"), b.param(np.int32(40), "s")
    g = b.output(b.emit("requantize", [y, mul, shf], {"dtype": "i8"}, name="rq"))
    xs = [_ints((6, 12), np.uint8)]
    exe = run_both(g, xs)
    assert "gemmg" in exe.disassemble()
    run_both(g, xs, kb=1)


def test_row_that_cannot_fit_raises_scratchpad_error():
    g, _ = _one("isoftmax", (2, 1500), "i16", {"axis": 1, "ln2": 17654, "b": 34460, "c": 622438184})
    with pytest.raises(ScratchpadError, match="whole row"):
        build(g, Target("accel-int8", scratchpad_kb=2), method="belady")
    g, _ = _one("isoftmax", (2, 3, 4), "i16", {"axis": 1, "ln2": 17654, "b": 34460, "c": 622438184})
    with pytest.raises(UnsupportedOperatorError, match="last axis"):
        build(g, Target("accel-int8"), method="belady")


# -- 4-bit weight packing ---------------------------------------------------------------------------------------
def test_pack_int4_round_trips_through_the_mac_unpacker():
    w = _ints((5, 7), np.int8, -8, 7)
    packed = pack_int4(w)
    assert packed.shape == (5, 4) and packed_bytes((5, 7), "i4x2") == 20
    sim = Simulator(64)
    sim.spm[:20] = packed.tobytes()
    sim.stats = type("S", (), {"spm_peak": 0})()
    np.testing.assert_array_equal(sim._weights(0, 5, 7, "i4x2", Instr("halt", ())), w)
    u = _ints((3, 3), np.uint8, 0, 15)
    sim.spm[:6] = pack_int4(u).tobytes()
    np.testing.assert_array_equal(sim._weights(0, 3, 3, "u4x2", Instr("halt", ())), u)


@pytest.mark.parametrize("wdt,groups", [("i4", 1), ("u4", 2)])
def test_int4_conv_weights_are_packed_two_per_byte(wdt, groups):
    b = GraphBuilder()
    x = b.input((2, 4, 6, 6), "u8", "x")
    lo, hi = (-8, 7) if wdt == "i4" else (0, 15)
    w = b.param(_ints((6, 4 // groups, 3, 3), np.int8 if wdt == "i4" else np.uint8, lo, hi), "w")
    w.type = w.type.with_dtype(wdt)
    y = b.emit("qconv2d", [x, w], {"stride": (1, 1), "padding": (1, 1, 1, 1), "groups": groups,
                                   "x_zero_point": 3, "w_zero_point": 0 if wdt == "i4" else 8})
    mul = b.param(RNG.integers(2**29, 2**30, (6, 1, 1)).astype(np.int32), "m")
    shf = b.param(np.full((6, 1, 1), 36, np.int32), "s")
    g = b.output(b.emit("requantize", [y, mul, shf], {"dtype": "i8"}, name="rq"))
    xs = [_ints((2, 4, 6, 6), np.uint8)]
    exe = run_both(g, xs)
    k = 4 // groups * 9
    assert f"wdt={wdt}x2" in exe.disassemble()
    # The weight DMA moves ceil(K / 2) bytes per output channel, half (rounded up) of the unpacked bytes.
    w_loads = [i for i in exe.program.code if i.op == "load" and i["n0"] == 6 * -(-k // 2)]
    assert w_loads and not [i for i in exe.program.code if i.op == "load" and i["n0"] == 6 * k]
    tiled = run_both(g, xs, kb=1)  # output-channel tiles slice whole packed rows
    assert tiled.info["tiles"]
