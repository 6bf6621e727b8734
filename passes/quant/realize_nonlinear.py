"""Integer softmax, GELU and LayerNorm for realize-integer: the compile-time integer constants of each algorithm,
derived from the input scale S (rounded to nearest), and the rescale to the output quantization.

`nonlinear="ibert"`: I-BERT's polynomial i-exp softmax, polynomial erf GELU and LayerNorm with an exact integer
Newton square root. `nonlinear="ivit"`: I-ViT's Shiftmax, ShiftGELU and LayerNorm with its fixed ten-step square
root. quantization.md §3 and §4 hold the derivations; docs/ops.md the op semantics.
"""

from __future__ import annotations

import math

import numpy as np

from qcc.ir.graph import Node, Value
from qcc.ir.ops.quant_nonlinear import SIGMOID_BITS, SOFTMAX_OUT_BITS
from qcc.passes.quant._realize_base import Emitter, QTensor, Target, to_target
from qcc.passes.quant.dyadic import dyadic

NONLINEAR = ("ibert", "ivit")
EXP_BITS = 22  # i-exp values are pre-shifted so exp(0) has about this many bits
EXP_CLIP = 30  # exponents below −30·ln2 count as zero

# I-BERT's second-order fits: exp(p) ≈ A(p + B)² + C on (−ln2, 0]; erf(x) ≈ sgn(x)(1 − ERF_A(min(|x|, ERF_B) − ERF_B)²)
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
ERF_A, ERF_B = 0.2888, 1.769
SIGMOID_GELU = 1.702  # I-ViT: gelu(x) ≈ x·σ(1.702x)


def centered(em: Emitter, x: QTensor) -> Value:
    """x − zero_point as i16 when the zero point is not 0 (an exact identity requantize), else x itself."""
    if x.zp == 0:
        return x.value
    t = Target(x.value, np.asarray(1.0), 0, "i16")
    return em.requantize(x.value, np.asarray(1.0), (), t, x.zp)


def _exp_k(top: int) -> int:
    return max(0, EXP_BITS - int(top).bit_length())


def softmax(em: Emitter, node: Node, x: QTensor, target: Target, method: str) -> Value | None:
    """isoftmax / shiftmax → u8 at 2^-8, then to the target."""
    s = x.s
    axis = int(node.attrs["axis"])  # type: ignore[arg-type]
    if method == "ibert":
        ln2, b, c = round(math.log(2.0) / s), round(EXP_B / s), round(EXP_C / (EXP_A * s * s))
        if ln2 < 1:
            return None  # the input scale is coarser than ln 2: no integer exponent grid
        out = em.emit("isoftmax", [x.value], {"axis": axis, "ln2": ln2, "b": b, "c": c, "n": EXP_CLIP,
                                              "k": _exp_k(b * b + c)})
    else:
        one = round(1.0 / s)
        if one < 2:
            return None
        out = em.emit("shiftmax", [x.value], {"axis": axis, "one": one, "n": EXP_CLIP, "k": _exp_k(one)})
    return to_target(em, out, 2.0**-SOFTMAX_OUT_BITS, 0, target)


def gelu(em: Emitter, node: Node, x: QTensor, target: Target, method: str) -> Value | None:
    """igelu / shiftgelu → int32, then a requantize to the target."""
    s = x.s
    xc = centered(em, x)
    if method == "ibert":
        sp = s / math.sqrt(2.0)
        b, one = round(ERF_B / sp), round(1.0 / (ERF_A * sp * sp))
        if b < 1:
            return None
        shift = max(0, (2 * one).bit_length() - 15)  # (one + erf) >> shift < 2^15, so q·that fits int32
        out = em.emit("igelu", [xc], {"b": b, "one": one, "shift": shift})
        scale = s * 2.0**shift / (2.0 * one)  # gelu = x/2·(1 + erf), with erf's 1.0 represented by `one`
    else:
        one = round(1.0 / (SIGMOID_GELU * s))
        if one < 2:
            return None
        out = em.emit("shiftgelu", [xc], {"one": one, "n": EXP_CLIP, "k": _exp_k(one)})
        scale = s * 2.0**-SIGMOID_BITS
    return to_target(em, out, scale, 0, target)


def layer_norm(em: Emitter, node: Node, x: QTensor, gamma: np.ndarray, beta: np.ndarray, target: Target,
               method: str) -> Value | None:
    """ilayer_norm with γ·(√C/2^30)/S_y as per-channel dyadic multipliers and β/S_y as an integer bias."""
    if target.scale.size != 1:
        return None
    axis = int(node.attrs["axis"])  # type: ignore[arg-type]
    count = int(np.prod(x.value.shape[axis:], dtype=np.int64))
    s_y = float(target.scale.reshape(-1)[0])
    b, c = dyadic(np.asarray(gamma, np.float64) * math.sqrt(count) / 2.0**30 / s_y)
    bias = np.clip(np.rint(np.asarray(beta, np.float64) / s_y), -(2**31), 2**31 - 1)
    return em.emit("ilayer_norm", [x.value, em.const(b.astype(np.int32), "multiplier"),
                                   em.const(c.astype(np.int32), "shift"), em.const(bias.astype(np.int32), "bias")],
                   {"axis": axis, "sqrt": "newton" if method == "ibert" else "ivit",
                    "zero_point": target.zero_point, "dtype": target.dtype})
