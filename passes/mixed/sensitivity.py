"""Per-layer sensitivity: the output noise of the model with only one layer's weights quantized at b bits.

For each weighted layer i and candidate width b, layer i's weight is replaced by its quantized-dequantized self
(`quantize_weight`: the same clip and granularity as the quantize pass uses in the real build), every other layer
left in float; the reference interpreter runs both graphs on the calibration batches. The sensitivity is the
noise-to-signal ratio of the model outputs

    Ω_i(b) = Σ (y − ŷ)² / Σ y²          (SQNR_i(b) = −10·log10 Ω_i(b) dB)

which is additive under the usual independent-noise assumption, so Σ_i Ω_i(b_i) predicts the mixed model's output
noise (`predicted_sqnr_db`). Activations are 8-bit in every candidate, so only the weight width is scored. Works
for any frontend (no gradients); the HAWQ Hessian metric is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcc.interpreter import interpret
from qcc.ir.graph import Graph
from qcc.passes.mixed.costs import MixedLayer
from qcc.passes.quant.weights import quantize_weight


@dataclass
class Sensitivity:
    """Ω[i][b] (noise-to-signal ratio) and the matching SQNR in dB, per layer and candidate width."""

    layers: list[MixedLayer]
    bits: tuple[int, ...]
    nsr: list[dict[int, float]]

    def sqnr_db(self, i: int, bits: int) -> float:
        return nsr_to_db(self.nsr[i][bits])


def nsr_to_db(nsr: float) -> float:
    """Noise-to-signal ratio → SQNR in dB (inf for no noise)."""
    return math.inf if nsr <= 0 else -10.0 * math.log10(nsr)


def predicted_sqnr_db(sens: Sensitivity, choice: dict[str, int]) -> float:
    """The model-output SQNR the additive noise model predicts for an assignment {layer: bits}."""
    return nsr_to_db(math.fsum(sens.nsr[i][choice[layer.name]] for i, layer in enumerate(sens.layers)))


def _outputs(graph: Graph, feeds: Sequence[list[np.ndarray]]) -> list[list[np.ndarray]]:
    with np.errstate(all="ignore"):
        return [[np.asarray(o, np.float64) for o in interpret(graph, list(feed))] for feed in feeds]


def measure(graph: Graph, layers: Sequence[MixedLayer], bits: Sequence[int], feeds: Sequence[list[np.ndarray]],
            per_channel: bool = True, weight_method: str = "mse") -> Sensitivity:
    """Ω_i(b) for every layer and width, on the float graph `graph` (BatchNorm folded) over `feeds`."""
    ref = _outputs(graph, feeds)
    power = math.fsum(float(np.sum(o * o)) for outs in ref for o in outs)
    nodes = {n.name: n for n in graph.nodes}
    table: list[dict[int, float]] = []
    for layer in layers:
        wv = nodes[layer.name].inputs[1]
        w = graph.params[wv]
        axis = (wv.type.rank - 1 if layer.op == "matmul" else 0) if per_channel else None
        row: dict[int, float] = {}
        for b in bits:
            q = graph.copy()
            q.params[wv] = quantize_weight(w, b, axis, weight_method).dequantized().reshape(w.shape).astype(w.dtype)
            got = _outputs(q, feeds)
            err = math.fsum(float(np.sum((r - g) ** 2)) for rs, gs in zip(ref, got, strict=True)
                            for r, g in zip(rs, gs, strict=True))
            row[b] = err / power if power > 0 else (0.0 if err == 0 else math.inf)
        table.append(row)
    return Sensitivity(list(layers), tuple(bits), table)
