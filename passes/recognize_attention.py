"""recognize-attention: softmax(Q·Kᵀ·s [+ mask]) · V becomes one `attention` node.

The rule is rooted at the second matmul, `matmul(P, V)`, and walks up:

- P is `softmax(X, axis=-1)`, optionally wrapped in torch's SDPA fix-up for fully masked rows
  `where(not(any(not(X == −∞), axis=-1)), 0, softmax(X))` (the attention op already gives 0 there);
- X is the scores S plus an additive mask (`add` either way round, the mask broadcasting to S), or S with a
  constant boolean mask applied as `where(cond, fill, S)` / `where(cond, S, fill)` (a constant fill, e.g. −∞);
  a constant mask that is exactly 0 on and below the diagonal and −∞ above it becomes `causal=True`;
- S is `matmul(Q', Kᵀ')` times / divided by scalar constants, and Q' and Kᵀ' may themselves be scaled by scalar
  constants (scale before or after, or split √s·√s as torch's SDPA decomposition does): the product is `scale`;
- Kᵀ' is a `transpose` (composed with the swap of the last two dims to give K, dropped when that is the
  identity, as the frontends' reshape → transpose head split produces), else K = transpose(Kᵀ').

Q, Kᵀ and V must have equal leading (batch / head) dims and P the scores' shape. Intermediates with other users
stay for them (the result is still correct). The replaced node keeps the first matmul's source name. The only
semantic refinement: a row whose scores are all −∞ yields 0 instead of softmax's NaN.
`tile` (br, bc), when given, is written to each attention node's `meta["attention_tile"]` for the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.ops.attention import causal_mask
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import Pat, RewriteBuilder, Rules, Var, rewrite
from qcc.ir.types import FLOAT_DTYPES
from qcc.passes._stats import record_stats


def _producer(b: RewriteBuilder, v: Value) -> Node | None:
    for n in b.graph.nodes:
        if v in n.outputs:
            return n
    return None


def _scalar(b: RewriteBuilder, v: Value) -> float | None:
    """The value of a constant with one element, else None."""
    data = b.value_of(v)
    if data is None or data.size != 1 or data.dtype.kind != "f":
        return None
    return float(data.reshape(()))


def _peel_scale(b: RewriteBuilder, v: Value) -> tuple[Value, float]:
    """Strip mul / div by scalar constants: returns (the unscaled value, the product of the factors)."""
    scale = 1.0
    while True:
        n = _producer(b, v)
        if n is None or n.op not in ("mul", "div") or n.output.shape != v.shape:
            return v, scale
        a, c = n.inputs
        k = _scalar(b, c)
        if k is None and n.op == "mul":
            a, c = c, a
            k = _scalar(b, c)
        if k is None or a.shape != v.shape or (n.op == "div" and k == 0.0):
            return v, scale
        scale = scale * k if n.op == "mul" else scale / k
        v = a


def _is_dead_row_fixup(b: RewriteBuilder, where: Node, x: Value) -> bool:
    """where(not(any(not(x == −∞), axis=-1)), 0, ·): torch's zeros for rows with every key masked."""
    cond, zero = where.inputs[0], where.inputs[1]
    z = b.value_of(zero)
    if z is None or np.any(z != 0):
        return False
    chain = ("logical_not", "reduce_max", "logical_not", "equal")
    v = cond
    for op in chain:
        n = _producer(b, v)
        if n is None or n.op != op:
            return False
        axes = n.attrs.get("axes")
        if op == "reduce_max" and (not isinstance(axes, tuple) or axes != (x.type.rank - 1,)
                                   or not n.attrs["keepdims"]):
            return False
        if op == "equal":
            other = n.inputs[1] if n.inputs[0] is x else n.inputs[0] if n.inputs[1] is x else None
            ninf = None if other is None else _scalar(b, other)
            return ninf is not None and ninf == -np.inf
        v = n.inputs[0]
    return False


def _split_mask(b: RewriteBuilder, x: Value) -> tuple[Value, Value | None, np.ndarray | None]:
    """X → (S, additive mask value or None, constant additive mask data or None)."""
    n = _producer(b, x)
    if n is None:
        return x, None, None
    if n.op == "add":
        for s, m in (n.inputs, n.inputs[::-1]):
            ps = _producer(b, s)
            if ps is not None and ps.op in ("matmul", "mul", "div") and s.shape == x.shape \
                    and m.dtype in FLOAT_DTYPES:
                return s, m, b.value_of(m)
    if n.op == "where":
        cond, a, c = n.inputs
        cdata = b.value_of(cond)
        for s, fill, hide_when in ((c, a, True), (a, c, False)):
            fdata = b.value_of(fill)
            if cdata is None or fdata is None or fdata.size != 1 or s.shape != x.shape:
                continue
            hidden = cdata.astype(bool) if hide_when else ~cdata.astype(bool)
            data = np.where(hidden, np.float32(fdata.reshape(())), np.float32(0.0)).astype(np.float32)
            return s, None, data
    return x, None, None


def _is_causal(data: np.ndarray, n: int, m: int) -> bool:
    """A constant mask that is 0 where j ≤ i and −∞ where j > i, for every leading index."""
    if data.ndim < 2 or data.shape[-2:] != (n, m):
        return False
    want = np.where(causal_mask(n, m), -np.inf, 0.0)
    return bool(np.all(data.reshape(-1, n, m) == want))


def fuse_attention(b: RewriteBuilder, root: Node, p: Value, v: Value, tile: tuple[int, int] | None = None
                   ) -> Value | None:
    """The rule: matmul(P, V) → attention(Q, K, V[, mask]) when the chain above matches (module docstring)."""
    pn = _producer(b, p)
    if pn is not None and pn.op == "where" and pn.inputs[2].shape == p.shape:
        sm = _producer(b, pn.inputs[2])
        if sm is None or sm.op != "softmax" or not _is_dead_row_fixup(b, pn, sm.inputs[0]):
            return None
        pn = sm
    if pn is None or pn.op != "softmax" or pn.attrs["axis"] != p.type.rank - 1 or p.type.rank < 2:
        return None
    scores, mask, mask_data = _split_mask(b, pn.inputs[0])
    raw, scale = _peel_scale(b, scores)
    mm = _producer(b, raw)
    if mm is None or mm.op != "matmul":
        return None
    q, kt = mm.inputs
    q, sq = _peel_scale(b, q)
    kt, sk = _peel_scale(b, kt)
    scale = scale * sq * sk
    ranks = {q.type.rank, kt.type.rank, v.type.rank}
    if len(ranks) != 1 or q.type.rank < 2 or not (q.shape[:-2] == kt.shape[:-2] == v.shape[:-2]):
        return None
    if q.dtype not in FLOAT_DTYPES or not (q.dtype == kt.dtype == v.dtype) or p.shape != raw.shape:
        return None
    n, m = q.shape[-2], kt.shape[-1]
    causal = False
    if mask_data is not None and _is_causal(mask_data, n, m):
        causal, mask = True, None
    elif mask_data is not None and mask is None:
        mask = b.const(mask_data.astype(np.float32), f"{root.name or 'attention'}.mask")
    if mask is not None and mask.dtype != q.dtype:
        return None
    k = _untranspose(b, kt)
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    node = b.emit_node("attention", inputs, {"scale": float(scale), "causal": causal})
    node.name = mm.name or root.name
    if tile is not None:
        node.meta["attention_tile"] = tuple(int(t) for t in tile)
    return node.output


def _untranspose(b: RewriteBuilder, kt: Value) -> Value:
    """K from Kᵀ: compose with the producing transpose when there is one."""
    r = kt.type.rank
    swap = tuple(range(r - 2)) + (r - 1, r - 2)
    tn = _producer(b, kt)
    if tn is not None and tn.op == "transpose":
        old = tn.attrs["perm"]
        assert isinstance(old, tuple)
        perm = tuple(int(old[i]) for i in swap)
        src = tn.inputs[0]
        if perm == tuple(range(r)):
            return src
        node = b.emit_node("transpose", [src], {"perm": perm})
        node.name = tn.name  # it stands for the frontend's head-split transpose
        return node.output
    node = b.emit_node("transpose", [kt], {"perm": swap})
    node.name = ""
    return node.output


@dataclass(frozen=True)
class RecognizeAttention:
    """Replace softmax(Q·Kᵀ·s [+ mask | causal])·V chains with one `attention` node (see the module docstring).

    `tile` = "br,bc" (or a tuple) forces the backend's tile sizes; "" leaves them to the backend's rule.
    Counts go to `ctx.stats["recognize-attention"]` (`fuse_attention`: the number of attention nodes made).
    """

    name: ClassVar[str] = "recognize-attention"
    tile: Any = ""

    def _tile(self) -> tuple[int, int] | None:
        from qcc.errors import OptionError

        t = self.tile
        if t in ("", None, ()):
            return None
        parts = [p for p in t.replace("x", ",").split(",") if p.strip()] if isinstance(t, str) else list(t)
        try:
            br, bc = (int(p) for p in parts)
        except (TypeError, ValueError):
            raise OptionError(f"recognize-attention: tile must be two positive ints (br, bc), got {t!r}") from None
        if br < 1 or bc < 1:
            raise OptionError(f"recognize-attention: tile sizes must be positive, got {t!r}")
        return br, bc

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        tile = self._tile()

        def rule(b: RewriteBuilder, root: Node, p: Value, v: Value) -> Value | None:
            return fuse_attention(b, root, p, v, tile)

        rule.__name__ = "fuse_attention"
        stats: dict[str, int] = {}
        g = rewrite(graph, Rules([(Pat("matmul", Var("p"), Var("v"), name="root"), rule)]), name=self.name,
                    stats=stats)
        record_stats(ctx, self.name, stats)
        return g
