"""aten -> IR converters for data movement, indexing (gather / scatter / index_add) and constant-like ops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qcc.frontends.torch_ops import (
    MISSING,
    ConvertContext,
    Unsupported,
    converts,
    norm_dim,
    norm_dims,
    shape_of,
)
from qcc.ir.graph import Value
from qcc.ir.types import numpy_dtype


# -- identity-like and casts ------------------------------------------------------------------------------
@converts("clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_to_copy", "to.dtype", "to.dtype_layout",
          "type_as", "dropout", "feature_dropout", "alpha_dropout")
def _copy(ctx: ConvertContext, x: Any, *args: Any, **kwargs: Any) -> Value:
    if "dropout" in str(ctx.node.target) and (len(args) > 1 and args[1] or kwargs.get("train")):
        raise Unsupported("dropout in training mode (call model.eval())")
    return ctx.value(x, ctx.out_dtype)  # a cast when torch changes the dtype, the same value otherwise


@converts("native_dropout")
def _native_dropout(ctx: ConvertContext, x: Value, p: float, train: bool | None) -> tuple:
    if train:
        raise Unsupported("dropout in training mode (call model.eval())")
    return x, MISSING


@converts("_assert_tensor_metadata", "_assert_scalar", "_assert_async", "_assert_async.msg", "sym_constrain_range",
          "sym_constrain_range_for_size", "_linalg_check_errors")
def _no_op(ctx: ConvertContext, *args: Any, **kwargs: Any) -> None:
    return None


@converts("full_like", "zeros_like", "ones_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty",
          "new_empty_strided", "fill.Scalar")
def _like(ctx: ConvertContext, x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    # Only the (static) shape of x matters, so the result is a folded constant.
    op = str(ctx.node.target)
    fill = args[0] if "full_like" in op or "fill" in op else args[1] if "new_full" in op else int("ones" in op)
    return np.full(ctx.out_shape, fill, numpy_dtype(ctx.out_dtype))


# -- reshaping ------------------------------------------------------------------------------------------------
@converts("view", "_unsafe_view", "reshape", "view_copy", "flatten.using_ints", "unflatten.int", "_reshape_alias",
          "squeeze", "squeeze.dim", "squeeze.dims", "unsqueeze")
def _reshape(ctx: ConvertContext, x: Value, *args: Any) -> Value:
    """Every pure reshape, with torch's resolved output shape; squeeze/unsqueeze keep their own ops."""
    op, shape, rank = str(ctx.node.target), ctx.out_shape, len(x.shape)
    if shape == x.shape:
        return x
    if "unsqueeze" in op:
        return ctx.emit("unsqueeze", [x], axes=(norm_dim(args[0], rank + 1),))
    if "squeeze" in op:  # torch ignores requested dims whose extent is not 1
        axes = tuple(a for a in norm_dims(args[0] if args else None, rank) if x.shape[a] == 1)
        return ctx.emit("squeeze", [x], axes=axes)
    return ctx.emit("reshape", [x], shape=shape)


@converts("permute", "transpose.int", "t", "numpy_T")
def _permute(ctx: ConvertContext, x: Value, *args: Any) -> Value:
    rank, op = len(x.shape), str(ctx.node.target)
    if "permute" in op:
        perm = tuple(norm_dim(d, rank) for d in args[0])
    elif "transpose" in op:
        d0, d1 = norm_dim(args[0], rank), norm_dim(args[1], rank)
        swapped = list(range(rank))
        swapped[d0], swapped[d1] = d1, d0
        perm = tuple(swapped)
    else:  # t / numpy_T reverse every axis
        perm = tuple(reversed(range(rank)))
    return x if perm == tuple(range(rank)) else ctx.emit("transpose", [x], perm=perm)


@converts("expand", "expand_copy")
def _expand(ctx: ConvertContext, x: Value, size: Sequence[int], implicit: bool = False) -> Value:
    return x if ctx.out_shape == x.shape else ctx.emit("expand", [x], shape=ctx.out_shape)


@converts("repeat")
def _repeat(ctx: ConvertContext, x: Value, repeats: Sequence[int]) -> Value:
    reps = tuple(int(r) for r in repeats)
    if len(reps) > len(x.shape):  # torch prepends unit dims first
        x = ctx.emit("reshape", [x], shape=(1,) * (len(reps) - len(x.shape)) + x.shape)
    return ctx.emit("tile", [x], repeats=reps)


# -- joining and splitting ---------------------------------------------------------------------------------------
@converts("cat", "concat")
def _cat(ctx: ConvertContext, tensors: Sequence[Any], dim: int = 0) -> Value:
    dt, rank = ctx.out_dtype, len(ctx.out_shape)
    # torch skips legacy empty 1-D tensors when joining higher-rank ones
    parts = [ctx.value(t, dt) for t in tensors if not (rank > 1 and shape_of(t) == (0,))]
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=norm_dim(dim, rank))


@converts("stack")
def _stack(ctx: ConvertContext, tensors: Sequence[Any], dim: int = 0) -> Value:
    axis = norm_dim(dim, len(ctx.out_shape))
    parts = [ctx.emit("unsqueeze", [ctx.value(t, ctx.out_dtype)], axes=(axis,)) for t in tensors]
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)


@converts("split.Tensor", "split_with_sizes", "split.sizes", "chunk", "unsafe_split.Tensor",
          "unsafe_split_with_sizes", "unbind.int")
def _split(ctx: ConvertContext, x: Value, size_or_sizes: Any = None, dim: int = 0) -> tuple[Value, ...]:
    unbind = "unbind" in str(ctx.node.target)
    if unbind:  # unbind(x, dim) has the dim where split has the sizes
        dim = 0 if size_or_sizes is None else size_or_sizes
    axis = norm_dim(dim, len(x.shape))
    sizes = tuple(int(m.shape[axis]) if not unbind else 1 for m in ctx.out_meta())
    parts = (x,) if len(sizes) == 1 else ctx.emit_node("split", [x], axis=axis, sizes=sizes).outputs
    if unbind:
        return tuple(ctx.emit("squeeze", [p], axes=(axis,)) for p in parts)
    return tuple(parts)


def _clamp_index(i: int | None, n: int, default: int) -> int:
    """A python-style slice bound made concrete: negatives count from the end, then clamped to [0, n]."""
    if i is None:
        return default
    i = int(i)
    return min(max(i + n if i < 0 else i, 0), n)


def slice_axis(ctx: ConvertContext, x: Value, axis: int, start: int | None, end: int | None, step: int = 1) -> Value:
    """x[..., start:end:step, ...] on one axis with torch's clamping (end may be INT64_MAX)."""
    n = x.shape[axis]
    s, e = _clamp_index(start, n, 0), _clamp_index(end, n, n)
    if (s, e, step) == (0, n, 1):
        return x
    return ctx.emit("slice", [x], starts=(s,), ends=(e,), axes=(axis,), steps=(int(step),))


@converts("slice.Tensor", "slice_copy.Tensor")
def _slice(ctx: ConvertContext, x: Value, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> Value:
    return slice_axis(ctx, x, norm_dim(dim, len(x.shape)), start, end, step)


@converts("select.int", "select_copy.int")
def _select(ctx: ConvertContext, x: Value, dim: int, index: int) -> Value:
    axis = norm_dim(dim, len(x.shape))
    i = index + x.shape[axis] if index < 0 else index
    return ctx.emit("squeeze", [slice_axis(ctx, x, axis, i, i + 1)], axes=(axis,))


@converts("copy")
def _copy_into(ctx: ConvertContext, x: Value, src: Any, non_blocking: bool = False) -> Value:
    v = ctx.value(src, ctx.out_dtype)  # x.copy_(src): src broadcast to x's shape, in x's dtype
    return v if v.shape == x.shape else ctx.emit("expand", [v], shape=x.shape)


@converts("slice_scatter", "select_scatter")
def _slice_scatter(ctx: ConvertContext, x: Value, src: Any, dim: int = 0, start: int | None = None,
                   end: int | None = None, step: int = 1) -> Value:
    """x with x[..., start:end, ...] replaced by src (functionalized slice assignment), as a concat."""
    axis = norm_dim(dim, len(x.shape))
    n, v = x.shape[axis], ctx.value(src, x.dtype)
    if "select" in str(ctx.node.target):  # select_scatter(x, src, dim, index): one row, src lacks the axis
        start = _clamp_index(start, n, 0)
        end, v = start + 1, ctx.emit("unsqueeze", [v], axes=(axis,))
    if step != 1:
        raise Unsupported("slice_scatter with a step")
    s = _clamp_index(start, n, 0)
    e = max(_clamp_index(end, n, n), s)
    parts = [slice_axis(ctx, x, axis, 0, s)] if s > 0 else []
    parts.append(v)
    if e < n:
        parts.append(slice_axis(ctx, x, axis, e, n))
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)


# -- padding, cumsum, flip, upsampling ------------------------------------------------------------------------------
def _pads(rank: int, pad: Sequence[int]) -> tuple[int, ...]:
    # torch lists (begin, end) pairs starting from the last dim; the IR wants all begins then all ends
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    return tuple(begins + ends)


@converts("constant_pad_nd")
def _constant_pad(ctx: ConvertContext, x: Value, pad: Sequence[int], value: float = 0) -> Value:
    return ctx.emit("pad", [x], pads=_pads(len(x.shape), pad), mode="constant", value=float(value))


def _mode_pad(mode: str) -> Any:
    def convert(ctx: ConvertContext, x: Value, padding: Sequence[int]) -> Value:
        return ctx.emit("pad", [x], pads=_pads(len(x.shape), padding), mode=mode, value=0.0)

    return convert


for _n in (1, 2, 3):
    converts(f"reflection_pad{_n}d")(_mode_pad("reflect"))
    converts(f"replication_pad{_n}d")(_mode_pad("edge"))


@converts("cumsum")
def _cumsum(ctx: ConvertContext, x: Any, dim: int, dtype: Any = None) -> Value:
    v = ctx.value(x, ctx.out_dtype)
    return ctx.emit("cumsum", [v], axis=norm_dim(dim, len(v.shape)))


@converts("flip")
def _flip(ctx: ConvertContext, x: Value, dims: Sequence[int]) -> Value:
    for axis in norm_dims(dims, len(x.shape)):
        rev = ctx.const(np.arange(x.shape[axis] - 1, -1, -1), "i64", f"{ctx.name}_index")
        x = ctx.emit("gather", [x, rev], axis=axis)
    return x


@converts("upsample_nearest2d.vec", "upsample_nearest2d")
def _upsample_nearest(ctx: ConvertContext, x: Value, output_size: Any, *scales: Any) -> Value:
    factors = scales[0] if len(scales) == 1 else scales  # .vec: [sh, sw]; .default: scales_h, scales_w
    for i, axis in enumerate((2, 3)):
        n_in, n_out = x.shape[axis], ctx.out_shape[axis]
        sf = factors[i] if factors and len(factors) > i else None
        scale = np.float32(1.0 / sf) if sf else np.float32(n_in / n_out)  # PyTorch computes it in float
        src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)
        if n_out != n_in:
            x = ctx.emit("gather", [x, ctx.const(src, "i64", f"{ctx.name}_index")], axis=axis)
    return x


# -- gathers --------------------------------------------------------------------------------------------------------
@converts("index_select")
def _index_select(ctx: ConvertContext, x: Value, dim: int, index: Any) -> Value:
    idx = ctx.value(index)
    if len(idx.shape) == 0:
        idx = ctx.emit("reshape", [idx], shape=(1,))
    return ctx.emit("gather", [x, idx], axis=norm_dim(dim, len(x.shape)))


@converts("embedding")
def _embedding(ctx: ConvertContext, weight: Any, indices: Any, *args: Any) -> Value:
    return ctx.emit("gather", [ctx.value(weight), ctx.value(indices)], axis=0)


def _single_index(indices: Sequence[Any]) -> tuple[int, Any]:
    used = [(i, t) for i, t in enumerate(indices) if t is not None]
    if len(used) != 1:
        raise Unsupported("advanced indexing with several index tensors")
    if getattr(used[0][1], "dtype", None) in ("bool", np.bool_):
        raise Unsupported("boolean mask indexing")
    return used[0]


@converts("index.Tensor")
def _index(ctx: ConvertContext, x: Value, indices: Sequence[Any]) -> Value:
    axis, idx = _single_index(indices)
    return ctx.emit("gather", [x, ctx.value(idx)], axis=axis)


def _crop_to(ctx: ConvertContext, x: Value, shape: tuple[int, ...], skip: int | None) -> Value:
    """x sliced down to `shape` on every axis but `skip` (torch lets gather/scatter operands be larger)."""
    for a, n in enumerate(shape):
        if a != skip and x.shape[a] != n:
            x = slice_axis(ctx, x, a, 0, n)
    return x


@converts("gather")
def _gather(ctx: ConvertContext, x: Value, dim: int, index: Any, sparse_grad: bool = False) -> Value:
    axis, idx = norm_dim(dim, len(x.shape)), ctx.value(index)
    return ctx.emit("gather_elements", [_crop_to(ctx, x, idx.shape, axis), idx], axis=axis)


# -- scatters ------------------------------------------------------------------------------------------------------
_SCATTER_REDUCE = {"sum": "add", "add": "add", "prod": "mul", "multiply": "mul", "amax": "max", "amin": "min"}


def _scatter_elements(ctx: ConvertContext, x: Value, dim: int, index: Any, src: Any, reduction: str) -> Value:
    axis, idx = norm_dim(dim, len(x.shape)), ctx.value(index)
    if isinstance(src, (int, float, bool)):
        upd = ctx.const(np.full(idx.shape, src), x.dtype, f"{ctx.name}_src")
    else:
        upd = _crop_to(ctx, ctx.value(src, x.dtype), idx.shape, None)
    return ctx.emit("scatter_elements", [x, idx, upd], axis=axis, reduction=reduction)


@converts("scatter.src", "scatter.value")
def _scatter(ctx: ConvertContext, x: Value, dim: int, index: Any, src: Any) -> Value:
    return _scatter_elements(ctx, x, dim, index, src, "none")


@converts("scatter.reduce", "scatter.value_reduce")
def _scatter_reduce_legacy(ctx: ConvertContext, x: Value, dim: int, index: Any, src: Any, reduce: str) -> Value:
    return _scatter_elements(ctx, x, dim, index, src, _SCATTER_REDUCE[reduce])


@converts("scatter_add")
def _scatter_add(ctx: ConvertContext, x: Value, dim: int, index: Any, src: Any) -> Value:
    return _scatter_elements(ctx, x, dim, index, src, "add")


@converts("scatter_reduce.two")
def _scatter_reduce(ctx: ConvertContext, x: Value, dim: int, index: Any, src: Any, reduce: str,
                    include_self: bool = True) -> Value:
    if not include_self:
        raise Unsupported("scatter_reduce with include_self=False")
    if reduce not in _SCATTER_REDUCE:
        raise Unsupported(f"scatter_reduce with reduce={reduce!r}")
    return _scatter_elements(ctx, x, dim, index, src, _SCATTER_REDUCE[reduce])


@converts("index_add")
def _index_add(ctx: ConvertContext, x: Value, dim: int, index: Any, source: Any, alpha: Any = 1) -> Value:
    src = ctx.value(source, x.dtype)
    if alpha != 1:
        src = ctx.emit("mul", [src, ctx.scalar(alpha, src)])
    return ctx.emit("index_add", [x, ctx.value(index), src], axis=norm_dim(dim, len(x.shape)))


@converts("index_reduce")
def _index_reduce(ctx: ConvertContext, x: Value, dim: int, index: Any, source: Any, reduce: str,
                  include_self: bool = True) -> Value:
    return ctx.emit("index_reduce", [x, ctx.value(index), ctx.value(source, x.dtype)],
                    axis=norm_dim(dim, len(x.shape)), reduce=str(reduce), include_self=bool(include_self))


@converts("index_put")
def _index_put(ctx: ConvertContext, x: Value, indices: Sequence[Any], values: Any, accumulate: bool = False) -> Value:
    axis, index = _single_index(indices)
    idx = ctx.value(index)
    if len(idx.shape) != 1:
        raise Unsupported("index_put with a multi-dimensional index")
    shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]  # the indexed view x[..., idx, ...]
    src = ctx.value(values, x.dtype)
    src = src if src.shape == shape else ctx.emit("expand", [src], shape=shape)
    if accumulate:
        return ctx.emit("index_add", [x, idx, src], axis=axis)
    # Overwrite: scatter_elements with the index broadcast over the other axes.
    idx_shape = (1,) * axis + idx.shape + (1,) * (len(x.shape) - axis - 1)
    full = ctx.emit("expand", [ctx.emit("reshape", [idx], shape=idx_shape)], shape=shape)
    return ctx.emit("scatter_elements", [x, full, src], axis=axis, reduction="none")
