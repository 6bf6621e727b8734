"""Graph walk for the accelerator: integer IR nodes -> `Unit`s (one instruction's worth of work each).

The host keeps the input `quantize` and the output `dequantize`; reshapes alias their input's bytes; a
`qconv2d`/`qlinear` whose only user is a `requantize` fuses with it into one CONV/GEMM with a requantizing output
stage. Any op without an instruction raises `UnsupportedOperatorError` naming the op and node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qcc.backends.accel import lowering_ext as ext
from qcc.backends.accel.isa import DTYPES, RANGES, pack_int4, packed_bytes
from qcc.backends.accel.tiling import Unit
from qcc.errors import UnsupportedOperatorError
from qcc.ir.graph import Graph, Value
from qcc.ir.ops.registry import complete_attrs, get_op

ALIASES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})


@dataclass
class IOSpec:
    """A program input or output: the graph value's name, its DRAM tensor, and the host-side (de)quantize."""

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    host: dict[str, Any] | None = None


def _unsupported(node: Any, graph: Graph, why: str = "") -> UnsupportedOperatorError:
    err = UnsupportedOperatorError([(node.op, node.name or "?")], graph.name or "model")
    if why:
        err.args = (f"{err.args[0]} (accelerator: {why})",)
    return err


def _attrs(node: Any) -> dict[str, Any]:
    """The node's attributes with the op's defaults filled in."""
    return dict(complete_attrs(get_op(node.op), node.attrs))


def _host_attrs(node: Any, graph: Graph) -> dict[str, Any]:
    arrs = {}
    for i, v in enumerate(node.inputs[1:3]):
        if v not in graph.params:
            raise _unsupported(node, graph, "scale and zero point must be constants")
        arrs[("scale", "zero_point")[i]] = graph.params[v]
    return {"op": node.op, "scale": arrs["scale"].tolist(), "scale_shape": list(arrs["scale"].shape),
            "scale_dtype": str(arrs["scale"].dtype), "zero_point": arrs["zero_point"].tolist(),
            "zp_shape": list(arrs["zero_point"].shape), "zp_dtype": str(arrs["zero_point"].dtype),
            "attrs": {k: v for k, v in _attrs(node).items() if v is not None}}


class Lowering:
    """Walks an integer graph into `units`, `inputs`, `outputs`, parameters and tensor shapes/dtypes/kinds."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.tensor_of: dict[Value, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.params: dict[str, np.ndarray] = {}
        self.kinds: dict[str, str] = {}
        self.units: list[Unit] = []
        self.inputs: list[IOSpec] = []
        self.outputs: list[IOSpec] = []
        self.fused: set[int] = set()

    def local(self, **vals: Value | str) -> tuple[dict[str, str], dict[str, tuple[int, ...]], dict[str, str]]:
        """Tensor names by field plus this unit's view of their shapes (a reshape aliases bytes, not shapes)."""
        names, shapes = {}, {}
        for fld, v in vals.items():
            if isinstance(v, str):  # a parameter already placed
                names[fld], shapes[v] = v, self.shapes[v]
            else:
                names[fld] = self.tensor(v)
                shapes[names[fld]] = tuple(v.type.shape)
        return names, shapes, {t: self.dtypes[t] for t in shapes}

    def tensor(self, v: Value, kind: str = "activation") -> str:
        if v not in self.tensor_of:
            name = v.name or f"t{len(self.tensor_of)}"
            while name in self.shapes:
                name += "_"
            self.tensor_of[v] = name
            self.shapes[name], self.dtypes[name], self.kinds[name] = tuple(v.type.shape), v.type.dtype, kind
            if v.type.dtype not in DTYPES:
                raise UnsupportedOperatorError([("tensor of dtype " + v.type.dtype, name)], self.g.name or "model")
        return self.tensor_of[v]

    def param(self, v: Value, node: Any, table: bool = False, pack: bool = False) -> str:
        """A constant operand's DRAM tensor: `table` ones as i32, `pack` 4-bit weights two per byte."""
        if v not in self.g.params:
            raise _unsupported(node, self.g, f"operand {v.name!r} must be a constant")
        arr = np.asarray(self.g.params[v])
        dt = "i32" if table else v.type.dtype
        if dt not in DTYPES or not np.issubdtype(arr.dtype, np.integer):
            raise _unsupported(node, self.g, f"constant {v.name!r} of dtype {v.type.dtype}")
        lo, hi = RANGES[dt]
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise _unsupported(node, self.g, f"constant {v.name!r} does not fit {dt}")
        if pack and dt in ("i4", "u4") and arr.ndim >= 2:
            dt = dt + "x2"
        name = f"{v.name}:{dt}"
        if name not in self.params:
            self.params[name] = pack_int4(arr) if dt.endswith("x2") else arr.astype(np.int64)
            self.shapes[name], self.dtypes[name], self.kinds[name] = tuple(arr.shape), dt, "weight"
        return name

    def operand(self, v: Value, node: Any) -> Value | str:
        """A constant input as a placed parameter, an activation as itself (for `local`)."""
        return self.param(v, node) if v in self.g.params else v

    # -- graph walk -------------------------------------------------------------------------------------------
    def walk(self) -> None:
        g = self.g
        users = g.users()
        outputs = set(g.outputs)
        for v in g.inputs:
            if v.type.dtype in DTYPES:
                t = self.tensor(v, "input")
                self.inputs.append(IOSpec(v.name, t, self.shapes[t], self.dtypes[t]))
        bad: list[tuple[str, str]] = []
        why: list[str] = []
        for node in g.nodes:  # every unsupported node is reported at once
            try:
                self._node(node, users, outputs)
            except UnsupportedOperatorError as e:
                bad += e.unsupported
                why += [str(a).split("(accelerator: ", 1)[1].rstrip(")") for a in e.args if "(accelerator: " in str(a)]
        if bad:
            err = UnsupportedOperatorError(bad, g.name or "model")
            err.args = (f"{err.args[0]} (accelerator: {'; '.join(dict.fromkeys(why))})",) if why else err.args
            raise err
        for v in g.outputs:
            prod = g.producers().get(v)
            if prod is not None and prod.op == "dequantize" and len(prod.inputs) == 3 and prod.inputs[0] in \
                    self.tensor_of:
                t = self.tensor_of[prod.inputs[0]]
                self.outputs.append(IOSpec(v.name, t, tuple(v.type.shape), self.dtypes[t], _host_attrs(prod, g)))
            elif v in self.tensor_of:
                t = self.tensor_of[v]
                self.outputs.append(IOSpec(v.name, t, tuple(v.type.shape), self.dtypes[t]))
            else:
                raise UnsupportedOperatorError([("output", v.name)], g.name or "model")
        for spec in self.outputs:
            if self.kinds[spec.tensor] == "activation":
                self.kinds[spec.tensor] = "output"
        if not self.units:
            raise UnsupportedOperatorError([("graph", g.name or "model")], "nothing runs on the accelerator")

    def _node(self, node: Any, users: Any, outputs: set[Value]) -> None:
        g, op = self.g, node.op
        if op == "quantize" and node.inputs[0] in g.inputs:
            t = self.tensor(node.outputs[0], "input")
            self.inputs.append(IOSpec(node.inputs[0].name, t, self.shapes[t], self.dtypes[t], _host_attrs(node, g)))
        elif op == "dequantize" and node.outputs[0] in outputs and len(node.inputs) == 3:
            return  # host epilogue (see walk)
        elif op in ALIASES:
            self.tensor_of[node.outputs[0]] = self.tensor(node.inputs[0])
        elif op in ("qconv2d", "qlinear", "qmatmul"):
            after = [u for u in users.get(node.outputs[0], []) if u.op == "requantize"]
            fuse = (len(users.get(node.outputs[0], [])) == 1 and len(after) == 1
                    and node.outputs[0] not in outputs and after[0].inputs[0] is node.outputs[0])
            if op == "qmatmul":
                ext.bmm(self, node, after[0] if fuse else None)
            elif op == "qlinear" and len(node.inputs) == 4:
                ext.gemmg(self, node, after[0] if fuse else None)
            else:
                self.gemm(node, after[0] if fuse else None)
        elif op == "requantize":
            if id(node) not in self.fused:
                self.requantize(node)
        elif op == "qadd" and node.inputs[0].type.shape != node.inputs[1].type.shape:
            ext.qaddb(self, node)
        elif op == "qmean" and not ext.trailing_mean(self, node):
            ext.rmean(self, node)
        elif op in ("qadd", "relu", "clip", "max_pool2d", "qmean"):
            getattr(self, op)(node)
        elif op in ext.LOWER:
            ext.LOWER[op](self, node)
        else:
            raise _unsupported(node, g, "no instruction implements this op")

    def _epilogue(self, req: Any | None, f: dict[str, int], out_axis: int) -> tuple[str, ...]:
        if req is None:
            f.update(mul=-1, shf=-1, mlen=1, ydt=DTYPES["i32"], yzp=0, izp=0, lo=RANGES["i32"][0],
                     hi=RANGES["i32"][1])
            return ()
        a = _attrs(req)
        y = req.outputs[0].type
        mul, shf = (self.g.params.get(v) for v in req.inputs[1:3])
        if mul is None or shf is None:
            raise _unsupported(req, self.g, "multiplier and shift must be constants")
        mlen = self._channels(req, [np.asarray(mul).shape, np.asarray(shf).shape], y.shape, out_axis)
        lo, hi = RANGES[a["dtype"]]
        f.update(mlen=mlen, ydt=DTYPES[a["dtype"]], yzp=a["zero_point"], izp=a.get("input_zero_point", 0),
                 lo=lo if a["min"] is None else max(lo, a["min"]), hi=hi if a["max"] is None else min(hi, a["max"]))
        return ("mul", "shf")

    def _channels(self, node: Any, table_shapes: list[tuple[int, ...]], shape: tuple[int, ...], axis: int) -> int:
        """Table length: 1 (per tensor) or shape[axis] when every table varies along `axis` only."""
        sizes = {int(np.prod(s)) for s in table_shapes}
        if sizes == {1}:
            return 1
        for s in table_shapes:
            padded = (1,) * (len(shape) - len(s)) + tuple(s)
            if len(padded) != len(shape) or any(d != 1 for i, d in enumerate(padded) if i != axis % len(shape)):
                raise _unsupported(node, self.g, f"per-channel table {list(s)} must vary along axis {axis} only")
            if padded[axis] != shape[axis]:
                raise _unsupported(node, self.g, f"table {list(s)} does not match axis {axis} of {list(shape)}")
        return shape[axis]

    def gemm(self, node: Any, req: Any | None) -> None:
        g = self.g
        if node.op == "qlinear" and len(node.inputs) == 4:
            raise _unsupported(node, g, "per-vector (group_size) weight scales")
        last = req if req is not None else node
        vals: dict[str, Value | str] = {"x": node.inputs[0], "w": self.param(node.inputs[1], node, pack=True),
                                        "y": last.outputs[0]}
        if len(node.inputs) >= 3:
            vals["bias"] = self.param(node.inputs[2], node, table=True)
        if req is not None:
            vals["mul"], vals["shf"] = (self.param(v, req, table=True) for v in req.inputs[1:3])
            self.fused.add(id(req))
        ins, shapes, dtypes = self.local(**vals)
        out, x, w = ins.pop("y"), ins["x"], ins["w"]
        na = _attrs(node)
        f = {"xzp": na["x_zero_point"], "wzp": na["w_zero_point"], "xdt": DTYPES[self.dtypes[x]],
             "wdt": DTYPES[self.dtypes[w]]}
        axis = 1 if node.op == "qconv2d" else -1
        tables = self._epilogue(req, f, axis)
        name = node.name + ("+requantize" if req is not None else "")
        if node.op == "qconv2d":
            a = na
            f.update(sh=a["stride"][0], sw=a["stride"][1], pl=a["padding"][1], dh=a["dilation"][0],
                     dw=a["dilation"][1], groups=a["groups"], kh=shapes[w][2], kw=shapes[w][3])
            self.units.append(Unit("conv", name, ins, out, f, shapes, dtypes, tables, {"pt": a["padding"][0]}))
        else:
            xs = shapes[x]
            meta = {"m": int(np.prod(xs[:-1], dtype=np.int64)), "k": xs[-1], "n": shapes[w][0]}
            self.units.append(Unit("gemm", name, ins, out, f, shapes, dtypes, tables, meta))

    def requantize(self, node: Any) -> None:
        ins, shapes, dtypes = self.local(x=node.inputs[0], y=node.outputs[0])
        x, out = ins["x"], ins["y"]
        shape = shapes[x]
        f = {"count": int(np.prod(shape, dtype=np.int64)), "xdt": DTYPES[self.dtypes[x]], "base": 0}
        mul, shf = (np.asarray(self.g.params[v]).shape if v in self.g.params else None for v in node.inputs[1:3])
        if mul is None or shf is None:
            raise _unsupported(node, self.g, "multiplier and shift must be constants")
        axis = 0
        for s in (mul, shf):
            padded = (1,) * (len(shape) - len(s)) + tuple(s)
            axis = next((i for i, d in enumerate(padded) if d != 1), axis)
        self._epilogue(node, f, axis)
        f["inner"] = int(np.prod(shape[axis + 1:], dtype=np.int64)) if f["mlen"] > 1 else 1
        ins, shapes, dtypes = self.local(x=node.inputs[0], mul=self.param(node.inputs[1], node, True),
                                         shf=self.param(node.inputs[2], node, True))
        shapes[out], dtypes[out] = tuple(node.outputs[0].type.shape), self.dtypes[out]
        self.units.append(Unit("req", node.name, ins, out, f, shapes, dtypes, ("mul", "shf")))

    def qadd(self, node: Any) -> None:
        ins, shapes, dtypes = self.local(a=node.inputs[0], b=node.inputs[1], y=node.outputs[0])
        a, b, out = ins["a"], ins["b"], ins.pop("y")
        if node.inputs[0].type.shape != node.inputs[1].type.shape:
            raise _unsupported(node, self.g, "broadcasting add")
        at = _attrs(node)
        lo, hi = RANGES[at["dtype"]]
        f = {"count": int(np.prod(self.shapes[a], dtype=np.int64)), "adt": DTYPES[self.dtypes[a]],
             "bdt": DTYPES[self.dtypes[b]], "ydt": DTYPES[at["dtype"]], "am": at["a_multiplier"],
             "bm": at["b_multiplier"], "shift": at["shift"], "azp": at["a_zero_point"], "bzp": at["b_zero_point"],
             "yzp": at["zero_point"], "lo": lo if at["min"] is None else max(lo, at["min"]),
             "hi": hi if at["max"] is None else min(hi, at["max"])}
        self.units.append(Unit("qadd", node.name, ins, out, f, shapes, dtypes))

    def relu(self, node: Any, lo: int = 0, hi: int | None = None) -> None:
        ins, shapes, dtypes = self.local(x=node.inputs[0], y=node.outputs[0])
        x, out = ins["x"], ins.pop("y")
        dt = self.dtypes[x]
        f = {"count": int(np.prod(shapes[x], dtype=np.int64)), "dt": DTYPES[dt],
             "lo": max(lo, RANGES[dt][0]), "hi": RANGES[dt][1] if hi is None else min(hi, RANGES[dt][1])}
        self.units.append(Unit("clip", node.name, ins, out, f, shapes, dtypes))

    def clip(self, node: Any) -> None:
        lo, hi = _attrs(node)["min"], _attrs(node)["max"]
        self.relu(node, -(2**62) if lo is None else int(lo), None if hi is None else int(hi))

    def max_pool2d(self, node: Any) -> None:
        ins, shapes, dtypes = self.local(x=node.inputs[0], y=node.outputs[0])
        x, out = ins["x"], ins.pop("y")
        n, c, h, wd = shapes[x]
        a = _attrs(node)
        f = {"planes": n * c, "h": h, "wd": wd, "oh": shapes[out][2], "ow": shapes[out][3],
             "kh": a["kernel"][0], "kw": a["kernel"][1], "sh": a["stride"][0], "sw": a["stride"][1],
             "pt": a["padding"][0], "pl": a["padding"][1], "dh": a["dilation"][0], "dw": a["dilation"][1],
             "dt": DTYPES[self.dtypes[x]]}
        self.units.append(Unit("maxpool", node.name, ins, out, f, shapes, dtypes, meta={"pt": a["padding"][0]}))

    def qmean(self, node: Any) -> None:
        ins, shapes, dtypes = self.local(x=node.inputs[0], y=node.outputs[0])
        x, out = ins["x"], ins.pop("y")
        shape = shapes[x]
        axes = sorted({a % len(shape) for a in (_attrs(node)["axes"] or range(len(shape)))})
        if axes != list(range(len(shape) - len(axes), len(shape))):
            raise _unsupported(node, self.g, f"mean over axes {axes}: only trailing axes")
        inner = int(np.prod([shape[a] for a in axes], dtype=np.int64))
        f = {"outer": int(np.prod(shape, dtype=np.int64)) // max(inner, 1), "inner": inner,
             "dt": DTYPES[self.dtypes[x]]}
        self.units.append(Unit("mean", node.name, ins, out, f, shapes, dtypes))


def nbytes(b: Lowering, t: str) -> int:
    """Bytes of tensor `t` in DRAM (packed 4-bit weights: two per byte)."""
    return packed_bytes(b.shapes[t], b.dtypes[t])
