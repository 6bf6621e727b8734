"""The ONNX frontend: an ONNX model (file, bytes or ModelProto) to a qcc IR graph with static shapes.

The import runs in four steps:

1. **Load** the protobuf and check it is a model at all (a truncated or corrupt file raises `ModelLoadError`
   naming the file). External tensor data is read only from files inside the model's own folder.
2. **Fix the input shapes**: dynamic dimensions come from `input_shapes`, or resolve to 1.
3. **Infer shapes** with `onnx.shape_inference` on the now-static model; the result cross-checks every node
   output shape the converter computes.
4. **Convert** node by node (`qcc.frontends.onnx_ops*` hold the op table). A constant environment maps ONNX
   value names to NumPy arrays; a node whose inputs are all constants is evaluated instead of emitted, so shape
   arithmetic (Shape -> Gather -> Concat -> Reshape, ConstantOfShape, Range, ...) folds away and only real
   tensor computation reaches the IR. Constants read by emitted ops become graph params.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcc.errors import ModelLoadError, ShapeMismatchError, UnsupportedOperatorError, VerificationError
from qcc.frontends import onnx_ops_nn, onnx_ops_resize, onnx_ops_shape  # noqa: F401  (they register converters)
from qcc.frontends.onnx_load import DEFAULT_DOMAINS, default_opset, load_model
from qcc.frontends.onnx_ops import CONVERTERS, NodeContext, Operand, Unsupported, fold_with_reference
from qcc.ir.graph import Graph, GraphBuilder, Value
from qcc.ir.types import TensorType, dtype_from_numpy


def import_onnx(model: str | os.PathLike[str] | bytes | Any,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import an ONNX model (opsets 13-21) into a qcc IR graph with concrete shapes.

    `model` is a file path, the serialized bytes, or an `onnx.ModelProto`. External tensor data is loaded only
    from files inside the model file's folder; a location that is absolute or climbs out with `..` raises
    `ModelLoadError`. Models of opsets 7-12 are first upgraded with `onnx.version_converter`.

    `input_shapes` maps graph input names to concrete shapes. A dynamic dimension (a `dim_param` such as
    "batch", or an unknown dimension) takes its value from `input_shapes`; **a dynamic dimension that is not
    given resolves to 1**, and every input sharing the same symbolic name gets the same value. A given shape
    whose rank or static dimensions conflict with the model raises `ShapeMismatchError` naming the input.

    Graph inputs keep their ONNX names; initializers read by IR ops become params named after the initializer
    (graph inputs that are also initializers are params); `Node.name` is the ONNX node name, or op_type + index
    when the node has none. Shape computations are folded for the concrete input shapes.

    Raises `ModelLoadError` for a missing, truncated or corrupt model and `UnsupportedOperatorError` listing
    every unsupported (op_type, node name) of the whole graph.
    """
    proto, label = load_model(model)
    return _Importer(proto, label, input_shapes or {}).run()


# -- input shapes ----------------------------------------------------------------------------------------------
def _ir_dtype(elem_type: int, what: str, label: str) -> str:
    import onnx

    try:
        return dtype_from_numpy(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise ModelLoadError(f"{label}: {what} has element type {name}, which qcc does not support") from None


def resolve_input_types(graph: Any, given: Mapping[str, Sequence[int]], label: str) -> dict[str, TensorType]:
    """Concrete types of the real graph inputs (not initializers); see `import_onnx` for the rules."""
    init_names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in init_names]
    names = [v.name for v in inputs]
    unknown = [k for k in given if k not in names]
    if unknown:
        raise ShapeMismatchError(f"{label}: input_shapes names unknown input(s) {unknown}; the model's inputs "
                                 f"are {names}")
    symbols: dict[str, int] = {}
    # Bind symbolic names from the shapes the caller gave before resolving anything, so that an input that
    # shares a symbol with a later input gets its value.
    for v in inputs:
        if v.name in given and v.type.tensor_type.HasField("shape"):
            dims = v.type.tensor_type.shape.dim
            shape = [int(d) for d in given[v.name]]
            if len(shape) == len(dims):
                for d, s in zip(dims, shape):
                    if d.HasField("dim_param") and d.dim_param:
                        symbols.setdefault(d.dim_param, s)
    out: dict[str, TensorType] = {}
    for v in inputs:
        if not v.type.HasField("tensor_type"):
            raise ModelLoadError(f"{label}: input {v.name!r} is not a tensor (sequences and maps are unsupported)")
        tt = v.type.tensor_type
        dtype = _ir_dtype(tt.elem_type, f"input {v.name!r}", label)
        want = [int(d) for d in given[v.name]] if v.name in given else None
        if want is not None and any(d < 0 for d in want):
            raise ShapeMismatchError(f"input {v.name!r}: input_shapes gives negative dimensions {want}")
        if not tt.HasField("shape"):
            if want is None:
                raise ShapeMismatchError(f"input {v.name!r} has an unknown rank; give its shape in input_shapes")
            out[v.name] = TensorType(tuple(want), dtype)
            continue
        dims = list(tt.shape.dim)
        if want is not None and len(want) != len(dims):
            raise ShapeMismatchError(f"input {v.name!r}: input_shapes gives rank {len(want)} {want}, the model "
                                     f"has rank {len(dims)} {_dims_str(dims)}")
        shape = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                if want is not None and want[i] != d.dim_value:
                    raise ShapeMismatchError(f"input {v.name!r}: input_shapes gives {want}, which conflicts with "
                                             f"the model's static shape {_dims_str(dims)} at axis {i}")
                shape.append(int(d.dim_value))
            elif want is not None:
                shape.append(want[i])
            else:
                shape.append(symbols.setdefault(d.dim_param, 1) if d.dim_param else 1)
        out[v.name] = TensorType(tuple(shape), dtype)
    return out


def _dims_str(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _inferred_shapes(proto: Any, types: Mapping[str, TensorType]) -> dict[str, tuple[int, ...]]:
    """Static shapes onnx.shape_inference finds once the inputs are concrete (best effort, non-strict)."""
    import onnx

    static = onnx.ModelProto()
    static.CopyFrom(proto)
    for v in static.graph.input:
        if v.name in types:
            shape = v.type.tensor_type.shape
            del shape.dim[:]
            for d in types[v.name].shape:
                shape.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(static, data_prop=True)
    except Exception:  # inference is a cross-check only; conversion computes every shape itself
        return {}
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = v.type.tensor_type
        if v.type.HasField("tensor_type") and tt.HasField("shape") and all(d.HasField("dim_value")
                                                                          for d in tt.shape.dim):
            out[v.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return out


# -- conversion ------------------------------------------------------------------------------------------------
class _Importer:
    """Walks the graph once, keeping `env` (ONNX name -> IR Value or constant ndarray)."""

    def __init__(self, proto: Any, label: str, input_shapes: Mapping[str, Sequence[int]]) -> None:
        self.proto, self.label, self.graph_proto = proto, label, proto.graph
        self.opset = default_opset(proto)
        self.types = resolve_input_types(self.graph_proto, input_shapes, label)
        name = re.sub(r"\W", "_", self.graph_proto.name or Path(label).stem) or "main"
        self.builder = GraphBuilder(Graph(name=name if name[0].isalpha() or name[0] == "_" else f"m_{name}"))
        self.env: dict[str, Operand] = {}
        self.const_names: dict[int, tuple[np.ndarray, str]] = {}  # id(array) -> (array kept alive, ONNX name)
        self.params: dict[str, Value] = {}
        self.used_names: set[str] = set()
        self.dead: set[str] = set()  # outputs of unsupported nodes
        self.unsupported: list[tuple[str, str]] = []
        self.reasons: dict[str, str] = {}  # node name -> why a known op type is unsupported there
        self.consumed: set[str] = set()

    def run(self) -> Graph:
        from qcc.frontends.onnx_ops import to_array

        for init in self.graph_proto.initializer:
            self._set_const(init.name, to_array(init, self.label))
        for v in self.graph_proto.input:
            if v.name in self.types:
                t = self.types[v.name]
                self.env[v.name] = self.builder.input(t.shape, t.dtype, v.name)
        self.used_names = {v.name for v in self.graph_proto.input} | set(self.env)
        self.used_names |= {o for n in self.graph_proto.node for o in n.output}
        inferred = _inferred_shapes(self.proto, self.types)
        nodes = _topological(self.graph_proto, set(self.env), self.label)
        self.consumed = {i for n in nodes for i in n.input} | {v.name for v in self.graph_proto.output}
        for index, node in enumerate(nodes):
            self._convert(node, index, inferred)
        if self.unsupported:
            err = UnsupportedOperatorError(self.unsupported, self.label)
            if self.reasons:  # known op types used in a form qcc cannot express: say why
                why = "; ".join(f"{node!r}: {reason}" for node, reason in self.reasons.items())
                err.args = (f"{err.args[0]}. Unsupported forms: {why}",)
            err.reasons = dict(self.reasons)  # type: ignore[attr-defined]
            raise err
        outs = []
        for v in self.graph_proto.output:
            out = self._materialize(self.env[v.name], v.name)
            outs.append(out)
        return self.builder.output(*outs)

    def _set_const(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        self.env[name] = array
        self.const_names[id(array)] = (array, name)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def _materialize(self, x: Operand, hint: str) -> Value:
        """The IR value of an operand: constants become params (one per ONNX name)."""
        if isinstance(x, Value):
            return x
        known = self.const_names.get(id(x))
        name = known[1] if known is not None and known[0] is x else None
        if name is not None and name in self.params:
            return self.params[name]
        try:
            dtype_from_numpy(x.dtype)
        except ValueError:
            raise Unsupported(f"with a constant of dtype {x.dtype} that reaches a computation") from None
        if name is None:
            name = self.fresh(hint)
            self.const_names[id(x)] = (x, name)
        else:
            self.used_names.add(name)
        value = self.builder.param(x, name)
        self.params[name] = value
        return value

    def _convert(self, node: Any, index: int, inferred: Mapping[str, tuple[int, ...]]) -> None:
        name = node.name or f"{node.op_type}_{index}"
        default_domain = node.domain in DEFAULT_DOMAINS
        key = node.op_type if default_domain else f"{node.domain}::{node.op_type}"
        convert = CONVERTERS.get(node.op_type) if default_domain else None
        dead = any(i in self.dead for i in node.input)
        inputs: list[Operand | None] = [self.env[i] if i and i not in self.dead else None for i in node.input]
        outs: list[Operand | None] | None
        try:
            if convert is None:
                # An op the table lacks is still fine when its inputs are constants: evaluate it.
                folded = None if dead or not default_domain else fold_with_reference(node, inputs, self.opset)
                if folded is None:
                    self.unsupported.append((key, name))
                    self.dead.update(node.output)
                    return
                outs = list(folded)
            elif dead:
                self.dead.update(node.output)  # downstream of an unsupported node: skip quietly
                return
            else:
                start = len(self.builder.graph.nodes)
                outs = list(convert(NodeContext(self, node, name, inputs, self.opset)))
                produced = {v for n in self.builder.graph.nodes[start:] for v in n.outputs}
                missing = [o for o, x in zip(node.output, outs) if o in self.consumed and x is None]
                if missing or len(outs) < sum(1 for o in node.output if o in self.consumed):
                    raise Unsupported(f"without output(s) {missing or list(node.output[len(outs):])}")
        except Unsupported as e:
            self.unsupported.append((key, name))
            self.reasons[name] = f"{node.op_type} {e}"
            self.dead.update(node.output)
            return
        for out_name, out in zip(node.output, outs):
            if not out_name or out is None:
                continue
            if isinstance(out, np.ndarray):
                self._set_const(out_name, out)
            else:
                if convert is not None and out in produced:
                    out.name = out_name
                self.env[out_name] = out
            want, got = inferred.get(out_name), tuple(out.shape)
            if want is not None and want != got:
                raise VerificationError(f"{self.label}: node {name!r} ({node.op_type}) output {out_name!r}: qcc "
                                        f"computed shape {list(got)}, onnx shape inference says {list(want)}")


def _topological(graph: Any, defined: set[str], label: str) -> list[Any]:
    """The nodes in an order where every input is defined first (ONNX requires it; some exporters slip)."""
    known = set(defined) | {t.name for t in graph.initializer}
    order, pending = [], list(graph.node)
    while pending:
        rest = []
        for n in pending:
            if _ready(n, known):
                order.append(n)
                known.update(o for o in n.output if o)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            n = rest[0]
            missing = [i for i in n.input if i and i not in known]
            raise ModelLoadError(f"{label}: node {n.name or n.op_type!r} reads undefined value(s) {missing} "
                                 "(or the graph has a cycle)")
        pending = rest
    return order


def _ready(node: Any, known: set[str]) -> bool:
    return all(not i or i in known for i in node.input)
