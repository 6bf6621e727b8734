"""Shared pieces of realize-integer: reading a dequantize's integer tensor and constants, emitting integer nodes,
and the final rescale of an integer result to the scale, zero point and dtype of the quantize it replaces.

Scale ratios are computed in float64 from the stored float32 scales (as HAWQV3 does), then made dyadic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Attr, Graph, Node, Value, make_node
from qcc.ir.ops.quant import INT_RANGES
from qcc.passes.quant.dyadic import dyadic

RTOL = 1e-6  # scales equal within this relative tolerance need no rescale


@dataclass
class QTensor:
    """An integer tensor with its quantization: real = scale · [group_scale ·] (value − zero_point)."""

    value: Value
    scale: np.ndarray  # float64, broadcastable to value
    zero_point: np.ndarray  # int64, broadcastable
    group_scale: np.ndarray | None = None
    group_size: int | None = None

    @property
    def dtype(self) -> str:
        return self.value.dtype

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1 and self.group_scale is None

    @property
    def s(self) -> float:
        """The per-tensor scale."""
        return float(self.scale.reshape(-1)[0])

    @property
    def zp(self) -> int:
        return int(self.zero_point.reshape(-1)[0])


def read_dequantize(node: Node | None, params: dict[Value, np.ndarray]) -> QTensor | None:
    """The integer input of a dequantize node with constant scale / zero point (and group scale), else None."""
    if node is None or node.op != "dequantize" or any(v not in params for v in node.inputs[1:]):
        return None
    scale = params[node.inputs[1]].astype(np.float64)
    zp = params[node.inputs[2]].astype(np.int64)
    if len(node.inputs) == 4:
        gs = params[node.inputs[3]].astype(np.int64)
        return QTensor(node.inputs[0], scale, zp, gs, int(node.attrs["group_size"]))  # type: ignore[arg-type]
    return QTensor(node.inputs[0], scale, zp)


@dataclass
class Target:
    """What the replaced quantize produced: its scale (per tensor, or per channel on the last axis), zero point,
    dtype and output value (reused, so later nodes and reports keep reading the same value)."""

    value: Value
    scale: np.ndarray
    zero_point: int
    dtype: str
    lo: int | None = None  # fused activation bounds, in output integers
    hi: int | None = None


class Emitter:
    """Collects the integer nodes that replace one quantize node; `finish` makes the last one produce the target."""

    def __init__(self, graph: Graph, name: str) -> None:
        self.graph = graph
        self.name = name
        self.nodes: list[Node] = []

    def const(self, array: np.ndarray, label: str) -> Value:
        return self.graph.add_param(np.asarray(array), f"{self.name}.{label}")

    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Attr] | None = None) -> Value:
        node = make_node(op, inputs, attrs or {}, name=self.name)
        self.nodes.append(node)
        return node.output

    def requantize(self, acc: Value, ratio: np.ndarray, shape: tuple[int, ...], target: Target,
                   input_zero_point: int = 0) -> Value:
        """requantize(acc) to the target with per-element (broadcast) dyadic multipliers of `ratio`."""
        b, c = dyadic(np.asarray(ratio, np.float64).reshape(shape))
        attrs: dict[str, Attr] = {"dtype": target.dtype, "zero_point": target.zero_point,
                                  "input_zero_point": int(input_zero_point), "min": target.lo, "max": target.hi}
        return self.emit("requantize", [acc, self.const(b.astype(np.int32), "multiplier"),
                                        self.const(c.astype(np.int32), "shift")], attrs)

    def finish(self, result: Value, target: Target) -> list[Node] | None:
        """Give the node producing `result` the target's output value; None if no node of ours produced it."""
        for node in reversed(self.nodes):
            if result in node.outputs:
                if (result.shape, result.dtype) != (target.value.shape, target.value.dtype):
                    return None
                node.outputs = tuple(target.value if v is result else v for v in node.outputs)
                return self.nodes
        return None


def same_scale(a: np.ndarray | float, b: np.ndarray | float) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    try:
        return bool(np.allclose(a, b, rtol=RTOL, atol=0.0))
    except ValueError:
        return False


def to_target(em: Emitter, value: Value, scale: np.ndarray | float, zero_point: int, target: Target,
              channel_shape: tuple[int, ...] = ()) -> Value:
    """Rescale integer `value` (real = scale·(value − zero_point)) to the target; no node when nothing changes.

    `scale` may vary per channel; `channel_shape` is then the broadcast shape of its multipliers ([C, 1, 1] for
    NCHW, [C] for the last axis).
    """
    scale = np.asarray(scale, np.float64)
    if (same_scale(scale, target.scale) and zero_point == target.zero_point and value.dtype == target.dtype
            and target.lo is None and target.hi is None):
        return value
    tscale = target.scale.reshape(-1)
    if tscale.size > 1:  # a per-channel target (an int32 accumulator output)
        ratio = scale.reshape(-1) / tscale
        shape = channel_shape or (tscale.size,)
    else:
        ratio = scale.reshape(-1) / float(tscale[0])
        shape = channel_shape if ratio.size > 1 else ()
    return em.requantize(value, ratio, shape, target, zero_point)


def activation_bounds(act: Node | None, scale: float, zp: int, dtype: str) -> tuple[int | None, int | None]:
    """A fused relu / relu6 / clip as integer clamp bounds of the output (None: the dtype's own bound)."""
    if act is None:
        return None, None
    lo_t, hi_t = INT_RANGES[dtype]
    lo = hi = None
    if act.op in ("relu", "relu6"):
        lo = zp
    if act.op == "relu6":
        hi = zp + round(6.0 / scale)
    if act.op == "clip":
        if act.attrs.get("min") is not None and math.isfinite(float(act.attrs["min"])):  # type: ignore[arg-type]
            lo = zp + round(float(act.attrs["min"]) / scale)  # type: ignore[arg-type]
        if act.attrs.get("max") is not None and math.isfinite(float(act.attrs["max"])):  # type: ignore[arg-type]
            hi = zp + round(float(act.attrs["max"]) / scale)  # type: ignore[arg-type]
    lo = None if lo is None or lo <= lo_t else min(lo, hi_t)
    hi = None if hi is None or hi >= hi_t else max(hi, lo_t)
    return lo, hi
