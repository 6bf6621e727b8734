"""ONNX op conversion: the per-node context, the converter table and the elementwise/reduction converters.

A converter takes a `NodeContext` and returns one operand per ONNX output. An operand is an IR `Value` or a
NumPy array (a known constant). `NodeContext.emit` folds: when every operand is a constant it evaluates the IR
op's NumPy reference instead of adding a node, so converters never special-case shape arithmetic.
Data-movement ops live in `onnx_ops_shape`, convolution/normalization/matmul in `onnx_ops_nn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from qcc.errors import ModelLoadError
from qcc.ir.graph import Value
from qcc.ir.ops import evaluate
from qcc.ir.types import dtype_from_numpy, numpy_dtype

if TYPE_CHECKING:
    from qcc.frontends.onnx_frontend import _Importer

Operand = Value | np.ndarray
Converter = Callable[["NodeContext"], Sequence[Operand | None]]
CONVERTERS: dict[str, Converter] = {}

# Ops never folded even when their inputs are constant: their value is not a function of the inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


class Unsupported(Exception):
    """A node of a known op type uses a form qcc cannot express (the message says which)."""


def converter(*op_types: str) -> Callable[[Converter], Converter]:
    """Register a converter for one or more ONNX op types (default domain)."""

    def deco(fn: Converter) -> Converter:
        for t in op_types:
            CONVERTERS[t] = fn
        return fn

    return deco


def to_array(tensor: Any, label: str) -> np.ndarray:
    """A TensorProto as a NumPy array; bad tensor data is a ModelLoadError."""
    from onnx import numpy_helper

    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as e:
        raise ModelLoadError(f"{label}: tensor {tensor.name!r} cannot be read: {e}") from e


def freeze(v: Any) -> Any:
    """An attribute as IR attributes want it: Python scalars and tuples, never lists or NumPy scalars."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return tuple(freeze(x) for x in v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def fold_with_reference(node: Any, inputs: Sequence[Operand | None], opset: int) -> list[np.ndarray] | None:
    """Evaluate a node the table lacks with onnx.reference when all inputs are constants; None if impossible."""
    if node.op_type in NONDETERMINISTIC or any(isinstance(x, Value) for x in inputs):
        return None
    try:
        from onnx.reference import ReferenceEvaluator

        feeds = {name: x for name, x in zip(node.input, inputs) if name}
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:
        return None
    if not all(isinstance(o, np.ndarray) for o in outs):  # sequences, maps, optionals: not tensors
        return None
    return [np.asarray(o) for o in outs]


class NodeContext:
    """What a converter sees of one ONNX node: its attributes, operands, and emit/fold helpers."""

    def __init__(self, importer: _Importer, node: Any, name: str, inputs: list[Operand | None], opset: int) -> None:
        from onnx import helper

        self.imp, self.node, self.name, self.inputs, self.opset = importer, node, name, inputs, opset
        self.op_type = node.op_type
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # -- reading the node ---------------------------------------------------------------------------------------
    def attr(self, key: str, default: Any = None) -> Any:
        return freeze(self.attrs[key]) if key in self.attrs else default

    def input(self, i: int) -> Operand | None:
        """Operand i, or None when absent (optional inputs may be missing or empty)."""
        return self.inputs[i] if i < len(self.inputs) else None

    def x(self, i: int) -> Operand:
        """A required operand."""
        x = self.input(i)
        if x is None:
            raise self.error(f"required input {i} is missing")
        return x

    def const(self, i: int, what: str) -> np.ndarray | None:
        """Input i as a constant array (None if absent); a computed, non-constant input is unsupported."""
        x = self.input(i)
        if isinstance(x, Value):
            raise Unsupported(f"with {what} computed from the data (qcc needs a constant)")
        return x

    def ints(self, i: int, what: str) -> tuple[int, ...] | None:
        c = self.const(i, what)
        return None if c is None else tuple(int(v) for v in c.reshape(-1))

    def output_used(self, k: int) -> bool:
        """Whether output k exists and something reads it (a later node or the graph outputs)."""
        out = self.node.output
        return k < len(out) and bool(out[k]) and out[k] in self.imp.consumed

    def error(self, msg: str) -> ModelLoadError:
        return ModelLoadError(f"{self.imp.label}: node {self.name!r} ({self.op_type}): {msg}")

    # -- building -------------------------------------------------------------------------------------------------
    def emit(self, op: str, operands: Sequence[Operand], **attrs: Any) -> Operand:
        """Emit one IR op (or fold it when every operand is constant); returns its output."""
        return self.emit_multi(op, operands, **attrs)[0]

    def emit_multi(self, op: str, operands: Sequence[Operand], **attrs: Any) -> list[Operand]:
        frozen = {k: freeze(v) for k, v in attrs.items()}
        arrays = [o for o in operands if isinstance(o, np.ndarray)]
        if len(arrays) == len(operands):  # every operand known: fold
            return [np.asarray(a) for a in evaluate(op, arrays, frozen)]
        values = [self.value(o) for o in operands]
        node = self.imp.builder.emit_node(op, values, frozen, name=self.name)
        for v in node.outputs:
            v.name = self.imp.fresh(f"{self.name}_t")
        return list(node.outputs)

    def value(self, x: Operand) -> Value:
        """The IR value of an operand (a constant becomes a param)."""
        return self.imp._materialize(x, f"{self.name}_const")

    def scalar(self, v: float | int | bool, like: Operand) -> np.ndarray:
        """A 0-d constant of `like`'s dtype."""
        return np.asarray(v, dtype=np_dtype(like))


# -- operand helpers ------------------------------------------------------------------------------------------------
def shape_of(x: Operand) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def np_dtype(x: Operand) -> np.dtype:
    return numpy_dtype(x.dtype) if isinstance(x, Value) else np.dtype(x.dtype)


def ir_dtype(x: Operand) -> str:
    return x.dtype if isinstance(x, Value) else dtype_from_numpy(x.dtype)


def is_float(x: Operand) -> bool:
    return bool(np.issubdtype(np_dtype(x), np.floating))


def norm_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def norm_axes(ctx: NodeContext, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = tuple(sorted({norm_axis(ctx, int(a), rank) for a in axes}))
    if len(out) != len(axes):
        raise ctx.error(f"repeated axes {tuple(axes)}")
    return out


def onnx_np_dtype(ctx: NodeContext, to: int) -> np.dtype:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        raise Unsupported(f"with element type {to}") from None


def cast(ctx: NodeContext, x: Operand, dtype: np.dtype) -> Operand:
    """Cast an operand; constants of any NumPy dtype are cast directly (shape chains may use odd types)."""
    if isinstance(x, np.ndarray):
        return x.astype(dtype)
    if np_dtype(x) == dtype:
        return x
    try:
        target = dtype_from_numpy(dtype)
    except ValueError:
        raise Unsupported(f"with a cast to {dtype}") from None
    return ctx.emit("cast", [x], dtype=target)


# -- elementwise ----------------------------------------------------------------------------------------------------
UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
         "Reciprocal": "reciprocal", "Neg": "neg", "Abs": "abs", "Floor": "floor", "Ceil": "ceil", "Erf": "erf",
         "Sin": "sin", "Cos": "cos", "Round": "round", "Not": "logical_not", "HardSwish": "hardswish"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal", "Less": "less",
          "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
          "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor"}


@converter(*UNARY)
def _unary(ctx: NodeContext) -> list[Operand]:
    return [ctx.emit(UNARY[ctx.op_type], [ctx.x(0)])]


@converter(*BINARY)
def _binary(ctx: NodeContext) -> list[Operand]:
    return [ctx.emit(BINARY[ctx.op_type], [ctx.x(0), ctx.x(1)])]


@converter("Elu", "LeakyRelu", "HardSigmoid", "Gelu")
def _unary_attr(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    if ctx.op_type == "Elu":
        return [ctx.emit("elu", [x], alpha=ctx.attr("alpha", 1.0))]
    if ctx.op_type == "LeakyRelu":
        return [ctx.emit("leaky_relu", [x], alpha=ctx.attr("alpha", 0.01))]
    if ctx.op_type == "HardSigmoid":  # ONNX defaults (0.2, 0.5) differ from the IR's (1/6, 0.5)
        return [ctx.emit("hardsigmoid", [x], alpha=ctx.attr("alpha", 0.2), beta=ctx.attr("beta", 0.5))]
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.error(f"unknown approximate={approximate!r}")
    return [ctx.emit("gelu", [x], approximate=approximate)]


def softplus(ctx: NodeContext, x: Operand) -> Operand:
    # relu(x) + log(1 + exp(-|x|)): never overflows, unlike log(1 + exp(x)).
    t = ctx.emit("exp", [ctx.emit("neg", [ctx.emit("abs", [x])])])
    return ctx.emit("add", [ctx.emit("relu", [x]), ctx.emit("log", [ctx.emit("add", [t, ctx.scalar(1, x)])])])


@converter("Selu", "Celu", "PRelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Sign")
def _decomposed_unary(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    if ctx.op_type == "Selu":
        alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
        return [ctx.emit("mul", [ctx.emit("elu", [x], alpha=alpha), ctx.scalar(gamma, x)])]
    if ctx.op_type == "Celu":  # alpha * elu(x / alpha)
        alpha = ctx.scalar(ctx.attr("alpha", 1.0), x)
        return [ctx.emit("mul", [ctx.emit("elu", [ctx.emit("div", [x, alpha])], alpha=1.0), alpha])]
    if ctx.op_type == "PRelu":  # max(x, 0) + slope * min(x, 0)
        neg = ctx.emit("mul", [ctx.emit("minimum", [x, ctx.scalar(0, x)]), ctx.x(1)])
        return [ctx.emit("add", [ctx.emit("relu", [x]), neg])]
    if ctx.op_type == "Softplus":
        return [softplus(ctx, x)]
    if ctx.op_type == "Softsign":
        return [ctx.emit("div", [x, ctx.emit("add", [ctx.emit("abs", [x]), ctx.scalar(1, x)])])]
    if ctx.op_type == "Mish":
        return [ctx.emit("mul", [x, ctx.emit("tanh", [softplus(ctx, x)])])]
    if ctx.op_type == "ThresholdedRelu":
        keep = ctx.emit("greater", [x, ctx.scalar(ctx.attr("alpha", 1.0), x)])
        return [ctx.emit("where", [keep, x, ctx.scalar(0, x)])]
    pos = cast(ctx, ctx.emit("greater", [x, ctx.scalar(0, x)]), np_dtype(x))
    return [ctx.emit("sub", [pos, cast(ctx, ctx.emit("less", [x, ctx.scalar(0, x)]), np_dtype(x))])]


@converter("Clip")
def _clip(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    lo, hi = ctx.input(1), ctx.input(2)
    if ctx.opset < 11:  # pragma: no cover - models are upgraded to opset 13 first
        lo, hi = ctx.attr("min"), ctx.attr("max")
    if isinstance(lo, Value) or isinstance(hi, Value):  # computed bounds: max/min ops
        y = x if lo is None else ctx.emit("maximum", [x, lo])
        return [y if hi is None else ctx.emit("minimum", [y, hi])]
    def bound(b: np.ndarray | None) -> float | int | None:
        if b is None:
            return None
        return float(b.reshape(())) if is_float(x) else int(b.reshape(()))
    return [ctx.emit("clip", [x], min=bound(lo), max=bound(hi))]


@converter("Pow")
def _pow(ctx: NodeContext) -> list[Operand]:
    x, e = ctx.x(0), ctx.x(1)
    return [ctx.emit("pow", [x, cast(ctx, e, np_dtype(x))])]  # ONNX allows a differently typed exponent


@converter("Mod")
def _mod(ctx: NodeContext) -> list[Operand]:
    a, b = ctx.x(0), ctx.x(1)
    if not ctx.attr("fmod", 0):
        if is_float(a):
            raise ctx.error("Mod of floats needs fmod=1")
        return [ctx.emit("mod", [a, b])]
    # fmod: the remainder has the sign of the dividend, a - b * trunc(a / b).
    q = ctx.emit("div", [a, b])  # integer div already truncates toward zero
    if is_float(a):
        neg = ctx.emit("less", [q, ctx.scalar(0, q)])
        q = ctx.emit("where", [neg, ctx.emit("ceil", [q]), ctx.emit("floor", [q])])
    return [ctx.emit("sub", [a, ctx.emit("mul", [b, q])])]


@converter("Max", "Min", "Sum", "Mean")
def _variadic(ctx: NodeContext) -> list[Operand]:
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[ctx.op_type]
    xs = [x for x in ctx.inputs if x is not None]
    y = xs[0]
    for x in xs[1:]:
        y = ctx.emit(op, [y, x])
    if ctx.op_type == "Mean" and len(xs) > 1:
        y = ctx.emit("div", [y, ctx.scalar(len(xs), y)])
    return [y]


@converter("Where")
def _where(ctx: NodeContext) -> list[Operand]:
    return [ctx.emit("where", [ctx.x(0), ctx.x(1), ctx.x(2)])]


@converter("Cast", "CastLike")
def _cast(ctx: NodeContext) -> list[Operand]:
    to = np_dtype(ctx.x(1)) if ctx.op_type == "CastLike" else onnx_np_dtype(ctx, ctx.attr("to"))
    return [cast(ctx, ctx.x(0), to)]


# -- reductions -----------------------------------------------------------------------------------------------------
REDUCE = {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
          "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod", "ReduceSumSquare": "reduce_sum",
          "ReduceL1": "reduce_sum", "ReduceL2": "reduce_sum", "ReduceLogSum": "reduce_sum",
          "ReduceLogSumExp": "reduce_sum"}


@converter(*REDUCE)
def _reduce(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    rank = len(shape_of(x))
    # Axes are an attribute before opset 18 (13 for ReduceSum) and an optional input after.
    axes = ctx.attr("axes")
    if axes is None:
        axes = ctx.ints(1, "reduction axes")
    keep = bool(ctx.attr("keepdims", 1))
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return [x]
        axes = tuple(range(rank))
    axes = norm_axes(ctx, axes, rank)
    op, kind = REDUCE[ctx.op_type], ctx.op_type
    if kind == "ReduceLogSumExp":  # m + log(sum(exp(x - m))), m the (kept) max, for stability
        m = ctx.emit("reduce_max", [x], axes=axes, keepdims=True)
        s = ctx.emit("reduce_sum", [ctx.emit("exp", [ctx.emit("sub", [x, m])])], axes=axes, keepdims=True)
        y = ctx.emit("add", [ctx.emit("log", [s]), m])
        return [y if keep else ctx.emit("squeeze", [y], axes=axes)]
    if kind in ("ReduceSumSquare", "ReduceL2"):
        x = ctx.emit("mul", [x, x])
    elif kind == "ReduceL1":
        x = ctx.emit("abs", [x])
    y = ctx.emit(op, [x], axes=axes, keepdims=keep)
    if kind == "ReduceL2":
        y = ctx.emit("sqrt", [y])
    elif kind == "ReduceLogSum":
        y = ctx.emit("log", [y])
    return [y]


@converter("ArgMax", "ArgMin")
def _arg(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    axis = norm_axis(ctx, ctx.attr("axis", 0), len(shape))
    op, keep = ctx.op_type.lower(), bool(ctx.attr("keepdims", 1))
    if not ctx.attr("select_last_index", 0):
        return [ctx.emit(op, [x], axis=axis, keepdims=keep)]
    # The last extreme index: search the reversed axis, then map back (n - 1 - i).
    n = shape[axis]
    flipped = ctx.emit("gather", [x, np.arange(n - 1, -1, -1, dtype=np.int64)], axis=axis)
    i = ctx.emit(op, [flipped], axis=axis, keepdims=keep)
    return [ctx.emit("sub", [np.asarray(n - 1, np.int64), i])]
