"""The AVX-512 VNNI int8 template (backends/tvm/kernels/int8.py): bit-exact against the qlinear / qconv2d
references on odd shapes (prime sizes, stride 2, asymmetric padding, dilation, zero points), and routed to by
the CPU lowering of integer graphs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qcc.errors import BackendError
from qcc.ir.ops import evaluate

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")

from qcc.backends.tvm.host import cpu_flags, target_dict  # noqa: E402
from qcc.backends.tvm.kernels import int8 as K  # noqa: E402
from qcc.target import Target  # noqa: E402

needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX-512 VNNI")
rng = np.random.default_rng(7)


def _rand(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (-128, 127) if dtype == "i8" else (0, 255)
    return rng.integers(lo, hi + 1, shape).astype(np.int8 if dtype == "i8" else np.uint8)


def _run(func: Any, *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(target_dict(Target("cpu-int8"))))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (*arrays, np.zeros(out_shape, np.int32))]
    lib["main"](*args)
    return args[-1].numpy()


@needs_vnni
@pytest.mark.parametrize("xd,m,k,n,zx,with_bias", [("i8", 3, 37, 29, -5, True), ("u8", 7, 131, 17, 130, True),
                                                    ("i8", 16, 8, 5, 127, False)])
def test_qlinear_kernel_is_bit_exact(xd: str, m: int, k: int, n: int, zx: int, with_bias: bool) -> None:
    x, w = _rand(xd, (m, k)), _rand("i8", (n, k))
    b = rng.integers(-(2**20), 2**20, (n,)).astype(np.int32) if with_bias else None
    ref = evaluate("qlinear", [x, w] + ([b] if with_bias else []),
                   {"x_zero_point": zx, "w_zero_point": 0, "group_size": None})[0]
    wp, bp = K.pack_weight(w, xd, zx, b)
    got = _run(K.qlinear_kernel((m, k), xd, n, zx), x, wp, bp, out_shape=(m, n))
    assert np.array_equal(got, ref)


@needs_vnni
@pytest.mark.parametrize("xd,shape,o,kh,stride,pad,dil,zx", [
    ("i8", (2, 5, 11, 13), 7, 3, (2, 2), (1, 0, 2, 1), (1, 1), 7),
    ("u8", (1, 3, 9, 7), 19, 1, (1, 1), (0, 0, 0, 0), (1, 1), 200),
    ("i8", (1, 4, 10, 10), 17, 3, (1, 2), (2, 2, 2, 2), (2, 1), -100),
])
def test_qconv2d_kernel_is_bit_exact(xd: str, shape: tuple[int, ...], o: int, kh: int, stride: tuple[int, int],
                                     pad: tuple[int, ...], dil: tuple[int, int], zx: int) -> None:
    x, w = _rand(xd, shape), _rand("i8", (o, shape[1], kh, kh))
    b = rng.integers(-1000, 1000, (o,)).astype(np.int32)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": 1, "x_zero_point": zx, "w_zero_point": 0}
    ref = evaluate("qconv2d", [x, w, b], attrs)[0]
    wp, bp = K.pack_conv_weight(w, xd, zx, b)
    nb, o_, oh, ow = ref.shape
    got = _run(K.qconv2d_kernel(shape, xd, w.shape, ref.shape, stride, pad, dil, zx), x, wp, bp,
               out_shape=(nb * oh * ow, o_))
    assert np.array_equal(got.reshape(nb, oh, ow, o_).transpose(0, 3, 1, 2), ref)  # the kernel writes NHWC


def test_pack_weight_layout_and_bounds() -> None:
    w = _rand("i8", (17, 6))
    wp, bp = K.pack_weight(w, "i8", 3, None)
    assert wp.shape == (2, 2, 16, 4)  # [Np/16, Kp/4, 16, 4]
    assert wp[0, 1, 5, 1] == w[5, 5] and wp[1, 0, 0, 2] == w[16, 2] and wp[1, 1, 0, 2] == 0  # K, N zero padded
    assert np.array_equal(bp[:17], -(3 + 128) * w.astype(np.int64).sum(1)) and not bp[17:].any()
    with pytest.raises(BackendError, match="overflow"):
        K.pack_weight(np.zeros((1, K.MAX_K + 1), np.int8), "u8", 0, None)
    with pytest.raises(BackendError, match="int32"):
        K.pack_weight(np.full((1, 4), -128, np.int8), "i8", 0, np.array([2**31 - 1], np.int32))


def test_pack_conv_weight_is_channels_last() -> None:
    w = _rand("i8", (3, 5, 2, 3))  # with horizontal dilation: K = KH·KW·Cp = 2·3·8
    wp, _ = K.pack_conv_weight(w, "u8", 0, None, dilation=(1, 2))
    assert wp.shape == (1, 12, 16, 4)
    flat = wp.transpose(0, 2, 1, 3).reshape(16, 48)
    assert np.array_equal(flat[:3].reshape(3, 2, 3, 8)[..., :5], w.transpose(0, 2, 3, 1))
    assert not flat[:3].reshape(3, 2, 3, 8)[..., 5:].any() and not flat[3:].any()
    # window-run layout (C % 4 != 0, no horizontal dilation): K = KH·L with L = ceil4(KW·C) = 16
    wp, _ = K.pack_conv_weight(w, "u8", 0, None)
    assert K.window_runs(5, 3, 1) == 16 and K.window_runs(8, 3, 1) is None and wp.shape == (1, 8, 16, 4)
    flat = wp.transpose(0, 2, 1, 3).reshape(16, 32)
    assert np.array_equal(flat[:3].reshape(3, 2, 16)[..., :15], w.transpose(0, 2, 3, 1).reshape(3, 2, 15))
    assert not flat[:3].reshape(3, 2, 16)[..., 15:].any() and not flat[3:].any()


def _graph(w_zero_point: int) -> tuple[Any, list[np.ndarray]]:
    from qcc.ir.graph import GraphBuilder

    b = GraphBuilder()
    x = b.input((1, 3, 9, 11), "i8", "x")
    c = b.emit("qconv2d", [x, b.param(_rand("i8", (5, 3, 3, 3)), "w"),
                           b.param(rng.integers(-99, 99, (5,)).astype(np.int32), "b")],
               {"stride": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1, "x_zero_point": -3,
                "w_zero_point": w_zero_point})
    r = b.emit("requantize", [c, b.param(np.array([1 << 14], np.int32), "m"), b.param(np.array([22], np.int32), "s")],
               {"dtype": "u8", "zero_point": 4})
    f = b.emit("reshape", [r], {"shape": (1, 5 * 5 * 6)})
    y = b.emit("qlinear", [f, b.param(_rand("i8", (3, 150)), "w2")], {"x_zero_point": 4, "w_zero_point": 0})
    return b.output(y), [_rand("i8", (1, 3, 9, 11))]


@needs_vnni
@pytest.mark.parametrize("w_zero_point", [0, 2])
def test_lowering_routes_to_the_template_and_stays_exact(w_zero_point: int, monkeypatch: Any) -> None:
    import qcc
    from qcc.backends.tvm import build
    from qcc.backends.tvm.lower import lower

    graph, inputs = _graph(w_zero_point)
    names = [gv.name_hint for gv, _ in lower(graph).mod.functions_items()]
    # Both ops take the template with symmetric weights (the conv's requantize fused into it: the plain int32
    # kernel is emitted too and dropped later as dead code); a weight zero point falls back for qconv2d only.
    assert sum("vnni" in n for n in names) == (3 if w_zero_point == 0 else 1)
    assert sum("vnni_rq" in n for n in names) == (1 if w_zero_point == 0 else 0)
    got = build(graph, Target("cpu-int8", num_threads=2)).run(inputs)[0]
    assert np.array_equal(got, qcc.interpret(graph, inputs)[0])
    monkeypatch.setenv("QCC_INT8_VNNI", "0")
    assert not K.enabled()
