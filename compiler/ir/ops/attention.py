"""Scaled dot-product attention as one op (what `recognize-attention` turns softmax(Q·Kᵀ·s + mask)·V into).

    attention(q [..., N, D], k [..., M, D], v [..., M, Dv], mask? [broadcast to ..., N, M]) {scale, causal}
      -> [..., N, Dv]
    out = softmax(scale · q·kᵀ + mask, axis=-1) · v, keys j > i hidden when `causal` (top-left aligned, as
    torch.nn.functional.scaled_dot_product_attention(is_causal=True)); a row whose scores are all −∞ (every key
    hidden) gives 0, as torch's SDPA does.

The leading (batch / head) dims of q, k and v are equal; the mask is float and broadcasts (NumPy rules) to
[..., N, M]. Backends lower it without materialising the N×M scores (an online softmax over key tiles).
The reference computes in float64 and rounds to q's dtype, like `softmax`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.registry import REQUIRED, broadcast_shapes, check, register
from qcc.ir.types import TensorType

FLOAT_DTYPES = ("f32", "f16", "f64")


def _attention_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v = ts[:3]
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check(t.dtype in FLOAT_DTYPES, f"{name} must be float, got {t.dtype}")
        check(t.rank >= 2, f"{name} must have rank >= 2, got {list(t.shape)}")
    check(k.dtype == q.dtype and v.dtype == q.dtype, "q, k and v must have one dtype")
    check(q.rank == k.rank == v.rank, "q, k and v must have the same rank")
    check(q.shape[:-2] == k.shape[:-2] == v.shape[:-2],
          f"leading dims of q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} must be equal")
    check(q.shape[-1] == k.shape[-1], f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    check(k.shape[-2] == v.shape[-2], f"k and v key counts differ: {k.shape[-2]} vs {v.shape[-2]}")
    scores = (*q.shape[:-1], k.shape[-2])
    if len(ts) == 4:
        mask = ts[3]
        check(mask.dtype in FLOAT_DTYPES, f"mask must be float (additive), got {mask.dtype}")
        check(mask.rank <= len(scores), f"mask rank {mask.rank} exceeds the scores' rank {len(scores)}")
        check(broadcast_shapes(mask.shape, scores) == scores,
              f"mask {list(mask.shape)} does not broadcast to the scores {list(scores)}")
    check(isinstance(attrs["scale"], float), f"scale must be a float, got {attrs['scale']!r}")
    check(isinstance(attrs["causal"], bool), f"causal must be a bool, got {attrs['causal']!r}")
    return [TensorType((*q.shape[:-1], v.shape[-1]), q.dtype)]


def causal_mask(n: int, m: int) -> np.ndarray:
    """bool [n, m]: True where key j is hidden from query i (j > i)."""
    return np.arange(m)[None, :] > np.arange(n)[:, None]


def attention_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, *,
                        scale: float, causal: bool) -> np.ndarray:
    """The NumPy reference (float64 inside), materialising the scores."""
    s = np.matmul(q.astype(np.float64), np.swapaxes(k.astype(np.float64), -1, -2)) * scale
    if mask is not None:
        s = s + mask.astype(np.float64)
    if causal:
        s = np.where(causal_mask(s.shape[-2], s.shape[-1]), -np.inf, s)
    mx = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(mx) & (mx < 0)  # every key hidden: the row's output is 0
    e = np.exp(s - np.where(dead, 0.0, mx))
    total = e.sum(axis=-1, keepdims=True)
    p = np.where(dead, 0.0, e / np.where(dead, 1.0, total))
    return np.matmul(p, v.astype(np.float64)).astype(q.dtype)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, *, scale: float,
               causal: bool) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return attention_reference(q, k, v, mask, scale=scale, causal=causal)


register("attention", _attention_type, _attention, num_inputs=(3, 4), attrs={"scale": 1.0, "causal": False})


# -- integer attention ------------------------------------------------------------------------------------------
# qattention(q, k, v, mask?) {q_zero_point, k_zero_point, v_zero_point, steps, softmax} -> i32 [..., N, Dv]
# The integer chain realize-integer makes of attention, as one op:
#   s = Σ_d (q − zq)(k − zk)                      (int32, qmatmul of q and kᵀ)
#   s = step(s) for each of `steps`:
#       ("requantize", multiplier, shift, dtype, input_zero_point, zero_point, min, max)
#       ("qadd", a_multiplier, b_multiplier, shift, a_zero_point, b_zero_point, zero_point, dtype, min, max)
#         with the mask as qadd's b operand (at most one qadd; the mask input exists iff there is one)
#   p = isoftmax(s) {ln2, b, c, n, k} for softmax ("isoftmax", ln2, b, c, n, k), or shiftmax for
#       ("shiftmax", one, n, k), over the keys: u8 at scale 2^−8 (zero point 0)
#   out = Σ_j p · (v − zv)                        (int32, qmatmul of p and v)
# Exactly the composition of those ops' references, so the op is bit-exact against the chain it replaces.
def _step_ok(step: Any) -> bool:
    if not isinstance(step, tuple) or not step:
        return False
    if step[0] == "requantize":
        return len(step) == 8 and all(isinstance(x, int) for x in (*step[1:3], *step[4:6])) and step[3] in \
            ("i4", "u4", "i8", "u8", "i16", "i32")
    if step[0] == "qadd":
        return len(step) == 10 and all(isinstance(x, int) for x in step[1:7]) and step[7] in \
            ("i4", "u4", "i8", "u8", "i16", "i32")
    return False


def _qattention_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    from qcc.ir.ops.quant import ACT_DTYPES, INT_INPUTS

    q, k, v = ts[:3]
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check(t.dtype in ACT_DTYPES, f"{name} must be an integer activation, got {t.dtype}")
        check(t.rank >= 2, f"{name} must have rank >= 2")
    check(q.rank == k.rank == v.rank and q.shape[:-2] == k.shape[:-2] == v.shape[:-2],
          "q, k and v must have equal leading dims")
    check(q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2], "q/k head dims or k/v key counts differ")
    steps, sm = attrs["steps"], attrs["softmax"]
    check(isinstance(steps, tuple) and all(_step_ok(s) for s in steps), f"bad steps {steps!r}")
    n_add = sum(s[0] == "qadd" for s in steps)
    check(n_add == (len(ts) == 4), "a mask input needs exactly one qadd step (and a qadd step a mask)")
    check(isinstance(sm, tuple) and ((sm[0] == "isoftmax" and len(sm) == 6) or (sm[0] == "shiftmax" and len(sm) == 4))
          and all(isinstance(x, int) for x in sm[1:]), f"bad softmax {sm!r}")
    if len(ts) == 4:
        scores = (*q.shape[:-1], k.shape[-2])
        check(ts[3].dtype in INT_INPUTS, "the mask must be integer")
        check(broadcast_shapes(ts[3].shape, scores) == scores, "the mask does not broadcast to the scores")
    return [TensorType((*q.shape[:-1], v.shape[-1]), "i32")]


def qattention_scores(q: np.ndarray, k: np.ndarray, mask: np.ndarray | None, *, q_zero_point: int,
                      k_zero_point: int, steps: tuple[Any, ...]) -> np.ndarray:
    """The integer scores that enter the softmax (materialised; the reference and tests only)."""
    from qcc.ir.ops.registry import evaluate

    s = evaluate("qmatmul", [q, np.swapaxes(k, -1, -2)], {"a_zero_point": q_zero_point,
                                                          "b_zero_point": k_zero_point})[0]
    for st in steps:
        if st[0] == "requantize":
            _, mult, shift, dtype, izp, zp, lo, hi = st
            s = evaluate("requantize", [s, np.array(mult, np.int32), np.array(shift, np.int32)],
                         {"dtype": dtype, "input_zero_point": izp, "zero_point": zp, "min": lo, "max": hi})[0]
        else:
            _, am, bm, shift, azp, bzp, zp, dtype, lo, hi = st
            assert mask is not None  # the type rule pairs a qadd step with a mask input
            s = evaluate("qadd", [s, mask], {"a_multiplier": am, "b_multiplier": bm, "shift": shift,
                                             "a_zero_point": azp, "b_zero_point": bzp, "zero_point": zp,
                                             "dtype": dtype, "min": lo, "max": hi})[0]
    return s


def _qattention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, *, q_zero_point: int,
                k_zero_point: int, v_zero_point: int, steps: tuple[Any, ...], softmax: tuple[Any, ...]) -> np.ndarray:
    from qcc.ir.ops.registry import evaluate

    s = qattention_scores(q, k, mask, q_zero_point=q_zero_point, k_zero_point=k_zero_point, steps=steps)
    names = ("ln2", "b", "c", "n", "k") if softmax[0] == "isoftmax" else ("one", "n", "k")
    p = evaluate(softmax[0], [s], {"axis": s.ndim - 1, **dict(zip(names, softmax[1:]))})[0]
    return evaluate("qmatmul", [p, v], {"a_zero_point": 0, "b_zero_point": v_zero_point})[0]


register("qattention", _qattention_type, _qattention, num_inputs=(3, 4),
         attrs={"q_zero_point": 0, "k_zero_point": 0, "v_zero_point": 0, "steps": (), "softmax": REQUIRED})
