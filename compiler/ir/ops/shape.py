"""Data-movement ops: reshape, transpose, concat, split, slice, squeeze, expand, pad, tile, cumsum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.registry import REQUIRED, check, register
from qcc.ir.types import TensorType

SHAPE = ("shape",)


def _reshape_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    check(all(isinstance(d, int) and d >= 0 for d in shape), f"reshape needs a concrete shape, got {shape}")
    check(int(np.prod(shape, dtype=np.int64)) == ts[0].size, f"cannot reshape {list(ts[0].shape)} to {list(shape)}")
    return [ts[0].with_shape(shape)]


register("reshape", _reshape_type, lambda x, shape: x.reshape(shape), attrs={"shape": REQUIRED}, traits=SHAPE)


def _transpose_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    perm = tuple(attrs["perm"])
    check(sorted(perm) == list(range(ts[0].rank)), f"bad permutation {perm} for rank {ts[0].rank}")
    return [ts[0].with_shape(tuple(ts[0].shape[p] for p in perm))]


register("transpose", _transpose_type, lambda x, perm: np.transpose(x, perm), attrs={"perm": REQUIRED},
         traits=SHAPE)


def _concat_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    axis = attrs["axis"]
    first = ts[0]
    check(0 <= axis < first.rank, f"concat axis {axis} out of range")
    for t in ts[1:]:
        check(t.dtype == first.dtype and t.rank == first.rank, "concat operands differ in dtype or rank")
        check(all(a == b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis),
              f"concat shapes {list(first.shape)} and {list(t.shape)} differ off axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in ts)
    return [first.with_shape(tuple(shape))]


register("concat", _concat_type, lambda *xs, axis: np.concatenate(xs, axis=axis), num_inputs=(1, None),
         attrs={"axis": REQUIRED}, traits=SHAPE)


def _split_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    axis, sizes = attrs["axis"], tuple(attrs["sizes"])
    check(0 <= axis < ts[0].rank and sum(sizes) == ts[0].shape[axis],
          f"split sizes {sizes} do not cover axis {axis} of {list(ts[0].shape)}")
    out = []
    for s in sizes:
        shape = list(ts[0].shape)
        shape[axis] = s
        out.append(ts[0].with_shape(tuple(shape)))
    return out


def _split(x: np.ndarray, axis: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1].tolist(), axis=axis)


register("split", _split_type, _split, attrs={"axis": REQUIRED, "sizes": REQUIRED}, traits=SHAPE,
         num_outputs=None)


def _slices(rank: int, attrs: Mapping[str, Any]) -> tuple[slice, ...]:
    idx = [slice(None)] * rank
    for s, e, a, st in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        idx[a] = slice(s, e, st)
    return tuple(idx)


def _slice_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    n = len(attrs["axes"])
    check(len(attrs["starts"]) == len(attrs["ends"]) == len(attrs["steps"]) == n, "slice attribute lengths differ")
    check(all(0 <= a < ts[0].rank for a in attrs["axes"]), "slice axis out of range")
    check(all(st != 0 for st in attrs["steps"]), "slice step 0")
    shape = np.empty(ts[0].shape, np.bool_)[_slices(ts[0].rank, attrs)].shape
    return [ts[0].with_shape(shape)]


register("slice", _slice_type, lambda x, **a: np.ascontiguousarray(x[_slices(x.ndim, a)]),
         attrs={"starts": REQUIRED, "ends": REQUIRED, "axes": REQUIRED, "steps": REQUIRED}, traits=SHAPE)


def _squeeze_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    axes = tuple(attrs["axes"])
    check(all(0 <= a < ts[0].rank and ts[0].shape[a] == 1 for a in axes), f"cannot squeeze axes {axes}")
    return [ts[0].with_shape(tuple(d for i, d in enumerate(ts[0].shape) if i not in axes))]


def _unsqueeze_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    out = list(shape)
    for a in sorted(axes):
        out.insert(a, 1)
    return tuple(out)


def _unsqueeze_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    axes = tuple(attrs["axes"])
    check(all(0 <= a < ts[0].rank + len(axes) for a in axes) and len(set(axes)) == len(axes),
          f"bad unsqueeze axes {axes}")
    return [ts[0].with_shape(_unsqueeze_shape(ts[0].shape, axes))]


register("squeeze", _squeeze_type, lambda x, axes: x.reshape([d for i, d in enumerate(x.shape) if i not in axes]),
         attrs={"axes": REQUIRED}, traits=SHAPE)
register("unsqueeze", _unsqueeze_type, lambda x, axes: x.reshape(_unsqueeze_shape(x.shape, tuple(axes))),
         attrs={"axes": REQUIRED}, traits=SHAPE)


def _expand_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(attrs["shape"])
    check(np.broadcast_shapes(ts[0].shape, shape) == shape, f"cannot expand {list(ts[0].shape)} to {list(shape)}")
    return [ts[0].with_shape(shape)]


register("expand", _expand_type, lambda x, shape: np.ascontiguousarray(np.broadcast_to(x, shape)),
         attrs={"shape": REQUIRED}, traits=SHAPE)


def _pad_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    pads, r = tuple(attrs["pads"]), ts[0].rank
    check(len(pads) == 2 * r, f"pad needs {2 * r} pads, got {len(pads)}")
    check(attrs["mode"] in ("constant", "reflect", "edge"), f"unknown pad mode {attrs['mode']!r}")
    shape = tuple(d + pads[i] + pads[i + r] for i, d in enumerate(ts[0].shape))
    check(all(d >= 0 for d in shape), "pad makes a negative extent")
    return [ts[0].with_shape(shape)]


def _pad(x: np.ndarray, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    r = x.ndim
    # Negative pads crop (ONNX allows them).
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    x = x[crop]
    width = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, width, mode=mode)  # type: ignore[call-overload]


register("pad", _pad_type, _pad, attrs={"pads": REQUIRED, "mode": "constant", "value": 0.0}, traits=SHAPE)


def _tile_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    reps = tuple(attrs["repeats"])
    check(len(reps) == ts[0].rank, "tile repeats must match the rank")
    return [ts[0].with_shape(tuple(d * r for d, r in zip(ts[0].shape, reps)))]


register("tile", _tile_type, lambda x, repeats: np.tile(x, repeats), attrs={"repeats": REQUIRED}, traits=SHAPE)


def _cumsum_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    check(0 <= attrs["axis"] < ts[0].rank, "cumsum axis out of range")
    return [ts[0].with_shape(ts[0].shape)]


register("cumsum", _cumsum_type, lambda x, axis: np.cumsum(x, axis=axis, dtype=x.dtype),
         attrs={"axis": REQUIRED})
