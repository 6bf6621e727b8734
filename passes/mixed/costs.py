"""Per-layer costs of a bit-width choice: parameter bytes, BOPs and an analytic latency estimate.

The layers are the weighted ones the quantize pass classifies as "linear" (conv2d, linear, matmul with a constant
right operand). For weight bits b (activations are 8-bit in every integer target):

- bytes(b)   = ceil(n_w · b / 8) + 4 · n_scales — exactly `QuantizedWeight.nbytes`, so the report's total matches
- BOPs(b)    = MACs · b · b_a                       (HAWQV3: bit operations, b_a = 8)
- latency(b) = a roofline estimate, max(MACs · b / (8 · peak), bytes(b) / bandwidth) + launch overhead, per device
  (`analytic_latency_ms`). It is a plain function `(layer, bits) -> ms`, so a learned cost model plugs in later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
        layers.append(MixedLayer(node.name or node.op, node.op, len(layers), wv.name, int(w.size),
                                 int(w.shape[axis]) if per_channel else 1, _macs(node), int(w.nbytes)))
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


@dataclass
class CostTable:
    """Costs of every (layer, candidate bits): `size[i][b]` bytes, `bops[i][b]`, `latency[i][b]` ms."""

    layers: list[MixedLayer]
    bits: tuple[int, ...]
    size: list[dict[int, int]]
    bops: list[dict[int, int]]
    latency: list[dict[int, float]]

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


def cost_table(layers: list[MixedLayer], bits: tuple[int, ...], latency: LatencyFn | None = None) -> CostTable:
    """Evaluate the three costs of every layer at every candidate width."""
    lat = latency or analytic_latency("cpu")
    return CostTable(layers, tuple(bits), [{b: layer.bytes(b) for b in bits} for layer in layers],
                     [{b: layer.bops(b) for b in bits} for layer in layers],
                     [{b: float(lat(layer, b)) for b in bits} for layer in layers])
