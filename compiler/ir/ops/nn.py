"""Neural-network ops: reductions, softmax, normalization, convolution, pooling, matmul, linear."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.registry import REQUIRED, broadcast_shapes, check, register, same_type
from qcc.ir.types import FLOAT_DTYPES, TensorType


def _acc_dtype(x: np.ndarray) -> Any:
    return np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64


# -- reductions -----------------------------------------------------------------------------------
def _reduced_shape(shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    axes = axes or tuple(range(len(shape)))
    check(all(0 <= a < len(shape) for a in axes), f"axes {axes} out of range for rank {len(shape)}")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [ts[0].with_shape(_reduced_shape(ts[0].shape, tuple(attrs["axes"]), attrs["keepdims"]))]


def _reducer(fn: Any, acc: bool) -> Any:
    def ref(x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        ax = tuple(axes) or None
        data = x.astype(_acc_dtype(x)) if acc else x
        return np.asarray(fn(data, axis=ax, keepdims=keepdims)).astype(x.dtype)

    return ref


_REDUCE_ATTRS = {"axes": (), "keepdims": False}
register("reduce_sum", _reduce_type, _reducer(np.sum, True), attrs=_REDUCE_ATTRS, traits=("reduction",))
register("reduce_mean", _reduce_type, _reducer(np.mean, True), attrs=_REDUCE_ATTRS, traits=("reduction",))
register("reduce_max", _reduce_type, _reducer(np.max, False), attrs=_REDUCE_ATTRS, traits=("reduction",))
register("reduce_min", _reduce_type, _reducer(np.min, False), attrs=_REDUCE_ATTRS, traits=("reduction",))
register("reduce_prod", _reduce_type, _reducer(np.prod, True), attrs=_REDUCE_ATTRS, traits=("reduction",))


def _arg_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = _reduced_shape(ts[0].shape, (attrs["axis"],), attrs["keepdims"])
    return [TensorType(shape, "i64")]


def _arg(fn: Any) -> Any:
    def ref(x: np.ndarray, axis: int, keepdims: bool) -> np.ndarray:
        return np.asarray(fn(x, axis=axis, keepdims=keepdims)).astype(np.int64)

    return ref


register("argmax", _arg_type, _arg(np.argmax), attrs={"axis": REQUIRED, "keepdims": False},
         traits=("reduction",))
register("argmin", _arg_type, _arg(np.argmin), attrs={"axis": REQUIRED, "keepdims": False},
         traits=("reduction",))


# -- softmax and normalization ----------------------------------------------------------------------
def _float_axis_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(ts[0].dtype in FLOAT_DTYPES, "expects a float input")
    check(0 <= attrs["axis"] < ts[0].rank, f"axis {attrs['axis']} out of range")
    return same_type(ts, attrs)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x.astype(np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x.astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=axis, keepdims=True))).astype(x.dtype)


register("softmax", _float_axis_type, _softmax, attrs={"axis": REQUIRED})
register("log_softmax", _float_axis_type, _log_softmax, attrs={"axis": REQUIRED})


def _layer_norm_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w, b = ts
    norm = x.shape[attrs["axis"]:]
    check(w.shape == norm and b.shape == norm, f"weight/bias must have shape {norm}")
    return _float_axis_type(ts[:1], attrs)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, axis: int, eps: float) -> np.ndarray:
    z = x.astype(np.float64)
    axes = tuple(range(axis, x.ndim))
    mean = z.mean(axis=axes, keepdims=True)
    var = ((z - mean) ** 2).mean(axis=axes, keepdims=True)
    return ((z - mean) / np.sqrt(var + eps) * w + b).astype(x.dtype)


register("layer_norm", _layer_norm_type, _layer_norm, num_inputs=(3, 3),
         attrs={"axis": REQUIRED, "eps": 1e-5})


def _batch_norm_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = ts[0]
    check(x.rank >= 2, "batch_norm needs rank >= 2")
    for t in ts[1:]:
        check(t.shape == (x.shape[1],), f"batch_norm parameters must have shape ({x.shape[1]},)")
    return same_type(ts, attrs)


def _batch_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, mean: np.ndarray, var: np.ndarray,
                eps: float) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = w.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = b - mean * scale
    return (x * scale.reshape(shape) + shift.reshape(shape)).astype(x.dtype)


register("batch_norm", _batch_norm_type, _batch_norm, num_inputs=(5, 5), attrs={"eps": 1e-5})


# -- matmul / linear ------------------------------------------------------------------------------------
def _matmul_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    a, b = ts
    check(a.dtype == b.dtype, f"matmul dtypes differ: {a.dtype} vs {b.dtype}")
    return [a.with_shape(matmul_shape(a.shape, b.shape))]


def matmul_shape(sa: tuple[int, ...], sb: tuple[int, ...]) -> tuple[int, ...]:
    """numpy.matmul's result shape, computed from the shapes (multiplying empty arrays costs O(M·N·K) time)."""
    check(len(sa) >= 1 and len(sb) >= 1, "matmul operands must have rank >= 1")
    a2 = (1, *sa) if len(sa) == 1 else tuple(sa)
    b2 = (*sb, 1) if len(sb) == 1 else tuple(sb)
    check(a2[-1] == b2[-2], f"matmul contraction dims differ: {list(sa)} @ {list(sb)}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = [*batch, a2[-2], b2[-1]]
    if len(sb) == 1:
        out.pop(-1)
    if len(sa) == 1:
        out.pop(len(batch))
    return tuple(int(d) for d in out)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(a.dtype)
    return np.matmul(a, b)


register("matmul", _matmul_type, _matmul, num_inputs=(2, 2))


def _linear_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = ts[0], ts[1]
    check(w.rank == 2 and x.rank >= 1 and x.shape[-1] == w.shape[1],
          f"linear: x[..., {x.shape[-1] if x.rank else '?'}] with weight {list(w.shape)}")
    if len(ts) == 3:
        check(ts[2].shape == (w.shape[0],), f"linear bias must have shape ({w.shape[0]},)")
    return [x.with_shape(x.shape[:-1] + (w.shape[0],))]


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = _matmul(x, w.T)
    return y if b is None else (y + b).astype(x.dtype)


register("linear", _linear_type, _linear, num_inputs=(2, 3))


# -- conv2d ---------------------------------------------------------------------------------------------
def conv_out_size(size: int, k: int, stride: int, pad: int, dilation: int, ceil: bool = False,
                  pad_begin: int = 0) -> int:
    """Output extent of a sliding window; `pad` is both sides together (PyTorch's ceil-mode rule)."""
    span = size + pad - dilation * (k - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or the leading padding
    return out


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
             oh: int, ow: int) -> np.ndarray:
    """View of x [N, C, H, W] as [N, C, oh, ow, kh, kw] windows."""
    n, c, _, _ = x.shape
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False)


def _conv2d_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = ts[0], ts[1]
    check(x.rank == 4 and w.rank == 4, "conv2d expects x [N,C,H,W] and w [O,C/g,KH,KW]")
    g = attrs["groups"]
    check(x.shape[1] == w.shape[1] * g and w.shape[0] % g == 0,
          f"conv2d channels: x has {x.shape[1]}, w {list(w.shape)} with groups={g}")
    if len(ts) == 3:
        check(ts[2].shape == (w.shape[0],), "conv2d bias must have shape (O,)")
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    pt, pl, pb, pr = attrs["padding"]
    oh = conv_out_size(x.shape[2], w.shape[2], sh, pt + pb, dh)
    ow = conv_out_size(x.shape[3], w.shape[3], sw, pl + pr, dw)
    check(oh > 0 and ow > 0, "conv2d output would be empty")
    return [x.with_shape((x.shape[0], w.shape[0], oh, ow))]


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: tuple[int, int],
            padding: tuple[int, int, int, int], dilation: tuple[int, int], groups: int) -> np.ndarray:
    acc = np.int64 if np.issubdtype(x.dtype, np.integer) else x.dtype
    pt, pl, pb, pr = padding
    xp = np.pad(x.astype(acc), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, cg, kh, kw = w.shape
    oh = conv_out_size(x.shape[2], kh, stride[0], pt + pb, dilation[0])
    ow = conv_out_size(x.shape[3], kw, stride[1], pl + pr, dilation[1])
    win = _windows(xp, kh, kw, stride[0], stride[1], dilation[0], dilation[1], oh, ow)
    og = o // groups
    outs = []
    for g in range(groups):
        wg = w[g * og:(g + 1) * og].astype(acc)
        # [N, cg, oh, ow, kh, kw] x [og, cg, kh, kw] -> [N, oh, ow, og]
        outs.append(np.tensordot(win[:, g * cg:(g + 1) * cg], wg, axes=([1, 4, 5], [1, 2, 3])))
    y = np.concatenate(outs, axis=-1).transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b.astype(acc).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y.astype(x.dtype))


register("conv2d", _conv2d_type, _conv2d, num_inputs=(2, 3),
         attrs={"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1})
