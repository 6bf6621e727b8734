"""Dyadic requantization: b / 2^c represents the scale ratio, and `(x·b + 2^(c−1)) >> c` equals the float
round-half-up of x·ratio — exhaustively over small bit widths, with every mismatch proven to be a near-tie."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from qcc.passes.quant.dyadic import MAX_SHIFT, apply_dyadic, dyadic, dyadic_scalar, round_half_up, shared_shift

R = np.random.default_rng(0)


def test_dyadic_form_of_a_ratio():
    b, c = dyadic_scalar(0.375)
    assert (b, c) == (3 << 29, 32) and Fraction(b, 2**c) == Fraction(3, 8)
    b, c = dyadic_scalar(1.0)
    assert Fraction(b, 2**c) == 1
    assert dyadic_scalar(0.0) == (0, 31)
    assert dyadic_scalar(-0.375) == (-(3 << 29), 32)
    assert dyadic_scalar(1e-30) == (0, 31)  # too small to move any int32: exactly zero
    b, c = dyadic(np.array([0.1, 3.0, 1e-5]))
    assert b.dtype == np.int64 and np.all(np.abs(b) < 2**31) and np.all(c <= MAX_SHIFT)


def test_multiplier_that_rounds_up_to_2_pow_31_stays_31_bits():
    ratio = (2**31 - 0.25) / 2**31  # m·2^31 rounds up to 2^31
    b, c = dyadic_scalar(ratio)
    assert b == 2**30 and c == 30


def test_invalid_ratio():
    with pytest.raises(ValueError, match="finite"):
        dyadic(np.array([1.0, np.nan]))


@pytest.mark.parametrize("acc_bits", [4, 8, 12, 16])
def test_exhaustive_small_accumulators_exactly_representable_ratios(acc_bits):
    # A ratio that is itself dyadic (k / 2^j) is represented exactly, so the result is exactly round-half-up.
    acc = np.arange(-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1), dtype=np.int64)
    for k, j in [(1, 1), (3, 3), (5, 7), (255, 12), (1, 20), (7, 2), (129, 8)]:
        b, c = dyadic_scalar(k / 2**j)
        got = apply_dyadic(acc, b, c)
        want = np.array([math.floor(Fraction(int(a) * k, 2**j) + Fraction(1, 2)) for a in acc])
        assert np.array_equal(got, want), (k, j)


@pytest.mark.parametrize("acc_bits", [8, 12, 16])
def test_exhaustive_random_ratios_zero_lsb_error_except_proven_near_ties(acc_bits):
    acc = np.arange(-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1), dtype=np.int64)
    mismatches = 0
    for ratio in np.exp(R.uniform(math.log(1e-6), math.log(4.0), 60)):
        b, c = dyadic_scalar(float(ratio))
        got = apply_dyadic(acc, b, c)
        want = round_half_up(acc * ratio)  # exact enough: |acc·ratio| < 2^18, float64 has 53 bits
        bad = got != want
        if np.any(bad):
            # Only where acc·ratio lies within the dyadic error |acc|·|b/2^c − ratio| of a .5 tie.
            err = np.abs(acc[bad].astype(np.float64)) * abs(b / 2.0**c - ratio)
            frac = np.abs((acc[bad] * ratio) % 1.0 - 0.5)
            assert np.all(frac <= err + 1e-12), (ratio, acc[bad][:5])
            assert np.all(np.abs(got[bad] - want[bad]) == 1)
            mismatches += int(bad.sum())
    assert mismatches <= acc.size * 60 * 1e-4  # ties are rare


def test_int8_requantize_of_int32_accumulators_0_lsb_over_random_scales():
    # quantization.md §0: 0 LSB error vs float over random scales in [1e-6, 1e-1] (HAWQV3 ratio S_x·S_w / S_y).
    acc = R.integers(-(2**24), 2**24, 4000)
    for _ in range(200):
        sx, sw, sy = R.uniform(1e-6, 1e-1, 3)
        ratio = float(np.float64(np.float32(sx * sw)) / np.float64(np.float32(sy)))
        b, c = dyadic_scalar(ratio)
        got = np.clip(apply_dyadic(acc, b, c), -128, 127)
        want = np.clip(round_half_up(acc * ratio), -128, 127)
        near_tie = np.abs((acc * ratio) % 1.0 - 0.5) < 1e-6
        assert np.array_equal(got[~near_tie], want[~near_tie])


def test_shared_shift_keeps_both_ratios():
    (ma, mb), c = shared_shift([0.75, -0.01])
    assert abs(ma / 2**c - 0.75) < 2**-30 and abs(mb / 2**c + 0.01) < 2**-30
    assert max(abs(ma), abs(mb)) < 2**31
    (ma, mb), c = shared_shift([(2**31 - 0.25) / 2**31, 0.5])
    assert abs(ma) < 2**31 and abs(ma / 2**c - 1.0) < 1e-8
    assert shared_shift([0.0, 0.0]) == ([0, 0], 31)
