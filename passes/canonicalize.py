"""canonicalize: exact local simplifications, as rules of the one rewrite engine.

Every rule is a named function `(b, **captures) -> replacement | None` paired with a pattern in
`rules_canonicalize`; a rule declines (returns None) unless its rewrite is exact for every input. The rules:

- reshape-like ops (`reshape`, `squeeze`, `unsqueeze`) that keep the shape vanish; a chain of two collapses into
  one `reshape` (or into its input when the shapes match). All three only relabel a row-major buffer, so any chain
  of them equals a single reshape, and squeeze/unsqueeze pairs that cancel disappear.
- `transpose` by the identity permutation vanishes; two transposes compose into one, or vanish when they cancel.
- `expand` to the input's own shape vanishes; `expand` of `expand` is one `expand` (broadcasting is transitive).
- `slice` covering the whole tensor in order, `pad` with all-zero pads, `cast` to the input's dtype and `concat`
  of a single input vanish.
- `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` with a constant of zeros or ones become `x` when
  broadcasting leaves x's shape unchanged. (With floats, `x + 0` and `x - 0` differ from `x` only in the sign of a
  zero result: `-0.0 + 0.0` is `+0.0`, which compares equal.)

Like every rewrite, the result has no dead nodes or unused params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcc.errors import VerificationError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.pass_manager import PassContext
from qcc.ir.rewrite import Const, Pat, RewriteBuilder, Rules, Var, rewrite
from qcc.passes._stats import record_stats

RESHAPE_LIKE = ("reshape", "squeeze", "unsqueeze")


def _tuple(node: Node, key: str) -> tuple[Any, ...]:
    value = node.attrs[key]
    if not isinstance(value, tuple):  # the verifier ran; only a hand-built graph gets here
        raise VerificationError(f"{node.op} attribute {key}={value!r} is not a tuple")
    return value


# -- shape ops ------------------------------------------------------------------------------------------------------
def drop_noop_reshape(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """reshape/squeeze/unsqueeze to the input's own shape is the input."""
    return x if root.output.shape == x.shape else None


def fold_reshape_chain(b: RewriteBuilder, outer: Node, inner: Node, x: Value) -> Value | None:
    """Two reshape-like ops in a row are one reshape of the first one's input (or nothing)."""
    shape = outer.output.shape
    if shape == x.shape:
        return x
    return b.emit("reshape", [x], {"shape": shape})


def drop_identity_transpose(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """transpose by (0, 1, ..., n-1) is the input."""
    return x if _tuple(root, "perm") == tuple(range(x.type.rank)) else None


def fold_transpose_pair(b: RewriteBuilder, outer: Node, inner: Node, x: Value) -> Value | None:
    """transpose(transpose(x, p), q) == transpose(x, r) with r[i] = p[q[i]]; nothing when r is the identity."""
    p, q = _tuple(inner, "perm"), _tuple(outer, "perm")
    perm = tuple(p[i] for i in q)
    if perm == tuple(range(len(perm))):
        return x
    return b.emit("transpose", [x], {"perm": perm})


def drop_noop_expand(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """expand to the input's own shape is the input."""
    return x if root.output.shape == x.shape else None


def fold_expand_pair(b: RewriteBuilder, outer: Node, inner: Node, x: Value) -> Value | None:
    """expand(expand(x, s1), s2) == expand(x, s2): x broadcasts to s1 and s1 to s2, so x broadcasts to s2."""
    return b.emit("expand", [x], {"shape": outer.output.shape})


def drop_full_slice(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """A slice that keeps every element in order is the input.

    Same shape is not enough (a step of -1 reverses an axis), so every sliced axis longer than one element must
    also step by +1; with step 1 and an unchanged extent the slice starts at 0 and ends at the end.
    """
    if root.output.shape != x.shape:
        return None
    for axis, step in zip(_tuple(root, "axes"), _tuple(root, "steps")):
        if x.shape[axis] > 1 and step != 1:
            return None
    return x


def drop_zero_pad(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """pad by zero on every side (any mode) is the input."""
    return x if all(p == 0 for p in _tuple(root, "pads")) else None


def drop_noop_cast(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """cast to the dtype the input already has is the input."""
    return x if root.attrs["dtype"] == x.dtype else None


def drop_single_concat(b: RewriteBuilder, root: Node, x: Value) -> Value | None:
    """concat of one tensor is that tensor."""
    return x


# -- algebra --------------------------------------------------------------------------------------------------------
def _all_equal(b: RewriteBuilder, c: Value, value: int) -> bool:
    data = b.value_of(c)
    return data is not None and bool(np.all(data == value))


def _keeps_x(root: Node, x: Value) -> bool:
    # Broadcasting against the constant must not grow or retype x, or x cannot stand in for the result.
    return root.output.shape == x.shape and root.output.dtype == x.dtype


def drop_add_zero(b: RewriteBuilder, root: Node, x: Value, c: Value) -> Value | None:
    """x + 0 (either order) is x."""
    return x if _keeps_x(root, x) and _all_equal(b, c, 0) else None


def drop_sub_zero(b: RewriteBuilder, root: Node, x: Value, c: Value) -> Value | None:
    """x - 0 is x."""
    return x if _keeps_x(root, x) and _all_equal(b, c, 0) else None


def drop_mul_one(b: RewriteBuilder, root: Node, x: Value, c: Value) -> Value | None:
    """x * 1 (either order) is x."""
    return x if _keeps_x(root, x) and _all_equal(b, c, 1) else None


def drop_div_one(b: RewriteBuilder, root: Node, x: Value, c: Value) -> Value | None:
    """x / 1 is x (also for integer division, which truncates)."""
    return x if _keeps_x(root, x) and _all_equal(b, c, 1) else None


rules_canonicalize = Rules([
    (Pat(RESHAPE_LIKE, Var("x"), name="root"), drop_noop_reshape),
    (Pat(RESHAPE_LIKE, Pat(RESHAPE_LIKE, Var("x"), name="inner"), name="outer"), fold_reshape_chain),
    (Pat("transpose", Var("x"), name="root"), drop_identity_transpose),
    (Pat("transpose", Pat("transpose", Var("x"), name="inner"), name="outer"), fold_transpose_pair),
    (Pat("expand", Var("x"), name="root"), drop_noop_expand),
    (Pat("expand", Pat("expand", Var("x"), name="inner"), name="outer"), fold_expand_pair),
    (Pat("slice", Var("x"), name="root"), drop_full_slice),
    (Pat("pad", Var("x"), name="root"), drop_zero_pad),
    (Pat("cast", Var("x"), name="root"), drop_noop_cast),
    (Pat("concat", Var("x"), name="root"), drop_single_concat),
    (Pat("add", Var("x"), Const("c"), name="root"), drop_add_zero),
    (Pat("add", Const("c"), Var("x"), name="root"), drop_add_zero),
    (Pat("sub", Var("x"), Const("c"), name="root"), drop_sub_zero),
    (Pat("mul", Var("x"), Const("c"), name="root"), drop_mul_one),
    (Pat("mul", Const("c"), Var("x"), name="root"), drop_mul_one),
    (Pat("div", Var("x"), Const("c"), name="root"), drop_div_one),
])


@dataclass(frozen=True)
class Canonicalize:
    """Apply `rules_canonicalize` to a fixed point (at most `max_iters` sweeps).

    Adds the number of applications per rule name to `ctx.stats["canonicalize"]`.
    """

    name: ClassVar[str] = "canonicalize"
    max_iters: int = 64

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        stats: dict[str, int] = {}
        g = rewrite(graph, rules_canonicalize, name=self.name, max_iters=self.max_iters, stats=stats)
        record_stats(ctx, self.name, stats)
        return g
