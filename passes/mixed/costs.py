"""Per-layer costs of a bit-width choice: parameter bytes, BOPs and an analytic latency estimate.

The layers are the weighted ones the quantize pass classifies as "linear" (conv2d, linear, matmul with a constant
right operand). For weight bits b (activations are 8-bit in every integer target):

- bytes(b)   = ceil(n_w · b / 8) + 4 · n_scales — exactly `QuantizedWeight.nbytes`, so the report's total matches
- BOPs(b)    = MACs · b · b_a                       (HAWQV3: bit operations, b_a = 8)
- latency(b) = `CostModel.predict` of the layer's integer kernel (qconv2d / qlinear + requantize, u8 activations,
  b-bit weights; `qcc.costmodel.describe.int_kernel`) where a cost model covers the target and the layer
  (`latency_term`: the active model, i.e. `qcc.compile(..., cost_model=...)` or the shipped CPU model), else a
  roofline estimate, max(MACs · b / (8 · peak), bytes(b) / bandwidth) + launch overhead, per device
  (`analytic_latency`). Either is a plain function `(layer, bits) -> ms`; the cost table names its source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.ir.graph import Graph, Node
from qcc.passes.quant.quantize import classify

ACT_BITS = 8

# Roofline constants of the analytic latency model: int8 MAC/s, bytes/s, seconds of overhead per layer.
DEVICE_PEAKS: dict[str, tuple[float, float, float]] = {
    "cpu": (2.0e10, 1.0e10, 2.0e-6),
    "cuda": (2.0e13, 1.0e12, 5.0e-6),
    "accel": (1.0e12, 5.0e10, 1.0e-6),
}


@dataclass(frozen=True)
class MixedLayer:
    """One weighted layer whose weight bits the allocator chooses."""

    name: str
    op: str
    index: int          # position among the graph's weighted layers (topological)
    weight: str         # name of the weight value (layers reading the same weight are tied)
    n_weights: int
    n_scales: int
    macs: int
    float_bytes: int
    x_shape: tuple[int, ...] = ()     # the layer's input and weight shapes and conv attributes, for the
    w_shape: tuple[int, ...] = ()     # kernel description a cost model reads
    attrs: tuple[tuple[str, Any], ...] = ()

    def bytes(self, bits: int) -> int:
        """Stored bytes of the quantized weight at `bits` (data plus one float32 scale per channel)."""
        return (self.n_weights * bits + 7) // 8 + 4 * self.n_scales

    def bops(self, bits: int, act_bits: int = ACT_BITS) -> int:
        """Bit operations: MACs × weight bits × activation bits."""
        return self.macs * bits * act_bits


LatencyFn = Callable[[MixedLayer, int], float]


def _macs(node: Node) -> int:
    out = node.outputs[0].shape
    w = node.inputs[1].shape
    if node.op == "conv2d":  # every output element reads cin/groups × kh × kw weights
        return int(np.prod(out)) * int(np.prod(w[1:]))
    return int(np.prod(out)) * int(w[-2] if node.op == "matmul" else w[-1])


def find_layers(graph: Graph, per_channel: bool = True) -> list[MixedLayer]:
    """The weighted layers of a float graph, in topological order."""
    layers: list[MixedLayer] = []
    for node in graph.nodes:
        if classify(node, graph.params) != "linear":
            continue
        wv = node.inputs[1]
        w = graph.params[wv]
        axis = wv.type.rank - 1 if node.op == "matmul" else 0
        attrs = tuple((k, node.attrs[k]) for k in ("stride", "padding", "dilation", "groups") if k in node.attrs)
        layers.append(MixedLayer(node.name or node.op, node.op, len(layers), wv.name, int(w.size),
                                 int(w.shape[axis]) if per_channel else 1, _macs(node), int(w.nbytes),
                                 tuple(node.inputs[0].shape), tuple(w.shape), attrs))
    return layers


def analytic_latency(device: str = "cpu") -> LatencyFn:
    """A roofline latency estimate (ms) for `device`; low-bit weights help compute and memory proportionally."""
    try:
        peak, bandwidth, overhead = DEVICE_PEAKS[device]
    except KeyError:
        raise ValueError(f"no latency constants for device {device!r}; known: {sorted(DEVICE_PEAKS)}") from None

    def latency_ms(layer: MixedLayer, bits: int) -> float:
        compute = layer.macs * bits / (ACT_BITS * peak)
        memory = layer.bytes(bits) / bandwidth
        return 1e3 * (max(compute, memory) + overhead)

    return latency_ms


def layer_kernel(layer: MixedLayer, bits: int) -> dict[str, Any] | None:
    """The integer kernel dict (qcc.costmodel.features form) of `layer` at `bits`-bit weights and 8-bit
    activations, as the quantized build runs it: conv2d -> qconv2d, linear and matmul with a 2-d weight -> qlinear,
    each with its requantize epilogue. None when there is no such kernel (a batched weight, unknown shapes)."""
    from qcc.costmodel.describe import int_kernel

    if not layer.x_shape or not layer.w_shape:
        return None
    if layer.op == "conv2d" and len(layer.w_shape) == 4:
        attrs = dict(layer.attrs)  # the VNNI template takes ungrouped convolutions only
        return int_kernel("qconv2d", layer.x_shape, layer.w_shape, attrs, w_bits=bits,
                          impl="generic" if int(attrs.get("groups", 1)) != 1 else "vnni")
    if layer.op == "linear" and len(layer.w_shape) == 2:
        return int_kernel("qlinear", layer.x_shape, layer.w_shape, w_bits=bits)
    if layer.op == "matmul" and len(layer.w_shape) == 2:  # x [.., K] · w [K, N]: the kernel reads w as [N, K]
        return int_kernel("qlinear", layer.x_shape, layer.w_shape[::-1], w_bits=bits)
    return None


def model_latency(model: Any, fallback: LatencyFn) -> LatencyFn:
    """Latency (ms) from `model.predict` on the layer's integer kernel (`layer_kernel`) at each width; `fallback`
    for a layer without one. Predictions are cached per (layer, bits)."""
    cache: dict[tuple[MixedLayer, int], float] = {}

    def latency_ms(layer: MixedLayer, bits: int) -> float:
        if (layer, bits) not in cache:
            k = layer_kernel(layer, bits)
            if k is None:
                cache[layer, bits] = float(fallback(layer, bits))
            else:
                secs = float(np.asarray(model.predict([k]), dtype=np.float64)[0])
                if not math.isfinite(secs) or secs <= 0:
                    raise ValueError(f"cost model predicted {secs!r} s for layer {layer.name!r} at {bits} bits")
                cache[layer, bits] = 1e3 * secs
        return cache[layer, bits]

    return latency_ms


def covers_integer(model: Any) -> bool:
    """Whether a cost model can predict integer kernels: a learned model trained with some (its meta["kinds"]
    names qconv2d / qlinear; a model file without that record is assumed to), or any other object with
    `predict` except the analytic `AnalyticCostModel` (its template roofline is not this module's)."""
    from qcc.costmodel.model import AnalyticCostModel

    if model is None or isinstance(model, AnalyticCostModel) or not callable(getattr(model, "predict", None)):
        return False
    kinds = (getattr(model, "meta", None) or {}).get("kinds")
    return kinds is None or bool({"qconv2d", "qlinear"} & set(kinds))


def latency_term(device: str = "cpu", model: Any = None) -> tuple[LatencyFn, str]:
    """The latency function of the allocation ILP and its source, for `device`: `model` (a CostModel, a model
    path; None: the active one, `qcc.costmodel.active_model()`; "analytic" / "rule": none) when it covers
    integer kernels and the device is the CPU it was trained for, else the analytic roofline."""
    from qcc.costmodel.model import RULE, active_model, load_model

    fallback = analytic_latency(device)
    if device != "cpu" or (isinstance(model, str) and model in ("analytic", RULE)):
        return fallback, f"analytic roofline ({device})"
    m = active_model() if model is None else load_model(model)
    if not covers_integer(m):
        return fallback, f"analytic roofline ({device}; no cost model covers integer kernels)"
    meta = getattr(m, "meta", None) or {}
    name = os.path.basename(str(meta["path"])) if meta.get("path") else type(m).__name__
    return model_latency(m, fallback), f"cost model {name}"


@dataclass
class CostTable:
    """Costs of every (layer, candidate bits): `size[i][b]` bytes, `bops[i][b]`, `latency[i][b]` ms."""

    layers: list[MixedLayer]
    bits: tuple[int, ...]
    size: list[dict[int, int]]
    bops: list[dict[int, int]]
    latency: list[dict[int, float]]
    latency_source: str = field(default="analytic roofline (cpu)")

    def totals(self, choice: dict[str, int]) -> dict[str, float]:
        """size_bytes / bops / latency_ms of an assignment {layer name: bits}."""
        idx = [self.bits.index(choice[layer.name]) for layer in self.layers]
        bs = [self.bits[k] for k in idx]
        return {"size_bytes": float(sum(s[b] for s, b in zip(self.size, bs, strict=True))),
                "bops": float(sum(s[b] for s, b in zip(self.bops, bs, strict=True))),
                "latency_ms": math.fsum(s[b] for s, b in zip(self.latency, bs, strict=True))}

    def uniform(self, bits: int) -> dict[str, float]:
        """Totals with every layer at `bits`."""
        return self.totals({layer.name: bits for layer in self.layers})


def cost_table(layers: list[MixedLayer], bits: tuple[int, ...], latency: LatencyFn | None = None,
               latency_source: str | None = None) -> CostTable:
    """Evaluate the three costs of every layer at every candidate width (`latency_source` names the latency
    function for the report)."""
    lat = latency or analytic_latency("cpu")
    source = latency_source or ("analytic roofline (cpu)" if latency is None else "custom")
    return CostTable(layers, tuple(bits), [{b: layer.bytes(b) for b in bits} for layer in layers],
                     [{b: layer.bops(b) for b in bits} for layer in layers],
                     [{b: float(lat(layer, b)) for b in bits} for layer in layers], source)
