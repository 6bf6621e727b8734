"""The aten -> qcc IR conversion table: registry, conversion context and the elementwise converters.

A converter is `fn(ctx, *args, **kwargs)` called with the fx node's arguments already mapped: tensors are IR
`Value`s, folded constants are NumPy arrays, everything else (ints, floats, lists, dtypes) stays as torch gave
it. It returns a `Value`, a NumPy array (a folded constant), a python scalar, or a tuple of those for
multi-output ops. Kernels that use torch's own output metadata (shape, dtype) read it from `ctx`.
`torch_ops_nn` and `torch_ops_shape` register the remaining families into the same `CONVERTERS` table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from qcc.ir.graph import GraphBuilder, Node, Value
from qcc.ir.types import FLOAT_DTYPES, numpy_dtype

Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}

TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.int64: "i64", torch.int32: "i32",
    torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool",
}
IR_TO_TORCH = {v: k for k, v in TORCH_DTYPES.items()}


class Unsupported(Exception):
    """Raised by a converter for a variant of an op that the IR cannot express; the driver collects it."""


class Missing:
    """Stands for a result that could not be converted; nodes reading it are skipped (not re-reported)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()


def converts(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter for aten overloads written "add.Tensor" or "relu" (meaning "aten.relu.default")."""

    def deco(fn: Converter) -> Converter:
        for name in names:
            CONVERTERS[f"aten.{name}" if "." in name else f"aten.{name}.default"] = fn
        return fn

    return deco


def ir_dtype(dtype: torch.dtype) -> str:
    """IR dtype of a torch dtype; raises Unsupported for dtypes the IR lacks (bfloat16, complex, ...)."""
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype}") from None


def is_tensor(x: Any) -> bool:
    return isinstance(x, (Value, np.ndarray))


def shape_of(x: Value | np.ndarray) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def rank_of(x: Value | np.ndarray) -> int:
    return len(x.shape)


def norm_dim(d: int, rank: int) -> int:
    """A non-negative axis; torch allows dim 0/-1 on 0-d tensors, which we map to 0."""
    if rank == 0 and d in (0, -1):
        return 0
    if not -rank <= d < rank:
        raise Unsupported(f"dim {d} out of range for rank {rank}")
    return d + rank if d < 0 else d


def norm_dims(dims: Sequence[int] | int | None, rank: int) -> tuple[int, ...]:
    """Normalized, sorted, de-duplicated axes; None or [] mean every axis."""
    if dims is None:
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({norm_dim(int(d), rank) for d in dims}))


class ConvertContext:
    """What a converter sees: the builder, the fx node being converted, and helpers to make values."""

    def __init__(self, builder: GraphBuilder, param_names: set[str]) -> None:
        self.b = builder
        self.node: Any = None  # the torch.fx.Node being converted
        self._names = param_names  # every param name in use, to keep generated names unique
        self._folded: dict[tuple[int, str], Value] = {}
        self._folded_names: dict[int, str] = {}
        self._keep: list[np.ndarray] = []  # keeps folded arrays alive so id() keys stay unique

    # -- torch's view of the current node ---------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.node.name) if self.node is not None else ""

    def out_meta(self, index: int | None = None) -> Any:
        val = self.node.meta.get("val")
        return val[index] if index is not None else val

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.out_meta().shape)

    @property
    def out_dtype(self) -> str:
        return ir_dtype(self.out_meta().dtype)

    # -- emitting ---------------------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Value], **attrs: Any) -> Value:
        return self.b.emit(op, list(inputs), attrs, name=self.name)

    def emit_node(self, op: str, inputs: Sequence[Value], **attrs: Any) -> Node:
        return self.b.emit_node(op, list(inputs), attrs, name=self.name)

    def unique_name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name, i = f"{hint}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, array: Any, dtype: str | None = None, hint: str = "") -> Value:
        """A new param holding `array` (cast to `dtype`), named after the current node."""
        arr = np.asarray(array)
        if dtype is not None:
            arr = arr.astype(numpy_dtype(dtype))
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # python floats follow torch's default dtype
        return self.b.param(np.asarray(arr, order="C"), self.unique_name(hint or f"{self.name}_const"))

    def folded(self, array: np.ndarray, name: str) -> None:
        """Remember the fx name of a folded constant so its param gets a meaningful name."""
        self._keep.append(array)
        self._folded_names[id(array)] = name

    def value(self, x: Any, dtype: str | None = None) -> Value:
        """`x` as an IR value of `dtype` (when given): casts values, turns constants and scalars into params."""
        if isinstance(x, Value):
            return self.cast(x, dtype) if dtype is not None else x
        if isinstance(x, np.ndarray):
            dt = dtype or _np_ir_dtype(x)
            key = (id(x), dt)
            if key not in self._folded:
                hint = self._folded_names.get(id(x), f"{self.name}_const")
                self._keep.append(x)
                self._folded[key] = self.const(x, dt, hint)
            return self._folded[key]
        if isinstance(x, (bool, int, float, np.generic)):
            if dtype is None:
                dtype = "bool" if isinstance(x, bool) else "i64" if isinstance(x, int) else "f32"
            return self.const(np.asarray(x), dtype)
        raise Unsupported(f"cannot use {type(x).__name__} {x!r} as a tensor")

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.dtype == dtype else self.emit("cast", [v], dtype=dtype)

    def scalar(self, x: float | int, like: Value) -> Value:
        """A 0-d param of `like`'s dtype."""
        return self.const(np.asarray(x), like.dtype)


def _np_ir_dtype(a: np.ndarray) -> str:
    from qcc.ir.types import dtype_from_numpy

    try:
        return dtype_from_numpy(a.dtype)
    except ValueError:
        raise Unsupported(f"constant of dtype {a.dtype}") from None


def result_dtype(a: Any, b: Any) -> str:
    """torch's type promotion of two operands (IR values, constants or python scalars)."""

    def rep(x: Any) -> Any:
        if isinstance(x, Value):
            return torch.empty((0,) if x.shape else (), dtype=IR_TO_TORCH[x.dtype])
        if isinstance(x, np.ndarray):
            return torch.empty((0,) if x.shape else (), dtype=IR_TO_TORCH[_np_ir_dtype(x)])
        return x

    return ir_dtype(torch.result_type(rep(a), rep(b)))


def as_bool(ctx: ConvertContext, x: Any) -> Value:
    v = ctx.value(x)
    return v if v.dtype == "bool" else ctx.emit("not_equal", [v, ctx.scalar(0, v)])


# -- unary ----------------------------------------------------------------------------------------------
def _unary(op: str, **attrs: Any) -> Converter:
    def convert(ctx: ConvertContext, x: Any) -> Value:
        return ctx.emit(op, [ctx.value(x, ctx.out_dtype)], **attrs)

    return convert


for _aten, _ir in {
    "relu": "relu", "sigmoid": "sigmoid", "silu": "silu", "hardswish": "hardswish", "tanh": "tanh", "exp": "exp",
    "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "neg": "neg", "abs": "abs", "erf": "erf",
    "reciprocal": "reciprocal", "floor": "floor", "ceil": "ceil", "round": "round", "sin": "sin", "cos": "cos",
    "relu6": "relu6", "hardsigmoid": "hardsigmoid",
}.items():
    converts(_aten)(_unary(_ir))


@converts("gelu")
def _gelu(ctx: ConvertContext, x: Value, approximate: str = "none") -> Value:
    return ctx.emit("gelu", [ctx.value(x, ctx.out_dtype)], approximate=approximate)


@converts("leaky_relu")
def _leaky_relu(ctx: ConvertContext, x: Value, negative_slope: float = 0.01) -> Value:
    return ctx.emit("leaky_relu", [x], alpha=float(negative_slope))


@converts("elu")
def _elu(ctx: ConvertContext, x: Value, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    if input_scale != 1:
        raise Unsupported("elu with input_scale != 1")
    y = ctx.emit("elu", [x], alpha=float(alpha))
    return y if scale == 1 else ctx.emit("mul", [y, ctx.scalar(scale, y)])


@converts("hardtanh")
def _hardtanh(ctx: ConvertContext, x: Value, min_val: float = -1.0, max_val: float = 1.0) -> Value:
    if min_val == 0 and max_val == 6:
        return ctx.emit("relu6", [x])
    return ctx.emit("clip", [x], min=float(min_val), max=float(max_val))


@converts("clamp", "clamp_min", "clamp_max", "clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp(ctx: ConvertContext, x: Value, min: Any = None, max: Any = None) -> Value:
    target = str(ctx.node.target)
    if "clamp_max" in target:  # clamp_max(x, max) passes the bound positionally as `min`
        min, max = None, min
    y = ctx.value(x, ctx.out_dtype)
    if is_tensor(min) or is_tensor(max):  # tensor bounds: elementwise maximum / minimum
        if min is not None:
            y = ctx.emit("maximum", [y, ctx.value(min, y.dtype)])
        if max is not None:
            y = ctx.emit("minimum", [y, ctx.value(max, y.dtype)])
        return y
    return ctx.emit("clip", [y], min=None if min is None else float(min), max=None if max is None else float(max))


@converts("log1p")
def _log1p(ctx: ConvertContext, x: Any) -> Value:
    v = ctx.value(x, ctx.out_dtype)
    return ctx.emit("log", [ctx.emit("add", [v, ctx.scalar(1, v)])])


@converts("expm1")
def _expm1(ctx: ConvertContext, x: Any) -> Value:
    e = ctx.emit("exp", [ctx.value(x, ctx.out_dtype)])
    return ctx.emit("sub", [e, ctx.scalar(1, e)])


def _trunc_value(ctx: ConvertContext, v: Value) -> Value:
    if v.dtype not in FLOAT_DTYPES:
        return v
    neg = ctx.emit("less", [v, ctx.scalar(0, v)])
    return ctx.emit("where", [neg, ctx.emit("ceil", [v]), ctx.emit("floor", [v])])


@converts("trunc")
def _trunc(ctx: ConvertContext, x: Any) -> Value:
    return _trunc_value(ctx, ctx.value(x, ctx.out_dtype))


@converts("sign", "sgn")
def _sign(ctx: ConvertContext, x: Any) -> Value:
    v = ctx.value(x, ctx.out_dtype)
    if v.dtype == "bool":
        return v
    pos = ctx.cast(ctx.emit("greater", [v, ctx.scalar(0, v)]), v.dtype)
    neg = ctx.cast(ctx.emit("less", [v, ctx.scalar(0, v)]), v.dtype)
    return ctx.emit("sub", [pos, neg])


@converts("logical_not", "bitwise_not")
def _logical_not(ctx: ConvertContext, x: Any) -> Value:
    v = ctx.value(x)
    if v.dtype != "bool" and "bitwise" in str(ctx.node.target):
        raise Unsupported("bitwise_not on integers")
    return ctx.emit("logical_not", [as_bool(ctx, v)])


# -- binary ---------------------------------------------------------------------------------------------
def _scaled(ctx: ConvertContext, x: Any, alpha: Any) -> Any:
    if alpha == 1:
        return x
    if isinstance(x, Value):
        return ctx.emit("mul", [x, ctx.scalar(alpha, x)])
    return x * alpha


def _arith(op: str, reverse: bool = False) -> Converter:
    def convert(ctx: ConvertContext, a: Any, b: Any, alpha: Any = 1) -> Value:
        dt = ctx.out_dtype
        a, b = (b, _scaled(ctx, a, alpha)) if reverse else (a, _scaled(ctx, b, alpha))  # rsub: b - alpha * a
        return ctx.emit(op, [ctx.value(a, dt), ctx.value(b, dt)])

    return convert


for _aten, _ir in {"add": "add", "sub": "sub", "mul": "mul", "maximum": "maximum", "minimum": "minimum",
                   "fmax": "maximum", "fmin": "minimum", "remainder": "mod"}.items():
    converts(f"{_aten}.Tensor", f"{_aten}.Scalar", _aten)(_arith(_ir))
converts("rsub.Tensor", "rsub.Scalar")(_arith("sub", reverse=True))
converts("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")(_arith("pow"))


@converts("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "floor_divide", "floor_divide.Scalar")
def _div(ctx: ConvertContext, a: Any, b: Any, rounding_mode: str | None = None) -> Value:
    if "floor_divide" in str(ctx.node.target):
        rounding_mode = "floor"
    dt = ctx.out_dtype
    va, vb = ctx.value(a, dt), ctx.value(b, dt)
    if dt in FLOAT_DTYPES:
        q = ctx.emit("div", [va, vb])
        if rounding_mode == "floor":
            return ctx.emit("floor", [q])
        return _trunc_value(ctx, q) if rounding_mode == "trunc" else q
    if rounding_mode == "floor":  # exact integer floor division: (a - a mod b) / b, mod being floor mod
        return ctx.emit("div", [ctx.emit("sub", [va, ctx.emit("mod", [va, vb])]), vb])
    return ctx.emit("div", [va, vb])  # IR integer div truncates, as torch's trunc mode


@converts("fmod.Tensor", "fmod.Scalar")
def _fmod(ctx: ConvertContext, a: Any, b: Any) -> Value:
    dt = ctx.out_dtype
    va, vb = ctx.value(a, dt), ctx.value(b, dt)
    q = _trunc_value(ctx, ctx.emit("div", [va, vb]))  # C remainder: a - trunc(a / b) * b
    return ctx.emit("sub", [va, ctx.emit("mul", [q, vb])])


def _compare(op: str) -> Converter:
    def convert(ctx: ConvertContext, a: Any, b: Any) -> Value:
        dt = result_dtype(a, b)
        return ctx.emit(op, [ctx.value(a, dt), ctx.value(b, dt)])

    return convert


for _aten, _ir in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
                   "ge": "greater_equal"}.items():
    converts(f"{_aten}.Tensor", f"{_aten}.Scalar")(_compare(_ir))


def _logical(op: str) -> Converter:
    def convert(ctx: ConvertContext, a: Any, b: Any) -> Value:
        if "bitwise" in str(ctx.node.target) and ctx.out_dtype != "bool":
            raise Unsupported("bitwise ops on integers")
        return ctx.emit(op, [as_bool(ctx, a), as_bool(ctx, b)])

    return convert


for _name in ("and", "or", "xor"):
    converts(f"logical_{_name}", f"bitwise_{_name}.Tensor", f"bitwise_{_name}.Scalar")(_logical(f"logical_{_name}"))


@converts("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(ctx: ConvertContext, cond: Any, a: Any, b: Any) -> Value:
    dt = ctx.out_dtype
    return ctx.emit("where", [as_bool(ctx, cond), ctx.value(a, dt), ctx.value(b, dt)])


@converts("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(ctx: ConvertContext, x: Any, mask: Any, value: Any) -> Value:
    dt = ctx.out_dtype
    return ctx.emit("where", [as_bool(ctx, mask), ctx.value(value, dt), ctx.value(x, dt)])
