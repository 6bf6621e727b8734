"""Fast CPU row kernels of the integer nonlinears (kernels/int8_nonlinear.py) and the fused qmatmul schedule
(kernels/int8_matmul.py): bit for bit against the op references, on odd shapes, in both the int32 and the int64
working precision, with the rows that stress the edges (constant rows, full-range rows)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qcc.ir.ops import evaluate
from qcc.ir.ops.quant_nonlinear import isqrt_newton

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from qcc.backends.tvm.host import cpu_flags, target_dict  # noqa: E402
from qcc.backends.tvm.kernels import int8_nonlinear as NL  # noqa: E402
from qcc.target import Target  # noqa: E402

rng = np.random.default_rng(7)
NP = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32}
LIMITS = {"i8": (-128, 127), "u8": (0, 255), "i16": (-32768, 32767), "i32": (-(2**31), 2**31 - 1)}
# isoftmax constants of an i16 score at scale ~5e-5 (the BERT encoder's), and a k that forces int64
ISOFTMAX = {"ln2": 13769, "b": 26877, "c": 378654974, "n": 30, "k": 0}


def _run(func: Any, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target_dict(Target("cpu-int8"))))
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in (*arrays, out)]
    lib["main"](*args)
    return args[-1].numpy()


def _rows(dtype: str, rows: int, n: int, span: int | None = None) -> np.ndarray:
    lo, hi = LIMITS[dtype]
    if span is not None:
        lo, hi = max(lo, -span), min(hi, span)
    x = rng.integers(lo, hi + 1, (rows, n))
    x[0] = lo  # a constant row
    x[1, :] = lo
    x[1, ::3] = hi  # a full-range row
    return x.astype(NP[dtype])


@pytest.mark.parametrize("op,dtype,attrs,wt", [
    ("isoftmax", "i16", ISOFTMAX, "int32"),
    ("isoftmax", "i16", {**ISOFTMAX, "k": 3}, "int64"),
    ("isoftmax", "i8", {"ln2": 40, "b": 80, "c": 2000, "n": 30, "k": 4}, "int32"),
    ("shiftmax", "i16", {"one": 9000, "n": 15, "k": 2}, "int32"),
    ("shiftmax", "u8", {"one": 30, "n": 30, "k": 0}, "int32"),
])
@pytest.mark.parametrize("rows,n", [(5, 37), (4, 64)])
def test_softmax_kernel_is_bit_exact(op: str, dtype: str, attrs: dict[str, int], wt: str, rows: int, n: int) -> None:
    assert NL.softmax_work_dtype(dtype, op, attrs) == wt
    x = _rows(dtype, rows, n)
    want = evaluate(op, [x], {"axis": 1, **attrs})[0]
    got = _run(NL.softmax_kernel(rows, n, dtype, op, attrs), x, out=np.zeros((rows, n), np.uint8))
    assert np.array_equal(got, want)


def _ln_params(c: int, dtype: str = "i32") -> list[np.ndarray]:
    mult = rng.integers(1 << 29, 1 << 30, c).astype(NP[dtype])
    shift = rng.integers(28, 34, c).astype(NP[dtype])
    bias = rng.integers(-20, 20, c).astype(NP[dtype])
    return [mult, shift, bias]


@pytest.mark.parametrize("dtype,sqrt,out,rows,c", [("i8", "newton", "i8", 6, 48), ("i16", "newton", "i16", 3, 20),
                                                   ("i8", "ivit", "u8", 5, 32), ("i32", "newton", "i8", 3, 16)])
def test_layer_norm_kernel_is_bit_exact(dtype: str, sqrt: str, out: str, rows: int, c: int) -> None:
    x = _rows(dtype, rows, c, span=1 << 20)  # keeps C³·(max − min)² < 2^63 for i32
    params = _ln_params(c)
    attrs = {"axis": 1, "sqrt": sqrt, "zero_point": 3 if out == "u8" else 0, "dtype": out}
    want = evaluate("ilayer_norm", [x, *params], attrs)[0]
    func = NL.layer_norm_kernel(rows, c, dtype, ("int32",) * 3, sqrt, attrs["zero_point"], out)
    got = _run(func, x, *params, out=np.zeros((rows, c), want.dtype))
    assert np.array_equal(got, want)
    assert NL.layer_norm_work_dtype(dtype, c) == ("int64" if dtype == "i32" else "int32")


def test_layer_norm_kernel_with_known_positive_shifts_is_bit_exact() -> None:
    x = _rows("i8", 4, 32)
    params = _ln_params(32)  # shifts in [28, 34): the kernel drops the left-shift branch
    want = evaluate("ilayer_norm", [x, *params], {"axis": 1, "sqrt": "newton", "zero_point": 0, "dtype": "i8"})[0]
    func = NL.layer_norm_kernel(4, 32, "i8", ("int32",) * 3, "newton", 0, "i8", positive_shift=True)
    assert np.array_equal(_run(func, x, *params, out=np.zeros((4, 32), np.int8)), want)


def test_digit_square_root_is_the_exact_floor() -> None:
    """The kernel's digit-by-digit square root (numpy model of its stages) equals `isqrt_newton`."""
    r = rng.integers(0, 3037000499, 4000, dtype=np.int64)
    v = np.concatenate([rng.integers(0, 2**63 - 1, 4000, dtype=np.int64), r * r, r * r - 1, r * r + 1,
                        np.arange(0, 2000, dtype=np.int64), np.array([2**63 - 1, 2**62, 2**62 - 1], np.int64)])
    v = v[v >= 0]
    rem, res = v.copy(), np.zeros_like(v)
    for step in range(32):
        bit = np.int64(1) << np.int64(62 - 2 * step)
        ge = rem >= res + bit
        rem = np.where(ge, rem - res - bit, rem)
        res = np.where(ge, (res >> 1) + bit, res >> 1)
    assert np.array_equal(res, isqrt_newton(v))


def _attention_block(za: int, zv: int) -> tuple[Any, list[np.ndarray]]:
    """An encoder block's integer core on small shapes: head split (reshape + transpose), Q·Kᵀ → requantize →
    requantize → isoftmax → P·V → requantize, merge; then igelu → requantize and ilayer_norm."""
    from qcc.ir.graph import GraphBuilder

    b = GraphBuilder()
    s, h, d = 16, 2, 32
    q, k, v = (b.input((1, s, h * d), "i8", n) for n in ("q", "k", "v"))

    def heads(t: Any, perm: tuple[int, ...]) -> Any:
        return b.emit("transpose", [b.emit("reshape", [t], {"shape": (1, s, h, d)})], {"perm": perm})

    def rq(t: Any, m: int, sh: int, dt: str, name: str) -> Any:
        return b.emit("requantize", [t, b.param(np.array(m, np.int32), f"m{name}"),
                                     b.param(np.array(sh, np.int32), f"s{name}")], {"dtype": dt})

    scores = b.emit("qmatmul", [heads(q, (0, 2, 1, 3)), heads(k, (0, 2, 3, 1))],
                    {"a_zero_point": za, "b_zero_point": 0})
    p = b.emit("isoftmax", [rq(rq(scores, 1084792483, 22, "i16", "1"), 1073741824, 30, "i16", "2")],
               {"axis": 3, **ISOFTMAX})
    ctx = rq(b.emit("qmatmul", [p, heads(v, (0, 2, 1, 3))], {"a_zero_point": 0, "b_zero_point": zv}),
             1277303933, 35, "i8", "3")
    merged = b.emit("reshape", [b.emit("transpose", [ctx], {"perm": (0, 2, 1, 3)})], {"shape": (1, s, h * d)})
    g = rq(b.emit("igelu", [merged], {"b": 98, "one": 10648, "shift": 0}), 1983563511, 45, "i8", "4")
    ln = b.emit("ilayer_norm", [g, *(b.param(a, f"ln{i}") for i, a in enumerate(_ln_params(h * d)))],
                {"axis": 2, "sqrt": "newton"})
    return b.output(ln), [_rows("i8", s, h * d).reshape(1, s, h * d) for _ in range(3)]


@pytest.mark.parametrize("za,zv", [(0, 0), (-3, 5)])
def test_attention_block_kernels_are_bit_exact(za: int, zv: int) -> None:
    import qcc
    from qcc.backends.tvm import build

    graph, inputs = _attention_block(za, zv)
    exe = build(graph, Target("cpu-int8", num_threads=2), fusion="auto")
    assert np.array_equal(exe.run(inputs)[0], qcc.interpret(graph, inputs)[0])
    groups = [ops for _, ops in exe.kernels.values()]
    # the head split is read and the head merge written inside the qmatmul kernels: no transpose kernel left
    assert sum(1 for ops in groups if ops[:2] == ["reshape", "transpose"] and "qmatmul" in ops) == 2
    assert any(ops[-3:] == ["requantize", "transpose", "reshape"] and "qmatmul" in ops for ops in groups)
    assert not any(ops[0] == "transpose" for ops in groups)
    assert ["isoftmax"] in groups and ["ilayer_norm"] in groups


def test_work_dtypes_follow_the_ranges() -> None:
    assert NL.gelu_work_dtype("i8", 98, 10648) == "int32"
    assert NL.gelu_work_dtype("i16", 98, 10648) == "int32"  # 32768 · (10648 + 10648) < 2^31
    assert NL.gelu_work_dtype("i16", 300, 10648) == "int64"  # 32768 · (10648 + 90000) ≥ 2^31
    assert NL.softmax_work_dtype("i32", "isoftmax", ISOFTMAX) == "int64"
    assert NL.layer_norm_work_dtype("i16", 1 << 16) == "int64"


@pytest.mark.parametrize("vnni", ["1", "0"])
def test_fused_qmatmul_kernels_are_scheduled(vnni: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both forms (VNNI, and the int32 tile without it) take every fused qmatmul kernel of the block, the head
    merge included, and stay exact."""
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.kernels import int8_matmul as MM
    from qcc.backends.tvm.lower import lower
    from qcc.backends.tvm.lower_fused import ensure_meta

    if vnni == "1" and "avx512_vnni" not in cpu_flags():
        pytest.skip("needs AVX-512 VNNI")
    monkeypatch.setenv("QCC_INT8_VNNI", vnni)
    graph, inputs = _attention_block(-3, 5)
    tgt = tvm.target.Target(target_dict(Target("cpu-int8")))
    with tgt:
        mod = lower(ensure_meta(graph, "cpu", "auto"), templates=False, fusion="auto").mod
    fused = [f for gv, f in mod.functions_items() if "qmatmul" in gv.name_hint]
    assert len(fused) == 2
    for f in fused:
        assert ("qmatmul_vnni" in f.script()) == (vnni == "1")
        assert MM.schedule_fused(f, tgt) is not None
    exe = build(graph, Target("cpu-int8", num_threads=2), fusion="auto")
    assert np.array_equal(exe.run(inputs)[0], qcc.interpret(graph, inputs)[0])
