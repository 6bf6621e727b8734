"""The int8 CNN template beyond its VNNI core: the exact AVX2 fallback (int16 widening + vpmaddwd, compiled for an
AVX2-only CPU and run here), the channels-last 8-bit max pool, the requantize epilogue on edge values, and a
ResNet-style chain whose qadd and max pool stay channels-last in template kernels — all bit for bit against the
op references."""

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
from qcc.backends.tvm.kernels import int8_pool as P  # noqa: E402
from qcc.target import Target  # noqa: E402

needs_avx2 = pytest.mark.skipif("avx2" not in cpu_flags(), reason="needs AVX2")
needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX-512 VNNI")
AVX2_ONLY = {"kind": "llvm", "mcpu": "haswell", "mattr": ["+avx2", "+fma"]}  # no AVX-512 at all
rng = np.random.default_rng(5)


def _rand(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if dtype == "i8" else np.uint8)


def _run(func: Any, *arrays: np.ndarray, out: np.ndarray, target: Any = None) -> tuple[np.ndarray, Any]:
    tgt = tvm.target.Target(target or target_dict(Target("cpu-int8")))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tgt)
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in (*arrays, out)]
    lib["main"](*args)
    return args[-1].numpy(), lib


@needs_avx2
@pytest.mark.parametrize("xd,shape,o,k,stride,dil,zx", [
    ("i8", (1, 5, 9, 8), 19, 3, (2, 1), (1, 1), 9),  # window-run K layout (C % 4 != 0)
    ("u8", (1, 8, 6, 7), 24, 3, (1, 1), (2, 2), 200),  # (KH, KW, Cp) layout, dilated
])
def test_avx2_conv_is_bit_exact_without_avx512(xd: str, shape: tuple[int, ...], o: int, k: int,
                                               stride: tuple[int, int], dil: tuple[int, int], zx: int) -> None:
    x, w = _rand(xd, shape), _rand("i8", (o, shape[1], k, k))
    b = rng.integers(-5000, 5000, (o,)).astype(np.int32)
    pad = (1, 0, 2, 1)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": 1, "x_zero_point": zx, "w_zero_point": 0}
    ref = evaluate("qconv2d", [x, w, b], attrs)[0]
    wp, bp = K.pack_conv_weight(w, xd, zx, b, dilation=dil, isa="avx2")
    nb, _, oh, ow = ref.shape
    got, lib = _run(K.qconv2d_kernel(x.shape, xd, w.shape, ref.shape, stride, pad, dil, zx, isa="avx2"), x, wp, bp,
                    out=np.zeros((nb * oh * ow, o), np.int32), target=AVX2_ONLY)
    assert np.array_equal(got.reshape(nb, oh, ow, o).transpose(0, 3, 1, 2), ref)
    asm = lib.mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "zmm" not in asm and "vpdpbusd" not in asm


@needs_avx2
def test_avx2_qlinear_with_requantize_is_bit_exact() -> None:
    x, w = _rand("u8", (11, 37)), _rand("i8", (21, 37))
    acc = evaluate("qlinear", [x, w], {"x_zero_point": 3, "w_zero_point": 0, "group_size": None})[0]
    mult, shift = rng.integers(1 << 20, 1 << 22, (21,)).astype(np.int64), rng.integers(20, 26, (21,)).astype(np.int32)
    attrs = {"dtype": "i8", "zero_point": -4, "min": None, "max": None, "input_zero_point": 0}
    ref = evaluate("requantize", [acc, mult, shift], attrs)[0]
    rq = K.Requant(mult, shift, 0, -4, "i8")
    wp, bp = K.pack_weight(w, "u8", 3, None, isa="avx2")
    got, _ = _run(K.qlinear_kernel(x.shape, "u8", 21, 3, rq=rq, isa="avx2"), x, wp, bp, *rq.arrays(len(bp)),
                  out=np.zeros(ref.shape, np.int8), target=AVX2_ONLY)
    assert np.array_equal(got, ref)


def test_isa_follows_the_target_and_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCC_INT8_ISA", raising=False)
    monkeypatch.delenv("QCC_INT8_VNNI", raising=False)
    with tvm.target.Target(AVX2_ONLY):
        assert K.isa() == "avx2"
    with tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mattr": ["+avx2", "+avx512f", "+avx512vnni"]}):
        assert K.isa() == "vnni"
    with tvm.target.Target({"kind": "llvm", "mattr": ["+sse4.2"]}):
        assert K.isa() is None
    monkeypatch.setenv("QCC_INT8_ISA", "avx2")
    assert K.isa() == "avx2"
    monkeypatch.setenv("QCC_INT8_VNNI", "0")
    assert K.isa() is None


@pytest.mark.parametrize("dtype,shape,kernel,stride,pad,dil", [
    ("u8", (1, 9, 11, 64), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ("i8", (2, 7, 6, 5), (2, 3), (1, 2), (0, 1, 1, 0), (2, 1)),
])
def test_nhwc_max_pool_is_bit_exact(dtype: str, shape: tuple[int, ...], kernel: tuple[int, int],
                                    stride: tuple[int, int], pad: tuple[int, ...], dil: tuple[int, int]) -> None:
    x = _rand(dtype, shape)
    attrs = {"kernel": kernel, "stride": stride, "padding": pad, "dilation": dil, "ceil_mode": False}
    ref = evaluate("max_pool2d", [x.transpose(0, 3, 1, 2)], attrs)[0].transpose(0, 2, 3, 1)
    func = P.max_pool_nhwc_kernel(shape, "uint8" if dtype == "u8" else "int8", ref.shape[1:3], kernel, stride, pad,
                                  dil)
    got, _ = _run(func, x, out=np.zeros(ref.shape, x.dtype))
    assert np.array_equal(got, ref)


@needs_vnni
@pytest.mark.parametrize("shift,mult,izp", [(62, 2**31 - 1, 0), (1, 2**31 - 1, -7), (0, 3, 5), (-2, 1 << 20, 0)])
def test_requantize_epilogue_on_edge_values(shift: int, mult: int, izp: int) -> None:
    """Accumulators near ±2^31 (a folded bias at the int32 edge), the largest multiplier, shifts 62 / 1 (the
    right-shift-only epilogue) and 0 / −2 (the general one), saturating to u8."""
    x, w = _rand("i8", (6, 8)), _rand("i8", (16, 8))
    b = np.where(np.arange(16) % 2 == 0, 2**31 - 300_000, -(2**31) + 300_000).astype(np.int32)
    acc = evaluate("qlinear", [x, w, b], {"x_zero_point": 0, "w_zero_point": 0, "group_size": None})[0]
    assert np.abs(acc.astype(np.int64)).max() > 2**31 - 10**6
    m = np.full(16, mult, np.int64)
    m[1::3] = mult // 3
    c = np.full(16, shift, np.int32)
    attrs = {"dtype": "u8", "zero_point": 17, "min": None, "max": 250, "input_zero_point": izp}
    ref = evaluate("requantize", [acc, m, c], attrs)[0]
    rq = K.Requant(m, c, izp, 17, "u8", None, 250)
    wp, bp = K.pack_weight(w, "i8", 0, b)
    got, _ = _run(K.qlinear_kernel(x.shape, "i8", 16, 0, rq=rq), x, wp, bp, *rq.arrays(len(bp)),
                  out=np.zeros(ref.shape, np.uint8))
    assert np.array_equal(got, ref)
    assert len(np.unique(ref)) > 1 or shift > 30  # saturated everywhere only with the huge shifts


def _resnet_block() -> tuple[Any, list[np.ndarray]]:
    """conv(C=3, 7×7/2) → requantize → max_pool → conv → requantize → qadd(with the pool, relu range) → conv."""
    from qcc.ir.graph import GraphBuilder

    b = GraphBuilder()
    x = b.input((1, 3, 13, 11), "i8", "x")

    def conv(v: Any, c: int, o: int, k: int, s: int, zx: int, dt: str, name: str) -> Any:
        acc = b.emit("qconv2d", [v, b.param(_rand("i8", (o, c, k, k)), f"w{name}"),
                                 b.param(rng.integers(-99, 99, (o,)).astype(np.int32), f"b{name}")],
                     {"stride": (s, s), "padding": (k // 2,) * 4, "dilation": (1, 1), "groups": 1,
                      "w_zero_point": 0, "x_zero_point": zx})
        mult = b.param(rng.integers(1 << 20, 1 << 21, (1, o, 1, 1)).astype(np.int32), f"m{name}")
        return b.emit("requantize", [acc, mult, b.param(np.array([29], np.int32), f"s{name}")],
                      {"dtype": dt, "zero_point": 3 if dt == "i8" else 0})

    y = conv(x, 3, 16, 7, 2, -2, "u8", "1")
    p = b.emit("max_pool2d", [y], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)})
    z = conv(p, 16, 16, 3, 1, 0, "i8", "2")
    s = b.emit("qadd", [z, p], {"a_zero_point": 3, "b_zero_point": 0, "a_multiplier": 1 << 29,
                                "b_multiplier": 3 << 28, "shift": 31, "zero_point": 0, "dtype": "u8", "min": 0})
    out = conv(s, 16, 8, 3, 1, 0, "i8", "3")
    return b.output(out), [_rand("i8", (1, 3, 13, 11))]


@needs_vnni
def test_resnet_block_stays_channels_last_and_exact() -> None:
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower

    graph, inputs = _resnet_block()
    names = [gv.name_hint for gv, _ in lower(graph, templates=False).mod.functions_items()]
    assert any(n.startswith("max_pool2d_nhwc") for n in names)
    assert sum(re.fullmatch(r"qconv2d_vnni_rq_add\d*", n) is not None for n in names) == 1
    assert not any(n.startswith(("qadd", "max_pool2d_")) and "nhwc" not in n for n in names)
    exe = build(graph, Target("cpu-int8", num_threads=2))
    assert np.array_equal(exe.run(inputs)[0], qcc.interpret(graph, inputs)[0])


@needs_avx2
def test_avx2_target_builds_the_avx2_template_exactly() -> None:
    import qcc
    from qcc.backends.tvm import build

    graph, inputs = _resnet_block()
    exe = build(graph, Target("cpu-int8", num_threads=2, mcpu="haswell", mattr=("+avx2", "+fma")))
    assert any("avx2_rq" in name for name in exe.kernels) and not any("vnni" in name for name in exe.kernels)
    assert np.array_equal(exe.run(inputs)[0], qcc.interpret(graph, inputs)[0])


@pytest.mark.parametrize("xd,shape,k,stride,pad,dil,zx,layout", [
    ("u8", (1, 16, 9, 7), 3, (2, 2), (1, 1, 1, 1), (1, 1), 0, "NHWC"),
    ("i8", (2, 5, 6, 8), 5, (1, 2), (2, 1, 2, 0), (1, 2), -3, "NCHW"),
])
def test_depthwise_kernel_with_fused_requantize_and_qadd_is_bit_exact(xd: str, shape: tuple[int, ...], k: int,
                                                                      stride: tuple[int, int], pad: tuple[int, ...],
                                                                      dil: tuple[int, int], zx: int,
                                                                      layout: str) -> None:
    from qcc.backends.tvm.kernels import int8_dw as DW

    c = shape[1]
    x, w = _rand(xd, shape), _rand("i8", (c, 1, k, k))
    b = rng.integers(-5000, 5000, (c,)).astype(np.int32)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": c, "x_zero_point": zx, "w_zero_point": 0}
    acc = evaluate("qconv2d", [x, w, b], attrs)[0]
    mult, shift = rng.integers(1 << 20, 1 << 22, (c,)).astype(np.int64), rng.integers(20, 24, (c,)).astype(np.int32)
    rq_attrs = {"dtype": "i8", "zero_point": 2, "min": None, "max": None, "input_zero_point": 0}
    y = evaluate("requantize", [acc, mult.reshape(1, c, 1, 1), shift.reshape(1, c, 1, 1)], rq_attrs)[0]
    r = _rand("u8", acc.shape)
    add_attrs = {"a_multiplier": 1 << 29, "b_multiplier": -(3 << 27), "shift": 30, "a_zero_point": 2,
                 "b_zero_point": 100, "zero_point": 5, "dtype": "u8", "min": None, "max": 240}
    ref = evaluate("qadd", [y, r], add_attrs)[0]
    rq = K.Requant(mult, shift, 0, 2, "i8")
    add = K.ResidualAdd(1 << 29, 2, -(3 << 27), 100, 30, 5, "u8", "u8", None, 240)
    wp, bp = DW.pack_conv_weight(w, xd, zx, b)
    nb, _, oh, ow = acc.shape
    xin = x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x
    func = DW.qconv2d_kernel(xin.shape, xd, w.shape, acc.shape, stride, pad, dil, zx, rq=rq, x_layout=layout, add=add)
    got, _ = _run(func, xin, wp, bp, *rq.arrays(len(bp)), r.transpose(0, 2, 3, 1).reshape(-1, c),
                  out=np.zeros((nb * oh * ow, c), np.uint8))
    assert np.array_equal(got.reshape(nb, oh, ow, c).transpose(0, 3, 1, 2), ref)
    with pytest.raises(Exception, match="overflow"):
        DW.pack_conv_weight(np.full((c, 1, 7, 7), -128, np.int8), "u8", 0, np.full((c,), 2**31 - 5, np.int32))
