"""Lowering of the transformer and integer-nonlinear ops to the ISA's vector extension (docs/accel-isa.md).

`qmatmul` (+ its requantize) -> BMM, per-vector `qlinear` -> GEMMG, broadcasting `qadd` -> QADDB, `transpose` ->
PERMUTE, `qmean` over non-trailing axes -> RMEAN, `isoftmax`/`shiftmax` -> ISOFTMAX/SHIFTMAX (last axis),
`igelu`/`shiftgelu` -> IGELU/SHIFTGELU, `ilayer_norm` -> LNORM, `qconcat` -> a chain of two-input QCATs,
integer `avg_pool2d` -> AVGPOOL. Called from `Lowering._node`; each adds one or more `Unit`s to the lowering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qcc.backends.accel.isa import DTYPES, RANGES
from qcc.backends.accel.tiling import Unit
from qcc.errors import UnsupportedOperatorError
from qcc.ir.graph import Value
from qcc.ir.ops.registry import complete_attrs, get_op
from qcc.ir.types import TensorType

if TYPE_CHECKING:
    from qcc.backends.accel.lowering import Lowering


def _attrs(node: Any) -> dict[str, Any]:
    return dict(complete_attrs(get_op(node.op), node.attrs))


def _bad(lw: Lowering, node: Any, why: str) -> UnsupportedOperatorError:
    err = UnsupportedOperatorError([(node.op, node.name or "?")], lw.g.name or "model")
    err.args = (f"{err.args[0]} (accelerator: {why})",)
    return err


def _sat(dt: str, lo: int | None = None, hi: int | None = None) -> dict[str, int]:
    tlo, thi = RANGES[dt]
    return {"lo": tlo if lo is None else max(tlo, lo), "hi": thi if hi is None else min(thi, hi)}


def _unit(lw: Lowering, op: str, node: Any, vals: dict[str, Value | str], f: dict[str, int],
          tables: tuple[str, ...] = (), meta: dict[str, int] | None = None, name: str | None = None) -> None:
    ins, shapes, dtypes = lw.local(**vals)
    out = ins.pop("y")
    lw.units.append(Unit(op, name or node.name, ins, out, f, shapes, dtypes, tables, meta or {}))


def bmm(lw: Lowering, node: Any, req: Any | None) -> None:
    """qmatmul [..., m, k] x [..., k, n] with equal batch dims (+ the fused requantize)."""
    a, b = node.inputs
    sa, sb = a.type.shape, b.type.shape
    if len(sa) < 2 or len(sb) < 2 or sa[:-2] != sb[:-2]:
        raise _bad(lw, node, f"batched matmul needs equal batch dims, got {list(sa)} x {list(sb)}")
    last = req if req is not None else node
    vals: dict[str, Value | str] = {"x": lw.operand(a, node), "w": lw.operand(b, node), "y": last.outputs[0]}
    if req is not None:
        vals["mul"], vals["shf"] = (lw.param(v, req, table=True) for v in req.inputs[1:3])
        lw.fused.add(id(req))
    at = _attrs(node)
    f = {"batch": math.prod(sa[:-2]), "m": sa[-2], "k": sa[-1], "n": sb[-1], "xzp": at["a_zero_point"],
         "wzp": at["b_zero_point"], "xdt": DTYPES[a.type.dtype], "wdt": DTYPES[b.type.dtype]}
    tables = lw._epilogue(req, f, -1)
    _unit(lw, "bmm", node, vals, f, tables, name=node.name + ("+requantize" if req is not None else ""))


def gemmg(lw: Lowering, node: Any, req: Any | None) -> None:
    """qlinear with per-vector (group_size) integer weight scales (+ the fused requantize)."""
    x, w, bias, gsc = node.inputs
    last = req if req is not None else node
    vals: dict[str, Value | str] = {"x": x, "w": lw.param(w, node, pack=True), "bias": lw.param(bias, node, True),
                                    "gsc": lw.param(gsc, node, True), "y": last.outputs[0]}
    if req is not None:
        vals["mul"], vals["shf"] = (lw.param(v, req, table=True) for v in req.inputs[1:3])
        lw.fused.add(id(req))
    at = _attrs(node)
    f = {"m": math.prod(x.type.shape[:-1]), "k": x.type.shape[-1], "n": w.type.shape[0], "gs": at["group_size"],
         "xzp": at["x_zero_point"], "wzp": at["w_zero_point"], "xdt": DTYPES[x.type.dtype]}
    tables = lw._epilogue(req, f, -1)
    ins_w = vals["w"]
    assert isinstance(ins_w, str)
    f["wdt"] = DTYPES[lw.dtypes[ins_w]]
    _unit(lw, "gemmg", node, vals, f, ("w", "bias", "gsc") + tables,
          name=node.name + ("+requantize" if req is not None else ""))


def qaddb(lw: Lowering, node: Any) -> None:
    """Broadcasting qadd: the full-shape operand streams, the other is indexed ((base + i) // binner) % bcount."""
    at = _attrs(node)
    out = node.outputs[0].type.shape
    a, b = node.inputs
    am, bm, azp, bzp = at["a_multiplier"], at["b_multiplier"], at["a_zero_point"], at["b_zero_point"]
    if a.type.shape != out:  # add is symmetric: stream the full operand
        a, b, am, bm, azp, bzp = b, a, bm, am, bzp, azp
    if a.type.shape != out:
        raise _bad(lw, node, "broadcasting add where neither operand has the output shape")
    sb = (1,) * (len(out) - len(b.type.shape)) + tuple(b.type.shape)
    real = [i for i, d in enumerate(sb) if d != 1]
    if real and real != list(range(real[0], real[-1] + 1)):
        raise _bad(lw, node, f"broadcast operand {list(b.type.shape)} must vary over contiguous axes")
    i0, i1 = (real[0], real[-1] + 1) if real else (len(out), len(out))
    f = {"count": math.prod(out), "base": 0, "binner": math.prod(out[i1:]), "bcount": math.prod(sb[i0:i1]),
         "adt": DTYPES[a.type.dtype], "bdt": DTYPES[b.type.dtype], "ydt": DTYPES[at["dtype"]], "am": am, "bm": bm,
         "shift": at["shift"], "azp": azp, "bzp": bzp, "yzp": at["zero_point"],
         **_sat(at["dtype"], at["min"], at["max"])}
    _unit(lw, "qaddb", node, {"a": lw.operand(a, node), "b": lw.operand(b, node), "y": node.outputs[0]}, f, ("b",))


def trailing_mean(lw: Lowering, node: Any) -> bool:
    shape = node.inputs[0].type.shape
    axes = sorted({a % len(shape) for a in (_attrs(node)["axes"] or range(len(shape)))})
    return axes == list(range(len(shape) - len(axes), len(shape)))


def rmean(lw: Lowering, node: Any) -> None:
    shape = node.inputs[0].type.shape
    axes = sorted({a % len(shape) for a in (_attrs(node)["axes"] or range(len(shape)))})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise _bad(lw, node, f"mean over non-contiguous axes {axes}")
    f = {"outer": math.prod(shape[:axes[0]]), "red": math.prod(shape[axes[0]:axes[-1] + 1]),
         "inner": math.prod(shape[axes[-1] + 1:]), "dt": DTYPES[node.inputs[0].type.dtype]}
    _unit(lw, "rmean", node, {"x": node.inputs[0], "y": node.outputs[0]}, f)


def permute(lw: Lowering, node: Any) -> None:
    shape, perm = node.inputs[0].type.shape, tuple(_attrs(node)["perm"])
    if len(shape) > 6:
        raise _bad(lw, node, "transpose of more than 6 dimensions")
    pad = 6 - len(shape)
    dims = (1,) * pad + tuple(shape)
    p = tuple(range(pad)) + tuple(pad + i for i in perm)
    f = {"dt": DTYPES[node.inputs[0].type.dtype], **{f"d{i}": dims[i] for i in range(6)},
         **{f"p{i}": p[i] for i in range(6)}}
    lead = pad + perm[0] if perm else -1  # the input axis that becomes the output's leading axis: rows tile along it
    _unit(lw, "permute", node, {"x": lw.operand(node.inputs[0], node), "y": node.outputs[0]}, f, meta={"lead": lead})


def _rows(lw: Lowering, node: Any, axis: int, last_only: bool) -> dict[str, int]:
    shape = node.inputs[0].type.shape
    axis %= len(shape)
    if last_only and axis != len(shape) - 1:
        raise _bad(lw, node, f"softmax over axis {axis}: only the last axis")
    return {"rows": math.prod(shape[:axis]), "cols": math.prod(shape[axis:]),
            "xdt": DTYPES[node.inputs[0].type.dtype]}


def softmax(lw: Lowering, node: Any) -> None:
    at = _attrs(node)
    f = _rows(lw, node, at["axis"], True)
    if node.op == "isoftmax":
        f.update(ln2=at["ln2"], pb=at["b"], pc=at["c"], nexp=at["n"], k=at["k"])
    else:
        f.update(one=at["one"], nexp=at["n"], k=at["k"])
    _unit(lw, node.op, node, {"x": node.inputs[0], "y": node.outputs[0]}, f)


def gelu(lw: Lowering, node: Any) -> None:
    at = _attrs(node)
    f = {"count": math.prod(node.inputs[0].type.shape), "xdt": DTYPES[node.inputs[0].type.dtype]}
    if node.op == "igelu":
        f.update(pb=at["b"], one=at["one"], shift=at["shift"])
    else:
        f.update(one=at["one"], nexp=at["n"], k=at["k"])
    _unit(lw, node.op, node, {"x": node.inputs[0], "y": node.outputs[0]}, f)


def lnorm(lw: Lowering, node: Any) -> None:
    at = _attrs(node)
    f = _rows(lw, node, at["axis"], False)
    f.update(sqrt={"newton": 0, "ivit": 1}[at["sqrt"]], yzp=at["zero_point"], ydt=DTYPES[at["dtype"]])
    mul, shf, bias = (lw.param(v, node, table=True) for v in node.inputs[1:4])
    _unit(lw, "lnorm", node, {"x": node.inputs[0], "mul": mul, "shf": shf, "bias": bias, "y": node.outputs[0]}, f,
          ("mul", "shf", "bias"))


def qconcat(lw: Lowering, node: Any) -> None:
    """A chain of QCATs; inputs after the first two join through an exact identity requantize (m=1, s=0)."""
    at = _attrs(node)
    axis, dt, yzp = at["axis"], at["dtype"], at["zero_point"]
    xs = list(node.inputs)
    shape = node.outputs[0].type.shape
    outer = math.prod(shape[:axis])
    rq = list(zip(at["multipliers"], at["shifts"], at["input_zero_points"]))
    cur: Value | str = lw.operand(xs[0], node)
    width = math.prod(xs[0].type.shape[axis:])
    cur_dt, cur_rq = xs[0].type.dtype, rq[0]
    rest = list(zip(xs[1:], rq[1:])) or [(xs[0], (0, 0, 0))]  # one input: b is empty
    for i, (v, (m, s, z)) in enumerate(rest):
        ib = math.prod(v.type.shape[axis:]) if len(xs) > 1 else 0
        last = i == len(rest) - 1
        y = node.outputs[0] if last else Value(TensorType((outer, width + ib), dt), f"{node.name}.cat{i}")
        f = {"outer": outer, "ia": width, "ib": ib, "adt": DTYPES[cur_dt], "bdt": DTYPES[v.type.dtype],
             "ydt": DTYPES[dt], "am": cur_rq[0], "ash": cur_rq[1], "azp": cur_rq[2], "bm": m, "bsh": s, "bzp": z,
             "yzp": yzp}
        _unit(lw, "qcat", node, {"a": cur, "b": lw.operand(v, node), "y": y}, f,
              name=node.name if len(rest) == 1 else f"{node.name}.{i}")
        cur, width, cur_dt, cur_rq = y, width + ib, dt, (1, 0, yzp)


def avgpool(lw: Lowering, node: Any) -> None:
    x = node.inputs[0].type
    if x.dtype not in DTYPES:
        raise _bad(lw, node, f"average pool of {x.dtype}")
    at = _attrs(node)
    n, c, h, wd = x.shape
    _, _, oh, ow = node.outputs[0].type.shape
    pt, pl, pb, pr = at["padding"]
    f = {"planes": n * c, "h": h, "wd": wd, "oh": oh, "ow": ow, "kh": at["kernel"][0], "kw": at["kernel"][1],
         "sh": at["stride"][0], "sw": at["stride"][1], "pt": pt, "pl": pl, "pb": pb, "pr": pr,
         "incpad": int(bool(at["count_include_pad"])), "dt": DTYPES[x.dtype]}
    _unit(lw, "avgpool", node, {"x": node.inputs[0], "y": node.outputs[0]}, f)


LOWER: dict[str, Callable[[Lowering, Any], None]] = {
    "transpose": permute, "isoftmax": softmax, "shiftmax": softmax, "igelu": gelu, "shiftgelu": gelu,
    "ilayer_norm": lnorm, "qconcat": qconcat, "avg_pool2d": avgpool,
}
