"""Baseline scratchpad schedulers: topological order, a best-fit allocator, and LRU or Belady eviction.

Both baselines run the tasks in the problem's order. Before each task, its missing operands are loaded and its
outputs allocated, largest first; when no free hole fits, a victim chosen by the policy is evicted (stored first if
it is an activation still needed and not yet in DRAM) until one does. Buffers are freed as soon as nothing later
uses them. LRU evicts the least recently used buffer; Belady evicts the one whose next use is furthest away
(optimal for unit-size caches without fragmentation, not for variable sizes: that gap is what the ILP closes).
"""

from __future__ import annotations

import time

from qcc.backends.accel.problem import Event, Problem, Schedule, State, Task, last_uses

POLICIES = ("lru", "belady")


class Allocator:
    """Best-fit placement of aligned blocks in ``[0, usable)``; the same allocator serves every baseline."""

    def __init__(self, usable: int, alignment: int) -> None:
        self.usable = usable
        self.alignment = alignment
        self.blocks: dict[str, tuple[int, int]] = {}  # name -> (addr, placed size)

    def holes(self) -> list[tuple[int, int]]:
        """Free ``(addr, size)`` ranges in address order."""
        out, cur = [], 0
        for a, s in sorted(self.blocks.values()):
            if a > cur:
                out.append((cur, a - cur))
            cur = max(cur, a + s)
        if cur < self.usable:
            out.append((cur, self.usable - cur))
        return out

    def find(self, size: int) -> int | None:
        """Address of the smallest hole that fits ``size`` (lowest address on ties), or None."""
        fits = [(s, a) for a, s in self.holes() if s >= size]
        return min(fits)[1] if fits else None

    def place(self, name: str, addr: int, size: int) -> None:
        self.blocks[name] = (addr, size)

    def remove(self, name: str) -> None:
        del self.blocks[name]


def _next_use(problem: Problem, uses: dict[str, list[int]], b: str, k: int) -> int:
    """First step after ``k`` that uses ``b`` (a large number when none)."""
    return next((s for s in uses.get(b, ()) if s > k), len(problem.tasks) + 1)


def schedule_baseline(problem: Problem, policy: str = "belady") -> Schedule:
    """Schedule ``problem`` in its topological order with ``policy`` ("lru" | "belady") eviction."""
    if policy not in POLICIES:
        raise ValueError(f"unknown eviction policy {policy!r}")
    t0 = time.perf_counter()
    order = list(range(len(problem.tasks)))
    last = last_uses(problem, order)
    uses: dict[str, list[int]] = {}
    for k, t in enumerate(problem.tasks):
        for b in dict.fromkeys(t.reads + t.writes):
            uses.setdefault(b, []).append(k)
    kinds = {n: b.kind for n, b in problem.buffers.items()}
    alloc = Allocator(problem.usable, problem.alignment)
    st = State()
    recent: dict[str, int] = {}
    produced: set[str] = set()  # activations/outputs whose task has run (an allocated output has no data yet)
    events: list[Event] = []

    def evict(b: str, k: int) -> None:
        # A buffer still used at step >= k (including the current task's operands) must survive in DRAM.
        if kinds[b] in ("activation", "output") and b in produced and b not in st.stored and last.get(b, -1) >= k:
            events.append(Event("store", b))
            st.stored.add(b)
        events.append(Event("free", b))
        alloc.remove(b)
        del st.resident[b]

    def victim(pinned: set[str], k: int) -> str | None:
        cands = [b for b in st.resident if b not in pinned]
        if not cands:
            return None
        if policy == "lru":
            return min(cands, key=lambda b: (recent.get(b, -1), -problem.placed(b), b))
        return max(cands, key=lambda b: (_next_use(problem, uses, b, k), problem.placed(b), b))

    for k, task in enumerate(problem.tasks):
        needed = list(dict.fromkeys(task.reads + task.writes))
        pinned = set(needed)
        missing = sorted((b for b in needed if b not in st.resident), key=lambda b: (-problem.placed(b), b))
        for b in missing:
            size = problem.placed(b)
            addr = alloc.find(size)
            while addr is None:
                v = victim(pinned, k)
                if v is None:
                    break
                evict(v, k)
                addr = alloc.find(size)
            if addr is None:
                # The task's own operands fragment the scratchpad: evict everything and place them contiguously
                # (the task fits by validate(), so this always succeeds; it costs reloads of resident operands).
                for r in list(st.resident):
                    evict(r, k)
                _place_all(problem, task, needed, alloc, st, events)
                break
            events.append(Event("alloc" if b in task.writes else "load", b, addr))
            alloc.place(b, addr, size)
            st.resident[b] = addr
        events.append(Event("run", task.name))
        produced.update(task.writes)
        for b in needed:
            recent[b] = k
        for b in task.writes:
            if kinds[b] == "output":
                events.append(Event("store", b))
                st.stored.add(b)
        for b in [b for b in st.resident if last.get(b, -1) <= k]:
            evict(b, k + 1)
    for b in list(st.resident):
        evict(b, len(order))
    return Schedule(problem, events, method=policy, status="heuristic", gap=float("nan"),
                    solve_seconds=time.perf_counter() - t0)


def _place_all(problem: Problem, task: Task, needed: list[str], alloc: Allocator, st: State,
               events: list[Event]) -> None:
    """Place every operand of ``task`` contiguously from address 0 into an empty scratchpad."""
    addr = 0
    for b in needed:
        events.append(Event("alloc" if b in task.writes else "load", b, addr))
        alloc.place(b, addr, problem.placed(b))
        st.resident[b] = addr
        addr += problem.placed(b)
