"""Shared machinery of the qcc -> Relax lowering: the LOWER table, the lowering context, TE helpers.

A lowering rule is `fn(ctx, node, args) -> relax.Expr | list[relax.Expr]`: it receives the Relax
expressions of the node's inputs and emits TE/TIR through `ctx.emit_te` / `ctx.emit_extern`, which tag the
generated prim_func with the originating qcc op (`qcc.op` function attribute) so that the schedule registry
can find it after fusion. Multi-output ops (split) return one expression per output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax, te, tirx
from tvm.script.ir_builder import tirx as T

from qcc.ir.graph import Node

# IR dtype -> TVM dtype. Sub-byte integers live in 8-bit containers, as in the interpreter.
TVM_DTYPES: dict[str, str] = {
    "f64": "float64", "f32": "float32", "f16": "float16",
    "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8",
    "i4": "int8", "u4": "uint8", "bool": "bool",
}
OP_ATTR = "qcc.op"  # prim_func attribute naming the qcc op a kernel was lowered from

LowerFn = Callable[["LowerCtx", Node, list[relax.Expr]], Any]
LOWER: dict[str, LowerFn] = {}


def lowers(*ops: str) -> Callable[[LowerFn], LowerFn]:
    """Register a lowering rule for one or more qcc ops."""

    def deco(fn: LowerFn) -> LowerFn:
        for op in ops:
            if op in LOWER:
                raise ValueError(f"lowering for {op!r} registered twice")
            LOWER[op] = fn
        return fn

    return deco


@dataclass
class LowerCtx:
    """State of one lowering: the Relax block builder, the device and the float compute precision.

    With `float16`, every f32 value of the graph is computed and stored as float16 (graph inputs and
    outputs are cast at the function boundary; params are converted when lowered).
    """

    bb: relax.BlockBuilder
    device: str = "cpu"  # "cpu" | "cuda"
    float16: bool = False
    kernel_ops: dict[str, str] = field(default_factory=dict)  # prim_func name -> qcc op

    def dtype(self, ir_dtype: str) -> str:
        """The TVM dtype that holds values of an IR dtype inside the lowered function."""
        if self.float16 and ir_dtype == "f32":
            return "float16"
        return TVM_DTYPES[ir_dtype]

    def out_dtype(self, node: Node, i: int = 0) -> str:
        return self.dtype(node.outputs[i].dtype)

    def _record(self, var: relax.Expr, node: Node) -> None:
        binding = self.bb.lookup_binding(var)
        if isinstance(binding, relax.Call) and binding.args and isinstance(binding.args[0], tvm.ir.GlobalVar):
            # emit_te de-duplicates identical kernels; the first op that produced one names it.
            self.kernel_ops.setdefault(binding.args[0].name_hint, node.op)

    def emit_te(self, node: Node, fn: Callable[..., Any], *args: Any, name: str | None = None) -> relax.Var:
        """Emit a TE function as a call_tir and tag its prim_func with the node's op."""
        var = self.bb.emit_te(fn, *args, primfunc_name_hint=name or node.op)
        self._record(var, node)
        return var

    def emit_map(self, node: Node, fn: Callable[..., tirx.PrimExpr], *args: relax.Expr,
                 name: str | None = None) -> relax.Var:
        """Emit an elementwise kernel: `fn` maps scalars of the (broadcast) inputs to the output scalar."""
        out_shape = node.outputs[0].shape

        def compute(*ts: te.Tensor) -> te.Tensor:
            return te.compute(shape64(out_shape), lambda *i: fn(*(_load(t, broadcast_index(t, i)) for t in ts)),
                              name=node.op)

        return self.emit_te(node, compute, *args, name=name)


def _load(t: te.Tensor, idx: Sequence[Any]) -> tirx.PrimExpr:
    """A scalar load as a PrimExpr (a TensorSlice would not carry a type for the rule functions)."""
    return t(*idx) if idx else t()


def broadcast_index(t: Any, idx: Sequence[Any]) -> list[Any]:
    """Index into `t` for output index `idx` under NumPy broadcasting (right-aligned, size-1 dims pinned)."""
    shape = [int(d) for d in t.shape]
    offset = len(idx) - len(shape)
    out = []
    for d, n in enumerate(shape):
        out.append(tirx.const(0, dtype_of(idx[offset + d])) if n == 1 else idx[offset + d])
    return out


def dtype_of(x: Any) -> str:
    """The dtype string of a TE tensor, tensor slice or TIR expression (0.27 exprs carry `.ty`, not `.dtype`)."""
    if isinstance(x, (te.Tensor, te.TensorSlice)):
        return str(x.dtype)
    if isinstance(x, str):
        return x
    if hasattr(x, "asobject") and not isinstance(x, te.TensorSlice):  # lazy ==/!= results (EqualOp)
        x = x.asobject()
    try:
        return str(x.dtype)  # buffers (their data Var), tensors
    except AttributeError:
        return str(x.ty)  # PrimExprs


def shape64(shape: Sequence[int]) -> list[tirx.IntImm]:
    """A static shape as int64 immediates, so TE index variables match Relax's int64 shapes."""
    return [tirx.IntImm("int64", int(d)) for d in shape]


def const(value: Any, dtype: str) -> tirx.PrimExpr:
    """A TIR constant (bools and ints kept exact)."""
    return tirx.const(value, dtype)


def cast(dtype: str, x: tirx.PrimExpr) -> tirx.PrimExpr:
    """Cast unless already of that dtype."""
    if hasattr(x, "asobject") and not isinstance(x, te.TensorSlice):
        x = x.asobject()
    return x if dtype_of(x) == dtype else tirx.Cast(dtype, x)


def is_float(dtype: str) -> bool:
    return dtype.startswith("float")


def is_unsigned(dtype: str) -> bool:
    return dtype.startswith("uint") or dtype == "bool"


def acc_dtype(dtype: str) -> str:
    """Accumulation dtype of float reductions: float16 accumulates in float32 (like cuBLAS/TensorRT)."""
    return "float32" if dtype == "float16" else dtype


def lowest(dtype: str) -> tirx.PrimExpr:
    """The identity of max: -inf for floats, the minimum for integers."""
    return tirx.min_value(dtype) if not is_float(dtype) else tirx.const(float("-inf"), dtype)


def highest(dtype: str) -> tirx.PrimExpr:
    return tirx.max_value(dtype) if not is_float(dtype) else tirx.const(float("inf"), dtype)


def float_math(fn: Callable[..., tirx.PrimExpr], *xs: tirx.PrimExpr) -> tirx.PrimExpr:
    """Apply a transcendental function; float16 inputs are evaluated in float32 and rounded back
    (CUDA lacks half versions of several of them, and it keeps fp16 results within half an ulp)."""
    if dtype_of(xs[0]) == "float16":
        return tirx.Cast("float16", fn(*(tirx.Cast("float32", x) for x in xs)))
    return fn(*xs)


def shape_of(node: Node, i: int = 0) -> tuple[int, ...]:
    """Static shape of input i of a node."""
    return node.inputs[i].shape


def prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


# -- IR-builder helpers for hand-written kernels (te.extern) ---------------------------------------------
_MAX_THREADS = 256


@contextlib.contextmanager
def parallel_loop(device: str, total: int) -> Iterator[Any]:
    """A loop over [0, total) whose iterations are independent: parallel on CPU, one CUDA thread each."""
    if device != "cuda":
        with T.parallel(0, total) as i:
            yield i
        return
    nt = max(min(_MAX_THREADS, total), 1)
    bx, tx = te.thread_axis("blockIdx.x"), te.thread_axis("threadIdx.x")
    with T.frame_scope([T.attr(bx, "thread_extent", (total + nt - 1) // nt), T.attr(tx, "thread_extent", nt)]):
        i = bx * nt + tx
        with T.If(i < total):
            with T.Then():
                yield i


@contextlib.contextmanager
def single_thread(device: str) -> Iterator[None]:
    """Code run by one thread (a one-thread kernel on GPU)."""
    if device != "cuda":
        yield
        return
    bx, tx = te.thread_axis("blockIdx.x"), te.thread_axis("threadIdx.x")
    with T.frame_scope([T.attr(bx, "thread_extent", 1), T.attr(tx, "thread_extent", 1)]):
        yield
