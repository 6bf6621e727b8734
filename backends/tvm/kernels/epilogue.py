"""Fused epilogues: elementwise steps a kernel applies to each accumulator before its single store.

An epilogue is a tuple of steps, applied in order:

    ("bias",)            + bias[channel]          (one extra input, the bias; see Kernel.pack_bias)
    ("add",)             + residual[same index]   (one extra input per "add", in the output's layout)
    ("scale", s)         · s                      (a constant, e.g. attention's 1/sqrt(d))
    ("relu",) ("relu6",) ("clip", lo, hi) ("hardswish",) ("gelu",)   (erf GELU, docs/ops.md approximate="none")

e.g. ResNet's `conv → +bias → +shortcut → relu` is (("bias",), ("add",), ("relu",)). The steps stay plain data,
so the layout pass and the cost model can read them; `apply_steps` builds the TE expression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qcc.errors import BackendError

Step = tuple[Any, ...]
Epilogue = tuple[Step, ...]

_ARITY = {"bias": 0, "add": 0, "scale": 1, "relu": 0, "relu6": 0, "clip": 2, "hardswish": 0, "gelu": 0}


def normalize(epilogue: Sequence[Sequence[Any] | str] | None) -> Epilogue:
    """Validate an epilogue spec and return it as a tuple of tuples (a bare string is a one-word step)."""
    out: list[Step] = []
    for step in epilogue or ():
        st = (step,) if isinstance(step, str) else tuple(step)
        if not st or st[0] not in _ARITY:
            raise BackendError(f"unknown epilogue step {step!r}; known: {', '.join(_ARITY)}")
        if len(st) != 1 + _ARITY[st[0]]:
            raise BackendError(f"epilogue step {st[0]!r} takes {_ARITY[st[0]]} argument(s), got {st[1:]!r}")
        if st[0] == "clip":
            st = ("clip", float(st[1]), float(st[2]))
        elif st[0] == "scale":
            st = ("scale", float(st[1]))
        out.append(st)
    if sum(1 for s in out if s[0] == "bias") > 1:
        raise BackendError("an epilogue has at most one bias step")
    return tuple(out)


def has_bias(epilogue: Epilogue) -> bool:
    """Whether the epilogue reads a bias input."""
    return any(s[0] == "bias" for s in epilogue)


def num_residuals(epilogue: Epilogue) -> int:
    """How many residual ("add") inputs the epilogue reads."""
    return sum(1 for s in epilogue if s[0] == "add")


def _erf(x: Any) -> Any:
    """Rational erf approximation (Eigen's / TVM's fast_erf, |error| < 1e-6 on float32); vectorizes, unlike
    a libm call."""
    from tvm import te

    x = te.max(te.min(x, 4.0), -4.0)
    x2 = x * x
    p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    for a in (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02):
        p = x2 * p + a
    p = x * p
    q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04
    for b in (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = x2 * q + b
    return p / q


def apply_steps(value: Any, epilogue: Epilogue, bias: Callable[[], Any] | None,
                residuals: Sequence[Callable[[], Any]]) -> Any:
    """The TE expression of `value` after the epilogue; `bias()` and `residuals[i]()` give the element of the
    bias / i-th residual input at the current output index."""
    from tvm import te

    res = iter(residuals)
    for st in epilogue:
        op = st[0]
        if op == "bias":
            assert bias is not None
            value = value + bias()
        elif op == "add":
            value = value + next(res)()
        elif op == "scale":
            value = value * st[1]
        elif op == "relu":
            value = te.max(value, 0.0)
        elif op == "relu6":
            value = te.min(te.max(value, 0.0), 6.0)
        elif op == "clip":
            value = te.min(te.max(value, st[1]), st[2])
        elif op == "hardswish":
            value = value * te.min(te.max(value + 3.0, 0.0), 6.0) * (1.0 / 6.0)
        elif op == "gelu":
            value = value * 0.5 * (1.0 + _erf(value * 0.7071067811865476))
        else:  # pragma: no cover - normalize() rejects these
            raise BackendError(f"unknown epilogue step {op!r}")
    return value


def reference(y: np.ndarray, epilogue: Epilogue, bias: np.ndarray | None, residuals: Sequence[np.ndarray],
              channel_axis: int) -> np.ndarray:
    """NumPy semantics of an epilogue on an un-packed output (for tests and fallbacks)."""
    from scipy.special import erf

    res = iter(residuals)
    shape = [1] * y.ndim
    shape[channel_axis] = -1
    for st in epilogue:
        op = st[0]
        if op == "bias":
            assert bias is not None
            y = y + bias.reshape(shape)
        elif op == "add":
            y = y + next(res)
        elif op == "scale":
            y = y * np.float32(st[1])
        elif op == "relu":
            y = np.maximum(y, 0)
        elif op == "relu6":
            y = np.clip(y, 0, 6)
        elif op == "clip":
            y = np.clip(y, st[1], st[2])
        elif op == "hardswish":
            y = y * np.clip(y + 3, 0, 6) / 6
        elif op == "gelu":
            y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    return y.astype(np.float32)
