"""Exhaustive search for the minimum-traffic schedule of a tiny problem (the reference the ILP is tested against).

It explores the same schedule space as the ILP: every topological order, and at every step every choice of which
resident buffers stay (at their address) or leave (stored first when still needed and not yet in DRAM), with every
aligned address for the buffers the task brings in. Loads happen at the step that needs the buffer (loading
earlier never saves traffic) and dead buffers are dropped. A dynamic program over (resident buffers with
addresses, activations in DRAM) per step keeps it exact and tractable for a handful of tasks and buffers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from qcc.backends.accel.problem import Problem, Schedule, last_uses, plan_events
from qcc.errors import OptionError

MAX_TASKS = 7

Key = tuple[frozenset[tuple[str, int]], frozenset[str]]


def topological_orders(problem: Problem) -> Iterator[list[int]]:
    """Every order of the tasks in which each buffer is written before it is read."""
    prod = problem.producers()
    preds = [{prod[b] for b in t.reads if b in prod} for t in problem.tasks]
    n = len(problem.tasks)

    def rec(done: list[int], left: set[int]) -> Iterator[list[int]]:
        if not left:
            yield list(done)
            return
        for i in sorted(left):
            if preds[i] <= set(done):
                done.append(i)
                yield from rec(done, left - {i})
                done.pop()

    yield from rec([], set(range(n)))


def _placements(problem: Problem, fixed: dict[str, int], new: list[str]) -> Iterator[dict[str, int]]:
    """Every assignment of aligned, non-overlapping addresses to ``new`` around the ``fixed`` placements."""
    al = problem.alignment
    taken = [(a, a + problem.placed(b)) for b, a in fixed.items()]
    if not new:
        yield {}
        return
    b, rest = new[0], new[1:]
    size = problem.placed(b)
    for a in range(0, problem.usable - size + 1, al):
        if all(a + size <= lo or hi <= a for lo, hi in taken):
            for more in _placements(problem, {**fixed, b: a}, rest):
                yield {b: a, **more}


def _solve_order(problem: Problem, order: list[int], budget: int) -> tuple[int, list[dict[str, int]]] | None:
    """Minimum loads + activation-store bytes for a fixed ``order`` (None when nothing beats ``budget``)."""
    last = last_uses(problem, order)
    kinds = {n: b.kind for n, b in problem.buffers.items()}
    layer: dict[Key, tuple[int, list[dict[str, int]]]] = {(frozenset(), frozenset()): (0, [])}
    for k, i in enumerate(order):
        task = problem.tasks[i]
        need = list(dict.fromkeys(task.reads + task.writes))
        nxt: dict[Key, tuple[int, list[dict[str, int]]]] = {}
        for (res, stored), (cost, plans) in layer.items():
            prev = {b: a for b, a in res if last[b] >= k}
            optional = [b for b in prev if b not in need]
            for keep_bits in itertools.product((True, False), repeat=len(optional)):
                kept = {b: prev[b] for b in need if b in prev}
                kept.update({b: prev[b] for b, keep in zip(optional, keep_bits, strict=True) if keep})
                c, st = cost, set(stored)
                for b, keep in zip(optional, keep_bits, strict=True):
                    if not keep and kinds[b] == "activation" and b not in st:
                        c += problem.buffers[b].size
                        st.add(b)
                new = [b for b in need if b not in prev]
                if any(kinds[b] == "activation" and b not in st for b in new if b not in task.writes):
                    continue  # cannot happen for reachable states; kept as a guard
                c += sum(problem.buffers[b].size for b in new if b not in task.writes)
                if c > budget:
                    continue
                for place in _placements(problem, kept, sorted(new, key=lambda b: -problem.placed(b))):
                    plan = {**kept, **place}
                    key = (frozenset(plan.items()), frozenset(st))
                    if key not in nxt or nxt[key][0] > c:
                        nxt[key] = (c, plans + [plan])
        layer = nxt
    if not layer:
        return None
    return min(layer.values(), key=lambda v: v[0])


def schedule_exhaustive(problem: Problem) -> Schedule:
    """The exact minimum-traffic schedule of a problem with at most `MAX_TASKS` tasks."""
    if len(problem.tasks) > MAX_TASKS:
        raise OptionError(f"exhaustive scratchpad search is for tiny problems (at most {MAX_TASKS} tasks); "
                          f"this one has {len(problem.tasks)}")
    from qcc.backends.accel.schedule_baselines import schedule_baseline

    t0 = time.perf_counter()
    # The Belady schedule's cost (loads + activation stores) bounds the search from above: prunes most branches.
    base = schedule_baseline(problem, "belady").traffic()
    outputs = sum(b.size for b in problem.buffers.values() if b.kind == "output")
    budget = base["load"] + base["store"] - outputs
    read = {b for t in problem.tasks for b in t.reads}
    floor = sum(b.size for b in problem.buffers.values() if b.kind in ("input", "weight") and b.name in read)
    best: tuple[int, list[int], list[dict[str, int]]] | None = None
    for order in topological_orders(problem):
        found = _solve_order(problem, order, best[0] - 1 if best else budget)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], order, found[1])
            if best[0] <= floor:  # every input/weight loaded exactly once, nothing spilled: cannot improve
                break
    if best is None:  # validate() guarantees each task fits alone, so evicting everything always works
        raise AssertionError("exhaustive search found no schedule")
    events, _ = plan_events(problem, best[1], best[2])
    return Schedule(problem, events, "exhaustive", "optimal", 0.0, time.perf_counter() - t0,
                    info={"objective": best[0]})
