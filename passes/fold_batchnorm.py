"""fold-batchnorm: fold inference-mode batch_norm into the conv2d / linear before it, or into mul + add.

With `s = γ / √(σ² + ε)` per channel, `batch_norm(y) = y·s + (β − μ·s)`. When `y = conv2d(x, W, b)` (any
groups, with or without bias) and the batch_norm is the only user of `y`, the pair is one convolution with

    W'[o] = W[o] · s[o]          b'[o] = (b[o] − μ[o]) · s[o] + β[o]

because output channel `o` of a convolution reads only filter `W[o]` (for every `groups`). `linear` followed by a
batch_norm over a 2-D `[N, C]` output folds alike (`W'[o, :] = W[o, :] · s[o]`). The folded weights are
computed in float64 and stored in the weight's dtype. A batch_norm that cannot fold becomes `x * scale + shift`
with per-channel constants shaped `[C, 1, ...]` to broadcast over the channel axis (computed with ops when its
statistics are not constants), so no float batch_norm survives this pass. Rules run through the rewrite engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops import OPS
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import Const, Pat, RewriteBuilder, Rules, Var, rewrite
from qcc.ir.types import FLOAT_DTYPES, numpy_dtype
from qcc.passes._stats import record_stats

_BN_STATS = (Const("gamma"), Const("beta"), Const("mean"), Const("var"))


def _only_user(b: RewriteBuilder, v: Value, user: Node) -> bool:
    """True when `user` is the only reader of `v` and `v` is not a graph output.

    Nodes already replaced in the current sweep are still listed in `b.graph.nodes`, so this can only
    over-count readers, which declines the fold (conservative, never wrong). With these rules it does not happen:
    the only nodes they replace are batch_norms, and a replaced batch_norm that read `v` was a second reader anyway.
    """
    if v in b.graph.outputs:
        return False
    return all(n is user for n in b.graph.nodes if v in n.inputs)


def _bn_scale_shift(b: RewriteBuilder, bn: Node, gamma: Value, beta: Value, mean: Value,
                    var: Value) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 (scale, shift) of a batch_norm with constant statistics."""
    g, bt, mu, vr = (np.asarray(b.value_of(v), np.float64) for v in (gamma, beta, mean, var))
    scale = g / np.sqrt(vr + _eps(bn))
    return scale, bt - mu * scale


def _eps(bn: Node) -> float:
    return float(bn.attrs.get("eps", OPS["batch_norm"].attrs["eps"]))


def _bias_name(weight: Value) -> str:
    """Name of a folded bias made for a producer that had none: "conv1.weight" gives "conv1.bias.folded"."""
    return f"{weight.name.removesuffix('.weight')}.bias.folded"


def _fold_into(b: RewriteBuilder, producer: Node, bn: Node, x: Value, w: Value, bias: Value | None,
               gamma: Value, beta: Value, mean: Value, var: Value) -> Value | None:
    """Emit `producer` (conv2d or linear) with weights and bias scaled per output channel (axis 0 of w)."""
    y = producer.output
    if y.dtype not in FLOAT_DTYPES or w.dtype not in FLOAT_DTYPES or not _only_user(b, y, bn):
        return None
    scale, shift = _bn_scale_shift(b, bn, gamma, beta, mean, var)
    wdata = np.asarray(b.value_of(w))
    bdata = np.zeros(scale.shape) if bias is None else np.asarray(b.value_of(bias), np.float64)
    new_w = (wdata.astype(np.float64) * scale.reshape((-1,) + (1,) * (wdata.ndim - 1))).astype(wdata.dtype)
    new_b = (bdata * scale + shift).astype(wdata.dtype)  # (b − μ)·s + β
    w_new = b.const(new_w, f"{w.name}.folded")
    b_new = b.const(new_b, f"{bias.name}.folded" if bias is not None else _bias_name(w))
    node = b.emit_node(producer.op, [x, w_new, b_new], producer.attrs)
    node.name = producer.name or bn.name  # the folded node stands for the producer in reports
    node.meta.update(producer.meta)
    return node.output


def fold_conv_bn(b: RewriteBuilder, bn: Node, conv: Node, x: Value, w: Value, gamma: Value, beta: Value,
                 mean: Value, var: Value, bias: Value | None = None) -> Value | None:
    """batch_norm(conv2d(x, W, b?)) → conv2d(x, W', b') when the conv output feeds only the batch_norm."""
    return _fold_into(b, conv, bn, x, w, bias, gamma, beta, mean, var)


def fold_linear_bn(b: RewriteBuilder, bn: Node, linear: Node, x: Value, w: Value, gamma: Value, beta: Value,
                   mean: Value, var: Value, bias: Value | None = None) -> Value | None:
    """batch_norm(linear(x, W, b?)) over a 2-D [N, C] output → linear(x, W', b')."""
    if linear.output.type.rank != 2:
        return None  # on [N, L, C] the batch_norm channel axis is L, not the linear's output features
    return _fold_into(b, linear, bn, x, w, bias, gamma, beta, mean, var)


def lower_batchnorm(b: RewriteBuilder, bn: Node, x: Value, gamma: Value, beta: Value, mean: Value,
                    var: Value) -> Value | None:
    """A batch_norm that did not fold → x * scale + shift with [C, 1, ...] per-channel operands."""
    if x.dtype not in FLOAT_DTYPES:
        return None  # the reference rounds a float result back to integers; mul+add cannot say that
    bshape = (x.shape[1],) + (1,) * (x.type.rank - 2)
    stats = [b.value_of(v) for v in (gamma, beta, mean, var)]
    if all(s is not None for s in stats):
        scale, shift = _bn_scale_shift(b, bn, gamma, beta, mean, var)
        dt = numpy_dtype(x.dtype)
        scale_v = b.const(scale.astype(dt).reshape(bshape), f"{bn.name or 'batch_norm'}.scale")
        shift_v = b.const(shift.astype(dt).reshape(bshape), f"{bn.name or 'batch_norm'}.shift")
    else:
        # Statistics computed at run time: build scale and shift with ops, in the input's dtype.
        gamma, beta, mean, var = (v if v.dtype == x.dtype else b.emit("cast", [v], {"dtype": x.dtype})
                                  for v in (gamma, beta, mean, var))
        eps = b.const(np.asarray(_eps(bn), numpy_dtype(x.dtype)), f"{bn.name or 'batch_norm'}.eps")
        scale_1d = b.emit("mul", [gamma, b.emit("rsqrt", [b.emit("add", [var, eps])])])
        shift_1d = b.emit("sub", [beta, b.emit("mul", [mean, scale_1d])])
        scale_v = b.emit("reshape", [scale_1d], {"shape": bshape})
        shift_v = b.emit("reshape", [shift_1d], {"shape": bshape})
    return b.emit("add", [b.emit("mul", [x, scale_v]), shift_v])


rules_fold_batchnorm = Rules([
    (Pat("batch_norm", Pat("conv2d", Var("x"), Const("w"), name="conv"), *_BN_STATS, name="bn"), fold_conv_bn),
    (Pat("batch_norm", Pat("conv2d", Var("x"), Const("w"), Const("bias"), name="conv"), *_BN_STATS, name="bn"),
     fold_conv_bn),
    (Pat("batch_norm", Pat("linear", Var("x"), Const("w"), name="linear"), *_BN_STATS, name="bn"),
     fold_linear_bn),
    (Pat("batch_norm", Pat("linear", Var("x"), Const("w"), Const("bias"), name="linear"), *_BN_STATS, name="bn"),
     fold_linear_bn),
    (Pat("batch_norm", Var("x"), Var("gamma"), Var("beta"), Var("mean"), Var("var"), name="bn"), lower_batchnorm),
])


@dataclass(frozen=True)
class FoldBatchNorm:
    """Fold batch_norm into the preceding conv2d / linear, and lower any other float batch_norm to mul + add.

    Adds the number of applications per rule name to `ctx.stats["fold-batchnorm"]`.
    """

    name: ClassVar[str] = "fold-batchnorm"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        stats: dict[str, int] = {}
        g = rewrite(graph, rules_fold_batchnorm, name=self.name, stats=stats)
        record_stats(ctx, self.name, stats)
        return g
