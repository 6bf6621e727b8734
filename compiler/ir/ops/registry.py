"""The op registry: each op is defined once with its type rule and its NumPy reference semantics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.errors import VerificationError
from qcc.ir.types import TensorType

InferFn = Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]
RefFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    """An operator: name, arity, attribute names with defaults, type rule and NumPy reference.

    `num_inputs` is (min, max); max None means variadic. `attrs` lists every attribute the op accepts
    with its default (`REQUIRED` when it has none). Traits: "elementwise", "unary", "binary",
    "reduction", "shape" (pure data movement), "commutative".
    """

    name: str
    infer: InferFn
    ref: RefFn
    num_inputs: tuple[int, int | None] = (1, 1)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    traits: frozenset[str] = frozenset()
    num_outputs: int | None = 1  # None: decided by the type rule (split)


REQUIRED = object()
OPS: dict[str, OpDef] = {}


def register(
    name: str,
    infer: InferFn,
    ref: RefFn,
    num_inputs: tuple[int, int | None] = (1, 1),
    attrs: Mapping[str, Any] | None = None,
    traits: Sequence[str] = (),
    num_outputs: int | None = 1,
) -> OpDef:
    """Add an op to the registry (only modules of qcc.ir.ops call this)."""
    if name in OPS:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, infer, ref, num_inputs, dict(attrs or {}), frozenset(traits), num_outputs)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise VerificationError(f"unknown op {name!r}") from None


def complete_attrs(op: OpDef, attrs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Attributes with defaults filled in; rejects unknown and missing ones."""
    unknown = set(attrs) - set(op.attrs)
    if unknown:
        raise VerificationError(f"{where}{op.name}: unknown attribute(s) {sorted(unknown)}")
    out = {}
    for key, default in op.attrs.items():
        if key in attrs:
            out[key] = attrs[key]
        elif default is REQUIRED:
            raise VerificationError(f"{where}{op.name}: missing attribute {key!r}")
        else:
            out[key] = default
    return out


def infer_types(op_name: str, in_types: Sequence[TensorType], attrs: Mapping[str, Any],
                node_name: str = "") -> list[TensorType]:
    """Run the type rule of `op_name`; any failure becomes a VerificationError naming the node."""
    op = get_op(op_name)
    where = f"node {node_name!r}: " if node_name else ""
    lo, hi = op.num_inputs
    if len(in_types) < lo or (hi is not None and len(in_types) > hi):
        raise VerificationError(f"{where}{op_name} takes {lo}..{hi} inputs, got {len(in_types)}")
    full = complete_attrs(op, attrs, where)
    try:
        return list(op.infer(list(in_types), full))
    except VerificationError as e:  # from check(): add the node and op it is about
        raise VerificationError(f"{where}{op_name}: {e}") from None
    except Exception as e:  # type rules raise plain errors; give them context
        shapes = ", ".join(f"{t.dtype}{list(t.shape)}" for t in in_types)
        raise VerificationError(f"{where}{op_name}({shapes}) {full}: {e}") from e


def evaluate(op_name: str, arrays: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """Run the NumPy reference of an op; returns a list of output arrays."""
    op = get_op(op_name)
    result = op.ref(*arrays, **complete_attrs(op, attrs))
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


def check(cond: bool, msg: str) -> None:
    """Assertion for type rules."""
    if not cond:
        raise VerificationError(msg)


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise VerificationError(f"shapes {list(shapes)} do not broadcast") from None


def same_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    """Type rule of unary elementwise ops: output has the input's shape and dtype."""
    return [ts[0].with_shape(ts[0].shape)]
