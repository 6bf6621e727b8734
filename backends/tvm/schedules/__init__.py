"""The schedule registry: per-op schedule templates for the kernels the TVM lowering produces.

Every kernel the lowering emits carries the function attribute `qcc.op` (the qcc op it implements). Relax
fusion (FuseOps + FuseTIR) merges kernels and drops function attributes, so the build pipeline runs
`RecordFusedOps` before FuseTIR and `TagFusedOps` after it: each fused kernel then carries

- `qcc.op`: its anchor op (the member with the highest TVM op pattern, e.g. the conv2d of conv+bias+relu),
- `qcc.ops`: every member op, in order.

`ApplySchedules` then looks up `SCHEDULES[qcc.op]` for each unscheduled kernel. A template has the signature
`fn(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None` and returns the scheduled
function, or None to decline (wrong target, unsupported shape). Scheduled kernels are marked
`tirx.is_scheduled`, so later rules leave them alone. On CUDA, every kernel that no template took gets the
dlight default GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), which bind threads; on CPU
the default is no schedule (TVM's default TIR pipeline compiles the plain loop nest).

Templates plug in with `@register_schedule("conv2d")` from a module imported by this package.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import types
from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax, tirx

OP_ATTR = "qcc.op"
OPS_ATTR = "qcc.ops"
SCHEDULED_ATTR = "tirx.is_scheduled"

ScheduleFn = Callable[[tirx.PrimFunc, tvm.target.Target], "tirx.PrimFunc | None"]
SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(*ops: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Register a schedule template for kernels whose anchor op is one of `ops`."""

    def deco(fn: ScheduleFn) -> ScheduleFn:
        for op in ops:
            if op in SCHEDULES:
                raise ValueError(f"a schedule for {op!r} is already registered")
            SCHEDULES[op] = fn
        return fn

    return deco


def _attr(func: Any, key: str) -> Any:
    attrs = func.attrs
    return None if attrs is None or key not in attrs else attrs[key]


@tvm.transform.module_pass(opt_level=0, name="qcc.RecordFusedOps")
class RecordFusedOps:
    """Before FuseTIR: remember, per fused group function, the qcc ops of its member kernels."""

    def __init__(self, table: dict[str, tuple[list[str], str]]) -> None:
        self.table = table  # group function name -> (member ops, anchor op)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function) or not _attr(func, "Primitive"):
                continue
            members = []
            for callee in relax.analysis.all_global_vars(func):
                if callee.name_hint not in [g.name_hint for g in mod.get_global_vars()]:
                    continue
                prim = mod[callee]
                op = _attr(prim, OP_ATTR)
                if isinstance(prim, tirx.PrimFunc) and op is not None:
                    members.append((str(op), int(_attr(prim, "op_pattern") or 0), callee.name_hint))
            if members:
                members.sort(key=lambda m: m[2])
                anchor = max(members, key=lambda m: m[1])[0]
                self.table[gv.name_hint] = ([m[0] for m in members], anchor)
        return mod


@tvm.transform.module_pass(opt_level=0, name="qcc.TagFusedOps")
class TagFusedOps:
    """After FuseTIR: put `qcc.op` / `qcc.ops` on the fused kernels recorded by RecordFusedOps."""

    def __init__(self, table: dict[str, tuple[list[str], str]]) -> None:
        self.table = table

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            if gv.name_hint in self.table:
                ops, anchor = self.table[gv.name_hint]
                mod[gv] = func.with_attrs({OP_ATTR: anchor, OPS_ATTR: ops})
            elif _attr(func, OP_ATTR) is not None and _attr(func, OPS_ATTR) is None:
                mod[gv] = func.with_attr(OPS_ATTR, [str(_attr(func, OP_ATTR))])
        return mod


@tvm.transform.module_pass(opt_level=0, name="qcc.ApplySchedules")
class ApplySchedules:
    """Apply the registered template of each kernel's anchor op (see the module docstring)."""

    def __init__(self, target: tvm.target.Target, schedules: dict[str, ScheduleFn] | None = None) -> None:
        self.target = target
        self.schedules = SCHEDULES if schedules is None else schedules

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or _attr(func, SCHEDULED_ATTR):
                continue
            fn = self.schedules.get(str(_attr(func, OP_ATTR)))
            if fn is None:
                continue
            scheduled = fn(func, self.target)
            if scheduled is not None:
                mod[gv] = scheduled.with_attr(SCHEDULED_ATTR, True)
        return mod


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` without `inspect.getmodule` per frame (source lines come from linecache)."""
    frame = sys._getframe(1)
    out = []
    while frame is not None:
        filename, lineno = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(filename, lineno) if context > 0 else ""
        out.append(inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name, [line] if line else None,
                                     0 if line else None))
        frame = frame.f_back
    return out


def preload_tensor_intrinsics() -> None:
    """Import `tvm.s_tir.tensor_intrin` (dlight's Matmul rule imports it for tensor cores) quickly.

    The module parses ~500 TVMScript functions, and the TVMScript decorator calls `inspect.stack()` each
    time, whose `getmodule` lookup per frame scans `sys.modules`: 20-70 s in a process that has torch
    loaded. While importing, the two TVMScript entry modules get an `inspect` whose `stack()` skips that
    lookup (the parser only reads the frames and the caller's source line); this cuts it to ~2 s.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    patched = []
    try:
        from tvm.script.parser.ir import entry as ir_entry
        from tvm.tirx.script.parser import entry as tir_entry

        proxy = types.SimpleNamespace(**{k: getattr(inspect, k) for k in dir(inspect) if not k.startswith("__")})
        proxy.stack = _fast_stack
        for mod in (ir_entry, tir_entry):
            if getattr(mod, "inspect", None) is inspect:
                mod.inspect = proxy
                patched.append(mod)
    except ImportError:  # another TVM layout: import normally
        pass
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        for mod in patched:
            mod.inspect = inspect


@tvm.transform.module_pass(opt_level=0, name="qcc.GpuDefaultSchedule")
class GpuDefaultSchedule:
    """dlight's default GPU rules, applied per kernel and fault-tolerant.

    `dl.ApplyDefaultSchedule` aborts the whole build when a rule raises on some kernel (in 0.27 the
    Reduction rule does, on a full reduction like reduce_mean over all axes). Here a rule that raises is
    skipped and the next one tried, so every kernel gets the first rule that works. Kernels that no rule
    takes are left alone: hand-written kernels (scatter, index_reduce) bind their threads themselves.
    """

    def __init__(self, target: tvm.target.Target) -> None:
        from tvm.s_tir import dlight as dl

        preload_tensor_intrinsics()
        self.target = target
        self.rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                      dl.gpu.Fallback()]

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or _attr(func, SCHEDULED_ATTR):
                continue
            for rule in self.rules:
                try:
                    space = rule.apply(func, self.target, False)
                except Exception:  # a dlight rule that does not fit this kernel
                    continue
                if space is None:
                    continue
                sch = space[0] if isinstance(space, list) else space
                scheduled = sch.mod["main"]
                if not _lowers_cleanly(scheduled):
                    continue
                mod[gv] = scheduled.with_attr(SCHEDULED_ATTR, True)
                break
        return mod


@tvm.transform.module_pass(opt_level=0, name="qcc.CpuDefaultSchedule")
class CpuDefaultSchedule:
    """CPU kernels that no template took (layer_norm, softmax, transposes, elementwise...): dlight's CPU
    Reduction rule for row reductions, else the outer spatial loops of a single-block kernel run in parallel.
    Without this TVM compiles them as serial scalar loop nests. Fault-tolerant: a rule that raises is skipped."""

    MIN_PARALLEL = 4096  # elements; below this a parallel launch costs more than it saves

    def __init__(self, target: tvm.target.Target) -> None:
        from tvm.s_tir import dlight as dl

        self.target = target
        self.reduction = dl.cpu.Reduction()

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or _attr(func, SCHEDULED_ATTR):
                continue
            scheduled = None
            try:
                space = self.reduction.apply(func, self.target, False)
                if space is not None:
                    scheduled = (space[0] if isinstance(space, list) else space).mod["main"]
            except Exception:  # the rule does not fit this kernel
                scheduled = None
            if scheduled is None:
                scheduled = _parallel_outer(func, self.MIN_PARALLEL)
            if scheduled is not None:
                mod[gv] = scheduled.with_attr(SCHEDULED_ATTR, True)
        return mod


def _parallel_outer(func: tirx.PrimFunc, min_elems: int) -> tirx.PrimFunc | None:
    """Fuse the leading spatial loops of a one-block kernel (up to 2^14 iterations) and run them in parallel."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
        if len(blocks) != 1:
            return None
        blk = blocks[0]
        loops = sch.get_loops(blk)
        kinds = [iv.iter_type for iv in sch.get(blk).iter_vars]
        if not loops or len(kinds) != len(loops) or any(k != 0 for k in kinds):  # 0 = data parallel
            return None
        extents = [int(sch.get(lp).extent) for lp in loops]
        total = 1
        for e in extents:
            total *= e
        if total < min_elems:
            return None
        outer, prod = [], 1
        for lp, e in zip(loops[:-1], extents[:-1]):
            outer.append(lp)
            prod *= e
            if prod >= 64:
                break
        if not outer:
            return None
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return sch.mod["main"]
    except Exception:
        return None


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:
        return False
    return True


def _lowers_cleanly(func: tirx.PrimFunc) -> bool:
    """Whether a scheduled kernel survives the cross-thread-reduction lowering. In 0.27 dlight's reduction
    rules can produce rfactor schedules that this pass rejects later (seen on grouped int64 convolutions);
    checking here lets the next rule take the kernel instead of failing the whole build."""
    from tvm import s_tir

    try:
        s_tir.transform.LowerCrossThreadReduction()(tvm.IRModule({"main": func}))
    except Exception:
        return False
    return True


def schedule_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The scheduling passes of the build pipeline for `target` (after fusion)."""
    passes: list[tvm.transform.Pass] = [ApplySchedules(target)]
    if target.kind.name == "cuda":
        passes.append(GpuDefaultSchedule(target))
    elif target.kind.name == "llvm":
        passes.append(CpuDefaultSchedule(target))
    return passes


def kernel_ops(mod: tvm.IRModule) -> dict[str, tuple[str, list[str]]]:
    """kernel name -> (anchor op, member ops) for the tagged prim_funcs of a module (for reports and tests)."""
    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and _attr(func, OP_ATTR) is not None:
            ops = _attr(func, OPS_ATTR)
            out[gv.name_hint] = (str(_attr(func, OP_ATTR)), [str(o) for o in ops] if ops is not None else [])
    return out
