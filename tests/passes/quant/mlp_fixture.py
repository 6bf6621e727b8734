"""The two-layer float MLP (fc1 → relu → fc2) and its two calibration batches shared by the quantize and
realize-integer pass tests: small enough that the golden IR texts stay readable."""

from __future__ import annotations

import numpy as np

MLP = """
func @main(%x: f32[1,2]) -> (f32[1,2]) {
  %w = param "w" : f32[2,2] dense<[1.0, -0.5, 0.25, 2.0]>
  %b = param "b" : f32[2] dense<[0.1, -0.2]>
  %0 = linear(%x, %w, %b) : f32[1,2]  // fc1
  %1 = relu(%0) : f32[1,2]  // act
  %2 = linear(%1, %w) : f32[1,2]  // fc2
  return %2
}
"""
# The first batch spans ±1.27, so an i8 scale of 0.01 is exact for the input.
CALIB = [np.array([[1.27, -1.27]], np.float32), np.array([[0.5, 0.3]], np.float32)]
