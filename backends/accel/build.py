"""`build(graph, target)`: integer graph -> problem -> schedule -> program -> `AccelExecutable`.

Bad configurations fail before anything is emitted: an op the ISA lacks raises `UnsupportedOperatorError`, an op
whose smallest tile cannot fit the scratchpad raises `ScratchpadError`. The built program is run once on zero
inputs to record its (data-independent) DRAM traffic, scratchpad high-water mark and cycles for the report.
"""

from __future__ import annotations

import numpy as np

from qcc.backends.accel.emitter import emit
from qcc.backends.accel.isa import NUMPY, packed_bytes
from qcc.backends.accel.problem import Schedule
from qcc.backends.accel.problem_builder import AccelPlan, build_problem
from qcc.backends.accel.program import AccelExecutable, Program
from qcc.backends.accel.simulator import TimingModel
from qcc.errors import BackendError, OptionError
from qcc.ir.graph import Graph
from qcc.target import Target

DEFAULT_SCRATCHPAD_KB = 256
DEFAULT_DRAM_GBPS = 25.6


def occupancy_intervals(schedule: Schedule) -> list[tuple[str, int, int, int, int]]:
    """(buffer, addr, placed size, first step, end step) of every residency; a step is one task run."""
    step, start, out = 0, {}, []
    for e in schedule.events:
        if e.kind in ("load", "alloc"):
            start[e.name] = (e.addr, step)
        elif e.kind == "free" and e.name in start:
            addr, s0 = start.pop(e.name)
            out.append((e.name, addr, schedule.problem.placed(e.name), s0, max(step, s0 + 1)))
        elif e.kind == "run":
            step += 1
    out += [(n, a, schedule.problem.placed(n), s0, step) for n, (a, s0) in start.items()]
    return out


def program_from(plan: AccelPlan, schedule: Schedule, timing: TimingModel) -> Program:
    """Emit the program of `schedule` and package it with the plan's DRAM layout."""
    code = emit(plan, schedule)
    addresses = {s.tensor: plan.tensors[s.tensor][0] for s in plan.inputs + plan.outputs}
    return Program(code, plan.weights, plan.dram_size, plan.problem.capacity, plan.inputs, plan.outputs, addresses,
                   timing)


def _packed_saving(graph: Graph) -> int:
    """DRAM bytes the two-per-byte packing of 4-bit conv/linear weights saves over one byte per weight."""
    saved = 0
    for node in graph.nodes:
        if node.op in ("qconv2d", "qlinear") and node.inputs[1].type.dtype in ("i4", "u4"):
            shape = tuple(node.inputs[1].type.shape)
            saved += packed_bytes(shape, "i4") - packed_bytes(shape, "i4x2")
    return saved


def build(graph: Graph, target: Target, method: str = "ilp", time_limit_s: float = 10.0,
          progress: bool = False) -> AccelExecutable:
    """Compile an integer graph for an accelerator target (options scratchpad_kb, dram_gbps)."""
    from qcc.backends.accel.scheduler import schedule

    kb = target.options.get("scratchpad_kb", DEFAULT_SCRATCHPAD_KB)
    gbps = float(target.options.get("dram_gbps", DEFAULT_DRAM_GBPS))
    if kb <= 0 or gbps <= 0:
        raise OptionError(f"scratchpad_kb and dram_gbps must be positive, got {kb} and {gbps}")
    plan = build_problem(graph, kb * 1024)
    sched = schedule(plan.problem, method=method, time_limit_s=time_limit_s, progress=progress)
    timing = TimingModel(dram_gbps=gbps)
    program = program_from(plan, sched, timing)
    zeros = [np.zeros(s.shape, NUMPY[s.dtype]) for s in plan.inputs]
    _, stats = program.execute(zeros)
    if stats.spm_peak > program.capacity:  # the simulator raises first; kept as a statement of the invariant
        raise BackendError("the program exceeds the scratchpad")
    traffic = sched.traffic()
    fills = sum(r.nbytes for t in plan.problem.tasks for _, r in (t.payload.fills + t.payload.flushes))
    info = {
        "method": sched.method, "status": sched.status, "gap": sched.gap, "solve_seconds": sched.solve_seconds,
        "tasks": len(plan.problem.tasks), "tiles": plan.tiles, "capacity": plan.problem.capacity,
        "schedule_peak": sched.peak(), "traffic": traffic, "tile_traffic": fills,
        "sim": {"dram_read": stats.dram_read, "dram_write": stats.dram_write, "spm_peak": stats.spm_peak,
                "cycles": stats.cycles, "dma_cycles": stats.dma_cycles, "compute_cycles": stats.compute_cycles,
                "instructions": stats.instructions, "by_op": stats.by_op},
        "occupancy": occupancy_intervals(sched),
        "weights_bytes": len(plan.weights), "packed_saved": _packed_saving(graph),
    }
    return AccelExecutable(program, target, info)
