"""Quantization of message-passing (GNN) graphs: the extra kinds `quantize` assigns, and how realize-integer
turns each into integer ops. Enabled only on graphs with graph operators (`has_graph_ops`), so other models
quantize exactly as before.

Kinds (after `gnn-quant-prep`, which counts degrees in int32, turns attention-score reductions into linears and
collapses each segment softmax into one op):

- ``segment`` — a segment reduction of an activation onto vertices (``index_add`` / ``index_reduce`` /
  ``scatter_elements`` matched as `SegmentReduce`, starting from zeros): ``sum`` adds the centred integers into
  int32 (``index_add``) then requantizes dyadically to the output scale; ``max`` / ``min`` are exact
  (``index_reduce`` on the integers, an empty segment giving the zero point, i.e. real 0) and keep the input's
  quantization; ``mean`` is the int32 sum divided by the per-vertex count (``index_reduce(mean)`` on int32,
  floor division), then requantized.
- ``segment_softmax`` — ``qsegment_softmax`` (I-BERT i-exp after the exact segment max; u8 at 2^−8).
- ``mul`` — product of two activations (GCN's degree scaling, GAT's ``α · h_src``): centred int32 product at
  S_a·S_b, then a dyadic requantize.
- ``count`` — ``cast`` of an integer tensor to float (a degree): kept exact as int32 at scale 1.
- ``lut`` — a unary elementwise function (leaky_relu, elu, exp, sigmoid, tanh, rsqrt, ...) of an 8-bit
  activation: a 2^8-entry table of the exact function rounded to the output quantization, read with ``gather``.
  ``rsqrt`` of an exact count is ``irsqrt`` instead (1/√d at 2^−15, then requantized).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops import evaluate
from qcc.ir.ops.quant import INT_RANGES, clamp_to
from qcc.ir.types import FLOAT_DTYPES, INT_DTYPES, numpy_dtype
from qcc.passes.gnn.graph_ops import has_graph_ops, match_segment_reduce
from qcc.passes.quant._realize_base import Emitter, QTensor, Target, to_target
from qcc.passes.quant.realize_nonlinear import EXP_A, EXP_B, EXP_C, EXP_CLIP, _exp_k
from qcc.passes.quant.weights import ActQuant

GNN_KINDS = ("segment", "segment_softmax", "mul", "count", "lut")
LUT_OPS = frozenset({"leaky_relu", "elu", "exp", "sigmoid", "tanh", "rsqrt", "sqrt", "silu", "softplus", "erf",
                     "log", "reciprocal", "neg", "abs"})
LUT_INPUTS = frozenset({"i8", "u8", "i4", "u4"})
RSQRT_BITS = 15
MEAN_FRAC_BITS = 8
NARROW = frozenset({"i4", "u4", "i8", "u8", "i16"})


def is_gnn_graph(graph: Graph) -> bool:
    """Whether the GNN kinds apply (the graph has an edge gather and a segment reduction)."""
    return has_graph_ops(graph)


def gnn_kind(node: Node, graph: Graph, consts: frozenset[Value] = frozenset()) -> str | None:
    """The GNN quantization kind of a float node (see the module docstring), or None."""
    if not node.outputs or any(v.dtype not in FLOAT_DTYPES for v in node.outputs):
        return None
    params = graph.params
    if node.op == "segment_softmax":
        return "segment_softmax"
    if node.op == "cast" and node.inputs[0].dtype in INT_DTYPES:
        return "count"
    if node.op == "mul" and len(node.inputs) == 2 and not any(v in params or v in consts for v in node.inputs):
        return "mul"
    if node.op in LUT_OPS and len(node.inputs) == 1 and node.inputs[0] not in params:
        return "lut"
    if node.op in ("index_add", "index_reduce", "scatter_elements"):
        seg = match_segment_reduce(node, graph)
        if seg is not None and seg.base is None and seg.src not in params and seg.src not in consts:
            return "segment"
    return None


def activation_inputs(node: Node, kind: str) -> list[Value] | None:
    """The inputs `quantize` must quantize for a GNN kind (None: the default, every float non-constant input)."""
    if kind == "segment":
        return [node.inputs[2]]
    return None


def _fixed_point(a: ActQuant | None) -> bool:
    """An int32 fraction of magnitude ≤ 1 at scale 2^−15 (1/√d of irsqrt, or a product of two): |q| ≤ 2^15, so its
    product with an 8/16-bit integer or another such fraction fits int32, and so does the requantize's x·b."""
    return a is not None and a.dtype == "i32" and a.zero_point == 0 and a.scale == 2.0**-RSQRT_BITS


def output_act(node: Node, kind: str, graph: Graph, acts: dict[Value, ActQuant]) -> ActQuant | None:
    """A fixed output quantization for a GNN kind (None: calibrate it): exact counts are int32 at scale 1;
    1/√count, and a product of two such fractions, are int32 at 2^−15 (a hub's 1/√d would round to 0 at 8 bits);
    a segment max / min keeps its input's quantization (the result is one of the inputs, or real 0)."""
    if kind == "count":
        return ActQuant(1.0, 0, "i32")
    ins = [acts.get(v) for v in node.inputs]
    if kind == "lut" and node.op == "rsqrt" and ins[0] == ActQuant(1.0, 0, "i32"):
        return ActQuant(2.0**-RSQRT_BITS, 0, "i32")
    if kind == "mul" and len(ins) == 2 and all(_fixed_point(a) for a in ins):
        return ActQuant(2.0**-RSQRT_BITS, 0, "i32")
    if kind == "segment":
        seg = match_segment_reduce(node, graph)
        if seg is not None and seg.reduce in ("max", "min") and seg.src in acts:
            return acts[seg.src]
    return None


def _widen(em: Emitter, x: QTensor, dtype: str = "i32") -> Value:
    """x − zero_point as `dtype` (int32 or int64; exact)."""
    if x.zp == 0:
        return x.value if x.dtype == dtype else em.emit("cast", [x.value], {"dtype": dtype})
    centred = em.requantize(x.value, np.asarray(1.0), (), Target(x.value, np.asarray(1.0), 0, "i32"), x.zp)
    return centred if dtype == "i32" else em.emit("cast", [centred], {"dtype": dtype})


def _segment(r: object, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
    g: Graph = r.g  # type: ignore[attr-defined]
    seg = match_segment_reduce(n, g)
    if seg is None or seg.base is not None:
        return None
    x = ins[list(n.inputs).index(seg.src)]
    if x is None or not x.per_tensor or x.dtype not in NARROW:
        return None
    shape = n.outputs[0].shape
    if seg.reduce in ("max", "min"):
        if x.dtype not in ("i8", "u8", "i16"):
            return None
        base = em.const(np.full(shape, x.zp, numpy_dtype(x.dtype)), "empty")
        out = em.emit("index_reduce", [base, seg.index, x.value],
                      {"axis": 0, "reduce": "amax" if seg.reduce == "max" else "amin", "include_self": False})
        return to_target(em, out, x.s, x.zp, target)
    zeros = em.const(np.zeros(shape, np.int32), "zeros")
    if seg.reduce == "mean":  # 8 extra fraction bits before the floor division, so the requantize rounds
        frac = em.emit("mul", [_widen(em, x), em.const(np.asarray(1 << MEAN_FRAC_BITS, np.int32), "frac")])
        acc = em.emit("index_reduce", [zeros, seg.index, frac], {"axis": 0, "reduce": "mean", "include_self": False})
        return to_target(em, acc, x.s / (1 << MEAN_FRAC_BITS), 0, target)
    acc = em.emit("index_add", [zeros, seg.index, _widen(em, x)], {"axis": 0})
    return to_target(em, acc, x.s, 0, target)


def _segment_softmax(r: object, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
    x = ins[0]
    if x is None or not x.per_tensor:
        return None
    s = x.s
    ln2, b, c = round(float(np.log(2.0)) / s), round(EXP_B / s), round(EXP_C / (EXP_A * s * s))
    if ln2 < 1:
        return None
    out = em.emit("qsegment_softmax", [x.value, n.inputs[1]], {
        "num_segments": n.attrs["num_segments"], "ln2": ln2, "b": b, "c": c, "n": EXP_CLIP, "k": _exp_k(b * b + c)})
    return to_target(em, out, 2.0**-8, 0, target)


def _mul(r: object, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
    a, b = ins
    if a is None or b is None or not (a.per_tensor and b.per_tensor) or target.scale.size != 1:
        return None
    if not all(x.dtype in NARROW or (x.dtype == "i32" and x.zp == 0 and x.s == 2.0**-RSQRT_BITS) for x in (a, b)):
        return None
    # |a|, |b| ≤ 2^15 (8/16-bit values, or 2^−15 fractions): the product fits int32
    wa = _widen(em, a)
    wb = wa if b.value is a.value and b.zp == a.zp else _widen(em, b)  # x·x: one widened copy
    prod = em.emit("mul", [wa, wb])
    return to_target(em, prod, a.s * b.s, 0, target)


def _count(r: object, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
    if target.dtype != "i32" or target.zero_point != 0 or float(target.scale.reshape(-1)[0]) != 1.0:
        return None
    return em.emit("cast", [n.inputs[0]], {"dtype": "i32"})


def _lut(r: object, em: Emitter, n: Node, ins: list[QTensor | None], target: Target) -> Value | None:
    x = ins[0]
    if x is None or not x.per_tensor or target.scale.size != 1:
        return None
    s_y = float(target.scale.reshape(-1)[0])
    if n.op == "rsqrt" and x.dtype == "i32" and x.zp == 0 and x.s == 1.0:
        out = em.emit("irsqrt", [x.value], {"bits": RSQRT_BITS})
        return to_target(em, out, 2.0**-RSQRT_BITS, 0, target)
    if x.dtype not in LUT_INPUTS:
        return None
    lo, hi = INT_RANGES[x.dtype]
    real = (np.arange(lo, hi + 1, dtype=np.int64) - x.zp) * x.s
    with np.errstate(all="ignore"):
        fx = evaluate(n.op, [real.astype(np.float32)], dict(n.attrs))[0].astype(np.float64)
    if not np.all(np.isfinite(fx)):
        return None
    t_lo, t_hi = INT_RANGES[target.dtype]
    q = np.clip(np.rint(fx / s_y) + target.zero_point, t_lo if target.lo is None else target.lo,
                t_hi if target.hi is None else target.hi).astype(np.int64)
    table = em.const(clamp_to(q, target.dtype), "table")
    idx = em.requantize(x.value, np.asarray(1.0), (), Target(x.value, np.asarray(1.0), 0, "i32"), lo)
    return em.emit("gather", [table, idx], {"axis": 0})


RULES: dict[str, Callable[[object, Emitter, Node, list[QTensor | None], Target], Value | None]] = {
    "segment": _segment, "segment_softmax": _segment_softmax, "mul": _mul, "count": _count, "lut": _lut,
}
