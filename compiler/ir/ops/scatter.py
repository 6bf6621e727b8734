"""Indexing ops: gather, gather_elements, scatter_elements, index_add, index_reduce (GNN building blocks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.ir.ops.registry import REQUIRED, check, register
from qcc.ir.types import INT_DTYPES, TensorType


def _check_index(t: TensorType) -> None:
    check(t.dtype in INT_DTYPES, f"indices must be integers, got {t.dtype}")


def _gather_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx = ts
    axis = attrs["axis"]
    _check_index(idx)
    check(0 <= axis < x.rank, f"gather axis {axis} out of range")
    return [x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


register("gather", _gather_type, lambda x, i, axis: np.take(x, i.astype(np.int64), axis=axis),
         num_inputs=(2, 2), attrs={"axis": REQUIRED})


def _gather_elements_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx = ts
    _check_index(idx)
    check(idx.rank == x.rank, "gather_elements indices must have the data's rank")
    return [x.with_shape(idx.shape)]


def _wrap(i: np.ndarray, n: int) -> np.ndarray:
    i = i.astype(np.int64)
    return np.where(i < 0, i + n, i)


register("gather_elements", _gather_elements_type,
         lambda x, i, axis: np.take_along_axis(x, _wrap(i, x.shape[axis]), axis=axis),
         num_inputs=(2, 2), attrs={"axis": REQUIRED})

_UFUNC = {"add": np.add, "sum": np.add, "mul": np.multiply, "prod": np.multiply, "max": np.maximum,
          "amax": np.maximum, "min": np.minimum, "amin": np.minimum}


def _scatter_elements_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx, upd = ts
    _check_index(idx)
    check(idx.shape == upd.shape and idx.rank == x.rank, "scatter_elements indices/updates shapes must match")
    check(upd.dtype == x.dtype, "scatter_elements updates dtype must match the data")
    check(attrs["reduction"] in ("none", "add", "mul", "max", "min"), f"bad reduction {attrs['reduction']!r}")
    return [x.with_shape(x.shape)]


def _scatter_elements(x: np.ndarray, idx: np.ndarray, upd: np.ndarray, axis: int, reduction: str) -> np.ndarray:
    out = x.copy()
    full: list[np.ndarray] = list(np.indices(idx.shape, sparse=True))
    full[axis] = _wrap(idx, x.shape[axis])
    target = tuple(full)
    if reduction == "none":
        out[target] = upd
    else:
        _UFUNC[reduction].at(out, target, upd)
    return out


register("scatter_elements", _scatter_elements_type, _scatter_elements, num_inputs=(3, 3),
         attrs={"axis": REQUIRED, "reduction": "none"})


def _index_type(ts: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx, src = ts
    axis = attrs["axis"]
    _check_index(idx)
    check(idx.rank == 1, "index must be 1-D")
    check(src.dtype == x.dtype and src.rank == x.rank, "source must match the data's dtype and rank")
    check(src.shape[axis] == idx.shape[0], f"source extent on axis {axis} must equal the index length")
    check(all(a == b for i, (a, b) in enumerate(zip(x.shape, src.shape)) if i != axis),
          "source and data differ off the indexed axis")
    return [x.with_shape(x.shape)]


def _index_add(x: np.ndarray, idx: np.ndarray, src: np.ndarray, axis: int) -> np.ndarray:
    return _index_reduce(x, idx, src, axis, "sum", True)


def _index_reduce(x: np.ndarray, idx: np.ndarray, src: np.ndarray, axis: int, reduce: str,
                  include_self: bool) -> np.ndarray:
    idx = _wrap(idx, x.shape[axis])
    xm, sm = np.moveaxis(x, axis, 0), np.moveaxis(src, axis, 0)
    acc_dt = np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    out = xm.astype(acc_dt).copy()
    touched = np.zeros(xm.shape[0], np.bool_)
    touched[idx] = True
    if not include_self:
        ident = {"sum": 0, "mean": 0, "prod": 1, "amax": -np.inf, "amin": np.inf}[reduce]
        if acc_dt is np.int64 and reduce in ("amax", "amin"):
            ident = np.iinfo(np.int64).min if reduce == "amax" else np.iinfo(np.int64).max
        out[touched] = ident
    _UFUNC["sum" if reduce == "mean" else reduce].at(out, idx, sm.astype(acc_dt))
    if reduce == "mean":
        counts = np.bincount(idx, minlength=xm.shape[0]).astype(acc_dt) + (1 if include_self else 0)
        counts = np.maximum(counts, 1).reshape((-1,) + (1,) * (out.ndim - 1))
        mean = out / counts if acc_dt is np.float64 else np.floor_divide(out, counts)
        out = np.where(touched.reshape(counts.shape), mean, out)
    return np.moveaxis(out.astype(x.dtype), 0, axis)


register("index_add", _index_type, _index_add, num_inputs=(3, 3), attrs={"axis": REQUIRED})
register("index_reduce", _index_type, _index_reduce, num_inputs=(3, 3),
         attrs={"axis": REQUIRED, "reduce": REQUIRED, "include_self": True})
