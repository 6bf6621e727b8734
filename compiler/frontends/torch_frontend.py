"""PyTorch frontend: `torch.export` -> core ATen -> qcc IR.

`import_torch(model, example_inputs)` exports the model with the example inputs (static shapes), decomposes
it to core ATen while keeping a few higher-level ops whole (linear, layer_norm, hardswish, silu, softmax,
matmul, index_add, ...), and converts each fx node with the table in `torch_ops*`. Parameters, buffers and
lifted constants become graph params named by their state-dict name; nodes whose inputs are all constants
(`torch.arange`, `torch.full`, shape arithmetic) are evaluated by torch at import and become params. Every
unsupported operator in the graph is reported at once in one `UnsupportedOperatorError`.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from qcc.errors import ModelLoadError, UnsupportedOperatorError, VerificationError
from qcc.frontends import torch_ops_nn, torch_ops_shape  # noqa: F401  (they register their converters)
from qcc.frontends.torch_ops import CONVERTERS, MISSING, ConvertContext, Missing, Unsupported, ir_dtype
from qcc.ir.graph import Graph, GraphBuilder, Value

_aten = torch.ops.aten
# Ops kept whole instead of decomposed: the IR has them as single ops, which passes and backends prefer.
KEEP_OPS = (
    _aten.linear.default, _aten.matmul.default, _aten.layer_norm.default, _aten.hardswish.default,
    _aten.hardsigmoid.default, _aten.silu.default, _aten.relu6.default, _aten.softmax.int, _aten.log_softmax.int,
    _aten.index_add.default,
)
# Folding these at import would freeze one random draw into the model.
_RANDOM_OPS = ("rand", "bernoulli", "normal", "uniform", "multinomial", "poisson", "exponential", "cauchy")


def decomposition_table() -> Any:
    """torch.export's core-ATen decompositions minus the ops of KEEP_OPS."""
    table = torch.export.default_decompositions()
    for op in KEEP_OPS:
        if op in table:
            del table[op]
    return table


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _as_torch_inputs(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise ModelLoadError(f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}")
    # Contiguous copies: a strided (e.g. channels-last) example would make torch.export record
    # layout-specific ops such as as_strided that describe the example, not the model.
    return tuple(torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray)
                 else x.clone(memory_format=torch.contiguous_format) if isinstance(x, torch.Tensor) else x
                 for x in example_inputs)


def export_program(model: torch.nn.Module | ExportedProgram, example_inputs: Any) -> ExportedProgram:
    """Export (unless given an ExportedProgram) and decompose to core ATen; failures become ModelLoadError."""
    name = type(model).__name__
    if isinstance(model, ExportedProgram):
        ep = model
    elif isinstance(model, torch.nn.Module):
        inputs = _as_torch_inputs(example_inputs)
        was_training = model.training
        model.eval()  # inference semantics: dropout off, batch norm on running statistics
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                ep = torch.export.export(model, inputs, strict=False)
        except Exception as e:
            raise ModelLoadError(f"{name}: torch.export failed: {_first_line(e)}") from e
        finally:
            model.train(was_training)
    else:
        raise ModelLoadError(f"expected a torch.nn.Module or torch.export.ExportedProgram, got {name}")
    try:
        with warnings.catch_warnings():  # torch-internal pytree deprecation noise
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            return ep.run_decompositions(decomposition_table())
    except Exception as e:
        raise ModelLoadError(f"{name}: decomposing to core ATen failed: {_first_line(e)}") from e


def import_torch(model: torch.nn.Module | ExportedProgram, example_inputs: Any = ()) -> Graph:
    """Import a PyTorch model (or an ExportedProgram) as a qcc IR graph.

    Graph inputs are the forward's tensor arguments (named like them), params the used parameters, buffers
    and constants (named by their state-dict name), outputs the flattened user outputs in order.
    Raises ModelLoadError when torch.export fails and UnsupportedOperatorError listing every op it cannot
    convert.
    """
    name = "ExportedProgram" if isinstance(model, ExportedProgram) else type(model).__name__
    ep = export_program(model, example_inputs)
    return _Importer(ep, name).run()


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [e for item in x for e in _flat(item)]
    return [x]


def _map(x: Any, fn: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_map(e, fn) for e in x)
    return fn(x)


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        ir_dtype(x.dtype)  # raises Unsupported for complex / bfloat16 results
        return x.detach().cpu().numpy().copy()
    if isinstance(x, (list, tuple)):
        return tuple(_to_numpy(e) for e in x)
    return x


class _Importer:
    """One import: walks the fx graph once, converting nodes and collecting every unsupported one."""

    def __init__(self, ep: ExportedProgram, model_name: str) -> None:
        self.ep = ep
        self.model_name = model_name
        self.b = GraphBuilder(Graph(name=model_name))
        self.ctx = ConvertContext(self.b, set())
        self.env: dict[Any, Any] = {}
        self.unsupported: list[tuple[str, str]] = []

    def run(self) -> Graph:
        specs = {s.arg.name: s for s in self.ep.graph_signature.input_specs if hasattr(s.arg, "name")}
        output_node = None
        for node in self.ep.graph_module.graph.nodes:
            self.ctx.node = node
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node, specs.get(node.name))
            elif node.op == "get_attr":
                self.env[node] = self._tensor_param(getattr(self.ep.graph_module, node.target), node)
            elif node.op == "call_function":
                self.env[node] = self._call(node)
            elif node.op == "output":
                output_node = node
        if self.unsupported:
            raise UnsupportedOperatorError(self.unsupported, self.model_name)
        assert output_node is not None
        outputs: list[Value] = []
        for spec, arg in zip(self.ep.graph_signature.output_specs, _flat(output_node.args[0])):
            if spec.kind != OutputKind.USER_OUTPUT:
                continue  # buffer / input mutations and effect tokens are not results
            val = self.env[arg] if isinstance(arg, torch.fx.Node) else arg
            if val is None or isinstance(val, Missing):
                raise ModelLoadError(f"{self.model_name}: output {len(outputs)} is not a tensor")
            self.ctx.node = arg if isinstance(arg, torch.fx.Node) else None
            outputs.append(self.ctx.value(val))
        graph = self.b.output(*outputs)
        _eliminate_dead_code(graph)
        return graph

    # -- placeholders and params ----------------------------------------------------------------------
    def _placeholder(self, node: Any, spec: Any) -> Any:
        kind = spec.kind if spec is not None else InputKind.USER_INPUT
        if kind == InputKind.USER_INPUT:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                return val  # a non-tensor argument, specialized by torch.export
            try:
                return self.b.input(tuple(int(d) for d in val.shape), ir_dtype(val.dtype), node.name)
            except Unsupported as e:
                raise ModelLoadError(f"{self.model_name}: input {node.name!r} has unsupported {e}") from None
        if kind == InputKind.TOKEN:
            return None
        if kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = self.ep.state_dict.get(spec.target)
            if tensor is None:
                tensor = self.ep.constants.get(spec.target)
            return self._tensor_param(tensor, node, spec.target)
        self._record(f"input of kind {kind.name}", node)
        return MISSING

    def _tensor_param(self, tensor: Any, node: Any, name: str | None = None) -> Any:
        if not isinstance(tensor, torch.Tensor):
            self._record(f"non-tensor attribute {type(tensor).__name__}", node)
            return MISSING
        try:
            array = _to_numpy(tensor)
        except Unsupported as e:
            if node.users:
                self._record(str(e), node)
            return MISSING
        return self.b.param(array, self.ctx.unique_name(name or str(node.target)))

    # -- calls ------------------------------------------------------------------------------------------
    def _record(self, op: str, node: Any) -> None:
        self.unsupported.append((op, str(node.name)))

    def _call(self, node: Any) -> Any:
        target = node.target
        args = _map(node.args, self._lookup)
        kwargs = {k: _map(v, self._lookup) for k, v in node.kwargs.items()}
        if target is operator.getitem:
            src, index = args
            if isinstance(src, Missing):
                return MISSING
            item = src[index]
            if isinstance(item, Missing) and node.users:
                self._record(f"{node.args[0].target}[{index}]", node)
            return item
        op_name = str(target)
        flat = _flat(list(args) + list(kwargs.values()))
        val = node.meta.get("val")
        if any(isinstance(a, Missing) for a in flat):  # downstream of an unsupported node: report only new ops
            if (isinstance(target, torch._ops.OpOverload) and op_name not in CONVERTERS
                    and isinstance(val, (torch.Tensor, list, tuple))):
                self._record(op_name, node)
            return MISSING
        if isinstance(val, (bool, int, float)):  # shape arithmetic, static under torch.export
            return val
        if target is torch.ops.higher_order.with_effects:
            inner = args[1]
            if CONVERTERS.get(str(inner)) is torch_ops_shape._no_op:
                return (None, None)
            self._record(str(inner), node)
            return MISSING
        try:
            if not any(isinstance(a, Value) for a in flat) and isinstance(target, torch._ops.OpOverload):
                return self._fold(node, target, args, kwargs)
            convert = CONVERTERS.get(op_name)
            if convert is None:
                self._record(op_name, node)
                return MISSING
            to_value = lambda a: self.ctx.value(a) if isinstance(a, np.ndarray) else a  # noqa: E731
            result = convert(self.ctx, *_map(args, to_value), **{k: _map(v, to_value) for k, v in kwargs.items()})
        except Unsupported as e:
            self._record(f"{op_name} ({e})", node)
            return MISSING
        return self._check(node, result, val)

    def _lookup(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, torch.fx.Node) else a

    def _fold(self, node: Any, target: Any, args: Any, kwargs: Any) -> Any:
        """Evaluate an op on constants with torch itself; the result is a constant (a param when used)."""
        if any(r in target.__name__ for r in _RANDOM_OPS):
            raise Unsupported("random op")
        to_torch = lambda a: torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else a  # noqa: E731
        try:
            result = target(*_map(args, to_torch), **{k: _map(v, to_torch) for k, v in kwargs.items()})
        except Exception as e:
            raise Unsupported(f"constant folding failed: {_first_line(e)}") from e
        result = _to_numpy(result)
        for r in _flat(result):
            if isinstance(r, np.ndarray):
                self.ctx.folded(r, str(node.name))
        return result

    def _check(self, node: Any, result: Any, val: Any) -> Any:
        """Compare a converted result with torch's metadata: shapes must agree; dtypes are cast to torch's."""
        if isinstance(val, (list, tuple)) and isinstance(result, (list, tuple)):
            return tuple(self._check(node, r, v) for r, v in zip(result, val))
        if not isinstance(val, torch.Tensor) or not isinstance(result, (Value, np.ndarray)):
            return result
        shape = tuple(int(d) for d in val.shape)
        if tuple(result.shape) != shape:
            raise VerificationError(f"torch frontend: node {node.name!r} ({node.target}) converted to shape "
                                    f"{list(result.shape)}, torch says {list(shape)}")
        dtype = ir_dtype(val.dtype)
        if isinstance(result, Value):
            return self.ctx.cast(result, dtype)
        return result


def _eliminate_dead_code(graph: Graph) -> None:
    """Drop nodes whose results nothing uses (e.g. argmax of max.dim) and params nothing reads."""
    live = set(graph.outputs)
    kept = []
    for n in reversed(graph.nodes):
        if any(v in live for v in n.outputs):
            kept.append(n)
            live.update(n.inputs)
    graph.nodes = kept[::-1]
    graph.params = {v: a for v, a in graph.params.items() if v in live}


__all__: Sequence[str] = ["KEEP_OPS", "decomposition_table", "export_program", "import_torch"]
