"""TIR kernels for fused GNN message passing: the destination CSR of an edge index and gather_aggregate.

`csr_kernel` is a counting sort of the destination index (degree histogram, prefix sum, stable placement):
O(|E| + |V|), run once per graph and index (the gnn-fuse pass emits one `segment_csr` per index value).

`aggregate_kernel` implements `gather_aggregate` (see qcc.ir.ops.gnn) without any |E|-sized buffer:

- CPU: parallel over destination vertices. Per vertex, an optional first sweep over its in-edges keeps the
  online max / sum of the softmax scores (one pair per score element, in registers / stack); the second sweep
  recomputes each score, turns it into a probability, evaluates the message row expression and reduces it into
  a per-vertex accumulator row. The edge and vertex stages share the vertex-parallel thread mapping.
- CUDA: one block per destination vertex, one thread per element of the output row (so the gathers of a
  source row are coalesced); every thread runs the same two sweeps over the vertex's in-edges for its own
  element, keeping its softmax statistics and accumulator in registers: the edge stage and the vertex stage
  use one thread mapping, and nothing goes through global memory but the gathered rows and the result.

Row expressions are built as TIR expression trees from the edge programs (instruction lists of the op).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from qcc.backends.tvm.lower_base import cast, const, float_math, highest, is_float, lowest, single_thread
from qcc.errors import BackendError
from qcc.ir.ops.gnn import linear_in_alpha

_MAX_CUDA_THREADS = 1024


def _i64(x: Any) -> Any:
    return cast("int64", x)


def _wrap_clamp(idx: Any, n: int) -> Any:
    r = _i64(idx)
    r = tirx.Select(r < const(0, "int64"), r + const(n, "int64"), r)
    return tirx.min(tirx.max(r, const(0, "int64")), const(n - 1, "int64"))


def csr_kernel(device: str, n: int, e: int) -> Callable[..., Any]:
    """IR-builder body of segment_csr: (index[E]) -> (indptr[N+1], order[E]), a stable counting sort."""

    def gen(i_buf: Any, p_buf: Any, o_buf: Any) -> Any:
        idx, ptr, order = (T.buffer_proxy(b) for b in (i_buf, p_buf, o_buf))
        with IRBuilder() as ib:
            with T.seq_scope():
                fill = T.buffer_proxy(T.alloc_buffer([n], "int64", scope="global"))
                with single_thread(device):
                    with T.serial(0, n + 1) as v:
                        ptr[v] = const(0, "int64")
                    with T.serial(0, e) as k:
                        r = _wrap_clamp(idx[k], n)
                        ptr[r + 1] = ptr[r + 1] + const(1, "int64")
                    with T.serial(0, n) as v:
                        ptr[v + 1] = ptr[v + 1] + ptr[v]
                        fill[v] = ptr[v]
                    with T.serial(0, e) as k:
                        r = T.bind(_wrap_clamp(idx[k], n))
                        order[fill[r]] = _i64(k)
                        fill[r] = fill[r] + const(1, "int64")
            return ib.get()

    return gen


@dataclass(frozen=True)
class AggregateSpec:
    """Static description of one gather_aggregate kernel (shapes, programs and reduction)."""

    n: int  # destination vertices
    kinds: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # full operand shapes
    score: tuple[Any, ...]
    message: tuple[Any, ...]
    reduce: str
    base: bool
    include_self: bool
    dtype: str  # TVM dtype of operands and output
    rows: dict[str, tuple[int, ...]]  # row shape of every name (operands, alpha)
    score_rows: tuple[tuple[int, ...], ...]
    message_rows: tuple[tuple[int, ...], ...]

    @property
    def out_row(self) -> tuple[int, ...]:
        return self.message_rows[-1]

    @property
    def score_row(self) -> tuple[int, ...]:
        return self.score_rows[-1] if self.score else ()


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _linear(idx: Sequence[Any], shape: Sequence[int]) -> Any:
    """Row-major linear offset of `idx` in `shape`; size-1 dims broadcast (pinned to 0)."""
    off: Any = const(0, "int64")
    for i, d in zip(idx, shape):
        off = off * const(int(d), "int64") + (const(0, "int64") if d == 1 else _i64(i))
    return off


def _bcast(idx: Sequence[Any], shape: Sequence[int]) -> list[Any]:
    """The index into a row of `shape` for result index `idx` (right-aligned NumPy broadcasting)."""
    return list(idx[len(idx) - len(shape):]) if shape else []


def _unary(op: str, x: Any, param: Any, dtype: str) -> Any:
    zero = const(0, dtype)
    if op == "id":
        return x
    if op == "neg":
        return zero - x
    if op == "abs":
        return tirx.abs(x)
    if op == "relu":
        return tirx.max(x, zero)
    if op == "leaky_relu":
        return tirx.Select(x >= zero, x, x * const(float(param), dtype))
    if op == "elu":
        return tirx.Select(x > zero, x, const(float(param), dtype) * (float_math(tirx.exp, x) - const(1, dtype)))
    fn = {"exp": tirx.exp, "log": tirx.log, "sqrt": tirx.sqrt, "rsqrt": tirx.rsqrt, "sigmoid": tirx.sigmoid,
          "tanh": tirx.tanh}.get(op)
    if fn is None:
        raise BackendError(f"gather_aggregate: edge op {op!r} has no TVM lowering")
    return float_math(fn, x)


_BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "div": lambda a, b: a / b, "max": tirx.max, "min": tirx.min}


class RowExpr:
    """Builds the scalar TIR expression of an edge program's element, given how to load each named row."""

    def __init__(self, program: Sequence[Any], temp_rows: Sequence[tuple[int, ...]],
                 rows: dict[str, tuple[int, ...]], load: Callable[[str, list[Any]], Any], dtype: str) -> None:
        self.program, self.temp_rows, self.rows, self.load, self.dtype = program, temp_rows, rows, load, dtype

    def _shape(self, ref: str) -> tuple[int, ...]:
        return self.temp_rows[int(ref[1:])] if _is_temp(ref) else self.rows[ref]

    def __call__(self, idx: list[Any], ref: str | None = None) -> Any:
        ref = ref if ref is not None else f"t{len(self.program) - 1}"
        if not _is_temp(ref):
            return self.load(ref, idx)
        op, args, param = self.program[int(ref[1:])]
        if op == "qadd":  # integer qadd (qcc.ir.ops.gnn.qadd_edge): int64, one rounding shift, clamped
            a, b = (cast("int64", self(_bcast(idx, self._shape(r)), r)) for r in args)
            ma, mb, sh, za, zb, zp, lo, hi = (const(int(p), "int64") for p in param)
            acc = (a - za) * ma + (b - zb) * mb
            if int(param[2]) > 0:
                acc = tirx.shift_right(acc + tirx.shift_left(const(1, "int64"), sh - const(1, "int64")), sh)
            else:
                acc = tirx.shift_left(acc, const(-int(param[2]), "int64"))
            return cast(self.dtype, tirx.min(tirx.max(acc + zp, lo), hi))
        if op in _BINARY:
            a, b = (self(_bcast(idx, self._shape(r)), r) for r in args)
            return _BINARY[op](a, b)
        if op == "unsqueeze":
            rank = len(idx)
            axes = {int(x) + rank if int(x) < 0 else int(x) for x in param}
            return self([i for d, i in enumerate(idx) if d not in axes], args[0])
        if op == "reshape":
            src_shape = self._shape(args[0])
            lin = _linear(idx, self.temp_rows[int(ref[1:])])
            sub = []
            for d in reversed(src_shape):
                sub.append(tirx.floormod(lin, const(int(d), "int64")))
                lin = tirx.floordiv(lin, const(int(d), "int64"))
            return self(list(reversed(sub)), args[0])
        return _unary(op, self(idx, args[0]), param, self.dtype)


def _is_temp(ref: str) -> bool:
    return ref.startswith("t") and ref[1:].isdigit()


def _acc_dtype(dtype: str) -> str:
    return "float32" if dtype == "float16" else ("int64" if not is_float(dtype) else dtype)


def aggregate_kernel(spec: AggregateSpec, device: str) -> Callable[..., Any]:
    """IR-builder body of gather_aggregate: (indptr, order, col, *operands[, base]) -> out [N, *out_row]."""
    acc_dt = _acc_dtype(spec.dtype)
    n, ro, rs = spec.n, _prod(spec.out_row), _prod(spec.score_row)
    if device == "cuda" and ro > _MAX_CUDA_THREADS:
        raise BackendError(f"gather_aggregate on CUDA: an output row of {ro} elements exceeds {_MAX_CUDA_THREADS}")
    ident = {"sum": const(0, acc_dt), "mean": const(0, acc_dt), "max": lowest(acc_dt), "min": highest(acc_dt)}
    combine = {"sum": lambda a, b: a + b, "mean": lambda a, b: a + b, "max": tirx.max, "min": tirx.min}[spec.reduce]

    def gen(ins: Sequence[Any], out_buf: Any) -> Any:
        ptr, order, col = (T.buffer_proxy(b) for b in ins[:3])
        ops = [T.buffer_proxy(b) for b in ins[3:3 + len(spec.kinds)]]
        base = T.buffer_proxy(ins[-1]) if spec.base else None
        out = T.buffer_proxy(out_buf)
        with IRBuilder() as ib:
            with T.seq_scope():
                if device == "cuda":
                    _cuda_body(spec, ptr, order, col, ops, base, out, ident, combine, acc_dt, n, ro, rs)
                else:
                    _cpu_body(spec, ptr, order, col, ops, base, out, ident, combine, acc_dt, n, ro, rs)
            return ib.get()

    return gen


def _loader(spec: AggregateSpec, ops: Sequence[Any], v: Any, e: Any, u: Any,
            alpha: Callable[[list[Any]], Any] | None) -> Callable[[str, list[Any]], Any]:
    def load(ref: str, idx: list[Any]) -> Any:
        if ref == "alpha":
            assert alpha is not None
            return alpha(idx)
        i = int(ref[1:])
        row = spec.rows[ref]
        off = _linear(idx, row)
        kind = spec.kinds[i]
        if kind == "const":
            return ops[i][off]
        who = {"src": u, "dst": v, "edge": e}[kind]
        if kind == "src":  # negative source ids wrap like the gather they replace
            rows = const(spec.shapes[i][0], "int64")
            who = tirx.Select(_i64(u) < const(0, "int64"), _i64(u) + rows, _i64(u))
        return ops[i][_i64(who) * const(_prod(row), "int64") + off]

    return load


def _finish(spec: AggregateSpec, acc: Any, deg: Any, base: Any, out: Any, v: Any, lin: Any, acc_dt: str,
            combine: Callable[[Any, Any], Any]) -> None:
    """out[v, lin] from the accumulated value: the base (include_self or empty segments), the mean."""
    dt = spec.dtype
    val, cnt = acc, _i64(deg)
    flat = _i64(v) * const(_prod(spec.out_row), "int64") + lin
    if base is not None and spec.include_self:
        val = combine(val, cast(acc_dt, base[flat]))
        cnt = cnt + const(1, "int64")
    if spec.reduce == "mean":
        c = tirx.max(cnt, const(1, "int64"))
        val = val / cast(acc_dt, c) if is_float(acc_dt) else tirx.floordiv(val, c)
    empty = base[flat] if base is not None else const(0, dt)
    out[flat] = tirx.Select(cnt > const(0, "int64"), cast(dt, val), empty)


_CPU_CHUNKS = 256  # vertex ranges handed to the thread pool; the row buffers are allocated once per range


def _cpu_body(spec: AggregateSpec, ptr: Any, order: Any, col: Any, ops: Sequence[Any], base: Any, out: Any,
              ident: dict[str, Any], combine: Callable[[Any, Any], Any], acc_dt: str, n: int, ro: int,
              rs: int) -> None:
    dt = spec.dtype
    sdt = "float32" if dt == "float16" else dt
    chunks = min(n, _CPU_CHUNKS)
    deferred = bool(spec.score) and linear_in_alpha(spec.message, spec.reduce)
    with T.parallel(0, chunks) as c:
        with T.seq_scope():
            # Per-range buffers: TVM would heap-allocate a buffer declared inside the vertex loop once per vertex.
            acc = T.buffer_proxy(T.alloc_buffer([ro], acc_dt, scope="local"))
            if spec.score:
                mx = T.buffer_proxy(T.alloc_buffer([rs], sdt, scope="local"))  # running max per score element
                sm = T.buffer_proxy(T.alloc_buffer([rs], sdt, scope="local"))  # running Σ exp(score - max)
                alpha = T.buffer_proxy(T.alloc_buffer([rs], dt, scope="local"))
            lo = _i64(c) * const(n, "int64") // const(chunks, "int64")
            hi = (_i64(c) + const(1, "int64")) * const(n, "int64") // const(chunks, "int64")
            with T.serial(lo, hi) as v:
                start, end = T.bind(ptr[v]), T.bind(ptr[v + 1])
                alpha_load = None
                if spec.score:
                    with T.serial(0, rs) as s:
                        mx[s] = lowest(sdt)
                        sm[s] = const(0, sdt)
                    with T.serial(start, end) as k:
                        e, u = T.bind(order[k]), T.bind(col[k])
                        score = RowExpr(spec.score, spec.score_rows, spec.rows, _loader(spec, ops, v, e, u, None), dt)

                        def online(idx: list[Any], score: RowExpr = score) -> None:
                            s = _linear(idx, spec.score_row)
                            x = T.bind(cast(sdt, score(idx)))
                            if deferred:  # the max only; the sum comes with the messages
                                mx[s] = tirx.max(mx[s], x)
                                return
                            m_new = T.bind(tirx.max(mx[s], x))
                            sm[s] = sm[s] * tirx.exp(mx[s] - m_new) + tirx.exp(x - m_new)
                            mx[s] = m_new

                        _row_loop(spec.score_row, online, unroll=True)

                    def alpha_load(idx: list[Any]) -> Any:
                        return alpha[_linear(idx, spec.score_row)]

                with T.serial(0, ro) as j:
                    acc[j] = ident[spec.reduce]
                with T.serial(start, end) as k:
                    e, u = T.bind(order[k]), T.bind(col[k])
                    load = _loader(spec, ops, v, e, u, alpha_load)
                    if spec.score:
                        score = RowExpr(spec.score, spec.score_rows, spec.rows, _loader(spec, ops, v, e, u, None), dt)

                        def prob(idx: list[Any], score: RowExpr = score) -> None:
                            s = _linear(idx, spec.score_row)
                            ex = T.bind(tirx.exp(cast(sdt, score(idx)) - mx[s]))
                            if deferred:  # one exp per edge and score element; normalised once per vertex
                                sm[s] = sm[s] + ex
                                alpha[s] = cast(dt, ex)
                            else:
                                alpha[s] = cast(dt, ex / sm[s])

                        _row_loop(spec.score_row, prob, unroll=True)
                    msg = RowExpr(spec.message, spec.message_rows, spec.rows, load, dt)
                    _row_loop(spec.out_row, lambda idx: _accumulate(acc, idx, spec, msg, combine, acc_dt))
                deg = end - start
                if deferred:
                    def fin(idx: list[Any]) -> None:
                        lin = _linear(idx, spec.out_row)
                        den = sm[_linear(_alpha_index(spec, idx), spec.score_row)]
                        val = tirx.Select(den > const(0, sdt), acc[lin] / cast(acc_dt, den), acc[lin])
                        _finish(spec, val, deg, base, out, v, lin, acc_dt, combine)

                    _row_loop(spec.out_row, fin)
                else:
                    with T.serial(0, ro) as j:
                        _finish(spec, acc[j], deg, base, out, v, _i64(j), acc_dt, combine)


def _accumulate(acc: Any, idx: list[Any], spec: AggregateSpec, msg: RowExpr, combine: Any, acc_dt: str) -> None:
    lin = _linear(idx, spec.out_row)
    acc[lin] = combine(acc[lin], cast(acc_dt, msg(idx)))


_UNROLL = 8  # score rows up to this size are unrolled at build time (constant indices keep them in registers)


def _row_loop(shape: Sequence[int], body: Callable[[list[Any]], None], unroll: bool = False) -> None:
    """Run `body(idx)` under nested serial loops over a row shape (innermost = contiguous features); with `unroll`,
    a small row is instead emitted element by element."""
    if not shape:
        body([])
        return
    if unroll and _prod(shape) <= _UNROLL:
        for idx in itertools.product(*[range(int(d)) for d in shape]):
            body([const(i, "int64") for i in idx])
        return
    with T.grid(*[int(d) for d in shape]) as idx:
        body([idx] if isinstance(idx, tvm.ir.expr.Expr) else list(idx))


def _cuda_body(spec: AggregateSpec, ptr: Any, order: Any, col: Any, ops: Sequence[Any], base: Any, out: Any,
               ident: dict[str, Any], combine: Callable[[Any, Any], Any], acc_dt: str, n: int, ro: int,
               rs: int) -> None:
    from tvm import te

    dt = spec.dtype
    sdt = "float32" if dt == "float16" else dt
    nt = max(32, -(-ro // 32) * 32)
    bx, tx = te.thread_axis("blockIdx.x"), te.thread_axis("threadIdx.x")
    with T.frame_scope([T.attr(bx, "thread_extent", n), T.attr(tx, "thread_extent", nt)]):
        v, j = bx.var, tx.var
        with T.If(j < ro):
            with T.Then():
                # this thread's output element, and the score element it depends on (one per head)
                idx, rem = [], _i64(j)
                for d in reversed(spec.out_row):
                    idx.append(tirx.floormod(rem, const(int(d), "int64")))
                    rem = tirx.floordiv(rem, const(int(d), "int64"))
                idx.reverse()
                start, end = T.bind(ptr[v]), T.bind(ptr[v + 1])
                with T.seq_scope():
                    acc = T.buffer_proxy(T.alloc_buffer([1], acc_dt, scope="local"))
                    alpha_load = None
                    if spec.score:
                        st = T.buffer_proxy(T.alloc_buffer([2], sdt, scope="local"))  # running max, sum
                        st[0], st[1] = lowest(sdt), const(0, sdt)
                        s_idx = _alpha_index(spec, idx)
                        with T.serial(start, end) as k:
                            e, u = T.bind(order[k]), T.bind(col[k])
                            score = RowExpr(spec.score, spec.score_rows, spec.rows,
                                            _loader(spec, ops, v, e, u, None), dt)
                            x = T.bind(cast(sdt, score(s_idx)))
                            m_new = T.bind(tirx.max(st[0], x))
                            st[1] = st[1] * tirx.exp(st[0] - m_new) + tirx.exp(x - m_new)
                            st[0] = m_new

                    acc[0] = ident[spec.reduce]
                    with T.serial(start, end) as k:
                        e, u = T.bind(order[k]), T.bind(col[k])
                        if spec.score:
                            score = RowExpr(spec.score, spec.score_rows, spec.rows,
                                            _loader(spec, ops, v, e, u, None), dt)

                            def alpha_load(aidx: list[Any], score: RowExpr = score) -> Any:
                                x = cast(sdt, score(list(aidx)))
                                return cast(dt, tirx.exp(x - st[0]) / st[1])

                        msg = RowExpr(spec.message, spec.message_rows, spec.rows,
                                      _loader(spec, ops, v, e, u, alpha_load), dt)
                        acc[0] = combine(acc[0], cast(acc_dt, msg(idx)))
                    _finish(spec, acc[0], end - start, base, out, v, _i64(j), acc_dt, combine)


def _alpha_index(spec: AggregateSpec, idx: list[Any]) -> list[Any]:
    """The alpha element that the output element `idx` reads: found by a dry run of the message expression
    (a thread keeps softmax statistics for one score element, so the message must read alpha at one index)."""
    seen: list[list[Any]] = []

    def record(ref: str, aidx: list[Any]) -> Any:
        if ref == "alpha":
            seen.append(aidx)
        return const(0, spec.dtype)

    RowExpr(spec.message, spec.message_rows, spec.rows, record, spec.dtype)(list(idx))
    if len(seen) != 1:
        raise BackendError(f"gather_aggregate: the message must read alpha exactly once here, not {len(seen)}x")
    return seen[0]
