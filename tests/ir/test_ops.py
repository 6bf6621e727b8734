"""Op semantics: the interpreter against independent references (hand-computed NumPy, and PyTorch where it defines
the semantics the IR promises: pooling windows, convolution, GELU, LayerNorm, index_add / index_reduce / scatter).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcc.interpreter import interpret
from qcc.ir.graph import GraphBuilder
from qcc.ir.types import dtype_from_numpy


def run(op: str, *arrays: np.ndarray, **attrs) -> np.ndarray | list[np.ndarray]:
    """Interpret a one-node graph whose inputs are `arrays` (all graph inputs); one output unwrapped."""
    b = GraphBuilder()
    ins = [b.input(a.shape, dtype_from_numpy(a.dtype), f"in{i}") for i, a in enumerate(arrays)]
    node = b.emit_node(op, ins, attrs)
    outs = interpret(b.output(*node.outputs), list(arrays))
    return outs[0] if len(outs) == 1 else outs


RNG = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# -- NumPy-level semantics (hand-checked values) -------------------------------------------------------------------
def test_integer_div_truncates_and_mod_floors():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    assert run("div", a, b).tolist() == [3, -3, -3, 3, 0]
    assert run("mod", a, b).tolist() == [1, 1, -1, -1, 0]
    assert run("div", a.astype(np.float32), b.astype(np.float32)).tolist() == [3.5, -3.5, -3.5, 3.5, 0.0]


def test_round_half_to_even_and_cast_truncation():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.6], np.float32)
    assert run("round", x).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 3.0]
    assert run("cast", np.array([-1.7, 1.7, 0.0], np.float32), dtype="i32").tolist() == [-1, 1, 0]
    assert run("cast", np.array([0.0, -2.0, 0.1], np.float32), dtype="bool").tolist() == [False, True, True]
    assert run("cast", np.array([True, False]), dtype="f32").tolist() == [1.0, 0.0]


def test_clip_relu_and_comparisons():
    x = np.array([-2.0, -0.5, 0.5, 7.0], np.float32)
    assert run("clip", x, min=None, max=1.0).tolist() == [-2.0, -0.5, 0.5, 1.0]
    assert run("clip", x, min=-1.0, max=None).tolist() == [-1.0, -0.5, 0.5, 7.0]
    assert run("relu", np.array([-3, 4], np.int8)).tolist() == [0, 4]
    assert run("relu6", x).tolist() == [0.0, 0.0, 0.5, 6.0]
    assert run("less_equal", x, np.array([0.5], np.float32)).tolist() == [True, True, True, False]
    assert run("where", x > 0, x, np.zeros((1,), np.float32)).tolist() == [0.0, 0.0, 0.5, 7.0]


def test_reductions_and_arg_reductions():
    x = np.array([[3, 1, 3], [-2, 5, 5]], np.int32)
    assert run("reduce_sum", x, axes=(), keepdims=False).tolist() == 15
    assert run("reduce_max", x, axes=(1,), keepdims=True).tolist() == [[3], [5]]
    assert run("reduce_prod", x, axes=(0,), keepdims=False).tolist() == [-6, 5, 15]
    assert run("argmax", x, axis=1, keepdims=False).tolist() == [0, 1]  # ties: first index
    assert run("argmin", x, axis=0, keepdims=True).tolist() == [[1, 0, 0]]
    assert run("reduce_sum", x, axes=(), keepdims=False).dtype == np.int32


def test_slice_gather_split_and_friends():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert run("slice", x, starts=(2, -1), ends=(0, -5), axes=(0, 1), steps=(-1, -2)).tolist() == [[11, 9], [7, 5]]
    assert run("gather", x, np.array([-1, 0]), axis=0).tolist() == [x[2].tolist(), x[0].tolist()]
    assert run("gather_elements", x, np.array([[0], [3], [-1]]), axis=1).tolist() == [[0], [7], [11]]
    a, b = run("split", x, axis=1, sizes=(1, 3))
    assert a.shape == (3, 1) and b.tolist() == x[:, 1:].tolist()
    assert run("tile", np.array([1, 2], np.int64), repeats=(3,)).tolist() == [1, 2, 1, 2, 1, 2]
    assert run("expand", np.array([[1], [2]], np.int64), shape=(2, 2, 3)).tolist() == [[[1] * 3, [2] * 3]] * 2
    assert run("cumsum", np.array([[1, 2, 3]], np.int16), axis=1).tolist() == [[1, 3, 6]]
    assert run("concat", x[:1], x[2:], axis=0).tolist() == [x[0].tolist(), x[2].tolist()]


def test_pad_modes_and_negative_pads():
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    assert run("pad", x, pads=(0, 1, 0, 2), mode="constant", value=-1.0).tolist() == [
        [-1, 1, 2, 3, -1, -1], [-1, 4, 5, 6, -1, -1]]
    assert run("pad", x, pads=(0, 2, 0, 1), mode="reflect", value=0.0).tolist() == [
        [3, 2, 1, 2, 3, 2], [6, 5, 4, 5, 6, 5]]
    assert run("pad", x, pads=(1, 1, 0, 0), mode="edge", value=0.0).tolist() == [
        [1, 1, 2, 3], [1, 1, 2, 3], [4, 4, 5, 6]]
    assert run("pad", x, pads=(0, -1, -1, 1), mode="constant", value=0.0).tolist() == [[2, 3, 0]]


def test_batch_norm_and_matmul_formulae():
    x = randn(2, 3, 4)
    w, b, m, v = randn(3), randn(3), randn(3), np.abs(randn(3)) + 0.1
    want = (x - m[:, None]) / np.sqrt(v[:, None] + 1e-3) * w[:, None] + b[:, None]
    np.testing.assert_allclose(run("batch_norm", x, w, b, m, v, eps=1e-3), want, rtol=1e-5, atol=1e-6)
    a, c = RNG.integers(-100, 100, (2, 1, 3, 4)).astype(np.int8), RNG.integers(-100, 100, (5, 4, 2)).astype(np.int8)
    got = run("matmul", a, c)
    assert got.shape == (2, 5, 3, 2) and got.dtype == np.int8
    assert np.array_equal(got, np.matmul(a.astype(np.int64), c.astype(np.int64)).astype(np.int8))  # wraps like C
    assert run("matmul", randn(3), randn(3, 2)).shape == (2,)


def test_integer_conv_accumulates_exactly():
    x = RNG.integers(-8, 8, (1, 4, 5, 5)).astype(np.int32)
    w = RNG.integers(-8, 8, (2, 4, 3, 3)).astype(np.int32)
    got = run("conv2d", x, w, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    ref = run("conv2d", x.astype(np.float64), w.astype(np.float64), stride=(1, 1), padding=(1, 1, 1, 1),
              dilation=(1, 1), groups=1)
    assert got.dtype == np.int32 and np.array_equal(got, ref.astype(np.int32))


def test_activation_formulae():
    x = np.linspace(-5, 5, 41, dtype=np.float32)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(run("silu", x), xd / (1 + np.exp(-xd)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run("hardswish", x), xd * np.clip(xd + 3, 0, 6) / 6, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run("hardsigmoid", x), np.clip(xd / 6 + 0.5, 0, 1), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run("gelu", x, approximate="none"),
                               [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xd], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(run("elu", x, alpha=0.5), np.where(xd > 0, xd, 0.5 * np.expm1(xd)), rtol=1e-6)
    np.testing.assert_allclose(run("rsqrt", x[x > 0]), 1 / np.sqrt(xd[x > 0]), rtol=1e-6)
    sm = run("softmax", randn(2, 5), axis=1)
    np.testing.assert_allclose(sm.sum(1), 1.0, rtol=1e-6)


# -- PyTorch references -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _t(torch, a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a))


POOL_CASES = [  # kernel, stride, (pad_h, pad_w), dilation, ceil_mode
    ((3, 3), (2, 2), (1, 1), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 3), (2, 3), (0, 1), (1, 1), True),
    ((3, 2), (3, 2), (1, 0), (2, 1), True),
    ((2, 2), (1, 2), (0, 0), (1, 2), False),
    ((1, 1), (3, 3), (0, 0), (1, 1), True),
]


@pytest.mark.torch
@pytest.mark.parametrize("kernel,stride,pad,dilation,ceil", POOL_CASES)
def test_max_pool2d_matches_torch(torch, kernel, stride, pad, dilation, ceil):
    x = randn(2, 3, 9, 8)
    want = torch.nn.functional.max_pool2d(_t(torch, x), kernel, stride, pad, dilation, ceil_mode=ceil).numpy()
    got = run("max_pool2d", x, kernel=kernel, stride=stride, padding=pad + pad, dilation=dilation, ceil_mode=ceil)
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.torch
@pytest.mark.parametrize("kernel,stride,pad,dilation,ceil", [c for c in POOL_CASES if c[3] == (1, 1)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_torch(torch, kernel, stride, pad, dilation, ceil, count_include_pad):
    x = randn(2, 3, 9, 8)
    want = torch.nn.functional.avg_pool2d(_t(torch, x), kernel, stride, pad, ceil_mode=ceil,
                                          count_include_pad=count_include_pad).numpy()
    got = run("avg_pool2d", x, kernel=kernel, stride=stride, padding=pad + pad, ceil_mode=ceil,
              count_include_pad=count_include_pad)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("out", [(1, 1), (3, 2), (4, 4), (7, 5), (2, 5)])
def test_adaptive_pools_match_torch(torch, out):
    x = randn(2, 3, 7, 5)
    want_avg = torch.nn.functional.adaptive_avg_pool2d(_t(torch, x), out).numpy()
    want_max = torch.nn.functional.adaptive_max_pool2d(_t(torch, x), out).numpy()
    np.testing.assert_allclose(run("adaptive_avg_pool2d", x, output_size=out), want_avg, rtol=1e-5, atol=1e-6)
    assert np.array_equal(run("adaptive_max_pool2d", x, output_size=out), want_max)


@pytest.mark.torch
@pytest.mark.parametrize("groups,stride,dilation,padding", [
    (1, (1, 1), (1, 1), (1, 1, 1, 1)),
    (2, (2, 1), (1, 2), (0, 2, 1, 0)),
    (4, (1, 2), (2, 2), (2, 2, 2, 2)),  # depthwise
    (1, (3, 3), (1, 1), (0, 0, 0, 0)),
])
def test_conv2d_matches_torch(torch, groups, stride, dilation, padding):
    x, w, bias = randn(2, 4, 9, 8), randn(8, 4 // groups, 3, 3), randn(8)
    pt, pl, pb, pr = padding
    xp = torch.nn.functional.pad(_t(torch, x), (pl, pr, pt, pb))  # torch pads last dim first
    want = torch.nn.functional.conv2d(xp, _t(torch, w), _t(torch, bias), stride, 0, dilation, groups).numpy()
    got = run("conv2d", x, w, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(torch, approximate):
    x = randn(4, 17) * 3
    want = torch.nn.functional.gelu(_t(torch, x), approximate=approximate).numpy()
    np.testing.assert_allclose(run("gelu", x, approximate=approximate), want, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("axis", [1, 2])
def test_layer_norm_matches_torch(torch, axis):
    x = randn(2, 3, 5) * 2 + 1
    shape = x.shape[axis:]
    w, b = randn(*shape), randn(*shape)
    want = torch.nn.functional.layer_norm(_t(torch, x), shape, _t(torch, w), _t(torch, b), eps=1e-5).numpy()
    np.testing.assert_allclose(run("layer_norm", x, w, b, axis=axis, eps=1e-5), want, rtol=1e-5, atol=1e-5)


@pytest.mark.torch
def test_activations_and_softmax_match_torch(torch):
    x = randn(3, 7) * 4
    tx, F = _t(torch, x), torch.nn.functional
    pairs = [("sigmoid", {}, torch.sigmoid(tx)), ("silu", {}, F.silu(tx)), ("hardswish", {}, F.hardswish(tx)),
             ("hardsigmoid", {}, F.hardsigmoid(tx)), ("elu", {"alpha": 0.7}, F.elu(tx, 0.7)),
             ("leaky_relu", {"alpha": 0.2}, F.leaky_relu(tx, 0.2)), ("relu6", {}, F.relu6(tx)),
             ("softmax", {"axis": 1}, F.softmax(tx, 1)), ("log_softmax", {"axis": 0}, F.log_softmax(tx, 0)),
             ("erf", {}, torch.erf(tx)), ("tanh", {}, torch.tanh(tx))]
    for op, attrs, want in pairs:
        np.testing.assert_allclose(run(op, x, **attrs), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=op)


@pytest.mark.torch
def test_batch_norm_linear_matmul_match_torch(torch):
    F = torch.nn.functional
    x = randn(2, 3, 4, 4)
    w, b, m, v = randn(3), randn(3), randn(3), np.abs(randn(3)) + 0.1
    want = F.batch_norm(_t(torch, x), _t(torch, m), _t(torch, v), _t(torch, w), _t(torch, b), False, 0.1, 1e-5)
    np.testing.assert_allclose(run("batch_norm", x, w, b, m, v, eps=1e-5), want.numpy(), rtol=1e-5, atol=1e-5)
    xl, wl, bl = randn(2, 3, 5), randn(4, 5), randn(4)
    want = F.linear(_t(torch, xl), _t(torch, wl), _t(torch, bl)).numpy()
    np.testing.assert_allclose(run("linear", xl, wl, bl), want, rtol=1e-5, atol=1e-5)
    a, c = randn(2, 1, 3, 4), randn(5, 4, 2)
    np.testing.assert_allclose(run("matmul", a, c), torch.matmul(_t(torch, a), _t(torch, c)).numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("axis", [0, 1])
def test_index_add_matches_torch(torch, axis):
    x = randn(5, 4)
    index = np.array([0, 3, 0, 2, 3, 3])  # duplicates accumulate
    src = randn(6, 4) if axis == 0 else randn(5, 6)
    index = index if axis == 0 else index % 4
    want = _t(torch, x).index_add(axis, _t(torch, index), _t(torch, src)).numpy()
    np.testing.assert_allclose(run("index_add", x, index, src, axis=axis), want, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:index_reduce\\(\\) is in beta")
@pytest.mark.parametrize("reduce", ["prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_index_reduce_matches_torch(torch, reduce, include_self):
    x = randn(5, 3)
    index = np.array([4, 0, 4, 1, 4])  # rows 2 and 3 untouched; row 4 reduced three times
    src = randn(5, 3)
    want = _t(torch, x).index_reduce(0, _t(torch, index), _t(torch, src), reduce, include_self=include_self).numpy()
    got = run("index_reduce", x, index, src, axis=0, reduce=reduce, include_self=include_self)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_index_reduce_sum_is_index_add(torch):
    x, index, src = randn(4, 2), np.array([1, 1, 3]), randn(3, 2)
    want = _t(torch, x).index_add(0, _t(torch, index), _t(torch, src)).numpy()
    np.testing.assert_allclose(run("index_reduce", x, index, src, axis=0, reduce="sum", include_self=True), want,
                               rtol=1e-6)
    without_self = run("index_reduce", x, index, src, axis=0, reduce="sum", include_self=False)
    np.testing.assert_allclose(without_self[[1, 3]], want[[1, 3]] - x[[1, 3]], rtol=1e-5, atol=1e-6)
    assert np.array_equal(without_self[[0, 2]], x[[0, 2]])


@pytest.mark.torch
@pytest.mark.parametrize("reduction,torch_reduce", [("add", "sum"), ("mul", "prod"), ("max", "amax"),
                                                    ("min", "amin")])
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_elements_reductions_match_torch(torch, reduction, torch_reduce, axis):
    x = randn(4, 5)
    index = RNG.integers(0, x.shape[axis], (3, 4))  # duplicates included
    upd = randn(3, 4)
    want = _t(torch, x).scatter_reduce(axis, _t(torch, index), _t(torch, upd), torch_reduce,
                                       include_self=True).numpy()
    got = run("scatter_elements", x, index, upd, axis=axis, reduction=reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_scatter_elements_none_and_gathers_match_torch(torch):
    x, upd = randn(4, 5), randn(2, 5)
    index = np.array([[3, 0, 1, 2, 0], [1, 2, 3, 0, 2]])  # a permutation per column: no collisions
    want = _t(torch, x).scatter(0, _t(torch, index), _t(torch, upd)).numpy()
    assert np.array_equal(run("scatter_elements", x, index, upd, axis=0, reduction="none"), want)
    idx = RNG.integers(0, 5, (4, 3))
    assert np.array_equal(run("gather_elements", x, idx, axis=1),
                          torch.gather(_t(torch, x), 1, _t(torch, idx)).numpy())
    sel = np.array([2, 0, 2])
    assert np.array_equal(run("gather", x, sel, axis=1), torch.index_select(_t(torch, x), 1, _t(torch, sel)).numpy())
    np.testing.assert_allclose(run("cumsum", x, axis=0), torch.cumsum(_t(torch, x), 0).numpy(), rtol=1e-6)
