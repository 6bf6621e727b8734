"""The W4A8 VNNI template (backends/tvm/kernels/int4.py): int4 weights packed two per byte, unpacked in registers;
bit-exact against the qlinear / qconv2d references on odd shapes, and routed to by the CPU lowering of i4
weights with half the constant bytes of the widened int8 weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qcc.errors import BackendError
from qcc.ir.ops import evaluate

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from qcc.backends.tvm.host import cpu_flags, target_dict  # noqa: E402
from qcc.backends.tvm.kernels import int4 as K4  # noqa: E402
from qcc.backends.tvm.kernels import int8 as K8  # noqa: E402
from qcc.target import Target  # noqa: E402

needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX-512 VNNI")
rng = np.random.default_rng(11)


def _act(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if dtype == "i8" else np.uint8)


def _w4(shape: tuple[int, ...]) -> np.ndarray:
    w = rng.integers(-8, 8, shape).astype(np.int8)
    w.reshape(-1)[:2] = (-8, 7)  # both ends of the int4 range
    return w


def _run(func: Any, *arrays: np.ndarray, out_shape: tuple[int, ...], out_dtype: Any = np.int32) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target_dict(Target("cpu-int4"))))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (*arrays, np.zeros(out_shape, out_dtype))]
    lib["main"](*args)
    return args[-1].numpy()


def test_pack_weight_layout_round_trip_and_bounds() -> None:
    w = _w4((17, 13))
    wp, bp = K4.pack_weight(w, "i8", 3, None)
    assert wp.shape == (2, 2, 16, 4) and wp.dtype == np.int8  # [Np/16, Kp/8, 16, 4]: K padded to 16, N to 32
    byte = int(wp.view(np.uint8)[0, 1, 5, 0])
    assert byte & 0xF == w[5, 8] & 0xF and byte >> 4 == w[5, 12] & 0xF  # low: k = 8t + q, high: 8t + 4 + q
    assert wp.view(np.uint8)[0, 1, 5, 1] >> 4 == 0 and not wp[1, :, 1:].any()  # K and N zero padded
    assert np.array_equal(K4.unpack_weight(wp, 17, 13), w)
    assert np.array_equal(bp[:17], -(3 + 128) * w.astype(np.int64).sum(1)) and not bp[17:].any()
    w8, _ = K8.pack_weight(_w4((64, 256)), "u8", 0, None)
    assert K4.pack_weight(_w4((64, 256)), "u8", 0, None)[0].nbytes * 2 == w8.nbytes  # half the bytes
    with pytest.raises(BackendError, match=r"\[-8, 7\]"):
        K4.pack_weight(np.array([[8, 0]], np.int8), "u8", 0, None)
    with pytest.raises(BackendError, match="overflow"):
        K4.pack_weight(np.zeros((1, K4.MAX_K + 1), np.int8), "u8", 0, None)


def test_pack_conv_weight_pads_k_to_whole_byte_pairs() -> None:
    assert K4.conv_geometry(5, 3, 3, 2) == (8, 3, None) and K4.conv_geometry(8, 2, 1) == (8, 1, None)
    assert K4.conv_geometry(4, 3, 3) == (4, 4, None)  # a zero kernel column instead of 8 channels
    assert K4.conv_geometry(3, 7, 7) == (0, 7, 24) and K4.conv_geometry(1, 2, 3) == (0, 3, 4)  # window runs
    w = _w4((3, 5, 3, 3))  # odd kernel area (dilated: no window runs): channels padded to 8, K = 9·8
    wp, _ = K4.pack_conv_weight(w, "u8", 0, None, dilation=(1, 2))
    assert wp.shape == (1, 9, 16, 4)
    flat = K4.unpack_weight(wp, 3, 72).reshape(3, 3, 3, 8)
    assert np.array_equal(flat[..., :5], w.transpose(0, 2, 3, 1)) and not flat[..., 5:].any()
    w = _w4((2, 3, 7, 7))  # RGB stem: K = 7 runs of 7·3 bytes padded to 24
    flat = K4.unpack_weight(K4.pack_conv_weight(w, "i8", 0, None)[0], 2, 168).reshape(2, 7, 24)
    assert np.array_equal(flat[..., :21], w.transpose(0, 2, 3, 1).reshape(2, 7, 21)) and not flat[..., 21:].any()


@needs_vnni
@pytest.mark.parametrize("xd,m,k,n,zx,with_bias", [("i8", 3, 37, 29, -5, True), ("u8", 7, 131, 17, 130, True),
                                                    ("i8", 16, 8, 5, 127, False), ("u8", 1, 300, 70, 0, True)])
def test_qlinear_kernel_is_bit_exact(xd: str, m: int, k: int, n: int, zx: int, with_bias: bool) -> None:
    x, w = _act(xd, (m, k)), _w4((n, k))
    b = rng.integers(-(2**20), 2**20, (n,)).astype(np.int32) if with_bias else None
    ref = evaluate("qlinear", [x, w] + ([b] if with_bias else []),
                   {"x_zero_point": zx, "w_zero_point": 0, "group_size": None})[0]
    wp, bp = K4.pack_weight(w, xd, zx, b)
    assert np.array_equal(_run(K4.qlinear_kernel((m, k), xd, n, zx), x, wp, bp, out_shape=(m, n)), ref)


@needs_vnni
def test_qlinear_kernel_with_fused_per_channel_requantize_is_bit_exact() -> None:
    m, k, n, zx = 5, 45, 33, 7
    x, w = _act("u8", (m, k)), _w4((n, k))
    b = rng.integers(-5000, 5000, (n,)).astype(np.int32)
    mult = rng.integers(1 << 20, 1 << 30, (n,)).astype(np.int64)
    shift = rng.integers(28, 36, (n,)).astype(np.int32)
    acc = evaluate("qlinear", [x, w, b], {"x_zero_point": zx, "w_zero_point": 0, "group_size": None})[0]
    attrs = {"dtype": "i8", "zero_point": -3, "input_zero_point": 0, "min": -100, "max": None}
    ref = evaluate("requantize", [acc, mult, shift], attrs)[0]
    rq = K8.Requant(mult, shift, 0, -3, "i8", -100, None)
    wp, bp = K4.pack_weight(w, "u8", zx, b)
    got = _run(K4.qlinear_kernel((m, k), "u8", n, zx, rq=rq), x, wp, bp, *rq.arrays(len(bp)), out_shape=(m, n),
               out_dtype=np.int8)
    assert np.array_equal(got, ref)


@needs_vnni
@pytest.mark.parametrize("xd,shape,o,kh,kw,stride,pad,dil,zx,layout", [
    ("i8", (2, 5, 11, 13), 7, 3, 3, (2, 2), (1, 0, 2, 1), (1, 1), 7, "NCHW"),
    ("u8", (1, 3, 9, 7), 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 200, "NHWC"),
    ("i8", (1, 6, 10, 10), 17, 2, 2, (1, 2), (2, 1, 2, 1), (2, 1), -100, "NCHW"),
    ("u8", (1, 9, 8, 8), 33, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 0, "NHWC"),
    ("i8", (1, 3, 17, 15), 20, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), -128, "NCHW"),  # RGB stem: window runs
    ("u8", (1, 4, 9, 9), 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 9, "NHWC"),  # a zero kernel column
    ("i8", (1, 5, 12, 12), 18, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1, "NCHW"),  # dilated: channels to 8
])
def test_qconv2d_kernel_is_bit_exact(xd: str, shape: tuple[int, ...], o: int, kh: int, kw: int,
                                     stride: tuple[int, int], pad: tuple[int, ...], dil: tuple[int, int], zx: int,
                                     layout: str) -> None:
    x, w = _act(xd, shape), _w4((o, shape[1], kh, kw))
    b = rng.integers(-1000, 1000, (o,)).astype(np.int32)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": 1, "x_zero_point": zx, "w_zero_point": 0}
    ref = evaluate("qconv2d", [x, w, b], attrs)[0]
    wp, bp = K4.pack_conv_weight(w, xd, zx, b, dilation=dil)
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
    nb, o_, oh, ow = ref.shape
    got = _run(K4.qconv2d_kernel(xin.shape, xd, w.shape, ref.shape, stride, pad, dil, zx, x_layout=layout),
               xin, wp, bp, out_shape=(nb * oh * ow, o_))
    assert np.array_equal(got.reshape(nb, oh, ow, o_).transpose(0, 3, 1, 2), ref)  # the kernel writes NHWC


@needs_vnni
def test_qconv2d_kernel_with_fused_requantize_and_residual_add_is_bit_exact() -> None:
    x, w = _act("u8", (1, 6, 7, 9)), _w4((21, 6, 3, 3))
    b = rng.integers(-3000, 3000, (21,)).astype(np.int32)
    attrs = {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1, "x_zero_point": 5,
             "w_zero_point": 0}
    acc = evaluate("qconv2d", [x, w, b], attrs)[0]
    mult = rng.integers(1 << 20, 1 << 30, (21,)).astype(np.int64)
    shift = rng.integers(30, 36, (21,)).astype(np.int32)
    y = evaluate("requantize", [acc, mult.reshape(21, 1, 1), shift.reshape(21, 1, 1)],
                 {"dtype": "u8", "zero_point": 3, "input_zero_point": 0, "min": None, "max": None})[0]
    r = _act("i8", y.shape)
    qadd = {"a_multiplier": 1 << 14, "b_multiplier": -(3 << 12), "shift": 15, "a_zero_point": 3, "b_zero_point": -2,
            "zero_point": -10, "dtype": "i8", "min": -50, "max": None}
    ref = evaluate("qadd", [y, r], qadd)[0]
    rq = K8.Requant(mult, shift, 0, 3, "u8")
    add = K8.ResidualAdd(1 << 14, 3, -(3 << 12), -2, 15, -10, "i8", "i8", -50, None)
    wp, bp = K4.pack_conv_weight(w, "u8", 5, b)
    res = np.ascontiguousarray(r.transpose(0, 2, 3, 1).reshape(-1, 21))
    func = K4.qconv2d_kernel(x.shape, "u8", w.shape, acc.shape, (1, 1), (1, 1, 1, 1), (1, 1), 5, rq=rq, add=add)
    got = _run(func, x, wp, bp, *rq.arrays(len(bp)), res, out_shape=(63, 21), out_dtype=np.int8)
    assert np.array_equal(got.reshape(1, 7, 9, 21).transpose(0, 3, 1, 2), ref)


def _graph() -> tuple[Any, list[np.ndarray]]:
    """qconv2d (i4) → requantize → qconv2d (i4, NHWC chained) → requantize → qadd (residual) → qconv2d (i4) →
    requantize → reshape → qlinear (i4)."""
    from qcc.ir.graph import GraphBuilder
    from qcc.ir.types import TensorType

    b = GraphBuilder()

    def w4(shape: tuple[int, ...], name: str) -> Any:
        v = b.param(_w4(shape), name)
        v.type = TensorType(shape, "i4")
        return v

    def rq(v: Any, zp: int) -> Any:
        return b.emit("requantize", [v, b.param(np.array([1 << 14], np.int32), f"m{zp}"),
                                     b.param(np.array([19], np.int32), f"s{zp}")], {"dtype": "u8", "zero_point": zp})

    conv = {"dilation": (1, 1), "groups": 1, "w_zero_point": 0}
    x = b.input((1, 3, 9, 11), "i8", "x")
    c = b.emit("qconv2d", [x, w4((20, 3, 3, 3), "w1"), b.param(rng.integers(-99, 99, (20,)).astype(np.int32), "b1")],
               {**conv, "stride": (2, 2), "padding": (1, 1, 1, 1), "x_zero_point": -3})
    a = rq(c, 4)
    c = b.emit("qconv2d", [a, w4((20, 20, 3, 3), "w2")],
               {**conv, "stride": (1, 1), "padding": (1, 1, 1, 1), "x_zero_point": 4})
    s = b.emit("qadd", [rq(c, 2), a], {"a_multiplier": 1 << 13, "b_multiplier": 3 << 12, "shift": 14,
                                       "a_zero_point": 2, "b_zero_point": 4, "zero_point": 1, "dtype": "u8"})
    c = b.emit("qconv2d", [s, w4((9, 20, 3, 3), "w3")],
               {**conv, "stride": (1, 1), "padding": (1, 0, 1, 0), "x_zero_point": 1})
    f = b.emit("reshape", [rq(c, 3)], {"shape": (1, 9 * 5 * 4)})
    y = b.emit("qlinear", [f, w4((3, 180), "w4")], {"x_zero_point": 3, "w_zero_point": 0})
    return b.output(y), [_act("i8", (1, 3, 9, 11))]


def _const_bytes(mod: Any) -> int:
    """Bytes of the distinct constants the entry function still uses (after dead-code elimination)."""
    from tvm import relax
    from tvm.ir.expr import Constant

    seen: dict[Any, int] = {}

    def visit(e: Any) -> None:
        if isinstance(e, Constant) and hasattr(e.value, "numpy"):  # tensor constants (not shape integers)
            seen[e] = e.value.numpy().nbytes

    relax.analysis.post_order_visit(relax.transform.DeadCodeElimination()(mod)["main"], visit)
    return sum(seen.values())


@needs_vnni
def test_i4_weights_lower_packed_half_size_and_bit_exact(monkeypatch: Any) -> None:
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower

    graph, inputs = _graph()
    ref = qcc.interpret(graph, inputs)[0]
    lowered = lower(graph).mod
    assert any("_add" in gv.name_hint for gv, _ in lowered.functions_items())  # the qadd fused into a W4 conv
    packed = _const_bytes(lowered)
    got = build(graph, Target("cpu-int4", num_threads=2)).run(inputs)[0]
    assert np.array_equal(got, ref)
    monkeypatch.setenv(K4.ENV, "0")  # widened to int8 and run by the int8 template
    widened = _const_bytes(lower(graph).mod)
    ws = [graph.params[graph.param_by_name(n)] for n in ("w1", "w2", "w3", "w4")]
    w8 = sum(K8.pack_conv_weight(w, "u8", 0, None)[0].nbytes for w in ws[:3]) + K8.pack_weight(ws[3], "u8", 0,
                                                                                              None)[0].nbytes
    w4 = sum(K4.pack_conv_weight(w, "u8", 0, None)[0].nbytes for w in ws[:3]) + K4.pack_weight(ws[3], "u8", 0,
                                                                                              None)[0].nbytes
    assert w4 < w8 and widened - packed == w8 - w4  # every i4 weight packed, nothing else changed


@needs_vnni
@pytest.mark.torch
@pytest.mark.slow
def test_digits_cnn_cpu_int4_with_group_scales_is_bit_exact_with_packed_weights(monkeypatch: Any) -> None:
    pytest.importorskip("torch")
    import qcc
    from qcc.backends.tvm.lower import lower
    from tests.zoo import digits_cnn, digits_data

    xtr, _, xte, _ = digits_data()
    lib = qcc.compile(digits_cnn().eval(), "cpu-int4", example_inputs=(xte[:8],),
                      calibration=[xtr[i:i + 8] for i in range(0, 48, 8)], progress=False, group_size=8)
    assert "integer-only: yes" in lib.report()
    assert np.array_equal(lib(xte[8:16]), qcc.interpret(lib.graph, [xte[8:16]])[0])
    # the residual / pointwise convolutions and the classifier keep their i4 weights packed (the depthwise one,
    # groups > 1, is not a template GEMM and reads them widened)
    gemms = [n for n in lib.graph.nodes if n.op in ("qconv2d", "qlinear") and n.attrs.get("groups", 1) == 1]
    assert len(gemms) >= 4 and all(n.inputs[1].dtype == "i4" for n in gemms)
    assert [n.attrs["group_size"] for n in gemms if n.op == "qlinear"] == [8]  # VS-Quant: the grouped W4 kernel
    lowered = lower(lib.graph).mod
    assert any(gv.name_hint.startswith("qlinear_vnni") for gv, _ in lowered.functions_items())
    packed = _const_bytes(lowered)
    monkeypatch.setenv(K4.ENV, "0")
    assert _const_bytes(lower(lib.graph).mod) > packed


@needs_vnni
@pytest.mark.parametrize("group,routed", [(16, True), (4, False)])
def test_group_scaled_qlinear_is_bit_exact(group: int, routed: bool) -> None:
    """VS-Quant per-vector scales (qlinear with group_scale): the grouped W4 kernel for groups of a multiple of 8
    (large scales: its modulo-2^32 arithmetic must wrap like the reference), the generic rule otherwise."""
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower
    from qcc.ir.graph import GraphBuilder
    from qcc.ir.types import TensorType

    b = GraphBuilder()
    x = b.input((3, 64), "u8", "x")
    w = b.param(_w4((24, 64)), "w")
    w.type = TensorType((24, 64), "i4")
    y = b.emit("qlinear", [x, w, b.param(rng.integers(-2**30, 2**30, (24,)).astype(np.int32), "b"),
                           b.param(rng.integers(1, 2**20, (24, 64 // group)).astype(np.int32), "gs")],
               {"x_zero_point": 7, "w_zero_point": 0, "group_size": group})
    graph, inputs = b.output(y), [_act("u8", (3, 64))]
    assert any("vnni" in gv.name_hint for gv, _ in lower(graph).mod.functions_items()) == routed
    got = build(graph, Target("cpu-int4", num_threads=2)).run(inputs)[0]
    assert np.array_equal(got, qcc.interpret(graph, inputs)[0])


def test_grouped_kernels_pack_bias_and_scales_together() -> None:
    from qcc.backends.tvm.kernels import int4_group as G4

    assert K4.grouped(np.ones((2, 3), np.int32), 12) is None and K4.grouped(None, 8) is None
    w, gs, bias = _w4((20, 32)), rng.integers(1, 9, (20, 2)).astype(np.int32), np.arange(20, dtype=np.int32)
    kern = K4.grouped(gs, 16)
    assert isinstance(kern, G4.GroupedW4)
    wp, bg = kern.pack_weight(w, "i8", 2, bias)
    assert np.array_equal(wp, K4.pack_weight(w, "i8", 2, None)[0]) and bg.shape == (32 * 3,)
    corr = (w.astype(np.int64).reshape(20, 2, 16).sum(-1) * gs).sum(-1)
    assert np.array_equal(bg[:20], bias - 130 * corr) and not bg[20:32].any()
    assert np.array_equal(bg[32:].reshape(2, 32)[:, :20], gs.T) and not bg[32:].reshape(2, 32)[:, 20:].any()
    assert kern.channels(bg) == 32  # a fused requantize's per-channel arrays are sized by it
