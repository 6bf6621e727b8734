"""Fused int8 CPU kernels: requantize in the VNNI GEMM epilogue (kernels/int8.py, int8_fuse.py), channels-last
activations between template convolutions, and the integer qmatmul template (kernels/int8_matmul.py). Every
kernel is compared bit for bit with the op references on odd shapes."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from qcc.ir.ops import evaluate

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from qcc.backends.tvm.host import cpu_flags, target_dict  # noqa: E402
from qcc.backends.tvm.kernels import int8 as K  # noqa: E402
from qcc.backends.tvm.kernels import int8_matmul as MM  # noqa: E402
from qcc.target import Target  # noqa: E402

needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX-512 VNNI")
rng = np.random.default_rng(11)


def _rand(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if dtype == "i8" else np.uint8)


def _run(func: Any, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target_dict(Target("cpu-int8"))))
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in (*arrays, out)]
    lib["main"](*args)
    return args[-1].numpy()


def _requant_ref(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, attrs: dict[str, Any],
                 axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    return evaluate("requantize", [acc, mult.reshape(shape), shift.reshape(shape)], attrs)[0]


@needs_vnni
@pytest.mark.parametrize("xd,shape,o,k,stride,pad,per_channel,out_dt,lo,layout", [
    ("i8", (1, 5, 11, 9), 19, 3, (2, 1), (1, 0, 2, 1), True, "u8", 3, "NCHW"),
    ("u8", (2, 3, 7, 6), 5, 1, (1, 1), (0, 0, 0, 0), False, "i8", None, "NHWC"),
    ("i8", (1, 17, 6, 7), 33, 2, (1, 2), (1, 1, 0, 0), True, "i8", -20, "NHWC"),
    ("u8", (1, 8, 7, 9), 20, 1, (2, 2), (0, 0, 0, 0), True, "u8", None, "NHWC"),  # the input read in place
])
def test_conv_with_fused_requantize_is_bit_exact(xd: str, shape: tuple[int, ...], o: int, k: int,
                                                 stride: tuple[int, int], pad: tuple[int, ...], per_channel: bool,
                                                 out_dt: str, lo: int | None, layout: str) -> None:
    x, w = _rand(xd, shape), _rand("i8", (o, shape[1], k, k))
    b = rng.integers(-5000, 5000, (o,)).astype(np.int32)
    attrs = {"stride": stride, "padding": pad, "dilation": (1, 1), "groups": 1, "x_zero_point": 9, "w_zero_point": 0}
    acc = evaluate("qconv2d", [x, w, b], attrs)[0]
    nc = o if per_channel else 1
    mult = rng.integers(1 << 18, 1 << 22, (nc,)).astype(np.int64)
    shift = rng.integers(22, 30, (nc,)).astype(np.int32)
    rq_attrs = {"dtype": out_dt, "zero_point": -3 if out_dt == "i8" else 7, "min": lo, "max": None,
                "input_zero_point": 2}
    ref = _requant_ref(acc, mult, shift, rq_attrs, 1)
    rq = K.Requant(mult, shift, 2, rq_attrs["zero_point"], out_dt, lo, None)
    wp, bp = K.pack_conv_weight(w, xd, 9, b)
    xin = x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x
    nb, _, oh, ow = acc.shape
    got = _run(K.qconv2d_kernel(xin.shape, xd, w.shape, acc.shape, stride, pad, (1, 1), 9, rq=rq, x_layout=layout),
               xin, wp, bp, *rq.arrays(len(bp)), out=np.zeros((nb * oh * ow, o), ref.dtype))
    assert np.array_equal(got.reshape(nb, oh, ow, o).transpose(0, 3, 1, 2), ref)


@needs_vnni
def test_qlinear_with_fused_requantize_is_bit_exact() -> None:
    x, w = _rand("u8", (13, 41)), _rand("i8", (23, 41))
    acc = evaluate("qlinear", [x, w], {"x_zero_point": 100, "w_zero_point": 0, "group_size": None})[0]
    mult, shift = np.array([1 << 20], np.int64), np.array([27], np.int32)
    attrs = {"dtype": "u8", "zero_point": 128, "min": None, "max": 200, "input_zero_point": 0}
    ref = _requant_ref(acc, mult, shift, attrs, -1)
    rq = K.Requant(mult, shift, 0, 128, "u8", None, 200)
    wp, bp = K.pack_weight(w, "u8", 100, None)
    got = _run(K.qlinear_kernel(x.shape, "u8", 23, 100, rq=rq), x, wp, bp, out=np.zeros(ref.shape, np.uint8))
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("bt,m,k,n,ad,za,bd,zb", [(2, 9, 13, 35, "i8", 3, "i8", -2),
                                                  (3, 8, 64, 32, "u8", 200, "i8", 0)])
def test_qmatmul_kernel_is_bit_exact(bt: int, m: int, k: int, n: int, ad: str, za: int, bd: str, zb: int) -> None:
    a, b = _rand(ad, (bt, m, k)), _rand(bd, (bt, k, n))
    ref = evaluate("qmatmul", [a, b], {"a_zero_point": za, "b_zero_point": zb})[0]
    got = _run(MM.qmatmul_kernel(bt, m, k, n, ad, za, bd, zb), a, b, out=np.zeros(ref.shape, np.int32))
    assert np.array_equal(got, ref)
    assert MM.fits_int32("u8", 0, "i8", 0, 65000) and not MM.fits_int32("u8", 0, "i8", 0, 66000)


def _chain() -> tuple[Any, list[np.ndarray]]:
    """conv → requantize → conv → requantize → qadd(residual) → qmatmul, on odd shapes."""
    from qcc.ir.graph import GraphBuilder

    b = GraphBuilder()
    x = b.input((1, 3, 7, 9), "i8", "x")
    conv = {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1, "w_zero_point": 0}

    def block(v: Any, c: int, o: int, zx: int, name: str) -> Any:
        acc = b.emit("qconv2d", [v, b.param(_rand("i8", (o, c, 3, 3)), f"w{name}"),
                                 b.param(rng.integers(-99, 99, (o,)).astype(np.int32), f"b{name}")],
                     {**conv, "x_zero_point": zx})
        mult = b.param(rng.integers(1 << 20, 1 << 21, (1, o, 1, 1)).astype(np.int32), f"m{name}")
        return b.emit("requantize", [acc, mult, b.param(np.array([28], np.int32), f"s{name}")],
                      {"dtype": "u8", "zero_point": 5, "min": 5})

    y1 = block(x, 3, 6, -4, "1")
    y2 = block(y1, 6, 6, 5, "2")
    s = b.emit("qadd", [y1, y2], {"a_zero_point": 5, "b_zero_point": 5, "a_multiplier": 3, "b_multiplier": 5,
                                  "shift": 3, "zero_point": 1, "dtype": "u8"})
    r = b.emit("reshape", [s], {"shape": (1, 6, 63)})
    t = b.emit("transpose", [r], {"perm": (0, 2, 1)})
    mm = b.emit("qmatmul", [r, t], {"a_zero_point": 1, "b_zero_point": 1})
    return b.output(mm), [_rand("i8", (1, 3, 7, 9))]


@needs_vnni
def test_lowered_chain_fuses_and_stays_exact() -> None:
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower

    graph, inputs = _chain()
    lowered = lower(graph, templates=False)
    names = [gv.name_hint for gv, _ in lowered.mod.functions_items()]
    def count(pattern: str) -> int:
        return sum(re.fullmatch(pattern, n) is not None for n in names)

    assert count(r"qconv2d_vnni_rq\d*") == 2 and any("qmatmul_int" in n for n in names)
    assert not any(n.startswith("requantize") for n in names)  # both requantizes live in GEMM epilogues
    # the qadd lives in the epilogue of the second conv (the later one), which reads the first one's NHWC output
    assert count(r"qconv2d_vnni_rq_add\d*") == 1 and not any(n.startswith("qadd") for n in names)
    x_shapes = sorted([int(d) for d in f.params[0].shape] for gv, f in lowered.mod.functions_items()
                      if "vnni_rq" in gv.name_hint)
    assert x_shapes == [[1, 3, 7, 9], [1, 7, 9, 6], [1, 7, 9, 6]]
    got = build(graph, Target("cpu-int8", num_threads=2)).run(inputs)[0]
    assert np.array_equal(got, qcc.interpret(graph, inputs)[0])
