"""Row kernels for the integer nonlinears on the CPU: isoftmax / shiftmax and ilayer_norm over the last axis.

The generic lowering (lower_quant_nonlinear) mirrors the references stage by stage in int64 and leaves the loop
nest to the default schedule. Here each op is one kernel over a [rows, n] view of its input: rows run in
parallel and every per-row value (max, sum, variance, square root, factor) is computed inside the row loop, so
a row is read from memory once and its intermediates stay in cache; the elementwise stages are vectorised.

Bit-exactness: every stage is the reference's formula. Values are held in int32 where a bound computed from
the input dtype's range and the op's integer attributes proves the int64 reference never leaves int32 (the
bounds are derived next to each kernel); otherwise the same expressions run in int64. Shifts by a per-element
amount are clamped to the word size: the reference shifts a non-negative int64 below 2^31 right by z, which
is 0 for every z ≥ 31, exactly like the clamped int32 shift.

The integer square root is float-free. `sqrt="newton"` is the exact floor ⌊√v⌋ (what I-BERT's Newton loop in
the reference converges to), computed digit by digit without division; `sqrt="ivit"` is I-ViT's ten Newton
steps exactly as the reference.
"""

from __future__ import annotations

from typing import Any

from qcc.ir.ops import quant_nonlinear as ref
from qcc.ir.ops.quant import INT_RANGES

I32_MAX = 2**31 - 1
LANES = 16
CHUNK = 8  # ilayer_norm rows per parallel task: their square roots fill one 8 × int64 vector


def _c(v: int, dt: str) -> Any:
    from tvm import tirx

    return tirx.const(int(v), dt)


def softmax_work_dtype(in_dtype: str, kind: str, attrs: dict[str, int]) -> str:
    """"int32" when the i-exp / ShiftExp of every x − max(x) of an `in_dtype` row stays in int32, else "int64".

    With x ∈ [lo, hi], d = x − max ∈ [−(hi − lo), 0].
    isoftmax: d' = max(d, −n·ln2) ≥ −n·ln2; z = ⌊−d'/ln2⌋ ≥ 0, z·ln2 ≤ −d'; p = d' + z·ln2 ∈ (−ln2, 0];
      (p + b)² + c ≤ max(b, |b − ln2 + 1|)² + c with c ≥ 0 (so the result is ≥ 0), shifted left by k.
    shiftmax: |d + (d >> 1) − (d >> 4)| ≤ 2·|d| + 1; r ∈ (−one, 0]; (r >> 1) + one ∈ (0, one], shifted by k."""
    lo, hi = INT_RANGES[in_dtype]
    span = hi - lo
    n, k = attrs["n"], attrs["k"]
    if kind == "isoftmax":
        ln2, b, c = attrs["ln2"], attrs["b"], attrs["c"]
        top = (max(abs(b), abs(b - ln2 + 1)) ** 2 + c) << k
        ok = c >= 0 and span <= I32_MAX and n * ln2 <= I32_MAX and top <= I32_MAX
    else:
        one = attrs["one"]
        ok = 2 * span + 1 <= I32_MAX and n * one <= I32_MAX and (one << k) <= I32_MAX
    return "int32" if ok else "int64"


def _i_exp(d: Any, a: dict[str, int], wt: str) -> Any:
    from tvm import tirx

    ln2 = _c(a["ln2"], wt)
    x = tirx.max(d, _c(-a["n"] * a["ln2"], wt))
    z = tirx.truncdiv(-x, ln2)  # −x ≥ 0: truncation is the reference's floor
    p = x + z * ln2
    poly = (p + _c(a["b"], wt)) * (p + _c(a["b"], wt)) + _c(a["c"], wt)
    return tirx.shift_right(tirx.shift_left(poly, _c(a["k"], wt)), tirx.min(z, _c(31 if wt == "int32" else 63, wt)))


def _shift_exp(d: Any, a: dict[str, int], wt: str) -> Any:
    from tvm import tirx

    one = _c(a["one"], wt)
    x = d + tirx.shift_right(d, _c(1, wt)) - tirx.shift_right(d, _c(4, wt))
    x = tirx.max(x, _c(-a["n"] * a["one"], wt))
    z = tirx.truncdiv(-x, one)
    e = tirx.shift_right(x + z * one, _c(1, wt)) + one
    return tirx.shift_right(tirx.shift_left(e, _c(a["k"], wt)), tirx.min(z, _c(31 if wt == "int32" else 63, wt)))


def gelu_work_dtype(in_dtype: str, b: int, one: int) -> str:
    """"int32" when igelu's int64 reference stays in int32 for every `in_dtype` input q (|q| ≤ Q):
    d = min(|q|, b) − b ∈ [−b, 0], d² ≤ b²; |one ± (one − d²)| ≤ one + max(one, b²) =: T (one ≥ 0), and a right
    shift only shrinks it; |q·T| ≤ Q·T. With b² and Q·T below 2^31 every intermediate fits, and the product is
    the reference's value before its int32 cast (which it then fits)."""
    lo, hi = INT_RANGES[in_dtype]
    top = one + max(one, b * b)
    ok = one >= 0 and b * b <= I32_MAX and max(abs(lo), abs(hi)) * top <= I32_MAX
    return "int32" if ok else "int64"


def _row_reduce(kind: str, value: Any, rows: int, n: int, name: str) -> tuple[Any, list[str]]:
    """Per-row sum / max of value(i, j) over j < n, in two levels when n splits into LANES-wide columns: a
    [rows, LANES] partial (stage `name`_part, vectorised across the lanes by `_vectorize_partials`), then the
    LANES partials. Integer sums and maxima are exact in any order. Returns (result, stage names)."""
    from tvm import te

    red = te.sum if kind == "sum" else te.max
    if n % LANES or n == LANES:
        r = te.reduce_axis((0, n), name=f"{name}_j")
        return te.compute((rows,), lambda i: red(value(i, r), axis=r), name=name), [name]
    jo = te.reduce_axis((0, n // LANES), name=f"{name}_jo")
    part = te.compute((rows, LANES), lambda i, lane: red(value(i, jo * LANES + lane), axis=jo), name=f"{name}_part")
    lr = te.reduce_axis((0, LANES), name=f"{name}_l")
    return te.compute((rows,), lambda i: red(part[i, lr], axis=lr), name=name), [name, f"{name}_part"]


def _vectorize_partials(sch: Any, names: list[str]) -> None:
    """Lanes innermost for each `_part` stage (after it is placed): (j-blocks, lanes), initialised and updated
    as LANES-wide vectors."""
    for name in names:
        if not name.endswith("_part"):
            continue
        blk = sch.get_sblock(name)
        lane, jo = sch.get_loops(blk)[-2:]
        sch.reorder(jo, lane)
        init = sch.decompose_reduction(blk, jo)
        sch.vectorize(sch.get_loops(init)[-1])
        # (the update's lane loop has no carried dependence: LLVM vectorises it; the schedule's vectorize
        # refuses a reduction block whose init sits in the same subtree)


def softmax_kernel(rows: int, n: int, in_dtype: str, kind: str, attrs: dict[str, int]) -> Any:
    """PrimFunc (x [rows, n] in_dtype) → u8 [rows, n]: isoftmax or shiftmax along the last axis."""
    from tvm import te, tirx

    from qcc.backends.tvm.lower_base import TVM_DTYPES

    wt = softmax_work_dtype(in_dtype, kind, attrs)
    exp = _i_exp if kind == "isoftmax" else _shift_exp
    x = te.placeholder((rows, n), TVM_DTYPES[in_dtype], name="x")
    mx, mx_stages = _row_reduce("max", lambda i, j: x[i, j].astype(wt), rows, n, "rowmax")
    e = te.compute((rows, n), lambda i, j: exp(x[i, j].astype(wt) - mx[i], attrs, wt), name="exp")
    total, sum_stages = _row_reduce("sum", lambda i, j: e[i, j].astype("int64"), rows, n, "rowsum")
    norm, shift = ref.SOFTMAX_NORM_BITS, ref.SOFTMAX_NORM_BITS - ref.SOFTMAX_OUT_BITS
    # factor ≤ 2^62 and e ≤ Σe, so e·factor ≤ 2^62: int64 (the reference's product)
    factor = te.compute((rows,), lambda i: tirx.floordiv(_c(1 << norm, "int64"),
                                                         tirx.max(total[i], _c(1, "int64"))), name="factor")

    def out(i: Any, j: Any) -> Any:
        y = tirx.shift_right(e[i, j].astype("int64") * factor[i] + _c(1 << (shift - 1), "int64"), _c(shift, "int64"))
        return tirx.min(y, _c(255, "int64")).astype("uint8")  # y ≥ 0

    y = te.compute((rows, n), out, name="softmax_out")
    return _row_schedule(te.create_prim_func([x, y]), "softmax_out", ["factor", *sum_stages, "exp", *mx_stages],
                         vector=["exp"])


def layer_norm_work_dtype(in_dtype: str, count: int) -> str:
    """"int32" when Σx and y = C·x − Σx fit int32 for `count` values of `in_dtype`: |Σx| ≤ C·max|x| and
    |y| ≤ C·(hi − lo)."""
    lo, hi = INT_RANGES[in_dtype]
    ok = count * max(abs(lo), abs(hi)) <= I32_MAX and count * (hi - lo) <= I32_MAX
    return "int32" if ok else "int64"


def _isqrt_digits(var: Any, rows: int) -> tuple[Any, list[str]]:
    """Exact ⌊√v⌋ of int64 0 ≤ v < 2^63 per row, digit by digit (two result bits per step, 32 steps from
    bit = 2^62, the largest power of 4 below 2^63): compares, subtractions and shifts only, so the [rows]
    stages vectorise across rows. res + bit < 2^32 + 2^62 never overflows. Returns (root, stage names)."""
    rem, res = var, None
    names = []
    for step in range(32):
        rem, res = _digit_step(rem, res, rows, 1 << (62 - 2 * step), step)
        names += [f"isqrt_rem{step}", f"isqrt_res{step}"]
    return res, names[:-2] + names[-1:]  # the last remainder is never read


def _digit_step(rem: Any, res: Any, rows: int, bit_value: int, step: int) -> tuple[Any, Any]:
    """One step of `_isqrt_digits`: if rem ≥ res + bit then rem −= res + bit, res = res/2 + bit, else res /= 2."""
    from tvm import te, tirx

    i64 = "int64"
    bit = _c(bit_value, i64)

    def cur(i: Any) -> Any:
        return _c(0, i64) if res is None else res[i]

    def ge(i: Any) -> Any:
        return rem[i] >= cur(i) + bit

    new_rem = te.compute((rows,), lambda i: tirx.Select(ge(i), rem[i] - cur(i) - bit, rem[i]),
                         name=f"isqrt_rem{step}")
    half = _c(1, i64)
    new_res = te.compute((rows,), lambda i: tirx.Select(ge(i), tirx.shift_right(cur(i), half) + bit,
                                                        tirx.shift_right(cur(i), half)), name=f"isqrt_res{step}")
    return new_rem, new_res


def _isqrt_ivit(var: Any, rows: int) -> tuple[Any, list[str]]:
    """I-ViT's square root: ten steps k ← max((k + v // k) >> 1, 1) from 2^16, then 0 where v = 0."""
    from tvm import te, tirx

    i64 = "int64"
    k = te.compute((rows,), lambda i: _c(1 << 16, i64), name="isqrt0")
    names = ["isqrt0"]
    def step_fn(prev: Any) -> Any:
        return lambda i: tirx.max(tirx.shift_right(prev[i] + tirx.floordiv(var[i], prev[i]), _c(1, i64)),
                                  _c(1, i64))

    for step in range(10):
        k = te.compute((rows,), step_fn(k), name=f"isqrt{step + 1}")
        names.append(f"isqrt{step + 1}")
    return k, names


def layer_norm_kernel(rows: int, count: int, in_dtype: str, params: tuple[str, str, str], sqrt: str,
                      zero_point: int, out_dtype: str, positive_shift: bool = False) -> Any:
    """PrimFunc (x [rows, count], multiplier [count], shift [count], bias [count]) → out_dtype [rows, count]:
    ilayer_norm over the last axis (`params`: the TVM dtypes of multiplier, shift, bias). `positive_shift`
    (every shift ≥ 1, known at compile time) drops the left-shift branch of the dyadic rounding.

    Per chunk of CHUNK rows (in parallel): Σx, Σy² (y = C·x − Σx recomputed, never stored), the chunk's square
    roots and factors (vectorised across its rows), its output."""
    from tvm import s_tir, te, tirx

    from qcc.backends.tvm.lower_base import TVM_DTYPES
    from qcc.backends.tvm.lower_quant import clamp_to, dyadic_scale

    wt = layer_norm_work_dtype(in_dtype, count)
    i64 = "int64"
    x = te.placeholder((rows, count), TVM_DTYPES[in_dtype], name="x")
    mult, sh, bias = (te.placeholder((count,), dt, name=nm) for dt, nm in zip(params, ("mult", "shift", "bias")))
    total, sum_stages = _row_reduce("sum", lambda i, j: x[i, j].astype(wt), rows, count, "rowsum")

    def y(i: Any, j: Any) -> Any:
        return _c(count, wt) * x[i, j].astype(wt) - total[i]

    var, var_stages = _row_reduce("sum", lambda i, j: y(i, j).astype(i64) * y(i, j).astype(i64), rows, count, "var")
    root, sqrt_stages = (_isqrt_digits if sqrt == "newton" else _isqrt_ivit)(var, rows)
    # std = max(isqrt(v), 1); both square roots give 0 for v = 0, the I-ViT one gives ≥ 1 otherwise
    factor = te.compute((rows,), lambda i: tirx.floordiv(_c(1 << 31, i64), tirx.max(root[i], _c(1, i64))),
                        name="factor")

    def out(i: Any, j: Any) -> Any:
        normed = tirx.shift_right(y(i, j).astype(i64) * factor[i], _c(1, i64))  # |normed| ≤ 2^31
        if positive_shift:
            c = sh[j].astype(i64)
            v = tirx.shift_right(normed * mult[j].astype(i64) + tirx.shift_left(_c(1, i64), c - _c(1, i64)), c)
        else:
            v = dyadic_scale(normed, mult[j], sh[j])
        v = v + bias[j].astype(i64) + _c(int(zero_point), i64)
        return clamp_to(v, out_dtype, TVM_DTYPES[out_dtype])

    o = te.compute((rows, count), out, name="ilayer_norm_out")
    sch = s_tir.Schedule(te.create_prim_func([x, mult, sh, bias, o]))
    # One parallel loop over chunks of CHUNK rows: per chunk Σx and Σy² of its rows, their square roots as
    # CHUNK-lane int64 vectors, then the chunk's output.
    orow, oj = sch.get_loops(sch.get_sblock("ilayer_norm_out"))
    chunk = CHUNK if rows % CHUNK == 0 else 1
    ro, _ = sch.split(orow, [None, chunk])
    sch.parallel(ro)
    stages = ["factor", *reversed(sqrt_stages), *var_stages, *sum_stages]
    for name in stages:
        sch.compute_at(sch.get_sblock(name), ro)
    _vectorize_partials(sch, stages)
    if chunk > 1:
        for name in ["factor", *sqrt_stages] if sqrt == "newton" else ():
            sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])
    sch.vectorize(sch.split(oj, [None, LANES])[1] if count % LANES == 0 and count > LANES else oj)
    return sch.mod["main"]


def _row_schedule(func: Any, out_name: str, stages: list[str], vector: list[str]) -> Any:
    """Rows in parallel; `stages` (consumers first) computed inside the row loop; the output and the `vector`
    stages vectorised in chunks of LANES."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    out = sch.get_sblock(out_name)
    row = sch.get_loops(out)[0]
    sch.parallel(row)
    for name in stages:
        sch.compute_at(sch.get_sblock(name), row)
    _vectorize_partials(sch, stages)
    for name in [*vector, out_name]:
        inner = sch.get_loops(sch.get_sblock(name))[-1]
        extent = int(sch.get(inner).extent)
        if extent % LANES == 0 and extent > LANES:
            _, inner = sch.split(inner, [None, LANES])
        sch.vectorize(inner)
    return sch.mod["main"]

