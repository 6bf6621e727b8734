"""The per-layer quantization report: bits, scale granularity, output SQNR against the float graph, size; totals;
whether the graph is integer-only.

SQNR (dB) = 10·log10(Σ y² / Σ (y − ŷ)²) of a layer's output: y from the float graph, ŷ the dequantized integer
output of the quantized graph, summed over the calibration batches (errors of earlier layers included, as a user
sees them). Without calibration data (weight-only) the SQNR is that of the weights themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qcc.interpreter import interpret_all
from qcc.ir.graph import Graph, Value
from qcc.passes.quant.check_integer_only import IntegerOnlyReport
from qcc.passes.quant.quantize import LayerInfo


@dataclass
class LayerRow:
    """One report row."""

    name: str
    op: str
    bits: str
    granularity: str
    sqnr_db: float | None
    bytes: int
    float_bytes: int


@dataclass
class QuantReport:
    """What quantization did to each layer, the totals, and the integer-only verdict (`text()` renders it)."""

    rows: list[LayerRow]
    mode: str
    integer_only: bool
    weight_only: bool
    check: IntegerOnlyReport
    calibration_method: str | None = None
    weight_method: str = "mse"
    nonlinear: str = "ibert"
    kept_float: list[str] = field(default_factory=list)
    sqnr_kind: str = "output"

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def float_total_bytes(self) -> int:
        return sum(r.float_bytes for r in self.rows)

    def sqnr(self, name: str) -> float | None:
        for r in self.rows:
            if r.name == name:
                return r.sqnr_db
        raise KeyError(name)

    def text(self) -> str:
        lines = [f"quantization: {self.mode}"]
        calib = f"calibration {self.calibration_method}" if self.calibration_method else "no calibration data"
        lines.append(f"  {calib}; weights {self.weight_method}; nonlinear {self.nonlinear}")
        head = f"SQNR dB ({self.sqnr_kind})"
        lines.append(f"  {'layer':<28} {'op':<12} {'bits':<10} {'granularity':<16} {head:>18} {'bytes':>10}")
        for r in self.rows:
            db = "-" if r.sqnr_db is None else ("inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}")
            lines.append(f"  {r.name[:28]:<28} {r.op:<12} {r.bits:<10} {r.granularity:<16} {db:>18} {r.bytes:>10}")
        ratio = self.float_total_bytes / self.total_bytes if self.total_bytes else 1.0
        lines.append(f"  weights: {self.total_bytes} bytes quantized vs {self.float_total_bytes} float "
                     f"({ratio:.2f}x smaller)")
        if self.kept_float:
            lines.append(f"  kept in float: {', '.join(self.kept_float)}")
        lines.append("  " + self.check.text().replace("\n", "\n  "))
        return "\n".join(lines)

    __str__ = text


def dequantize_value(q: np.ndarray, v: Value) -> np.ndarray:
    """Real values of integer array `q` from its value's QuantParams."""
    qp = v.type.quant
    if qp is None:
        raise ValueError(f"value %{v.name} carries no quantization parameters")
    scale = np.asarray(qp.scale, np.float64)
    zp = np.asarray(qp.zero_point, np.float64)
    if qp.axis is not None:
        shape = [1] * q.ndim
        shape[qp.axis] = -1
        scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(-1)[0]
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(-1)[0]
    return (q.astype(np.float64) - zp.reshape(-1)[0] if np.size(zp) == 1 else q.astype(np.float64) - zp) * scale


def sqnr_db(ref_power: float, err_power: float) -> float:
    if err_power <= 0.0:
        return math.inf
    if ref_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(ref_power / err_power)


def layer_sqnr(float_graph: Graph, quant_graph: Graph, layers: Sequence[LayerInfo],
               feeds: Sequence[list[np.ndarray]], max_batches: int = 16) -> dict[int, float]:
    """Output SQNR (dB) of each layer (by index into `layers`) over up to `max_batches` feeds."""
    sums = {i: [0.0, 0.0] for i, layer in enumerate(layers) if layer.float_value is not None
            and layer.q_value is not None}
    for feed in list(feeds)[:max_batches]:
        with np.errstate(all="ignore"):
            fenv = interpret_all(float_graph, feed)
            qenv = interpret_all(quant_graph, feed)
        for i in list(sums):
            layer = layers[i]
            assert layer.float_value is not None and layer.q_value is not None
            if layer.float_value not in fenv or layer.q_value not in qenv:
                del sums[i]
                continue
            ref = fenv[layer.float_value].astype(np.float64)
            got = dequantize_value(qenv[layer.q_value], layer.q_value)
            sums[i][0] += float(np.sum(ref * ref))
            sums[i][1] += float(np.sum((ref - got) ** 2))
    return {i: sqnr_db(p, e) for i, (p, e) in sums.items()}


def build_rows(layers: Sequence[LayerInfo], sqnr: dict[int, float | None], act_bits: int | None) -> list[LayerRow]:
    rows = []
    for i, layer in enumerate(layers):
        w = layer.weight
        if w is None:
            bits = f"A{act_bits}" if act_bits else "float"
            gran = "per-tensor" if act_bits else "-"
        else:
            bits = f"W{w.bits}A{act_bits}" if act_bits else f"W{w.bits} (weight-only)"
            gran = w.granularity
        rows.append(LayerRow(layer.name, layer.op, bits, gran, sqnr.get(i), w.nbytes if w else 0,
                             layer.float_bytes))
    return rows
