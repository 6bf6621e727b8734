"""Export a qcc graph to ONNX in QDQ form (QuantizeLinear / DequantizeLinear around float ops), for ONNX Runtime.

`export_qdq(graph, path)` writes `graph` — typically the integer graph of a `cpu-int8` / `cpu-int4` build — as an
ONNX model that ONNX Runtime runs and its QDQ optimizer fuses into integer kernels (QLinearConv, QLinearMatMul,
QLinearAdd, ...). The mapping keeps every quantization decision of qcc and expresses the arithmetic in float:

- each integer value v is represented by a float tensor holding its real value; where v is an 8-bit (or 16-bit)
  activation with quantization parameters, its producer ends in `QuantizeLinear(scale_v, zp_v) →
  DequantizeLinear`, so ORT sees the `DQ → op → Q` pattern;
- `quantize` → QuantizeLinear; an output `dequantize` of an activation → Identity (its input is already real);
  a `dequantize` of an integer weight (weight-only builds) → DequantizeLinear of the integer initializer;
- `qconv2d` / `qlinear` → Conv / Gemm (or MatMul + Add) on `DequantizeLinear` of the int8 weight (per-channel,
  axis 0; int4 weights are stored in int8 containers) and of the int32 bias at scale s_x·s_w. The accumulator
  scale comes from the consumer: the `requantize` multiplier/shift (s_acc = s_out·b·2^−c) or the output
  `dequantize` scale; s_w = s_acc / s_x;
- `requantize` → Clip/Relu for its fused bounds, then QuantizeLinear to its output parameters;
- `qadd` → Add (Sub when the second multiplier is negative), `qconcat` → Concat, `qmean` → ReduceMean,
  `qmatmul` → MatMul, each followed by its output Q/DQ;
- integer nonlinears are exported as their float counterparts between DQ and Q: `isoftmax` / `shiftmax` →
  Softmax, `igelu` / `shiftgelu` → Gelu, `ilayer_norm` → LayerNormalization with γ = s_y·b·2^(30−c)/√C and
  β = s_y·bias recovered from the integer constants. ORT then computes these in float (qcc's integer polynomials
  are not expressible in standard ONNX), so its results differ from qcc's by their approximation error;
- float ops (layers kept in float, and float graphs) map to their ONNX counterparts.

VS-Quant per-vector weights (`group_scale`) are folded into float initializers. Rounding of requantize (half up)
and QuantizeLinear (half to even) can differ by one step on exact ties.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from qcc.errors import UnsupportedOperatorError
from qcc.ir.graph import Graph, Node, Value
from qcc.ir.printer import value_names
from qcc.ir.types import FLOAT_DTYPES

OPSET = 21
_QDTYPES = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "u16": np.uint16, "i32": np.int32,
            "i4": np.int8, "u4": np.uint8}  # 4-bit values travel in 8-bit containers
_UNARY = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "erf": "Erf", "abs": "Abs", "neg": "Neg", "floor": "Floor", "ceil": "Ceil", "reciprocal": "Reciprocal",
          "sin": "Sin", "cos": "Cos", "round": "Round"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "matmul": "MatMul"}


class _Exporter:
    def __init__(self, graph: Graph) -> None:
        from onnx import helper, numpy_helper

        self.g, self.helper, self.nh = graph, helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.real: dict[Value, str] = {}  # value -> ONNX float tensor holding its real value
        self.users = graph.users()
        self.producers = graph.producers()
        self.names = value_names(graph)
        self.count = 0

    # -- helpers ---------------------------------------------------------------------------------------
    def nm(self, v: Value) -> str:
        return str(self.names.get(v) or v.name or "t")

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint or 't'}__{self.count}"

    def const(self, array: Any, hint: str) -> str:
        name = self.fresh(hint)
        # np.array, not np.ascontiguousarray: that turns a 0-d scale into shape [1], which ORT QDQ fusion rejects.
        self.inits.append(self.nh.from_array(np.array(array, order="C"), name))
        return name

    def emit(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def param(self, v: Value) -> np.ndarray:
        return np.asarray(self.g.params[v])

    def input_real(self, v: Value) -> str:
        if v in self.real:
            return self.real[v]
        if v in self.g.params:
            if v.dtype not in FLOAT_DTYPES:
                raise UnsupportedOperatorError([("integer constant", v.name)], model="ONNX QDQ export")
            self.real[v] = self.const(self.param(v).astype(np.float32), self.nm(v))
            return self.real[v]
        raise KeyError(v.name)

    def qdq(self, v: Value, float_name: str) -> None:
        """Bind v's real value: through QuantizeLinear → DequantizeLinear when v is a quantized activation."""
        self.real[v] = float_name if v.dtype in FLOAT_DTYPES else self.requant_same(v, float_name)

    def requant_same(self, v: Value, float_name: str) -> str:
        """Q/DQ a reshaped copy of quantized activation v with v's own parameters (exact), so ORT sees DQ → op."""
        q = v.type.quant
        if q is None or v.dtype not in _QDTYPES or v.dtype == "i32" or len(q.scale) != 1:
            return float_name
        scale = self.const(np.array(q.scale[0], np.float32), f"{self.nm(v)}.scale")
        zp = self.const(np.array(q.zero_point[0], _QDTYPES[v.dtype]), f"{self.nm(v)}.zp")
        qname = self.emit("QuantizeLinear", [float_name, scale, zp], f"{self.nm(v)}.q")
        return self.emit("DequantizeLinear", [qname, scale, zp], f"{self.nm(v)}.dq")

    def known_scale(self, v: Value) -> float | None:
        """v's per-tensor real scale where the graph states it (its quant, or a qmean's input); else None."""
        q = v.type.quant
        if q is not None:
            return float(q.scale[0]) if len(q.scale) == 1 else None
        node = self.producers.get(v)
        return self.known_scale(node.inputs[0]) if node is not None and node.op == "qmean" else None

    def scale_of(self, v: Value) -> np.ndarray:
        if v.type.quant is None:
            raise UnsupportedOperatorError([("value without quantization parameters", v.name)],
                                           model="ONNX QDQ export")
        return np.asarray(v.type.quant.scale, np.float64)

    def acc_scale(self, acc: Value, channels: int) -> np.ndarray:
        """Real scale of an int32 accumulator, per output channel."""
        if acc.type.quant is not None:
            s = np.asarray(acc.type.quant.scale, np.float64)
        else:
            users = self.users.get(acc, [])
            user = users[0] if users else None
            if user is not None and user.op == "requantize":
                b = self.param(user.inputs[1]).astype(np.float64).reshape(-1)
                c = self.param(user.inputs[2]).astype(np.float64).reshape(-1)
                s = self.scale_of(user.output) * b * np.exp2(-c)
            elif user is not None and user.op == "dequantize":
                s = self.param(user.inputs[1]).astype(np.float64).reshape(-1)
            else:
                raise UnsupportedOperatorError([("accumulator without a requantize/dequantize consumer",
                                                 acc.name)], model="ONNX QDQ export")
        return np.broadcast_to(s, (channels,)).copy()

    def weight(self, node: Node, w: Value, s_w: np.ndarray, zp: int, transpose: bool = False) -> str:
        """DequantizeLinear of an integer weight initializer, per output channel (axis 0, or 1 if transposed)."""
        wq = self.param(w)
        if len(node.inputs) > 3 and node.op == "qlinear" and node.inputs[3] is not None:  # VS-Quant groups
            gs = np.repeat(self.param(node.inputs[3]).astype(np.float64), node.attrs["group_size"], axis=1)
            real = (wq.astype(np.float64) - zp) * gs[:, : wq.shape[1]] * s_w[:, None]
            return self.const((real.T if transpose else real).astype(np.float32), f"{self.nm(w)}.f")
        container = _QDTYPES[w.dtype]
        data = wq.astype(container).T if transpose else wq.astype(container)
        wname = self.const(data, self.nm(w))
        sname = self.const(s_w.astype(np.float32), f"{self.nm(w)}.scale")
        zname = self.const(np.full(len(s_w), zp, container), f"{self.nm(w)}.zp")
        return self.emit("DequantizeLinear", [wname, sname, zname], f"{self.nm(w)}.dq", axis=1 if transpose else 0)

    def bias(self, b: Value | None, s_acc: np.ndarray) -> str | None:
        if b is None:
            return None
        bname = self.const(self.param(b).astype(np.int32).reshape(-1), self.nm(b))
        sname = self.const(s_acc.astype(np.float32), f"{self.nm(b)}.scale")
        zname = self.const(np.zeros(len(s_acc), np.int32), f"{self.nm(b)}.zp")
        return self.emit("DequantizeLinear", [bname, sname, zname], f"{self.nm(b)}.dq", axis=0)

    def clamp(self, x: str, out: Value, lo: Any, hi: Any, zp: int) -> str:
        """Fused bounds of requantize / qadd (output integers) as a float Relu / Clip."""
        if lo is None and hi is None:
            return x
        s = float(self.scale_of(out)[0])
        if hi is None and lo == zp:
            return self.emit("Relu", [x], f"{self.nm(out)}.relu")
        lo_f = self.const(np.array(-np.inf if lo is None else (lo - zp) * s, np.float32), "min")
        hi_f = self.const(np.array(np.inf if hi is None else (hi - zp) * s, np.float32), "max")
        return self.emit("Clip", [x, lo_f, hi_f], f"{self.nm(out)}.clip")

    # -- nodes -----------------------------------------------------------------------------------------
    def node(self, n: Node) -> None:
        op, a, name = n.op, n.attrs, n.name or n.op
        ins = [v for v in n.inputs if v is not None]
        if op == "quantize":
            scale = self.const(self.param(ins[1]).astype(np.float32), f"{name}.scale")
            zp = self.const(self.param(ins[2]).astype(_QDTYPES[a["dtype"]]), f"{name}.zp")
            q = self.emit("QuantizeLinear", [self.input_real(ins[0]), scale, zp], f"{name}.q")
            self.real[n.output] = self.emit("DequantizeLinear", [q, scale, zp], f"{name}.dq")
        elif op == "dequantize":
            if ins[0] in self.g.params:  # an integer weight dequantized into float ops
                s = self.param(ins[1]).astype(np.float64).reshape(-1)
                w = ins[0]
                if a.get("group_size"):
                    gs = np.repeat(self.param(ins[3]).astype(np.float64), a["group_size"], axis=a["axis"])
                    real = (self.param(w) - self.param(ins[2])) * np.take(gs, range(self.param(w).shape[a["axis"]]),
                                                                           axis=a["axis"])
                    shape = [1] * real.ndim
                    if s.size > 1:
                        shape[a["axis"] or 0] = -1
                    self.real[n.output] = self.const((real * s.reshape(shape)).astype(np.float32), self.nm(w))
                    return
                zp = int(np.asarray(self.param(ins[2])).reshape(-1)[0])
                axis = a.get("axis") or 0
                if s.size > 1 and w.dtype in _QDTYPES:
                    if axis != 0:
                        raise UnsupportedOperatorError([("dequantize axis", name)], model="ONNX QDQ export")
                    self.real[n.output] = self.weight(n, w, s, zp)
                else:
                    wname = self.const(self.param(w).astype(_QDTYPES[w.dtype]), self.nm(w))
                    sname = self.const(np.array(s[0], np.float32), f"{self.nm(w)}.scale")
                    zname = self.const(np.array(zp, _QDTYPES[w.dtype]), f"{self.nm(w)}.zp")
                    self.real[n.output] = self.emit("DequantizeLinear", [wname, sname, zname], f"{self.nm(w)}.dq")
            else:  # the input's real value is already a float tensor
                self.real[n.output] = self.emit("Identity", [self.input_real(ins[0])], name)
        elif op in ("qconv2d", "qlinear"):
            x, w = ins[0], ins[1]
            bias_v = n.inputs[2] if len(n.inputs) > 2 else None
            s_acc = self.acc_scale(n.output, w.shape[0])
            s_w = s_acc / float(self.scale_of(x)[0])
            zw = int(a.get("w_zero_point", 0))
            xr = self.input_real(x)
            if op == "qconv2d":
                args = [xr, self.weight(n, w, s_w, zw)]
                b = self.bias(bias_v, s_acc)
                out = self.emit("Conv", args + ([b] if b else []), name, strides=list(a["stride"]),
                                pads=list(a["padding"]), dilations=list(a["dilation"]), group=int(a["groups"]))
            elif len(x.shape) == 2:
                b = self.bias(bias_v, s_acc)
                out = self.emit("Gemm", [xr, self.weight(n, w, s_w, zw)] + ([b] if b else []), name, transB=1)
            else:  # as a 2-D Gemm between reshapes (ORT's MatMul+Add fusion mistypes QDQ MatMuls on 3-D inputs)
                flat = self.emit("Reshape", [xr, self.const(np.array([-1, x.shape[-1]], np.int64), "shape")],
                                 f"{name}.flat")
                flat = self.requant_same(x, flat)
                b = self.bias(bias_v, s_acc)
                out = self.emit("Gemm", [flat, self.weight(n, w, s_w, zw)] + ([b] if b else []), name, transB=1)
                out = self.emit("Reshape", [out, self.const(np.array(n.output.shape, np.int64), "shape")],
                                f"{name}.unflat")
            self.qdq(n.output, out)
        elif op == "requantize":
            x = self.input_real(ins[0])
            # Requantize can carry a real factor (a folded constant multiply): k = s_out·b·2^−c / s_in ≠ 1.
            s_in = self.known_scale(ins[0])
            if s_in is not None:
                bc = self.param(ins[1]).astype(np.float64) * np.exp2(-self.param(ins[2]).astype(np.float64))
                k = float(self.scale_of(n.output)[0]) * bc / s_in
                if np.max(np.abs(k - 1.0)) > 1e-6:
                    x = self.emit("Mul", [x, self.const(k.astype(np.float32), "factor")], f"{name}.factor")
            x = self.clamp(x, n.output, a["min"], a["max"], a["zero_point"])
            self.qdq(n.output, x)
        elif op == "qadd":
            kind = "Sub" if a["b_multiplier"] < 0 else "Add"
            x = self.emit(kind, [self.input_real(ins[0]), self.input_real(ins[1])], name)
            self.qdq(n.output, self.clamp(x, n.output, a["min"], a["max"], a["zero_point"]))
        elif op == "qconcat":
            self.qdq(n.output, self.emit("Concat", [self.input_real(v) for v in ins], name, axis=int(a["axis"])))
        elif op in ("qmean", "reduce_mean"):
            axes = self.const(np.array(a["axes"], np.int64), "axes")
            self.qdq(n.output, self.emit("ReduceMean", [self.input_real(ins[0]), axes], name,
                                         keepdims=int(a["keepdims"])))
        elif op == "qmatmul":
            self.qdq(n.output, self.emit("MatMul", [self.input_real(ins[0]), self.input_real(ins[1])], name))
        elif op in ("isoftmax", "shiftmax", "softmax"):
            self.qdq(n.output, self.emit("Softmax", [self.input_real(ins[0])], name, axis=int(a["axis"])))
        elif op in ("igelu", "shiftgelu", "gelu"):
            approx = "tanh" if a.get("approximate") == "tanh" else "none"
            self.qdq(n.output, self.emit("Gelu", [self.input_real(ins[0])], name, approximate=approx))
        elif op == "ilayer_norm":
            self.ilayer_norm(n)
        else:
            self.float_node(n)

    def ilayer_norm(self, n: Node) -> None:
        a, x = n.attrs, n.inputs[0]
        axis = int(a["axis"]) % len(x.shape)
        c_count = math.prod(x.shape[axis:])
        s_y = float(self.scale_of(n.output)[0])
        b = self.param(n.inputs[1]).astype(np.float64)
        c = self.param(n.inputs[2]).astype(np.float64)
        gamma = s_y * b * np.exp2(30.0 - c) / math.sqrt(c_count)
        beta = s_y * self.param(n.inputs[3]).astype(np.float64)
        shape = x.shape[axis:]
        args = [self.input_real(x), self.const(np.broadcast_to(gamma, shape).astype(np.float32), "gamma"),
                self.const(np.broadcast_to(beta, shape).astype(np.float32), "beta")]
        self.qdq(n.output, self.emit("LayerNormalization", args, n.name or "ln", axis=axis, epsilon=1e-12))

    def float_node(self, n: Node) -> None:
        op, a, name = n.op, n.attrs, n.name or n.op
        ins = [self.input_real(v) for v in n.inputs if v is not None]
        if op in _UNARY:
            out = self.emit(_UNARY[op], ins, name)
        elif op in _BINARY:
            out = self.emit(_BINARY[op], ins, name)
        elif op == "linear":
            out = self.emit("MatMul", [ins[0], self.emit("Transpose", [ins[1]], f"{name}.wt", perm=[1, 0])], name)
            if len(ins) > 2:
                out = self.emit("Add", [out, ins[2]], f"{name}.bias")
        elif op == "conv2d":
            out = self.emit("Conv", ins, name, strides=list(a["stride"]), pads=list(a["padding"]),
                            dilations=list(a["dilation"]), group=int(a["groups"]))
        elif op in ("max_pool2d", "avg_pool2d"):
            kw: dict[str, Any] = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
                                  "pads": list(a["padding"]), "ceil_mode": int(a["ceil_mode"])}
            if op == "max_pool2d":
                kw["dilations"] = list(a["dilation"])
            else:
                kw["count_include_pad"] = int(a["count_include_pad"])
            out = self.emit("MaxPool" if op == "max_pool2d" else "AveragePool", ins, name, **kw)
        elif op == "adaptive_avg_pool2d" and tuple(a["output_size"]) in ((1, 1), (1,)):
            out = self.emit("GlobalAveragePool", ins, name)
        elif op == "reshape":
            out = self.emit("Reshape", [ins[0], self.const(np.array(n.output.shape, np.int64), "shape")], name)
        elif op == "transpose":
            out = self.emit("Transpose", ins, name, perm=list(a["perm"]))
        elif op in ("squeeze", "unsqueeze"):
            out = self.emit(op.capitalize(), [ins[0], self.const(np.array(a["axes"], np.int64), "axes")], name)
        elif op == "concat":
            out = self.emit("Concat", ins, name, axis=int(a["axis"]))
        elif op in ("relu6", "clip"):
            lo, hi = (0.0, 6.0) if op == "relu6" else (a["min"], a["max"])
            lo_f = self.const(np.array(-np.inf if lo is None else lo, np.float32), "min")
            hi_f = self.const(np.array(np.inf if hi is None else hi, np.float32), "max")
            out = self.emit("Clip", [ins[0], lo_f, hi_f], name)
        elif op == "layer_norm":
            out = self.emit("LayerNormalization", ins, name, axis=int(a["axis"]), epsilon=float(a["eps"]))
        else:
            raise UnsupportedOperatorError([(op, name)], model="ONNX QDQ export")
        self.qdq(n.output, out)

    # -- driver ----------------------------------------------------------------------------------------
    def run(self) -> Any:
        h = self.helper
        elem = {"f32": 1, "i64": 7, "i32": 6, "i8": 3, "u8": 2, "bool": 9, "f16": 10, "f64": 11}
        inputs = []
        for v in self.g.inputs:
            inputs.append(h.make_tensor_value_info(v.name, elem[v.dtype], list(v.shape)))
            self.real[v] = v.name
        for n in self.g.nodes:
            self.node(n)
        outputs = []
        for i, v in enumerate(self.g.outputs):
            oname = v.name or f"output{i}"
            self.nodes.append(h.make_node("Identity", [self.real[v]], [oname], name=f"{oname}__out"))
            outputs.append(h.make_tensor_value_info(oname, 1 if v.dtype in FLOAT_DTYPES else elem[v.dtype],
                                                    list(v.shape)))
        graph = h.make_graph(self.nodes, self.g.name or "qcc", inputs, outputs, self.inits)
        # IR version 10 (onnx 1.16): what ONNX Runtime releases of the last years load.
        return h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="qcc", ir_version=10)


def to_onnx(graph: Graph) -> Any:
    """The graph as an ONNX ModelProto (QDQ form for quantized graphs; see the module docstring)."""
    return _Exporter(graph).run()


def export_qdq(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write `graph` to `path` as a checked ONNX model in QDQ form (see the module docstring)."""
    import onnx

    model = to_onnx(graph)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))


__all__ = ["OPSET", "export_qdq", "to_onnx"]
