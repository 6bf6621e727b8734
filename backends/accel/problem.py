"""The scratchpad scheduling problem and its solution, shared by every scheduler and by the accelerator emitter.

A `Problem` is a list of atomic tasks (one operator or one tile of it) that read and write named buffers, plus a
scratchpad of `capacity` bytes whose placements are `alignment`-aligned. A `Schedule` is a flat list of `Event`s:
loads from DRAM, allocations of task outputs, task runs, stores to DRAM and frees. `check_schedule` replays the
events and rejects every violation, so any scheduler's output can be verified independently of how it was found.

Traffic accounting (COSMA, Li et al. 2023): loading each input/weight buffer that some task reads once, and storing
each output buffer once, is compulsory; everything else (weight re-loads, activation spills and their reloads) is
non-compulsory and is what the schedulers minimise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcc.errors import ScratchpadError

KINDS = ("input", "weight", "activation", "output")
EVENT_KINDS = ("load", "alloc", "run", "store", "free")


def align_up(n: int, alignment: int) -> int:
    """Round ``n`` up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


@dataclass(frozen=True)
class Buffer:
    """A tensor (or tile) of ``size`` bytes. ``kind``: "input" | "weight" | "activation" | "output"; inputs and
    weights start in DRAM, outputs must be in DRAM at the end, activations need DRAM only when spilled."""

    name: str
    size: int
    kind: str


@dataclass(frozen=True)
class Task:
    """One atomic unit of work: all ``reads`` resident and all ``writes`` allocated while it runs.
    ``payload`` is opaque to the schedulers (the emitter's description of the work)."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    payload: object = None


@dataclass
class Problem:
    """Buffers, tasks in a valid topological order, and the scratchpad (``capacity`` bytes, ``alignment``)."""

    buffers: dict[str, Buffer]
    tasks: list[Task]
    capacity: int
    alignment: int = 64

    def placed(self, name: str) -> int:
        """Bytes ``name`` occupies in the scratchpad (its size rounded up to the alignment)."""
        return align_up(self.buffers[name].size, self.alignment)

    @property
    def usable(self) -> int:
        """Capacity rounded down to the alignment: no aligned placement can use the bytes past it."""
        return self.capacity // self.alignment * self.alignment

    def footprint(self, task: Task) -> int:
        """Aligned bytes that must be resident at once while ``task`` runs."""
        return sum(self.placed(b) for b in dict.fromkeys(task.reads + task.writes))

    def producers(self) -> dict[str, int]:
        """Buffer name -> index of the task that writes it."""
        return {b: i for i, t in enumerate(self.tasks) for b in t.writes}

    def validate(self) -> None:
        """Raise `ScratchpadError` for a malformed problem or one with a task that can never fit."""
        if self.capacity <= 0 or self.alignment <= 0:
            raise ScratchpadError(f"scratchpad capacity ({self.capacity}) and alignment ({self.alignment}) "
                                  "must be positive")
        for name, b in self.buffers.items():
            if b.name != name:
                raise ScratchpadError(f"buffer registered as {name!r} is named {b.name!r}")
            if b.kind not in KINDS:
                raise ScratchpadError(f"buffer {name!r} has unknown kind {b.kind!r} (expected one of {KINDS})")
            if b.size <= 0:
                raise ScratchpadError(f"buffer {name!r} has non-positive size {b.size}")
        seen_tasks: set[str] = set()
        written: set[str] = set()
        for t in self.tasks:
            if t.name in seen_tasks:
                raise ScratchpadError(f"two tasks are named {t.name!r}")
            seen_tasks.add(t.name)
            for b in t.reads + t.writes:
                if b not in self.buffers:
                    raise ScratchpadError(f"task {t.name!r} uses unknown buffer {b!r}")
            for b in t.reads:
                kind = self.buffers[b].kind
                if kind in ("activation", "output") and b not in written:
                    raise ScratchpadError(f"task {t.name!r} reads {kind} buffer {b!r} before any task writes it "
                                          "(tasks must be in topological order)")
            for b in t.writes:
                kind = self.buffers[b].kind
                if kind in ("input", "weight"):
                    raise ScratchpadError(f"task {t.name!r} writes {kind} buffer {b!r}; only activations and "
                                          "outputs are produced by tasks")
                if b in written:
                    raise ScratchpadError(f"buffer {b!r} is written by more than one task (again by {t.name!r})")
                if b in t.reads:
                    raise ScratchpadError(f"task {t.name!r} reads and writes the same buffer {b!r}")
                written.add(b)
            need = self.footprint(t)
            if need > self.usable:
                parts = ", ".join(f"{b}={self.placed(b)}" for b in dict.fromkeys(t.reads + t.writes))
                raise ScratchpadError(
                    f"task {t.name!r} needs {need} bytes resident at once ({parts}; aligned to {self.alignment}) "
                    f"but the scratchpad has {self.capacity} bytes: it can never fit; tile it smaller or "
                    "enlarge the scratchpad")
        for name, b in self.buffers.items():
            if b.kind in ("activation", "output") and name not in written:
                raise ScratchpadError(f"{b.kind} buffer {name!r} is never written by any task")

    def compulsory(self) -> int:
        """Bytes of unavoidable DRAM traffic: each input/weight that some task reads once, each output once."""
        read = {b for t in self.tasks for b in t.reads}
        return sum(b.size for b in self.buffers.values()
                   if (b.kind in ("input", "weight") and b.name in read) or b.kind == "output")


@dataclass(frozen=True)
class Event:
    """One step of a schedule. ``kind``: "load" (DRAM -> scratchpad at ``addr``), "alloc" (space for a task's
    output at ``addr``), "run" (``name`` is a task), "store" (copy to DRAM; stays resident), "free"."""

    kind: str
    name: str
    addr: int = -1


@dataclass
class Schedule:
    """The events a scheduler chose, how (``method``), and how good it is known to be: ``status`` "optimal",
    "feasible" (a solver stopped at its time limit; ``gap`` = (found - bound) / found) or "heuristic"."""

    problem: Problem
    events: list[Event]
    method: str
    status: str
    gap: float = 0.0
    solve_seconds: float = 0.0
    info: dict[str, object] = field(default_factory=dict)

    def order(self) -> list[str]:
        """Task names in the order they run."""
        return [e.name for e in self.events if e.kind == "run"]

    def traffic(self) -> dict[str, int]:
        """DRAM traffic in bytes: load, store, compulsory, noncompulsory (= load + store - compulsory)."""
        bufs = self.problem.buffers
        load = sum(bufs[e.name].size for e in self.events if e.kind == "load")
        store = sum(bufs[e.name].size for e in self.events if e.kind == "store")
        comp = self.problem.compulsory()
        return {"load": load, "store": store, "compulsory": comp, "noncompulsory": load + store - comp}

    def occupancy(self) -> list[dict[str, tuple[int, int]]]:
        """After each event: resident buffer -> (addr, placed size). Assumes a valid schedule."""
        resident: dict[str, tuple[int, int]] = {}
        out = []
        for e in self.events:
            if e.kind in ("load", "alloc"):
                resident[e.name] = (e.addr, self.problem.placed(e.name))
            elif e.kind == "free":
                resident.pop(e.name, None)
            out.append(dict(resident))
        return out

    def peak(self) -> int:
        """Highest scratchpad byte in use at any time (end of the highest placement; includes fragmentation)."""
        return max((a + s for occ in self.occupancy() for a, s in occ.values()), default=0)


def check_schedule(schedule: Schedule) -> None:
    """Replay ``schedule`` and raise `ScratchpadError` on the first violation: overlap, placement past the
    capacity, misalignment, a run whose operands are not resident or whose outputs are not allocated, a task run
    twice or never, a reload of an activation never stored, or an output never stored to DRAM."""
    p = schedule.problem
    tasks = {t.name: t for t in p.tasks}
    producer = {b: t.name for t in p.tasks for b in t.writes}
    resident: dict[str, tuple[int, int]] = {}
    in_dram = {n for n, b in p.buffers.items() if b.kind in ("input", "weight")}
    produced: set[str] = set()  # buffers whose producing task has run
    ran: set[str] = set()
    for i, e in enumerate(schedule.events):
        where = f"event {i} ({e.kind} {e.name!r})"
        if e.kind not in EVENT_KINDS:
            raise ScratchpadError(f"{where}: unknown event kind")
        if e.kind == "run":
            t = tasks.get(e.name)
            if t is None:
                raise ScratchpadError(f"{where}: unknown task")
            if e.name in ran:
                raise ScratchpadError(f"{where}: task runs twice")
            for b in t.reads:
                if b not in resident or b not in in_dram | produced:
                    raise ScratchpadError(f"{where}: operand {b!r} is not resident")
            for b in t.writes:
                if b not in resident:
                    raise ScratchpadError(f"{where}: output {b!r} was not allocated")
            ran.add(e.name)
            produced.update(t.writes)
            continue
        if e.name not in p.buffers:
            raise ScratchpadError(f"{where}: unknown buffer")
        if e.kind in ("load", "alloc"):
            if e.name in resident:
                raise ScratchpadError(f"{where}: buffer is already resident")
            if e.kind == "load" and e.name not in in_dram:
                raise ScratchpadError(f"{where}: reload of a buffer that was never stored to DRAM")
            if e.kind == "alloc" and (e.name not in producer or producer[e.name] in ran):
                raise ScratchpadError(f"{where}: alloc is only for the output of a task that has not run yet")
            size = p.placed(e.name)
            if e.addr < 0 or e.addr % p.alignment:
                raise ScratchpadError(f"{where}: address {e.addr} is not {p.alignment}-aligned")
            if e.addr + size > p.capacity:
                raise ScratchpadError(f"{where}: [{e.addr}, {e.addr + size}) exceeds the capacity {p.capacity}")
            for other, (a, s) in resident.items():
                if e.addr < a + s and a < e.addr + size:
                    raise ScratchpadError(f"{where}: [{e.addr}, {e.addr + size}) overlaps {other!r} at [{a}, {a + s})")
            resident[e.name] = (e.addr, size)
        elif e.kind == "store":
            if p.buffers[e.name].kind in ("input", "weight"):
                raise ScratchpadError(f"{where}: {p.buffers[e.name].kind} buffers are never stored")
            if e.name not in resident or e.name not in produced:
                raise ScratchpadError(f"{where}: store of a buffer that is not resident with its data")
            in_dram.add(e.name)
        else:  # free
            if e.name not in resident:
                raise ScratchpadError(f"{where}: free of a buffer that is not resident")
            del resident[e.name]
    missing = [t.name for t in p.tasks if t.name not in ran]
    if missing:
        raise ScratchpadError(f"tasks never run: {missing[:10]}")
    unstored = [n for n, b in p.buffers.items() if b.kind == "output" and n not in in_dram]
    if unstored:
        raise ScratchpadError(f"output buffers never stored to DRAM: {unstored[:10]}")


@dataclass
class State:
    """Scratchpad state between steps: resident buffer -> address, and the activations/outputs held in DRAM."""

    resident: dict[str, int] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)


def last_uses(problem: Problem, order: list[int]) -> dict[str, int]:
    """Buffer -> the last step (index into ``order``) at which a task reads or writes it."""
    last: dict[str, int] = {}
    for k, i in enumerate(order):
        t = problem.tasks[i]
        for b in t.reads + t.writes:
            last[b] = k
    return last


def plan_events(problem: Problem, order: list[int], plans: list[dict[str, int]], start: int = 0,
                state: State | None = None, finish: bool = True) -> tuple[list[Event], State]:
    """Turn a residency plan into events. ``plans[j]`` maps each buffer resident during step ``start + j`` (task
    ``order[start + j]``) to its address. Buffers leaving the scratchpad are stored first when they are
    activations still needed and not yet in DRAM; outputs are stored right after their task runs; buffers with no
    later use are dropped. ``finish`` frees everything after the last step. Returns the events and the end state."""
    st = State(dict(state.resident), set(state.stored)) if state else State()
    last = last_uses(problem, order)
    kinds = {n: b.kind for n, b in problem.buffers.items()}
    events: list[Event] = []
    for j, plan in enumerate(plans):
        k = start + j
        task = problem.tasks[order[k]]
        keep = {b: a for b, a in plan.items() if last.get(b, -1) >= k}
        for b, a in list(st.resident.items()):
            if keep.get(b) == a:
                continue
            if kinds[b] in ("activation", "output") and b not in st.stored and last.get(b, -1) >= k:
                events.append(Event("store", b))
                st.stored.add(b)
            events.append(Event("free", b))
            del st.resident[b]
        for b, a in sorted(keep.items(), key=lambda x: x[1]):
            if b in st.resident:
                continue
            events.append(Event("alloc" if b in task.writes else "load", b, a))
            st.resident[b] = a
        events.append(Event("run", task.name))
        for b in task.writes:
            if kinds[b] == "output":
                events.append(Event("store", b))
                st.stored.add(b)
    if finish:
        events.extend(Event("free", b) for b in list(st.resident))
        st.resident.clear()
    return events, st
