"""The no-float check on generated TIR: prove that an integer build computes in integers between its boundaries.

`check_integer_tir(mod)` walks every PrimFunc of the Relax/TIR module the build pipeline produced (after fusion
and scheduling, before the VM lowering, where `main` still calls each kernel with `call_tir`) and collects every
float dtype it meets — in buffer types, expression types and constants — grouped by the TIR block that holds
it (`""` for the function signature). A float dtype is allowed only in the two boundaries of an integer graph:

- the input quantize: a `quantize` block (the kernel's `qcc.ops` lists `quantize`) of a kernel that `main`
  calls with one of its own (float) parameters;
- the output dequantize: a `dequantize` block (`qcc.ops` lists `dequantize`) of a kernel whose result `main`
  returns.

Such a boundary kernel may be fused with integer work (e.g. `qlinear + dequantize`): its other blocks must
still be free of float, and the float in its signature is then the boundary's input or output. Every other
kernel with a float dtype anywhere — a float conv left in by `keep_float`, a float tanh between a dequantize
and a quantize, an untagged kernel — is reported with its ops and the offending blocks.

The TIR walk uses tvm-ffi's structural visitor (this TVM has no `tirx.stmt_functor.post_order_visit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import tvm
import tvm_ffi
from tvm import relax, tirx

OP_ATTR = "qcc.op"
OPS_ATTR = "qcc.ops"
BOUNDARY_OPS = ("quantize", "dequantize")  # the ops whose TIR blocks may touch float, at the boundary only
_FLOAT_PREFIXES = ("float", "bfloat")


def _is_float(dtype: str) -> bool:
    return dtype.startswith(_FLOAT_PREFIXES)


@dataclass
class TirCheckReport:
    """Verdict of the TIR no-float check.

    `ok` holds when every kernel is integer-only except input-quantize / output-dequantize boundary kernels,
    and at least one input quantize exists when the module has float inputs. `offending` lists (kernel, ops, reason).
    """

    ok: bool
    kernels: int
    boundary_in: list[str] = field(default_factory=list)
    boundary_out: list[str] = field(default_factory=list)
    offending: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    def text(self) -> str:
        if self.ok:
            return (f"TIR no-float check: passed ({self.kernels} kernels; float only in {len(self.boundary_in)} "
                    f"input-quantize and {len(self.boundary_out)} output-dequantize kernel(s))")
        lines = [f"TIR no-float check: FAILED; {len(self.offending)} of {self.kernels} kernels compute in float:"]
        lines += [f"  {name} [{'+'.join(ops) or 'untagged'}]: {why}" for name, ops, why in self.offending[:20]]
        if len(self.offending) > 20:
            lines.append(f"  ... and {len(self.offending) - 20} more")
        return "\n".join(lines)

    __str__ = text


def _attr(func: Any, key: str) -> Any:
    attrs = func.attrs
    return None if attrs is None or key not in attrs else attrs[key]


def _kernel_ops(func: tirx.PrimFunc) -> tuple[str, ...]:
    ops = _attr(func, OPS_ATTR)
    if ops is not None:
        return tuple(str(o) for o in ops)
    op = _attr(func, OP_ATTR)
    return (str(op),) if op is not None else ()


def float_blocks(func: tirx.PrimFunc) -> dict[str, set[str]]:
    """Block name -> float dtypes used directly in that block (not in nested blocks); "" is the signature and
    anything outside a block."""
    found: dict[str, set[str]] = {}
    stack = [""]

    def on_node(node: Any, visitor: Any) -> Any:
        kind = type(node).__name__
        if kind == "SBlock":
            stack.append(str(node.name_hint))
            try:
                return visitor.default_visit(node)
            finally:
                stack.pop()
        if kind in ("PrimType", "BufferType", "Buffer") or isinstance(node, tirx.Buffer):
            dtype = getattr(node, "dtype", None)
            if dtype is not None and _is_float(str(dtype)):
                found.setdefault(stack[-1], set()).add(str(dtype))
        return visitor.default_visit(node)

    tvm_ffi.structural_visit(func, on_node)
    return found


def _main_io(mod: tvm.IRModule) -> tuple[set[str], set[str], bool]:
    """Kernels `main` calls with one of its parameters, kernels whose call result `main` returns, and whether
    `main` has a float parameter (True when there is no relax `main` to tell)."""
    if not any(gv.name_hint == "main" for gv in mod.get_global_vars()):
        return set(), set(), True
    main = mod["main"]
    if not isinstance(main, relax.Function):
        return set(), set(), True
    float_params = any(_is_float(str(getattr(p.ty, "dtype", "") or "")) for p in main.params)
    param_ids = list(main.params)
    reads_param: set[str] = set()
    producer: dict[Any, str] = {}  # relax Var -> kernel whose call_tir bound it
    alias: dict[Any, Any] = {}
    tuples: dict[Any, list[Any]] = {}
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                callee = value.args[0].name_hint
                producer[binding.var] = callee
                args = value.args[1].fields if isinstance(value.args[1], relax.Tuple) else [value.args[1]]
                if any(any(a.same_as(p) for p in param_ids) for a in args):
                    reads_param.add(callee)
            elif isinstance(value, relax.Tuple):
                tuples[binding.var] = list(value.fields)
            elif isinstance(value, relax.Var):
                alias[binding.var] = value

    def resolve(v: Any) -> Any:
        while v in alias:
            v = alias[v]
        return v

    result = resolve(body.body)
    outs = tuples.get(result, [result]) if not isinstance(result, relax.Tuple) else list(result.fields)
    returned = {producer[resolve(o)] for o in outs if resolve(o) in producer}
    return reads_param, returned, float_params


def check_integer_tir(mod: tvm.IRModule, kernels: Iterable[str] | None = None) -> TirCheckReport:
    """Check an integer build's Relax/TIR module for float computation (see the module docstring)."""
    reads_param, returned, float_params = _main_io(mod)
    wanted = set(kernels) if kernels is not None else None
    offending: list[tuple[str, tuple[str, ...], str]] = []
    b_in: list[str] = []
    b_out: list[str] = []
    count = 0
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (wanted is not None and gv.name_hint not in wanted):
            continue
        count += 1
        name, ops = gv.name_hint, _kernel_ops(func)
        blocks = float_blocks(func)
        if not blocks:
            continue
        allowed = set()
        if "quantize" in ops and name in reads_param:
            allowed.add("quantize")
        if "dequantize" in ops and name in returned:
            allowed.add("dequantize")
        inner = {b: d for b, d in blocks.items() if b and b not in allowed}
        if not allowed or inner:
            where = inner or blocks
            why = "; ".join(f"{'block ' + repr(b) if b else 'signature'}: {', '.join(sorted(d))}"
                            for b, d in sorted(where.items()))
            if not allowed and any(op in BOUNDARY_OPS for op in ops):
                why += " (a quantize/dequantize inside the graph, not at its boundary)"
            offending.append((name, ops, why))
            continue
        if "quantize" in allowed:
            b_in.append(name)
        if "dequantize" in allowed:
            b_out.append(name)
    # As on the IR: a graph with float inputs must quantize them; one with integer inputs only (token ids into an
    # integer embedding table) needs no input quantize.
    ok = not offending and (bool(b_in) or not float_params)
    if not offending and not ok:
        offending.append(("<main>", (), "no input-quantize kernel: the build is not quantized"))
    return TirCheckReport(ok, count, b_in, b_out, offending)


__all__ = ["BOUNDARY_OPS", "CheckIntegerTIR", "TirCheckReport", "check_integer_tir", "float_blocks"]


@tvm.transform.module_pass(opt_level=0, name="qcc.CheckIntegerTIR")
class CheckIntegerTIR:
    """A no-op module pass that stores `check_integer_tir(mod)` in `report["tir_check"]`.

    The build runs it right after fusion and before scheduling: schedules (dlight on CUDA) inline a boundary
    dequantize into the accumulator's write-back block, which would hide which block the float belongs to.
    """

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.report["tir_check"] = check_integer_tir(mod)
        return mod
