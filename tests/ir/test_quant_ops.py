"""Semantics of the quantization ops: exact integer references against float math, rounding and saturation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from qcc.errors import VerificationError
from qcc.ir.graph import GraphBuilder
from qcc.ir.ops import evaluate
from qcc.ir.ops.quant_nonlinear import isqrt_ivit, isqrt_newton

R = np.random.default_rng(0)


def i32(*v):
    return np.array(v, np.int32)


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, np.nan], np.float32)
    q = evaluate("quantize", [x, np.array(1.0, np.float32), np.array(0, np.int32)], {"dtype": "i8"})[0]
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128, 0]
    u = evaluate("quantize", [x[:3], np.array(0.5, np.float32), np.array(10, np.int32)], {"dtype": "u4"})[0]
    assert u.tolist() == [11, 13, 15] and u.dtype == np.uint8  # 10 + round(5.0) = 15, saturated at u4's 15


def test_dequantize_per_channel_and_groups():
    q = np.array([[1, -2], [3, 4]], np.int8)
    y = evaluate("dequantize", [q, np.array([[0.5], [2.0]], np.float32), np.array(1, np.int32)], {})[0]
    assert y.dtype == np.float32 and y.tolist() == [[0.0, -1.5], [4.0, 6.0]]
    q = np.arange(6, dtype=np.int8).reshape(1, 6)
    gs = np.array([[1, 2, 3]], np.int32)
    y = evaluate("dequantize", [q, np.array(0.5, np.float32), np.array(0, np.int32), gs],
                 {"group_size": 2, "axis": 1})[0]
    assert y.tolist() == [[0.0, 0.5, 2.0, 3.0, 6.0, 7.5]]


def test_requantize_is_round_half_up_of_the_dyadic_product():
    acc = np.arange(-1000, 1001, dtype=np.int32)
    b, c = 3 << 28, 31  # 0.375
    y = evaluate("requantize", [acc, i32(b), i32(c)], {"dtype": "i32"})[0]
    assert np.array_equal(y, np.floor(acc * 0.375 + 0.5).astype(np.int64))
    y = evaluate("requantize", [acc, i32(b), i32(c)], {"dtype": "i8", "zero_point": 5, "input_zero_point": 3,
                                                        "min": 5, "max": 60})[0]
    want = np.clip(np.floor((acc.astype(np.int64) - 3) * 0.375 + 0.5) + 5, 5, 60)
    assert np.array_equal(y, want) and y.dtype == np.int8
    # a non-positive shift multiplies: 3 · 2^2
    assert evaluate("requantize", [i32(7), i32(3), i32(-2)], {"dtype": "i32"})[0].tolist() == [84]


def test_qconv2d_equals_float_conv_of_dequantized_values_with_zero_point_padding():
    x = R.integers(0, 256, (2, 4, 5, 5)).astype(np.uint8)
    w = R.integers(-7, 8, (6, 2, 3, 3)).astype(np.int8)
    bias = R.integers(-1000, 1000, 6).astype(np.int32)
    attrs = {"stride": (2, 1), "padding": (1, 2, 0, 1), "dilation": (1, 2), "groups": 2}
    acc = evaluate("qconv2d", [x, w, bias], {**attrs, "x_zero_point": 128})[0]
    ref = evaluate("conv2d", [x.astype(np.float64) - 128, w.astype(np.float64), bias.astype(np.float64)], attrs)[0]
    assert acc.dtype == np.int32 and np.array_equal(acc, ref.astype(np.int64))


def test_qlinear_per_vector_group_scales():
    x = R.integers(-128, 128, (3, 8)).astype(np.int8)
    w = R.integers(-8, 8, (4, 8)).astype(np.int8)
    gs = R.integers(1, 16, (4, 2)).astype(np.int32)
    bias = i32(1, 2, 3, 4)
    y = evaluate("qlinear", [x, w, bias, gs], {"x_zero_point": -2, "group_size": 4})[0]
    wfull = w.astype(np.int64) * np.repeat(gs, 4, axis=1)
    assert np.array_equal(y, (x.astype(np.int64) + 2) @ wfull.T + bias)


def test_qmatmul_qadd_qconcat_qmean():
    a = R.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    b = R.integers(-128, 128, (4, 5)).astype(np.int8)
    y = evaluate("qmatmul", [a, b], {"a_zero_point": 128, "b_zero_point": -1})[0]
    assert np.array_equal(y, (a.astype(np.int64) - 128) @ (b.astype(np.int64) + 1))
    s = evaluate("qadd", [np.array([10, -10], np.int8), np.array([4, 4], np.uint8)],
                 {"a_multiplier": 1 << 29, "b_multiplier": -(3 << 28), "shift": 30, "a_zero_point": 0,
                  "b_zero_point": 2, "zero_point": 1, "dtype": "i8"})[0]
    assert s.tolist() == [math.floor(10 * 0.5 - 2 * 0.75 + 0.5) + 1, math.floor(-10 * 0.5 - 1.5 + 0.5) + 1]
    c = evaluate("qconcat", [np.array([[100]], np.int8), np.array([[7]], np.uint8)],
                 {"axis": 1, "multipliers": (1 << 29, 1 << 30), "shifts": (30, 30), "input_zero_points": (0, 3),
                  "zero_point": -1, "dtype": "i8"})[0]
    assert c.tolist() == [[49, 3]]
    m = evaluate("qmean", [np.array([[1, 2], [3, 5]], np.int8)], {"axes": (1,), "keepdims": False})[0]
    assert m.tolist() == [2, 4] and m.dtype == np.int8  # 1.5 → 2 and 4.0 → 4: half up
    m = evaluate("qmean", [np.array([-1, -2], np.int8)], {"axes": (), "keepdims": False})[0]
    assert m.tolist() == -1  # −1.5 → −1 (half up)


def test_integer_sqrt():
    n = np.concatenate([np.arange(5000), R.integers(0, 2**62, 2000), [2**62, 2**63 - 1]]).astype(np.int64)
    assert np.array_equal(isqrt_newton(n), [math.isqrt(int(v)) for v in n])
    small = R.integers(1, 2**32, 20000).astype(np.int64)
    assert np.max(np.abs(isqrt_ivit(small) - np.array([math.isqrt(int(v)) for v in small]))) <= 1


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("op", ["isoftmax", "shiftmax"])
def test_integer_softmax_approximates_softmax(op):
    x = R.normal(0, 3, (8, 16))
    s = np.abs(x).max() / 32767
    q = np.round(x / s).astype(np.int16)
    if op == "isoftmax":
        b, c = round(1.353 / s), round(0.344 / (0.3585 * s * s))
        attrs = {"ln2": round(math.log(2) / s), "b": b, "c": c, "k": max(0, 22 - (b * b + c).bit_length())}
        tol = 0.003
    else:
        attrs = {"one": round(1 / s), "k": max(0, 22 - round(1 / s).bit_length())}
        tol = 0.02  # ShiftExp's linear 2^r is ~10x coarser (quantization.md §4)
    y = evaluate(op, [q], {"axis": 1, **attrs})[0]
    assert y.dtype == np.uint8
    assert np.abs(y / 256.0 - _softmax(q * s)).max() < tol


def test_integer_gelu_approximates_gelu():
    s = 6.0 / 127
    q = np.arange(-127, 128, dtype=np.int8)
    x = q * s
    want = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    sp = s / math.sqrt(2)
    one = round(1 / (0.2888 * sp * sp))
    y = evaluate("igelu", [q], {"b": round(1.769 / sp), "one": one, "shift": 0})[0]
    assert y.dtype == np.int32 and np.abs(y * s / (2 * one) - want).max() < 0.03
    one = round(1 / (1.702 * s))
    y = evaluate("shiftgelu", [q], {"one": one, "k": 22 - one.bit_length()})[0]
    assert np.abs(y * s * 2.0**-14 - want).max() < 0.05


@pytest.mark.parametrize("sqrt", ["newton", "ivit"])
def test_integer_layer_norm(sqrt):
    x = R.normal(0.5, 2, (4, 32))
    s = np.abs(x).max() / 127
    q = np.round(x / s).astype(np.int8)
    gamma, beta = R.normal(1, 0.3, 32), R.normal(0, 0.2, 32)
    xr = q * s
    want = (xr - xr.mean(1, keepdims=True)) / np.sqrt(xr.var(1, keepdims=True)) * gamma + beta
    s_out = np.abs(want).max() / 127
    ratio = gamma * math.sqrt(32) / 2**30 / s_out
    m, e = np.frexp(ratio)
    b, c = np.floor(m * 2**31 + 0.5).astype(np.int32), (31 - e).astype(np.int32)
    bias = np.round(beta / s_out).astype(np.int32)
    y = evaluate("ilayer_norm", [q, b, c, bias], {"axis": 1, "sqrt": sqrt})[0]
    assert y.dtype == np.int8 and np.abs(y * s_out - want).max() <= 1.5 * s_out


@pytest.mark.parametrize("op,specs,attrs,match", [
    ("quantize", [("i8", (2,)), ("f32", ()), ("i32", ())], {"dtype": "i8"}, "float input"),
    ("quantize", [("f32", (2,)), ("f32", (3,)), ("i32", ())], {"dtype": "i8"}, "broadcast"),
    ("quantize", [("f32", (2,)), ("f32", ()), ("i32", ())], {"dtype": "f16"}, "dtype must be one of"),
    ("requantize", [("i32", (2,)), ("f32", ()), ("i32", ())], {"dtype": "i8"}, "multiplier"),
    ("qconv2d", [("f32", (1, 1, 3, 3)), ("i8", (1, 1, 1, 1))], {}, "integer"),
    ("qlinear", [("i8", (2, 6)), ("i8", (3, 6)), ("i32", (3,)), ("i32", (3, 2))], {"group_size": 4}, "divide"),
    ("qconcat", [("i8", (2,)), ("i8", (2,))], {"axis": 0, "multipliers": (1,), "shifts": (0, 0),
                                                "input_zero_points": (0, 0), "dtype": "i8"}, "one entry per input"),
    ("ilayer_norm", [("i8", (2, 4)), ("i32", (4,)), ("i32", (4,)), ("i32", (3,))], {"axis": 1}, "bias"),
])
def test_type_rules_reject_bad_input(op, specs, attrs, match):
    b = GraphBuilder()
    ins = [b.input(shape, dt, f"in{i}") for i, (dt, shape) in enumerate(specs)]
    with pytest.raises(VerificationError, match=match):
        b.emit(op, ins, attrs)
