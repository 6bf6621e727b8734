"""recognize-qattention: the integer attention chain realize-integer produces becomes one `qattention` node.

Integer targets keep softmax(Q·Kᵀ·s + mask)·V unfused through quantization (recognize-attention runs only on
float targets), so realize-integer turns it into

    qmatmul(q, kᵀ) → requantize … → [qadd(·, mask)] → isoftmax | shiftmax → qmatmul(·, v)

This pass, run after quantization, matches that chain from the second qmatmul upward and replaces it with
`qattention` (docs/ops.md), whose reference is the composition of the same ops: the rewrite is bit-exact. The
requantize multipliers and shifts must be per-tensor constants (they are for attention scores); the softmax's
u8 output has zero point 0 as the second qmatmul requires. Kᵀ is un-transposed as in recognize-attention. The
backend lowers `qattention` to a tiled integer kernel that recomputes Q·Kᵀ tiles (row max, integer exp-sum,
P·V passes) and never materialises the N×M scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import Pat, RewriteBuilder, Rules, Var, rewrite
from qcc.passes._stats import record_stats
from qcc.passes.recognize_attention import _producer, _untranspose

_CHAIN = ("requantize", "qadd")


def _i(x: Any) -> int:
    """An integer attribute as a Python int."""
    return int(x)


def _int_scalar(b: RewriteBuilder, v: Value) -> int | None:
    data = b.value_of(v)
    if data is None or data.size != 1 or data.dtype.kind not in "iu":
        return None
    return int(data.reshape(()))


def _reaches_qmatmul(b: RewriteBuilder, v: Value) -> bool:
    n = _producer(b, v)
    while n is not None and n.op in _CHAIN:
        n = _producer(b, n.inputs[0])
    return n is not None and n.op == "qmatmul"


def _walk_steps(b: RewriteBuilder, s: Value) -> tuple[Node, list[tuple[Any, ...]], Value | None] | None:
    """From the softmax input back to the first qmatmul: (that qmatmul, the steps in order, the mask)."""
    steps: list[tuple[Any, ...]] = []
    mask: Value | None = None
    while True:
        n = _producer(b, s)
        if n is None:
            return None
        a = n.attrs
        if n.op == "qmatmul":
            return n, steps[::-1], mask
        if n.op == "requantize":
            m, c = _int_scalar(b, n.inputs[1]), _int_scalar(b, n.inputs[2])
            if m is None or c is None:
                return None
            steps.append(("requantize", m, c, a["dtype"], _i(a["input_zero_point"]), _i(a["zero_point"]),
                          a["min"], a["max"]))
            s = n.inputs[0]
        elif n.op == "qadd" and mask is None:
            x, y = n.inputs
            names = ("a_multiplier", "b_multiplier", "a_zero_point", "b_zero_point")
            am, bm, az, bz = (_i(a[k]) for k in names)
            if not _reaches_qmatmul(b, x):
                x, y, am, bm, az, bz = y, x, bm, am, bz, az
            if x.shape != n.output.shape or not _reaches_qmatmul(b, x):
                return None
            steps.append(("qadd", am, bm, _i(a["shift"]), az, bz, _i(a["zero_point"]), a["dtype"], a["min"], a["max"]))
            mask, s = y, x
        else:
            return None


def fuse_qattention(b: RewriteBuilder, root: Node, p: Value, v: Value) -> Value | None:
    """The rule: qmatmul(P, V) → qattention(Q, K, V[, mask]) when the integer chain above matches."""
    if root.attrs.get("a_zero_point") != 0 or p.type.rank < 2:
        return None
    sm = _producer(b, p)
    if sm is None or sm.op not in ("isoftmax", "shiftmax") or sm.attrs["axis"] != p.type.rank - 1:
        return None
    walked = _walk_steps(b, sm.inputs[0])
    if walked is None:
        return None
    mm, steps, mask = walked
    q, kt = mm.inputs
    if not (q.type.rank == kt.type.rank == v.type.rank) or not (q.shape[:-2] == kt.shape[:-2] == v.shape[:-2]):
        return None
    if sm.inputs[0].shape != mm.output.shape or p.shape != mm.output.shape:
        return None
    sa = sm.attrs
    soft = (("isoftmax", *(_i(sa[x]) for x in ("ln2", "b", "c", "n", "k"))) if sm.op == "isoftmax"
            else ("shiftmax", *(_i(sa[x]) for x in ("one", "n", "k"))))
    k = _untranspose(b, kt)
    attrs: dict[str, Any] = {"q_zero_point": _i(mm.attrs["a_zero_point"]), "k_zero_point": _i(mm.attrs["b_zero_point"]),
                             "v_zero_point": _i(root.attrs["b_zero_point"]), "steps": tuple(steps), "softmax": soft}
    node = b.emit_node("qattention", [q, k, v] + ([mask] if mask is not None else []), attrs)
    node.name = mm.name or root.name
    return node.output


@dataclass(frozen=True)
class RecognizeQAttention:
    """Replace the realized integer attention chain with one `qattention` node (see the module docstring).

    `min_keys`: only chains attending over at least this many keys are replaced. The tiled integer kernel trades
    speed for memory (it recomputes Q·Kᵀ in three passes); below a few hundred keys the N×M int32 scores are small
    and the unfused chain with the qmatmul template is faster (BERT seq 128: 7.4 vs 13.2 ms here), so the
    pipeline's `attention="auto"` asks for 1024 and `attention="on"` for 0.

    Counts go to `ctx.stats["recognize-qattention"]` (`fuse_qattention`: the number of nodes made)."""

    name: ClassVar[str] = "recognize-qattention"
    min_keys: int = 0

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        stats: dict[str, int] = {}

        def rule(b: RewriteBuilder, root: Node, p: Value, v: Value) -> Value | None:
            if p.type.rank < 2 or p.shape[-1] < self.min_keys:
                return None
            return fuse_qattention(b, root, p, v)

        rule.__name__ = "fuse_qattention"  # the stats key
        g = rewrite(graph, Rules([(Pat("qmatmul", Var("p"), Var("v"), name="root"), rule)]),
                    name=self.name, stats=stats)
        record_stats(ctx, self.name, stats)
        return g
