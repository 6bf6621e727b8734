"""Each accelerator instruction, emitted from a one-op integer graph, equals the IR op's reference bit for bit;
tiled versions (a scratchpad too small for the whole op) give the same bits."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.backends.accel.build import build
from qcc.errors import ScratchpadError, UnsupportedOperatorError
from qcc.ir.graph import GraphBuilder
from qcc.target import Target

RNG = np.random.default_rng(0)


def _ints(shape, dtype, lo=None, hi=None):
    info = np.iinfo(dtype)
    return RNG.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


def run_both(graph, inputs, kb=64, method="belady"):
    """Accelerator output vs interpreter output (asserted equal); returns the executable."""
    exe = build(graph, Target("accel-int8", scratchpad_kb=kb), method=method, time_limit_s=5)
    got = exe.run(inputs)
    want = qcc.interpret(graph, inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    # The program moves exactly the scheduled traffic plus the tiles' fills/flushes, inside the scheduled peak.
    info, sim = exe.info, exe.last_stats
    assert sim.dram_read + sim.dram_write == info["traffic"]["load"] + info["traffic"]["store"] + info["tile_traffic"]
    assert sim.spm_peak <= info["schedule_peak"] <= kb * 1024
    return exe


def conv_graph(n=2, c=4, h=9, w=7, o=6, k=3, stride=(1, 1), pad=(1, 1, 1, 1), groups=1, dil=(1, 1),
               xdt="u8", fused=True, xzp=3, wzp=0):
    b = GraphBuilder()
    x = b.input((n, c, h, w), xdt, "x")
    wt = b.param(_ints((o, c // groups, k, k), np.int8, -100, 100), "w")
    bias = b.param(_ints((o,), np.int32, -5000, 5000), "bias")
    y = b.emit("qconv2d", [x, wt, bias], {"stride": stride, "padding": pad, "dilation": dil, "groups": groups,
                                          "x_zero_point": xzp, "w_zero_point": wzp})
    if fused:
        mul = b.param(RNG.integers(2**29, 2**30, (o, 1, 1)).astype(np.int32), "mul")
        shf = b.param(RNG.integers(36, 40, (o, 1, 1)).astype(np.int32), "shf")
        y = b.emit("requantize", [y, mul, shf], {"dtype": "i8", "zero_point": -2, "min": -100, "max": None})
    return b.output(y), [_ints((n, c, h, w), {"u8": np.uint8, "i8": np.int8}[xdt])]


@pytest.mark.parametrize("kw", [
    {}, {"stride": (2, 2)}, {"pad": (3, 0, 2, 1), "k": 5}, {"groups": 2, "o": 4}, {"groups": 4, "o": 8},
    {"dil": (2, 1)}, {"fused": False}, {"xdt": "i8", "xzp": -4, "wzp": 2}, {"k": 1, "pad": (0, 0, 0, 0)},
    {"k": 1, "pad": (0, 0, 0, 0), "stride": (2, 2), "h": 8, "w": 8},
])
def test_conv_matches_reference(kw):
    g, xs = conv_graph(**kw)
    run_both(g, xs)


@pytest.mark.parametrize("kw", [{}, {"stride": (2, 2)}, {"groups": 2, "o": 4}, {"groups": 4, "o": 8},
                                {"fused": False}])
def test_conv_tiled_matches_reference(kw):
    g, xs = conv_graph(n=1, c=8, h=20, w=16, o=kw.get("o", 16), **{k: v for k, v in kw.items() if k != "o"})
    exe = run_both(g, xs, kb=2)
    assert exe.info["tiles"], "a 2 KiB scratchpad must force tiling"
    assert exe.info["sim"]["spm_peak"] <= 2048


def test_conv_tiled_over_the_batch():
    g, xs = conv_graph(n=6, c=8, h=6, w=6, o=8)
    exe = run_both(g, xs, kb=1)
    assert exe.info["tiles"] and exe.info["sim"]["spm_peak"] <= 1024
    # The tiled program really moves tiles: more DMA traffic than the untiled one, same bits.
    assert exe.info["tile_traffic"] > 0


def linear_graph(m=5, k=24, n=10, fused=True, per_channel=True):
    b = GraphBuilder()
    x = b.input((m, k), "i8", "x")
    w = b.param(_ints((n, k), np.int8, -127, 127), "w")
    bias = b.param(_ints((n,), np.int32, -9000, 9000), "bias")
    y = b.emit("qlinear", [x, w, bias], {"x_zero_point": -3, "w_zero_point": 1})
    if fused:
        shape = (n,) if per_channel else ()
        mul = b.param(RNG.integers(2**29, 2**31 - 1, shape).astype(np.int32), "mul")
        shf = b.param(np.full(shape, 38, np.int32), "shf")
        y = b.emit("requantize", [y, mul, shf], {"dtype": "u8", "zero_point": 7})
    return b.output(y), [_ints((m, k), np.int8)]


@pytest.mark.parametrize("kw", [{}, {"fused": False}, {"per_channel": False}])
def test_linear_matches_reference(kw):
    g, xs = linear_graph(**kw)
    run_both(g, xs)
    g, xs = linear_graph(m=40, k=64, n=48, **kw)
    exe = run_both(g, xs, kb=4)
    assert exe.info["tiles"]


def vector_graph(op):
    b = GraphBuilder()
    shape = (2, 6, 10, 14)
    x = b.input(shape, "i8", "x")
    xs = [_ints(shape, np.int8)]
    if op == "qadd":
        z = b.input(shape, "u8", "z")
        xs.append(_ints(shape, np.uint8))
        y = b.emit("qadd", [x, z], {"a_multiplier": 1234567890, "b_multiplier": 987654321, "shift": 31,
                                     "a_zero_point": 2, "b_zero_point": 128, "zero_point": -5, "dtype": "i8",
                                     "min": -60, "max": None})
    elif op == "requantize":
        mul = b.param(RNG.integers(2**29, 2**31 - 1, (6, 1, 1)).astype(np.int32), "mul")
        shf = b.param(RNG.integers(28, 33, (6, 1, 1)).astype(np.int32), "shf")
        y = b.emit("requantize", [x, mul, shf], {"dtype": "u8", "zero_point": 100, "input_zero_point": -7})
    elif op == "max_pool2d":
        y = b.emit("max_pool2d", [x], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)})
    elif op == "max_pool2d_ceil":
        y = b.emit("max_pool2d", [x], {"kernel": (2, 2), "stride": (2, 2), "ceil_mode": True})
    elif op == "qmean":
        y = b.emit("qmean", [x], {"axes": (2, 3), "keepdims": True})
    elif op == "relu":
        y = b.emit("relu", [x])
    elif op == "clip":
        y = b.emit("clip", [x], {"min": -20, "max": 30})
    elif op == "reshape":
        y = b.emit("reshape", [b.emit("relu", [x])], {"shape": (12, 140)})
    return b.output(y), xs


@pytest.mark.parametrize("op", ["qadd", "requantize", "max_pool2d", "max_pool2d_ceil", "qmean", "relu", "clip",
                                "reshape"])
def test_vector_ops_match_reference(op):
    g, xs = vector_graph(op)
    run_both(g, xs)
    exe = run_both(g, xs, kb=1)
    assert exe.info["tiles"]


def test_unsupported_op_and_too_small_scratchpad():
    b = GraphBuilder()
    x = b.input((4, 4), "i8", "x")
    g = b.output(b.emit("neg", [b.emit("cumsum", [x], {"axis": 0}, name="cs")], name="tr"))
    with pytest.raises(UnsupportedOperatorError, match="cumsum") as err:
        build(g, Target("accel-int8"))
    assert err.value.unsupported == [("cumsum", "cs"), ("neg", "tr")]  # every offender at once
    g, _ = conv_graph(c=64, o=64, k=7, pad=(3, 3, 3, 3))
    with pytest.raises(ScratchpadError, match="smallest tile"):
        build(g, Target("accel-int8", scratchpad_kb=1))
