"""quantize: annotate a float graph with quantize / dequantize (QDQ) pairs from calibrated ranges.

Which nodes are quantized (`classify`): conv2d / linear / matmul with a constant right operand (weights), matmul
of two activations, add / sub, mul / div by a scalar constant, concat, softmax, gelu, layer_norm, means
(reduce_mean, 1×1 adaptive average pool) and data movement that keeps the scale (reshape, transpose, pools,
slice, relu, ...). A relu / relu6 / clip that is the only user of a conv / linear / matmul / add output is fused
into it (no QDQ between them). `keep_float` names nodes (source names) or op kinds that stay float.

- Weights: symmetric int8 (or int4 for `bits=4`, in int8 containers), per output channel by default (axis 0 of
  conv / linear weights, the last axis of a matmul constant), per tensor with `per_channel=False`, or per vector
  of `group_size` along the reduction axis of linear weights (VS-Quant two-level scales). The clip is OCTAV
  (`weight_method="mse"`, default) or max|w|. Each weight becomes an int param read through a dequantize.
- Biases of conv2d / linear: int32 at S_w·S_x per output channel, read through a dequantize.
- Activations: per tensor from `ctx.options["quant.calibration"]` (run `calibrate` first): u8 with zero point 0
  for tensors that are non-negative by construction (after relu / relu6 / softmax), else i8 symmetric, or u8 with
  a zero point when `symmetric=False`. Softmax inputs, and the scalar-mul / add / data-movement chain feeding
  them, use `softmax_bits` (16: i16) for the integer softmax. Softmax outputs are u8 at the fixed scale 2^−8.
  A graph output produced by a weighted layer stays an int32 accumulator at S_x·S_w (`accumulator_outputs`).
- Other float constants read by quantized ops (an added position embedding, a gathered table) become per-tensor
  int params like activations; the scalar of a scale multiply and LayerNorm's γ / β stay float (realize-integer
  folds them into integer constants).

With `weight_only=True` no calibration is needed: only the weights are quantized, and every op computes in float.
Layer records for the report go to `ctx.options["quant.layers"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qcc.errors import CalibrationError, OptionError
from qcc.ir.graph import Graph, Node, Value, make_node
from qcc.ir.ops.quant import clamp_to
from qcc.ir.pass_manager import PassContext
from qcc.ir.types import FLOAT_DTYPES, QuantParams, TensorType
from qcc.passes._stats import record_stats
from qcc.passes.quant.calibrate import calibrate_graph
from qcc.passes.quant.realize_gnn import activation_inputs, gnn_kind, is_gnn_graph, output_act
from qcc.passes.quant.weights import (
    WEIGHT_METHODS,
    ActQuant,
    QuantizedWeight,
    act_quant,
    quantize_bias,
    quantize_weight,
)

PASSTHROUGH = frozenset({"reshape", "transpose", "squeeze", "unsqueeze", "max_pool2d", "adaptive_max_pool2d",
                         "slice", "expand", "tile", "pad", "gather", "avg_pool2d", "relu", "relu6", "clip"})
FUSABLE = frozenset({"relu", "relu6", "clip"})
SOFTMAX_SCALE = 1.0 / 256.0


@dataclass
class LayerInfo:
    """One quantized layer, for the report: its float output value and the quantize node output standing for it."""

    name: str
    op: str
    kind: str
    weight: QuantizedWeight | None
    float_bytes: int
    act: ActQuant | None = None
    float_value: Value | None = None
    q_value: Value | None = None
    weight_sqnr: float | None = None


def classify(node: Node, params: dict[Value, np.ndarray], consts: frozenset[Value] = frozenset()) -> str | None:
    """The quantization kind of a node, or None when it stays float. `consts` are values that count as constant
    weights besides the params (the dequantized weights of a QDQ graph)."""
    if not node.outputs or any(v.dtype not in FLOAT_DTYPES for v in node.outputs):
        return None
    op, ins = node.op, node.inputs
    const = [v in params or v in consts for v in ins]
    if op in ("conv2d", "linear"):
        return "linear" if const[1] else None
    if op == "matmul":
        if const[1] and ins[1].type.rank >= 2:
            return "linear"
        return None if const[0] else "matmul"
    if op in ("add", "sub"):
        return "add"
    if op in ("mul", "div"):
        scalar = [i for i, v in enumerate(ins) if v in params and params[v].size == 1]
        if scalar and (op == "mul" or scalar == [1]) and len(scalar) == 1:
            return "scale"
        return None
    if op in ("concat", "softmax", "gelu"):
        return op
    if op == "layer_norm":
        return "layer_norm" if ins[1] in params and ins[2] in params else None
    if op == "reduce_mean" or (op == "adaptive_avg_pool2d" and node.attrs["output_size"] == (1, 1)):
        return "mean"
    if op in PASSTHROUGH and len(node.outputs) == 1:
        return "pass"
    return None


def _nonnegative(node: Node) -> bool:
    if node.op in ("relu", "relu6", "softmax", "sigmoid"):
        return True
    low = node.attrs.get("min")
    return node.op == "clip" and isinstance(low, (int, float)) and low >= 0.0


@dataclass(frozen=True)
class Quantize:
    """Insert quantize / dequantize pairs (QDQ) for weights, biases and activations from calibrated ranges.

    Options: `bits` (weights: 8 or 4), `act_bits` (8), `per_channel`, `group_size` (0: none), `group_scale_bits`,
    `symmetric` (activations), `weight_method` (mse | minmax), `keep_float` (node names or op kinds),
    `weight_only`, `softmax_bits` (16 or 8), `accumulator_outputs`, `layer_bits` (per-layer weight bits).
    """

    name: ClassVar[str] = "quantize"
    bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    group_size: int = 0
    group_scale_bits: int = 8
    symmetric: bool = True
    weight_method: str = "mse"
    keep_float: tuple[str, ...] = field(default=())
    weight_only: bool = False
    softmax_bits: int = 16
    accumulator_outputs: bool = True
    # Per-layer weight bits (mixed precision): (node name, bits) pairs or a dict; a node's meta["bits"] (written
    # by the allocate-bits pass) counts too. Layers named in neither use `bits`.
    layer_bits: Any = ()

    def bits_for(self, node: Node) -> int:
        """The weight bits of one layer: `layer_bits`, then node.meta["bits"], then `bits`."""
        table = dict(self.layer_bits.items() if isinstance(self.layer_bits, dict) else self.layer_bits)
        if node.name in table:
            return int(table[node.name])
        meta = node.meta.get("bits")
        return int(meta) if isinstance(meta, int) and not isinstance(meta, bool) else self.bits

    @property
    def kept(self) -> tuple[str, ...]:
        """keep_float as a tuple (a comma-separated string, as the command line gives it, is split)."""
        if isinstance(self.keep_float, str):
            return tuple(k.strip() for k in self.keep_float.split(",") if k.strip())
        return tuple(self.keep_float)

    def validate(self, graph: Graph) -> None:
        if self.bits not in (2, 3, 4, 5, 6, 7, 8):
            raise OptionError(f"quantize: bits must be 8 or 4 (2..8), got {self.bits!r}")
        try:
            table = dict(self.layer_bits.items() if isinstance(self.layer_bits, dict) else self.layer_bits)
        except (TypeError, ValueError):
            raise OptionError(f"quantize: layer_bits must map layer names to bits, got {self.layer_bits!r}") from None
        bad = {k: b for k, b in table.items() if b not in (2, 3, 4, 5, 6, 7, 8) or isinstance(b, bool)}
        if bad:
            raise OptionError(f"quantize: layer_bits values must be 2..8, got {bad}")
        missing = sorted(set(table) - {n.name for n in graph.nodes})
        if missing:
            raise OptionError(f"quantize: layer_bits names {missing} match no node of the model")
        if self.act_bits not in (8, 16) or self.softmax_bits not in (8, 16):
            raise OptionError("quantize: act_bits and softmax_bits must be 8 or 16")
        if self.weight_method not in WEIGHT_METHODS:
            raise OptionError(f"quantize: weight_method must be one of {list(WEIGHT_METHODS)}, "
                              f"got {self.weight_method!r}")
        if not isinstance(self.group_size, int) or self.group_size < 0:
            raise OptionError(f"quantize: group_size must be a positive int or 0, got {self.group_size!r}")
        if not all(isinstance(k, str) for k in self.kept):
            raise OptionError("quantize: keep_float must be a list of node names or op kinds")
        known = {n.name for n in graph.nodes} | {n.op for n in graph.nodes}
        unknown = sorted(set(self.kept) - known)
        if unknown:
            raise OptionError(f"quantize: keep_float names {unknown} match no node name or op kind of the model")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        self.validate(graph)
        stats = ctx.options.get("quant.calibration")
        if not self.weight_only and stats is None and ctx.options.get("calibration") is not None:
            # calibrate did not run: observe min/max over the compile option's batches
            stats = calibrate_graph(graph, ctx.options["calibration"], symmetric=self.symmetric)
            ctx.options["quant.calibration"] = stats
        if not self.weight_only and stats is None:
            raise CalibrationError("quantize needs calibration statistics: run the calibrate pass first, "
                                   "or use weight_only=True")
        builder = _QDQBuilder(self, graph.copy(), {} if stats is None else stats.ranges)
        out = builder.build()
        ctx.options["quant.layers"] = builder.layers
        record_stats(ctx, self.name, {"layers": len(builder.layers), "qdq": len(builder.act)})
        return out


class _QDQBuilder:
    """Decides every value's quantization, then rebuilds the node list with QDQ pairs."""

    def __init__(self, opts: Quantize, g: Graph, ranges: dict[Value, tuple[float, float]]) -> None:
        self.o, self.g, self.ranges = opts, g, ranges
        self.params = g.params
        self.kinds: dict[Node, str] = {}
        self.fused: dict[Node, Node] = {}  # layer -> its fused activation
        self.absorbed: set[Node] = set()
        self.act: dict[Value, ActQuant] = {}
        self.acc_out: dict[Value, np.ndarray] = {}  # graph outputs kept as int32 accumulators
        self.weights: dict[tuple[Node, int], tuple[str, Any]] = {}  # (node, input slot) -> how to quantize
        self.layers: list[LayerInfo] = []
        self.nonneg: set[Value] = set()
        self.wide: set[Value] = set()
        self.int_weights: dict[tuple[Value, int, int | None, int | None], Value] = {}
        self.gnn = is_gnn_graph(g)  # message-passing graphs also get the GNN kinds (realize_gnn)

    # -- decisions ------------------------------------------------------------------------------------------------
    def _kind_of(self, node: Node) -> str | None:
        if node.name in self.o.kept or node.op in self.o.kept:
            return None
        kind = classify(node, self.params)
        return gnn_kind(node, self.g) if kind is None and self.gnn else kind

    def decide(self) -> None:
        users = self.g.users()
        outputs = set(self.g.outputs)
        for n in self.g.nodes:
            kind = self._kind_of(n)
            if kind is not None and not (self.o.weight_only and kind != "linear"):
                self.kinds[n] = kind
        for n, kind in self.kinds.items():
            if kind in ("linear", "matmul", "add") and n.output not in outputs:
                us = users.get(n.output, [])
                if len(us) == 1 and us[0].op in FUSABLE and self._kind_of(us[0]) is not None:
                    self.fused[n] = us[0]
                    self.absorbed.add(us[0])
        # Non-negative: graph inputs calibrated ≥ 0 (images), and outputs of relu-like ops through scale-keeping ops.
        self.nonneg.update(v for v in self.g.inputs if v in self.ranges and self.ranges[v][0] >= 0.0)
        for n in self.g.nodes:
            if _nonnegative(n) or (self.kinds.get(n) in ("pass", "mean") and n.inputs[0] in self.nonneg):
                self.nonneg.update(n.outputs)
        for n in reversed(self.g.nodes):  # softmax inputs, and the chain feeding them, get softmax_bits
            kind = self.kinds.get(n)
            if kind in ("softmax", "segment_softmax") or (kind in ("scale", "add", "pass") and n.output in self.wide):
                self.wide.update(v for v in n.inputs if v not in self.params and v.dtype in FLOAT_DTYPES)

    def _calibrated(self, v: Value) -> ActQuant:
        if v in self.params:
            data = self.params[v].astype(np.float64)
            lo, hi = float(data.min(initial=0.0)), float(data.max(initial=0.0))
        elif v in self.ranges:
            lo, hi = self.ranges[v]
        else:
            raise CalibrationError(f"no calibration range for value %{v.name}; run calibrate on this graph first")
        bits = self.o.softmax_bits if v in self.wide else self.o.act_bits
        aq = act_quant(lo, hi, bits, unsigned=v in self.nonneg and bits < 16, symmetric=self.o.symmetric)
        return ActQuant(float(np.float32(aq.scale)), aq.zero_point, aq.dtype)

    def _need(self, v: Value) -> ActQuant:
        if v not in self.act:
            self.act[v] = self._calibrated(v)
        return self.act[v]

    def plan(self) -> None:
        outputs = set(self.g.outputs)
        for n in self.g.nodes:
            kind = self.kinds.get(n)
            if kind is None or n in self.absorbed:
                continue
            if self.o.weight_only:
                self._plan_weight(n, None)
                continue
            acts = activation_inputs(n, kind) or [v for v in n.inputs if v.dtype in FLOAT_DTYPES
                                                  and v not in self.params]
            for v in acts:
                self._need(v)
            out = self.fused[n].output if n in self.fused else n.output
            if kind == "linear":
                x = self.act[n.inputs[0]]
                w = self._plan_weight(n, x)
                if self.o.accumulator_outputs and out in outputs and n not in self.fused and x.zero_point == 0 \
                        and w.group_scale is None:
                    self.acc_out[out] = self._acc_scale(n, x, w)
                else:
                    self.act[out] = self._calibrated(out)
                continue
            for i, v in enumerate(n.inputs):  # other float constants read by the op: per-tensor int params
                if v in self.params and v.dtype in FLOAT_DTYPES and kind in ("add", "concat", "pass", "matmul"):
                    self.weights[(n, i)] = ("act", self._need(v))
            fixed = output_act(n, kind, self.g, self.act) if self.gnn else None
            if kind in ("softmax", "segment_softmax"):
                self.act[out] = ActQuant(SOFTMAX_SCALE, 0, "u8")
            elif fixed is not None:
                self.act[out] = fixed
            elif kind == "pass" and n.inputs[0] in self.act:
                self.act[out] = self.act[n.inputs[0]]
            else:
                self.act[out] = self._calibrated(out)
            self._record(n, kind, None, out)

    def _plan_weight(self, n: Node, x: ActQuant | None) -> QuantizedWeight:
        wv = n.inputs[1]
        wdata = self.params[wv]
        axis = None
        if self.o.per_channel:
            axis = wv.type.rank - 1 if n.op == "matmul" else 0
        group = self.o.group_size if (self.o.group_size and n.op == "linear"
                                      and wdata.shape[1] % self.o.group_size == 0) else None
        qw = quantize_weight(wdata, self.o.bits_for(n), axis, self.o.weight_method, group, self.o.group_scale_bits)
        self.weights[(n, 1)] = ("weight", qw)
        if x is not None and len(n.inputs) == 3 and n.inputs[2] in self.params:
            self.weights[(n, 2)] = ("bias", (qw.scale.reshape(-1).astype(np.float64) * x.scale))
        out = self.fused[n].output if n in self.fused else n.output
        self._record(n, "linear", qw, out, x)
        return qw

    def _acc_scale(self, n: Node, x: ActQuant, w: QuantizedWeight) -> np.ndarray:
        s = w.scale.reshape(-1).astype(np.float64) * x.scale
        return s.astype(np.float32)

    def _record(self, n: Node, kind: str, w: QuantizedWeight | None, out: Value, x: ActQuant | None = None) -> None:
        if kind == "pass":
            return
        wbytes = wsq = 0.0
        if w is not None:
            ref = self.params[n.inputs[1]].astype(np.float64)
            wbytes = float(ref.size * self.params[n.inputs[1]].itemsize)
            err = float(np.sum((ref - w.dequantized().reshape(ref.shape)) ** 2))
            wsq = 10.0 * np.log10(max(float(np.sum(ref * ref)), 1e-300) / err) if err > 0 else float("inf")
        self.layers.append(LayerInfo(n.name or n.op, n.op, kind, w, int(wbytes), x, out, None,
                                     float(wsq) if w is not None else None))
        n.meta["quant"] = {"kind": kind, "weight_bits": None if w is None else w.bits,
                           "granularity": None if w is None else w.granularity}

    # -- rebuilding ---------------------------------------------------------------------------------------------
    def _param(self, array: np.ndarray, name: str) -> Value:
        return self.g.add_param(np.asarray(array), name)

    def _dq(self, q: Value, scale: np.ndarray, zp: np.ndarray, label: str, extra: tuple[Value, ...] = (),
            attrs: dict[str, Any] | None = None) -> tuple[Node, Value]:
        s = self._param(np.asarray(scale, np.float32), f"{label}.scale")
        z = self._param(np.asarray(zp, np.int32), f"{label}.zero_point")
        node = make_node("dequantize", [q, s, z, *extra], attrs or {}, name=label)
        return node, node.output

    def _qdq(self, v: Value, label: str) -> tuple[list[Node], Value, Value]:
        if v in self.acc_out:
            scale = self.acc_out[v]
            aq_dtype, zp, qp = "i32", np.zeros((), np.int32), QuantParams(tuple(float(s) for s in scale),
                                                                           (0,), 32, True, v.type.rank - 1)
        else:
            aq = self.act[v]
            scale, zp, aq_dtype = np.asarray(aq.scale, np.float32), np.asarray(aq.zero_point, np.int32), aq.dtype
            qp = QuantParams((aq.scale,), (aq.zero_point,), aq.bits, not aq.dtype.startswith("u"))
        s = self._param(np.asarray(scale, np.float32), f"{label}.scale")
        z = self._param(zp, f"{label}.zero_point")
        q = make_node("quantize", [v, s, z], {"dtype": aq_dtype}, name=label)
        q.output.type = TensorType(v.shape, aq_dtype, qp)
        dq = make_node("dequantize", [q.output, s, z], {}, name=label)
        return [q, dq], q.output, dq.output

    def _quantized_input(self, n: Node, i: int) -> tuple[list[Node], Value]:
        role, info = self.weights[(n, i)]
        v = n.inputs[i]
        label = f"{n.name or n.op}.{v.name}"
        if role == "weight":
            qw: QuantizedWeight = info
            key = (v, qw.bits, qw.axis, qw.group_size)
            if key not in self.int_weights:  # a weight shared by several layers is stored once
                wq = self._param(qw.q, f"{v.name}.q")
                wq.type = TensorType(wq.shape, qw.dtype)
                self.int_weights[key] = wq
            wq = self.int_weights[key]
            if qw.group_scale is not None:
                gs = self._param(qw.group_scale, f"{v.name}.group_scale")
                node, out = self._dq(wq, qw.scale, np.zeros((), np.int32), label, (gs,),
                                     {"group_size": qw.group_size, "axis": 1})
            else:
                node, out = self._dq(wq, qw.scale, np.zeros((), np.int32), label)
            return [node], out
        if role == "bias":
            scale = np.asarray(info, np.float64)
            bq = self._param(quantize_bias(self.params[v], scale), f"{v.name}.q")
            node, out = self._dq(bq, scale.astype(np.float32), np.zeros((), np.int32), label)
            return [node], out
        aq: ActQuant = info
        data = np.asarray(self.params[v], np.float64) / aq.scale
        q = clamp_to(np.rint(data).astype(np.int64) + aq.zero_point, aq.dtype)
        qv = self._param(q, f"{v.name}.q")
        qv.type = TensorType(qv.shape, aq.dtype)
        node, out = self._dq(qv, np.asarray(aq.scale), np.asarray(aq.zero_point), label)
        return [node], out

    def build(self) -> Graph:
        self.decide()
        self.plan()
        g = self.g
        nodes: list[Node] = []
        mapping: dict[Value, Value] = {}
        for v in g.inputs:
            if v in self.act:
                qdq, qv, dqv = self._qdq(v, v.name)
                nodes += qdq
                mapping[v] = dqv
        for n in g.nodes:
            inputs = []
            for i, v in enumerate(n.inputs):
                if (n, i) in self.weights:
                    extra, new = self._quantized_input(n, i)
                    nodes += extra
                    inputs.append(new)
                else:
                    inputs.append(mapping.get(v, v))
            n.inputs = tuple(inputs)
            nodes.append(n)
            for v in n.outputs:
                if v in self.act or v in self.acc_out:
                    qdq, qv, dqv = self._qdq(v, n.name or v.name)
                    nodes += qdq
                    mapping[v] = dqv
                    for layer in self.layers:
                        if layer.float_value is v:
                            layer.q_value = qv
        g.nodes = nodes
        g.outputs = [mapping.get(v, v) for v in g.outputs]
        used = {v for n in g.nodes for v in n.inputs} | set(g.outputs)
        g.params = {v: a for v, a in g.params.items() if v in used}
        return g
