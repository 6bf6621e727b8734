"""ONNX data-movement, indexing and shape-computation converters.

Shape, Size, ConstantOfShape and Range always produce constants (shapes are static), so the Shape -> Gather ->
Concat -> Reshape chains exporters write for dynamic axes fold away in `NodeContext.emit`.
"""

from __future__ import annotations

import math

import numpy as np

from qcc.frontends.onnx_ops import (
    NodeContext,
    Operand,
    Unsupported,
    cast,
    converter,
    norm_axes,
    norm_axis,
    np_dtype,
    shape_of,
    to_array,
)


def reshape(ctx: NodeContext, x: Operand, shape: tuple[int, ...]) -> Operand:
    shape = tuple(int(d) for d in shape)
    return x if shape_of(x) == shape else ctx.emit("reshape", [x], shape=shape)


def transpose(ctx: NodeContext, x: Operand, perm: tuple[int, ...]) -> Operand:
    perm = tuple(int(p) for p in perm)
    return x if perm == tuple(range(len(perm))) else ctx.emit("transpose", [x], perm=perm)


# -- constants and shapes -----------------------------------------------------------------------------------------
@converter("Constant")
def _constant(ctx: NodeContext) -> list[Operand]:
    a = ctx.attrs
    if "value" in a:
        return [to_array(a["value"], ctx.imp.label)]
    if "value_float" in a or "value_int" in a:
        return [np.asarray(a.get("value_float", a.get("value_int")),
                           np.float32 if "value_float" in a else np.int64)]
    if "value_floats" in a:
        return [np.asarray(a["value_floats"], np.float32)]
    if "value_ints" in a:
        return [np.asarray(a["value_ints"], np.int64)]
    raise Unsupported("with a string or sparse value")


@converter("Identity")
def _identity(ctx: NodeContext) -> list[Operand]:
    return [ctx.x(0)]


@converter("Dropout")
def _dropout(ctx: NodeContext) -> list[Operand | None]:
    x = ctx.x(0)
    training = ctx.const(2, "Dropout training_mode")
    if training is not None and bool(training.reshape(())):
        raise Unsupported("with training_mode=True")
    mask = np.ones(shape_of(x), np.bool_) if ctx.output_used(1) else None  # inference keeps every element
    return [x, mask]


@converter("Shape")
def _shape(ctx: NodeContext) -> list[Operand]:
    shape = np.asarray(shape_of(ctx.x(0)), np.int64)
    return [shape[slice(ctx.attr("start", 0), ctx.attr("end"))]]


@converter("Size")
def _size(ctx: NodeContext) -> list[Operand]:
    return [np.asarray(math.prod(shape_of(ctx.x(0))), np.int64)]


@converter("ConstantOfShape")
def _constant_of_shape(ctx: NodeContext) -> list[Operand]:
    shape = ctx.ints(0, "ConstantOfShape shape")
    value = to_array(ctx.attrs["value"], ctx.imp.label) if "value" in ctx.attrs else np.zeros(1, np.float32)
    return [np.full(shape or (), value.reshape(-1)[0], value.dtype)]


@converter("Range")
def _range(ctx: NodeContext) -> list[Operand]:
    start, limit, delta = (ctx.const(i, "Range bounds") for i in range(3))
    assert start is not None and limit is not None and delta is not None
    n = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    return [(start + delta * np.arange(n)).astype(start.dtype)]


# -- reshaping ----------------------------------------------------------------------------------------------------
@converter("Reshape")
def _reshape(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    spec = ctx.ints(1, "Reshape target shape")
    assert spec is not None
    in_shape = shape_of(x)
    allowzero = ctx.attr("allowzero", 0)
    out = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(spec)]
    if out.count(-1) > 1:
        raise ctx.error(f"shape {spec} has more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or math.prod(in_shape) % known:
            raise ctx.error(f"cannot reshape {list(in_shape)} to {list(spec)}")
        out[out.index(-1)] = math.prod(in_shape) // known
    if math.prod(out) != math.prod(in_shape) or any(d < 0 for d in out):
        raise ctx.error(f"cannot reshape {list(in_shape)} to {list(spec)}")
    return [reshape(ctx, x, tuple(out))]


@converter("Flatten")
def _flatten(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    axis = ctx.attr("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise ctx.error(f"axis {ctx.attr('axis')} out of range for rank {len(shape)}")
    return [reshape(ctx, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))]


@converter("Transpose")
def _transpose(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    rank = len(shape_of(x))
    perm = ctx.attr("perm", tuple(range(rank - 1, -1, -1)))
    return [transpose(ctx, x, tuple(norm_axis(ctx, p, rank) for p in perm))]


@converter("Squeeze")
def _squeeze(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    axes = ctx.attr("axes") or ctx.ints(1, "Squeeze axes")
    axes = norm_axes(ctx, axes, len(shape)) if axes else tuple(i for i, d in enumerate(shape) if d == 1)
    if any(shape[a] != 1 for a in axes):
        raise ctx.error(f"cannot squeeze axes {axes} of shape {list(shape)}")
    return [ctx.emit("squeeze", [x], axes=axes) if axes else x]


@converter("Unsqueeze")
def _unsqueeze(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    axes = ctx.attr("axes") or ctx.ints(1, "Unsqueeze axes")
    if not axes:
        raise ctx.error("no axes")
    return [ctx.emit("unsqueeze", [x], axes=norm_axes(ctx, axes, len(shape_of(x)) + len(axes)))]


@converter("Expand")
def _expand(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    target = ctx.ints(1, "Expand shape")
    assert target is not None
    try:  # ONNX Expand broadcasts both ways: the result may be larger than `target`
        out = tuple(int(d) for d in np.broadcast_shapes(shape_of(x), target))
    except ValueError:
        raise ctx.error(f"cannot expand {list(shape_of(x))} to {list(target)}") from None
    return [x if out == shape_of(x) else ctx.emit("expand", [x], shape=out)]


@converter("Tile")
def _tile(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    reps = ctx.ints(1, "Tile repeats")
    assert reps is not None
    return [x if all(r == 1 for r in reps) else ctx.emit("tile", [x], repeats=reps)]


# -- joining and cutting --------------------------------------------------------------------------------------------
@converter("Concat")
def _concat(ctx: NodeContext) -> list[Operand]:
    xs = [x for x in ctx.inputs if x is not None]
    axis = norm_axis(ctx, ctx.attr("axis"), len(shape_of(xs[0])))
    nonempty = [x for x in xs if shape_of(x)[axis] != 0] or xs[:1]  # shape chains concat empty vectors
    return [nonempty[0] if len(nonempty) == 1 else ctx.emit("concat", nonempty, axis=axis)]


@converter("Split")
def _split(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    axis = norm_axis(ctx, ctx.attr("axis", 0), len(shape))
    sizes = ctx.attr("split") or ctx.ints(1, "Split sizes")
    if not sizes:
        n = ctx.attr("num_outputs", len(ctx.node.output))
        chunk = -(-shape[axis] // n)  # opset 18: the last chunk is smaller when the extent does not divide
        sizes = tuple([chunk] * (n - 1) + [shape[axis] - chunk * (n - 1)])
    if sum(sizes) != shape[axis] or any(s < 0 for s in sizes):
        raise ctx.error(f"split sizes {sizes} do not cover axis {axis} of {list(shape)}")
    if len(sizes) == 1:
        return [x]
    return ctx.emit_multi("split", [x], axis=axis, sizes=tuple(sizes))


@converter("Slice")
def _slice(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    starts, ends = ctx.ints(1, "Slice starts"), ctx.ints(2, "Slice ends")
    assert starts is not None and ends is not None
    axes = ctx.ints(3, "Slice axes") or tuple(range(len(starts)))
    steps = ctx.ints(4, "Slice steps") or (1,) * len(starts)
    forward: dict[int, tuple[int, int, int]] = {}
    backward: list[tuple[int, np.ndarray]] = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(ctx, a, len(shape))
        if st == 0:
            raise ctx.error("slice step 0")
        # slice.indices clamps exactly as ONNX does (to [0, dim] forward, [-1, dim - 1] backward).
        s, e, st = slice(s, e, st).indices(shape[a])
        if st > 0:
            e = max(e, s)
            if (s, e, st) != (0, shape[a], 1):
                forward[a] = (s, e, st)
        else:  # a reversed range is a gather, which keeps the IR's slice free of negative ends
            backward.append((a, np.arange(s, e, st, dtype=np.int64)))
    if forward:
        axs = tuple(sorted(forward))
        x = ctx.emit("slice", [x], starts=tuple(forward[a][0] for a in axs), ends=tuple(forward[a][1] for a in axs),
                     axes=axs, steps=tuple(forward[a][2] for a in axs))
    for a, idx in backward:
        x = ctx.emit("gather", [x, idx], axis=a)
    return [x]


@converter("Pad")
def _pad(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    rank = len(shape_of(x))
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"with mode={mode!r}")
    given = ctx.ints(1, "Pad pads")
    assert given is not None
    axes = ctx.ints(3, "Pad axes")
    axes = norm_axes(ctx, axes, rank) if axes else tuple(range(rank))
    if len(given) != 2 * len(axes):
        raise ctx.error(f"{len(given)} pads for {len(axes)} axes")
    pads = [0] * (2 * rank)
    for i, a in enumerate(axes):
        pads[a], pads[a + rank] = given[i], given[i + len(axes)]
    value = ctx.const(2, "Pad constant_value")
    if not any(pads):
        return [x]
    fill = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    return [ctx.emit("pad", [x], pads=tuple(pads), mode=mode, value=fill)]


# -- indexing ---------------------------------------------------------------------------------------------------
@converter("Gather", "GatherElements")
def _gather(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    axis = norm_axis(ctx, ctx.attr("axis", 0), len(shape_of(x)))
    op = "gather" if ctx.op_type == "Gather" else "gather_elements"
    return [ctx.emit(op, [x, ctx.x(1)], axis=axis)]


@converter("ScatterElements")
def _scatter_elements(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    axis = norm_axis(ctx, ctx.attr("axis", 0), len(shape_of(x)))
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise ctx.error(f"unknown reduction {reduction!r}")
    return [ctx.emit("scatter_elements", [x, ctx.x(1), ctx.x(2)], axis=axis, reduction=reduction)]


def _flat_rows(ctx: NodeContext, idx: Operand, dshape: tuple[int, ...]) -> Operand:
    """The row of data viewed as [prod(shape[:k]), ...] that each k-deep ND index addresses."""
    ishape = shape_of(idx)
    k = ishape[-1]
    if not 1 <= k <= len(dshape):
        raise Unsupported(f"with index depth {k} for data of rank {len(dshape)}")
    idx = cast(ctx, idx, np.dtype(np.int64))
    dims = np.asarray(dshape[:k], np.int64)
    wrapped = ctx.emit("where", [ctx.emit("less", [idx, np.zeros((), np.int64)]), ctx.emit("add", [idx, dims]), idx])
    strides = np.asarray([math.prod(dshape[j + 1:k]) for j in range(k)], np.int64)
    return ctx.emit("reduce_sum", [ctx.emit("mul", [wrapped, strides])], axes=(len(ishape) - 1,), keepdims=False)


@converter("GatherND")
def _gather_nd(ctx: NodeContext) -> list[Operand]:
    """GatherND (batch_dims=0) as a gather of rows of data viewed as [prod(shape[:k]), *shape[k:]]."""
    data, idx = ctx.x(0), ctx.x(1)
    if ctx.attr("batch_dims", 0):
        raise Unsupported("with batch_dims > 0")
    dshape = shape_of(data)
    rows = _flat_rows(ctx, idx, dshape)
    k = shape_of(idx)[-1]
    return [ctx.emit("gather", [reshape(ctx, data, (math.prod(dshape[:k]),) + dshape[k:]), rows], axis=0)]


@converter("ScatterND")
def _scatter_nd(ctx: NodeContext) -> list[Operand]:
    """ScatterND as scatter_elements over rows: data viewed as [prod(shape[:k]), rest], one row per index."""
    data, idx, upd = ctx.x(0), ctx.x(1), ctx.x(2)
    dshape, ishape = shape_of(data), shape_of(idx)
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise ctx.error(f"unknown reduction {reduction!r}")
    k = ishape[-1]
    n, rest = math.prod(ishape[:-1]), math.prod(dshape[k:])
    if k == 1 and reduction != "none":
        # Whole rows reduced onto data[index]: the index_add / index_reduce ops GNN passes look for.
        rows = reshape(ctx, cast(ctx, idx, np.dtype(np.int64)), (n,))
        src = reshape(ctx, upd, (n,) + dshape[1:])
        if reduction == "add":
            return [ctx.emit("index_add", [data, rows, src], axis=0)]
        reduce = {"mul": "prod", "max": "amax", "min": "amin"}[reduction]
        return [ctx.emit("index_reduce", [data, rows, src], axis=0, reduce=reduce, include_self=True)]
    rows = _flat_rows(ctx, idx, dshape)
    rows = ctx.emit("expand", [reshape(ctx, rows, (n, 1))], shape=(n, rest))
    flat = reshape(ctx, data, (math.prod(dshape[:k]), rest))
    out = ctx.emit("scatter_elements", [flat, rows, reshape(ctx, upd, (n, rest))], axis=0, reduction=reduction)
    return [reshape(ctx, out, dshape)]


@converter("OneHot")
def _one_hot(ctx: NodeContext) -> list[Operand]:
    idx = ctx.x(0)
    depth, values = ctx.const(1, "OneHot depth"), ctx.const(2, "OneHot values")
    assert depth is not None and values is not None
    d = int(depth.reshape(-1)[0])
    rank = len(shape_of(idx)) + 1
    axis = norm_axis(ctx, ctx.attr("axis", -1), rank)
    idx = cast(ctx, idx, np.dtype(np.int64))
    depth64 = np.asarray(d, np.int64)
    idx = ctx.emit("where", [ctx.emit("less", [idx, np.zeros((), np.int64)]), ctx.emit("add", [idx, depth64]), idx])
    positions = np.arange(d, dtype=np.int64).reshape([d if i == axis else 1 for i in range(rank)])
    hit = ctx.emit("equal", [ctx.emit("unsqueeze", [idx], axes=(axis,)), positions])
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return [ctx.emit("where", [hit, np.asarray(on), np.asarray(off)])]


@converter("Trilu")
def _trilu(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    if len(shape) < 2:
        raise ctx.error("needs rank >= 2")
    k = ctx.ints(1, "Trilu k") or (0,)
    ones = np.ones(shape[-2:], np.bool_)
    keep = np.triu(ones, k[0]) if ctx.attr("upper", 1) else np.tril(ones, k[0])
    return [ctx.emit("where", [keep, x, np.zeros((), np_dtype(x))])]


@converter("CumSum")
def _cumsum(ctx: NodeContext) -> list[Operand]:
    x = ctx.x(0)
    shape = shape_of(x)
    axis_c = ctx.const(1, "CumSum axis")
    assert axis_c is not None
    axis = norm_axis(ctx, int(axis_c.reshape(-1)[0]), len(shape))
    reverse = bool(ctx.attr("reverse", 0))
    flip = np.arange(shape[axis] - 1, -1, -1, dtype=np.int64)
    y = ctx.emit("gather", [x, flip], axis=axis) if reverse else x
    s = ctx.emit("cumsum", [y], axis=axis)
    if ctx.attr("exclusive", 0):
        s = ctx.emit("sub", [s, y])
    return [ctx.emit("gather", [s, flip], axis=axis) if reverse else s]
