"""From a checked `Schedule` of an `AccelPlan` to an accelerator program.

Schedule events map one to one onto instructions: a "load" is a DMA LOAD from the buffer's DRAM home (a strided
region for a weight tile), a "store" a DMA STORE to it, a "run" the task's compute instruction with the scratchpad
addresses the schedule gave its operands, preceded by the DMA fills of its private buffers and followed by the
flushes of its DRAM-resident output tile. "alloc" and "free" only move addresses. A trailing BARRIER waits for
the engines and HALT ends the program.
"""

from __future__ import annotations

from qcc.backends.accel.isa import OPCODES, Instr
from qcc.backends.accel.problem import Schedule, check_schedule
from qcc.backends.accel.problem_builder import AccelPlan, Work
from qcc.backends.accel.tiling import Region
from qcc.errors import BackendError

ADDRESS_FIELDS = ("x", "w", "bias", "y", "a", "b", "mul", "shf", "gsc")


def _dma(op: str, plan: AccelPlan, region: Region, spm: int) -> Instr:
    base = plan.tensors[region.tensor][0] + region.offset
    return Instr.make(op, dram=base, spm=spm, n2=region.n2, n1=region.n1, n0=region.n0, s2=region.s2, s1=region.s1)


def compute_instr(work: Work, addr: dict[str, int]) -> Instr:
    """The compute instruction of `work` with its operands at the scratchpad addresses `addr` (by buffer)."""
    fields = dict(work.fields)
    for fld, buf in work.operands:
        fields[fld] = addr[buf]
    for fld in OPCODES[work.op][1]:
        if fld in ADDRESS_FIELDS and fld not in fields:
            fields[fld] = -1  # an absent optional operand (bias)
    return Instr.make(work.op, **{k: v for k, v in fields.items() if k in OPCODES[work.op][1]})


def emit(plan: AccelPlan, schedule: Schedule) -> list[Instr]:
    """The program that executes `schedule` (checked first: an invalid schedule never reaches the emitter)."""
    if schedule.problem is not plan.problem:
        raise BackendError("the schedule was computed for a different problem than this plan")
    check_schedule(schedule)
    tasks = {t.name: t for t in plan.problem.tasks}
    addr: dict[str, int] = {}
    prog: list[Instr] = []
    for e in schedule.events:
        if e.kind in ("load", "alloc"):
            addr[e.name] = e.addr
            if e.kind == "load":
                prog.append(_dma("load", plan, plan.homes[e.name], e.addr))
        elif e.kind == "store":
            prog.append(_dma("store", plan, plan.homes[e.name], addr[e.name]))
        elif e.kind == "free":
            addr.pop(e.name, None)
        else:
            work = tasks[e.name].payload
            if not isinstance(work, Work):
                raise BackendError(f"task {e.name!r} carries no accelerator work")
            for buf, region in work.fills:
                prog.append(_dma("load", plan, region, addr[buf]))
            prog.append(compute_instr(work, addr))
            for buf, region in work.flushes:
                prog.append(_dma("store", plan, region, addr[buf]))
    prog += [Instr("barrier", ()), Instr("halt", ())]
    return prog
