"""Elementwise ops: unary activations and math, broadcasting binary arithmetic, comparisons, where."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.registry import REQUIRED, broadcast_shapes, check, register, same_type
from qcc.ir.types import FLOAT_DTYPES, NUMPY_DTYPES, TensorType


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf  # the fast path; scipy comes with scikit-learn

        return np.asarray(erf(x))
    except ImportError:  # pragma: no cover - NumPy-only installs
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _float(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap a float formula: compute in float64 for a stable oracle, return in the input dtype."""

    def ref(x: np.ndarray, **attrs: Any) -> np.ndarray:
        return np.asarray(fn(x.astype(np.float64), **attrs)).astype(x.dtype)

    return ref


def _float_unary_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype in FLOAT_DTYPES, f"expects a float input, got {ts[0].dtype}")
    return same_type(ts, attrs)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    check(approximate == "none", f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _clip(x: np.ndarray, min: float | None, max: float | None) -> np.ndarray:
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    return np.clip(x, lo, hi).astype(x.dtype)


FLOAT_UNARY: dict[str, tuple[Callable[..., np.ndarray], dict[str, Any]]] = {
    "relu6": (lambda x: np.clip(x, 0.0, 6.0), {}),
    "sigmoid": (_sigmoid, {}),
    "silu": (lambda x: x * _sigmoid(x), {}),
    "hardswish": (lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, {}),
    "hardsigmoid": (lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
                    {"alpha": 1.0 / 6.0, "beta": 0.5}),
    "tanh": (np.tanh, {}),
    "exp": (np.exp, {}),
    "log": (np.log, {}),
    "sqrt": (np.sqrt, {}),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), {}),
    "erf": (_erf, {}),
    "reciprocal": (lambda x: 1.0 / x, {}),
    "sin": (np.sin, {}),
    "cos": (np.cos, {}),
    "floor": (np.floor, {}),
    "ceil": (np.ceil, {}),
    "round": (np.round, {}),
    "gelu": (_gelu, {"approximate": "none"}),
    "elu": (lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0)),
            {"alpha": 1.0}),
    "leaky_relu": (lambda x, alpha: np.where(x >= 0, x, alpha * x), {"alpha": 0.01}),
}
for _name, (_fn, _attrs) in FLOAT_UNARY.items():
    register(_name, _float_unary_type, _float(_fn), attrs=_attrs, traits=("elementwise", "unary"))

# Ops valid on any numeric dtype: computed in the input dtype.
ANY_UNARY: dict[str, tuple[Callable[..., np.ndarray], dict[str, Any]]] = {
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), {}),
    "neg": (lambda x: np.negative(x), {}),
    "abs": (lambda x: np.abs(x), {}),
    "clip": (_clip, {"min": None, "max": None}),
}
for _name, (_fn, _attrs) in ANY_UNARY.items():
    register(_name, same_type, _fn, attrs=_attrs, traits=("elementwise", "unary"))


def _cast_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(attrs["dtype"] in NUMPY_DTYPES, f"unknown dtype {attrs['dtype']!r}")
    return [ts[0].with_dtype(attrs["dtype"])]


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(NUMPY_DTYPES[dtype])


register("cast", _cast_type, _cast, attrs={"dtype": REQUIRED}, traits=("elementwise", "unary"))


def _bool_unary_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype == "bool", "expects a bool input")
    return same_type(ts, attrs)


register("logical_not", _bool_unary_type, np.logical_not, traits=("elementwise", "unary"))


# -- binary ---------------------------------------------------------------------------------------
def _binary_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype == ts[1].dtype, f"operand dtypes differ: {ts[0].dtype} vs {ts[1].dtype}")
    return [ts[0].with_shape(broadcast_shapes(ts[0].shape, ts[1].shape))]


def _compare_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [TensorType(broadcast_shapes(ts[0].shape, ts[1].shape), "bool")]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        q = np.abs(a) // np.abs(b)  # truncation toward zero, as in ONNX and C
        return (np.sign(a) * np.sign(b) * q).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    return np.power(a, b).astype(a.dtype)


BINARY: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "add": (np.add, ("commutative",)),
    "sub": (np.subtract, ()),
    "mul": (np.multiply, ("commutative",)),
    "div": (_int_div, ()),
    "pow": (_pow, ()),
    "maximum": (np.maximum, ("commutative",)),
    "minimum": (np.minimum, ("commutative",)),
    "mod": (np.mod, ()),
}
for _name, (_fn, _traits) in BINARY.items():
    register(_name, _binary_type, (lambda f: lambda a, b: f(a, b).astype(a.dtype))(_fn),
             num_inputs=(2, 2), traits=("elementwise", "binary", *_traits))

COMPARE: dict[str, Callable[..., np.ndarray]] = {
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _name, _fn in COMPARE.items():
    register(_name, _compare_type, _fn, num_inputs=(2, 2), traits=("elementwise", "binary"))


def _where_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype == "bool", f"where condition must be bool, got {ts[0].dtype}")
    check(ts[1].dtype == ts[2].dtype, f"where branches differ in dtype: {ts[1].dtype} vs {ts[2].dtype}")
    return [ts[1].with_shape(broadcast_shapes(ts[0].shape, ts[1].shape, ts[2].shape))]


register("where", _where_type, lambda c, a, b: np.asarray(np.where(c, a, b)).astype(a.dtype),
         num_inputs=(3, 3), traits=("elementwise",))
