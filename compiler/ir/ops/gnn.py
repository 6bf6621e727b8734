"""Fused GNN message passing: segment_csr (destination-sorted CSR of an edge index) and gather_aggregate.

``gather_aggregate`` is gather -> edge-wise ops -> segment reduce (optionally with a segment softmax in the
middle) as one op, so a backend can run it without ever materialising an |E|-row tensor (Zhang et al.,
MLSys 2022). The edge-wise computation is data: a small instruction list applied to per-edge *rows* (a
tensor without its leading vertex / edge axis). An instruction is ``(op, args, param)``:

- ``op``: unary ``id neg abs exp log sqrt rsqrt relu sigmoid tanh``, ``leaky_relu`` / ``elu`` (param = alpha),
  binary ``add sub mul div max min`` (NumPy broadcasting of the rows), ``unsqueeze`` (param = row axes),
  ``reshape`` (param = the new row shape);
- ``args``: references ``"x<i>"`` (operand i, fetched per edge as its kind says), ``"t<j>"`` (result of the
  j-th instruction of the same program) and, in the message program only, ``"alpha"`` (the segment-softmax
  probabilities of the edge);
- a program's value is that of its last instruction.

Operand kinds: ``"src"`` (a vertex table gathered by the edge's source), ``"dst"`` (gathered by its
destination), ``"edge"`` (a per-edge tensor, row e), ``"const"`` (the whole tensor, broadcast into every row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.quant import round_shift
from qcc.ir.ops.registry import REQUIRED, broadcast_shapes, check, register
from qcc.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType

Instr = tuple[str, tuple[str, ...], Any]

UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": lambda x: x, "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x), "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "tanh": np.tanh,
}
PARAM_UNARY: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * a),
    "elu": lambda x, a: np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1)),
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum, "min": np.minimum,
}
SHAPE_OPS = ("unsqueeze", "reshape")
INT_OK = {"id", "neg", "abs", "relu", "add", "sub", "mul", "max", "min", *SHAPE_OPS}  # exact on integers
# Integer-only binary ops of quantized graphs; param = (a_multiplier, b_multiplier, shift, a_zero_point,
# b_zero_point, zero_point, lo, hi): qadd's int64 arithmetic, clamped to [lo, hi] (the output dtype's range).
QBINARY = ("qadd",)
KINDS = ("src", "dst", "edge", "const")
REDUCES = ("sum", "mean", "max", "min")


def _unsqueeze_shape(row: tuple[int, ...], axes: Sequence[int]) -> tuple[int, ...]:
    rank = len(row) + len(axes)
    norm = sorted(a + rank if a < 0 else a for a in axes)
    check(all(0 <= a < rank for a in norm) and len(set(norm)) == len(norm), f"bad unsqueeze row axes {axes}")
    out, it = [], iter(row)
    for d in range(rank):
        out.append(1 if d in norm else next(it))
    return tuple(out)


def row_shapes(program: Sequence[Instr], rows: Mapping[str, tuple[int, ...]], dtype: str) -> list[tuple[int, ...]]:
    """The row shape of each instruction's result, given the row shapes of the names it may reference."""
    check(len(program) > 0, "an edge program needs at least one instruction")
    out: list[tuple[int, ...]] = []
    for j, ins in enumerate(program):
        check(isinstance(ins, tuple) and len(ins) == 3 and isinstance(ins[1], tuple),
              f"instruction {j} must be (op, args, param), got {ins!r}")
        op, args, param = ins
        shapes = []
        for a in args:
            if isinstance(a, str) and a.startswith("t") and a[1:].isdigit() and int(a[1:]) < j:
                shapes.append(out[int(a[1:])])
            else:
                check(a in rows, f"instruction {j} ({op}) references unknown value {a!r}")
                shapes.append(rows[a])
        check(op in INT_OK or op in QBINARY or dtype in FLOAT_DTYPES,
              f"edge op {op!r} needs a float dtype, got {dtype}")
        check(op not in QBINARY or (dtype in INT_DTYPES and isinstance(param, tuple) and len(param) == 8),
              f"edge op {op!r} needs integer operands and an 8-tuple param")
        arity = 2 if op in BINARY or op in QBINARY else 1
        check(len(args) == arity, f"edge op {op!r} takes {arity} argument(s), got {len(args)}")
        if op in BINARY or op in QBINARY:
            out.append(broadcast_shapes(shapes[0], shapes[1]))
        elif op == "unsqueeze":
            out.append(_unsqueeze_shape(shapes[0], tuple(param)))
        elif op == "reshape":
            new = tuple(int(d) for d in param)
            check(int(np.prod(new)) == int(np.prod(shapes[0])), f"cannot reshape row {shapes[0]} to {new}")
            out.append(new)
        else:
            check(op in UNARY or op in PARAM_UNARY, f"unknown edge op {op!r}")
            out.append(shapes[0])
    return out


_ALPHA_LINEAR_OPS = ("mul", "unsqueeze", "reshape", "id", "neg")


def linear_in_alpha(message: Sequence[Instr], reduce: str) -> bool:
    """Whether a summed message is alpha times something alpha-free (alpha read once, then only scaled or reshaped):
    a kernel may then sum exp(s - max)·f and divide by the softmax denominator once per vertex."""
    uses = [a for _, args, _ in message for a in args].count("alpha")
    dep = {"alpha"}
    for j, (op, args, _) in enumerate(message):
        hit = [a for a in args if a in dep]
        if hit:
            if op not in _ALPHA_LINEAR_OPS or len(hit) > 1:
                return False
            dep.add(f"t{j}")
    return reduce == "sum" and uses == 1 and f"t{len(message) - 1}" in dep

def _operands(ts: Sequence[TensorType], kinds: Sequence[str], base: bool) -> tuple[list[TensorType], TensorType | None]:
    n_ops = len(ts) - 3 - (1 if base else 0)
    check(n_ops == len(kinds), f"{len(kinds)} operand kinds for {n_ops} operands")
    return list(ts[3:3 + n_ops]), (ts[-1] if base else None)


def _aggregate_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    indptr, order, col = ts[:3]
    kinds, base = tuple(attrs["kinds"]), bool(attrs["base"])
    for t, what in ((indptr, "indptr"), (order, "order"), (col, "col")):
        check(t.dtype in INT_DTYPES and t.rank == 1, f"{what} must be a 1-D integer tensor")
    check(order.shape == col.shape, "order and col must both have one entry per edge")
    check(attrs["reduce"] in REDUCES, f"reduce must be one of {REDUCES}, got {attrs['reduce']!r}")
    ops, b = _operands(ts, kinds, base)
    check(len(ops) > 0, "gather_aggregate needs at least one operand")
    n, e = indptr.shape[0] - 1, order.shape[0]
    dtype = ops[0].dtype
    rows: dict[str, tuple[int, ...]] = {}
    for i, (t, kind) in enumerate(zip(ops, kinds)):
        check(kind in KINDS, f"operand kind must be one of {KINDS}, got {kind!r}")
        check(t.dtype == dtype, f"operand {i} is {t.dtype}, operand 0 is {dtype}")
        if kind == "edge":
            check(t.rank >= 1 and t.shape[0] == e, f"edge operand {i} must have {e} rows")
        if kind == "dst":
            check(t.rank >= 1 and t.shape[0] == n, f"dst operand {i} must have {n} rows")
        check(kind == "const" or t.rank >= 1, f"{kind} operand {i} needs a leading axis")
        rows[f"x{i}"] = t.shape if kind == "const" else t.shape[1:]
    if attrs["score"]:
        rows["alpha"] = row_shapes(attrs["score"], rows, dtype)[-1]
        check(dtype in FLOAT_DTYPES, "a segment softmax needs float operands")
    out_row = row_shapes(attrs["message"], rows, dtype)[-1]
    if b is not None:
        check(b.shape == (n, *out_row) and b.dtype == dtype, f"base must be {dtype}[{n}, {list(out_row)}]")
    return [TensorType((n, *out_row), dtype)]


def _align(x: np.ndarray, rank: int) -> np.ndarray:
    """[E, *row] -> [E, 1.., *row] with the row right-aligned to `rank` row dims (row broadcasting)."""
    return x.reshape(x.shape[:1] + (1,) * (rank - (x.ndim - 1)) + x.shape[1:])


def run_program(program: Sequence[Instr], env: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate an edge program on [E, *row] arrays (consts as [1, *row]); returns the last result."""
    temps: list[np.ndarray] = []
    for op, args, param in program:
        xs = [temps[int(a[1:])] if a.startswith("t") and a[1:].isdigit() else env[a] for a in args]
        if op in QBINARY:
            r = max(xs[0].ndim, xs[1].ndim) - 1
            y = qadd_edge(_align(xs[0], r), _align(xs[1], r), param).astype(xs[0].dtype)
        elif op in BINARY:
            r = max(xs[0].ndim, xs[1].ndim) - 1
            y = BINARY[op](_align(xs[0], r), _align(xs[1], r))
        elif op == "unsqueeze":
            row = _unsqueeze_shape(xs[0].shape[1:], tuple(param))
            y = xs[0].reshape(xs[0].shape[:1] + row)
        elif op == "reshape":
            y = xs[0].reshape(xs[0].shape[:1] + tuple(param))
        elif op in PARAM_UNARY:
            y = PARAM_UNARY[op](xs[0], float(param))
        else:
            y = UNARY[op](xs[0])
        temps.append(np.asarray(y, dtype=xs[0].dtype) if np.issubdtype(xs[0].dtype, np.floating) else y)
    return temps[-1]


def qadd_edge(a: np.ndarray, b: np.ndarray, param: Sequence[Any]) -> np.ndarray:
    """The ``qadd`` edge op in int64 (the same arithmetic as the qadd op): ((a − za)·ma + (b − zb)·mb) rounded
    half up by 2^shift, plus the zero point, clamped to [lo, hi]."""
    ma, mb, shift, za, zb, zp, lo, hi = (int(v) for v in param)
    acc = (a.astype(np.int64) - za) * ma + (b.astype(np.int64) - zb) * mb
    return np.clip(round_shift(acc, shift) + zp, lo, hi)


def csr_edges(indptr: np.ndarray, order: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back from the CSR to per-edge (src, dst) in the original edge order."""
    n = indptr.shape[0] - 1
    dst = np.empty(order.shape[0], np.int64)
    src = np.empty(order.shape[0], np.int64)
    dst[order] = np.repeat(np.arange(n), np.diff(indptr.astype(np.int64)).astype(np.int64))
    src[order] = col
    return src, dst


def _gather_aggregate(indptr: np.ndarray, order: np.ndarray, col: np.ndarray, *rest: np.ndarray, kinds: tuple,
                      score: tuple, message: tuple, reduce: str, base: bool, include_self: bool) -> np.ndarray:
    ops, b = (rest[:-1], rest[-1]) if base else (rest, None)
    n = indptr.shape[0] - 1
    src, dst = csr_edges(indptr, order, col)
    env: dict[str, np.ndarray] = {}
    for i, (x, kind) in enumerate(zip(ops, kinds)):
        env[f"x{i}"] = (np.take(x, src if kind == "src" else dst, axis=0) if kind in ("src", "dst")
                        else x if kind == "edge" else x[None])
    if score:
        s = run_program(score, env)
        s = np.broadcast_to(s, (dst.shape[0],) + s.shape[1:])
        m = np.full((n,) + s.shape[1:], -np.inf, s.dtype)
        np.maximum.at(m, dst, s)
        ex = np.exp(s - m[dst])  # the max shift cancels: equals exp(s) / Σ exp(s)
        den = np.zeros((n,) + s.shape[1:], np.float64)
        np.add.at(den, dst, ex)
        env["alpha"] = (ex / den[dst]).astype(s.dtype)
    msg = run_program(message, env)
    msg = np.broadcast_to(msg, (dst.shape[0],) + msg.shape[1:])
    dt = ops[0].dtype
    acc_dt = np.float64 if np.issubdtype(dt, np.floating) else np.int64
    ident = {"sum": 0, "mean": 0, "max": -np.inf, "min": np.inf}[reduce]
    if acc_dt is np.int64 and reduce in ("max", "min"):
        ident = np.iinfo(np.int64).min if reduce == "max" else np.iinfo(np.int64).max
    acc = np.full((n,) + msg.shape[1:], ident, acc_dt)
    ufunc = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum}[reduce]
    ufunc.at(acc, dst, msg.astype(acc_dt))
    deg = np.diff(indptr.astype(np.int64)).reshape((n,) + (1,) * (msg.ndim - 1))
    if b is not None and include_self:
        acc = ufunc(acc, b.astype(acc_dt))
        deg = deg + 1
    if reduce == "mean":
        acc = acc / np.maximum(deg, 1) if acc_dt is np.float64 else np.floor_divide(acc, np.maximum(deg, 1))
    empty = np.broadcast_to(deg == 0, acc.shape)
    acc = np.where(empty, b.astype(acc_dt) if b is not None else 0, acc)
    return acc.astype(dt)


register("gather_aggregate", _aggregate_type, _gather_aggregate, num_inputs=(4, None),
         attrs={"kinds": REQUIRED, "score": (), "message": REQUIRED, "reduce": "sum", "base": False,
                "include_self": True})


def _csr_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (idx,) = ts
    n = attrs["num_segments"]
    check(idx.dtype in INT_DTYPES and idx.rank == 1, "segment_csr needs a 1-D integer index")
    check(isinstance(n, int) and n >= 1, f"num_segments must be a positive int, got {n!r}")
    return [TensorType((n + 1,), "i64"), TensorType((idx.shape[0],), "i64")]


def segment_csr(index: np.ndarray, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, order): edges stably sorted by segment; negatives wrap, out-of-range ids clamp (as lowered)."""
    i = index.astype(np.int64)
    i = np.clip(np.where(i < 0, i + num_segments, i), 0, num_segments - 1)
    order = np.argsort(i, kind="stable").astype(np.int64)
    indptr = np.zeros(num_segments + 1, np.int64)
    np.cumsum(np.bincount(i, minlength=num_segments), out=indptr[1:])
    return indptr, order


register("segment_csr", _csr_type, segment_csr, num_inputs=(1, 1), attrs={"num_segments": REQUIRED},
         num_outputs=2)
