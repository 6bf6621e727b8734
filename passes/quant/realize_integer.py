"""realize-integer: turn `dequantize → op → quantize` into integer ops with int32 accumulation and dyadic requantize.

For every quantize node whose input is computed by a quantizable op (`quantize.classify`) from dequantized
integers (and constants), the op is rebuilt on the integers and the quantize's output value is produced directly:

- conv2d / linear / matmul with weights → qconv2d / qlinear / qmatmul (int32 accumulator, int32 bias at S_x·S_w,
  input zero point exact) and `requantize` with per-channel dyadic (b, c) of S_x·S_w/S_y; a fused relu / relu6 /
  clip becomes the requantize's clamp bounds. An int32 accumulator output at S_x·S_w needs no requantize.
- matmul of two activations → qmatmul + requantize; add / sub → qadd (both inputs rescaled dyadically to the
  output scale, one rounding); mul / div by a scalar constant → requantize; concat → qconcat (each input rescaled).
- data movement (reshape, transpose, pools, slice, pad, gather, relu ...) runs on the integers (the scale is kept);
  means → qmean (integer sum, integer division by the count, rounded); average pooling → integer avg_pool2d.
- softmax / gelu / layer_norm → the integer algorithms of `nonlinear` ("ibert" or "ivit").

Ops that cannot be realized stay in float between their dequantize and quantize; `check-integer-only` names them.
Dead float nodes and parameters are removed afterwards. The graph's input quantize and output dequantize remain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcc.errors import OptionError
from qcc.ir.graph import Attr, Graph, Node, Value
from qcc.ir.ops.quant import INT_RANGES
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import remove_dead_nodes
from qcc.ir.types import FLOAT_DTYPES
from qcc.passes._stats import record_stats
from qcc.passes.quant import realize_nonlinear as nl
from qcc.passes.quant._realize_base import Emitter, QTensor, Target, activation_bounds, read_dequantize, to_target
from qcc.passes.quant.dyadic import dyadic, shared_shift
from qcc.passes.quant.quantize import FUSABLE, classify
from qcc.passes.quant.realize_gnn import RULES as GNN_RULES
from qcc.passes.quant.realize_gnn import gnn_kind, is_gnn_graph

CONV_ATTRS = ("stride", "padding", "dilation", "groups")


class _Realizer:
    def __init__(self, g: Graph, nonlinear: str) -> None:
        self.g, self.nonlinear = g, nonlinear
        self.params = g.params
        self.producers = g.producers()
        self.users = g.users()
        self.outputs = set(g.outputs)
        self.counts: dict[str, int] = {}
        self.consts = frozenset(n.output for n in g.nodes if n.op == "dequantize" and n.inputs[0] in self.params)
        self.gnn = is_gnn_graph(g)  # message-passing graphs also get the GNN rules (realize_gnn)

    def classify(self, node: Node) -> str | None:
        kind = classify(node, self.params, self.consts)
        return gnn_kind(node, self.g, self.consts) if kind is None and self.gnn else kind

    def _only_user(self, v: Value, user: Node) -> bool:
        return v not in self.outputs and [n for n in self.users.get(v, [])] == [user]

    def _target(self, q: Node) -> Target | None:
        if q.inputs[1] not in self.params or q.inputs[2] not in self.params:
            return None
        scale = self.params[q.inputs[1]].astype(np.float64)
        zp = self.params[q.inputs[2]]
        if zp.size != 1:
            return None
        return Target(q.output, scale, int(zp.reshape(-1)[0]), q.output.dtype)

    def realize(self, q: Node) -> list[Node] | None:
        """The integer nodes replacing quantize node `q`, or None to keep it."""
        target = self._target(q)
        node = self.producers.get(q.inputs[0])
        if target is None or node is None or not self._only_user(node.outputs[0], q):
            return None
        act = None
        if node.op in FUSABLE:
            inner = self.producers.get(node.inputs[0])
            if inner is not None and self.classify(inner) in ("linear", "matmul", "add") \
                    and self._only_user(inner.output, node):
                act, node = node, inner
        kind = self.classify(node)
        if kind is None:
            return None
        if act is not None:
            target.lo, target.hi = activation_bounds(act, float(target.scale.reshape(-1)[0]), target.zero_point,
                                                     target.dtype)
        ins = [read_dequantize(self.producers.get(v), self.params) for v in node.inputs]
        em = Emitter(self.g, node.name or node.op)
        try:
            rule = getattr(self, f"_{kind}", None)
            result = rule(em, node, ins, target) if rule is not None else GNN_RULES[kind](self, em, node, ins, target)
        except (ValueError, KeyError):
            result = None
        if result is None:
            return None
        nodes = em.finish(result, target)
        if nodes is not None:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return nodes

    # -- rules: each returns the integer result value (or None to keep the float op) -------------------------------
    def _linear(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x, w = ins[0], ins[1]
        if x is None or w is None or not x.per_tensor or np.any(w.zero_point != 0):
            return None
        sw = (w.scale * np.ones(1)).reshape(-1)
        out_ch = n.output.shape[1] if n.op == "conv2d" else n.output.shape[-1]
        if sw.size not in (1, out_ch):
            return None
        acc_scale = x.s * sw
        bias = None
        if len(n.inputs) == 3:
            real = self._real(n.inputs[2], ins[2])
            if real is None:
                return None
            bias = em.const(np.clip(np.rint(real / acc_scale), -(2**31), 2**31 - 1).astype(np.int32), "bias")
        if n.op == "conv2d":
            attrs: dict[str, Attr] = {k: n.attrs[k] for k in CONV_ATTRS if k in n.attrs}
            acc = em.emit("qconv2d", [x.value, w.value] + ([bias] if bias is not None else []),
                          {**attrs, "x_zero_point": x.zp})
            shape: tuple[int, ...] = (out_ch, 1, 1)
        elif n.op == "linear":
            if w.group_scale is not None:
                if bias is None:
                    bias = em.const(np.zeros(out_ch, np.int32), "bias")
                gs = em.const(w.group_scale.astype(np.int32), "group_scale")
                acc = em.emit("qlinear", [x.value, w.value, bias, gs], {"x_zero_point": x.zp,
                                                                        "group_size": w.group_size})
            else:
                acc = em.emit("qlinear", [x.value, w.value] + ([bias] if bias is not None else []),
                              {"x_zero_point": x.zp})
            shape = (out_ch,)
        else:
            acc = em.emit("qmatmul", [x.value, w.value], {"a_zero_point": x.zp})
            shape = (out_ch,)
        return to_target(em, acc, acc_scale, 0, target, shape if acc_scale.size > 1 else ())

    def _real(self, v: Value, info: QTensor | None) -> np.ndarray | None:
        """The real values of a constant read directly or through a dequantize of a constant."""
        if v in self.params and v.dtype in FLOAT_DTYPES:
            return self.params[v].astype(np.float64)
        if info is not None and info.value in self.params and info.group_scale is None:
            return (self.params[info.value].astype(np.int64) - info.zero_point) * info.scale
        return None

    def _matmul(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        a, b = ins
        if a is None or b is None or not (a.per_tensor and b.per_tensor):
            return None
        acc = em.emit("qmatmul", [a.value, b.value], {"a_zero_point": a.zp, "b_zero_point": b.zp})
        return to_target(em, acc, a.s * b.s, 0, target)

    def _add(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        a, b = ins
        if a is None or b is None or not (a.per_tensor and b.per_tensor) or target.scale.size != 1:
            return None
        s_y = float(target.scale.reshape(-1)[0])
        sign = -1.0 if n.op == "sub" else 1.0
        (ma, mb), shift = shared_shift([a.s / s_y, sign * b.s / s_y])
        return em.emit("qadd", [a.value, b.value], {
            "a_multiplier": ma, "b_multiplier": mb, "shift": shift, "a_zero_point": a.zp, "b_zero_point": b.zp,
            "zero_point": target.zero_point, "dtype": target.dtype, "min": target.lo, "max": target.hi})

    def _scale(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        i = 0 if n.inputs[1] in self.params and self.params[n.inputs[1]].size == 1 else 1
        x, const = ins[i], float(self.params[n.inputs[1 - i]].reshape(-1)[0])
        if x is None or not x.per_tensor or const == 0.0 or target.scale.size != 1:
            return None
        factor = const if n.op == "mul" else 1.0 / const
        return em.requantize(x.value, np.asarray(x.s * factor / float(target.scale.reshape(-1)[0])), (), target,
                             x.zp)

    def _concat(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        if any(x is None or not x.per_tensor for x in ins) or target.scale.size != 1:
            return None
        xs = [x for x in ins if x is not None]
        b, c = dyadic(np.array([x.s for x in xs]) / float(target.scale.reshape(-1)[0]))
        return em.emit("qconcat", [x.value for x in xs], {
            "axis": n.attrs["axis"], "multipliers": tuple(int(v) for v in b), "shifts": tuple(int(v) for v in c),
            "input_zero_points": tuple(x.zp for x in xs), "zero_point": target.zero_point, "dtype": target.dtype})

    def _pass(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x = ins[0]
        if x is None or not x.per_tensor or any(
                info is None and v.dtype in FLOAT_DTYPES for v, info in zip(n.inputs[1:], ins[1:])):
            return None
        others = [v if info is None else info.value for v, info in zip(n.inputs[1:], ins[1:])]
        attrs = dict(n.attrs)
        lo_t, hi_t = INT_RANGES[x.dtype]
        if n.op == "relu":
            out = em.emit("relu", [x.value]) if x.zp == 0 else \
                em.emit("clip", [x.value], {"min": float(x.zp), "max": None})
        elif n.op in ("relu6", "clip"):
            lo = 0.0 if n.op == "relu6" else attrs.get("min")
            hi = 6.0 if n.op == "relu6" else attrs.get("max")
            bounds: dict[str, Attr] = {
                k: None if v is None else float(np.clip(x.zp + round(float(v) / x.s), lo_t, hi_t))  # type: ignore[arg-type]
                for k, v in (("min", lo), ("max", hi))}
            out = em.emit("clip", [x.value], bounds)
        else:
            if n.op == "pad":
                value = x.zp + round(float(attrs["value"]) / x.s)  # type: ignore[arg-type]
                if not lo_t <= value <= hi_t:
                    return None
                attrs["value"] = float(value)
            if n.op == "avg_pool2d" and x.zp != 0 and attrs["count_include_pad"] and any(attrs["padding"]):  # type: ignore[arg-type]
                return None  # padding cells would count as real −zp·S
            out = em.emit(n.op, [x.value, *others], attrs)
        return to_target(em, out, x.s, x.zp, target)

    def _mean(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x = ins[0]
        if x is None or not x.per_tensor:
            return None
        attrs: dict[str, Attr] = {"axes": (2, 3), "keepdims": True} if n.op == "adaptive_avg_pool2d" else \
            {"axes": n.attrs["axes"], "keepdims": n.attrs["keepdims"]}
        return to_target(em, em.emit("qmean", [x.value], attrs), x.s, x.zp, target)

    def _softmax(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x = ins[0]
        return None if x is None or not x.per_tensor else nl.softmax(em, n, x, target, self.nonlinear)

    def _gelu(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x = ins[0]
        return None if x is None or not x.per_tensor else nl.gelu(em, n, x, target, self.nonlinear)

    def _layer_norm(self, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
        x = ins[0]
        if x is None or not x.per_tensor:
            return None
        gamma, beta = self.params[n.inputs[1]], self.params[n.inputs[2]]
        return nl.layer_norm(em, n, x, gamma, beta, target, self.nonlinear)


@dataclass(frozen=True)
class RealizeInteger:
    """Replace each `dequantize → op → quantize` with integer ops and dyadic requantization.

    Option: `nonlinear` ("ibert" polynomials or "ivit" shifts) for softmax, GELU and LayerNorm.
    """

    name: ClassVar[str] = "realize-integer"
    nonlinear: str = "ibert"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if self.nonlinear not in nl.NONLINEAR:
            raise OptionError(f"realize-integer: nonlinear must be one of {list(nl.NONLINEAR)}, "
                              f"got {self.nonlinear!r}")
        g = graph.copy()
        r = _Realizer(g, self.nonlinear)
        nodes: list[Node] = []
        for n in g.nodes:
            replaced = r.realize(n) if n.op == "quantize" else None
            nodes.extend(replaced if replaced is not None else [n])
        g.nodes = nodes
        removed = remove_dead_nodes(g)
        record_stats(ctx, self.name, {**{f"realized-{k}": v for k, v in r.counts.items()}, "removed": removed})
        return g
