"""Divide-and-conquer scheduling for problems too large for one ILP (COSMA §IV heuristic).

The task order is cut into consecutive windows, preferring cut points where few bytes are live across the cut.
Each window is solved by the scratchpad ILP (`solve_window`, fixed order by default) starting from the
residency, addresses and DRAM copies the previous window left; buffers still needed after the window may stay
resident (and are then the next window's starting state) or be stored. The window plans are concatenated.
Optimality is lost only across window boundaries, so the result is reported as "heuristic"; it is never worse than
the Belady baseline, which is returned instead if a time-limited solve ends up worse.
"""

from __future__ import annotations

import time

from qcc.backends.accel.problem import Problem, Schedule, State, last_uses, plan_events
from qcc.backends.accel.schedule_ilp import gap_of, solve_window
from qcc.errors import ScratchpadError

WINDOW = 32  # tasks per window (at most); small enough for CP-SAT to prove most windows optimal in well under 1 s


def cut_points(problem: Problem, window: int = WINDOW) -> list[int]:
    """Window boundaries ``[0, c1, ..., n]``: each window has between window/2 and ``window`` tasks and ends
    where the fewest bytes are live across the cut."""
    n = len(problem.tasks)
    order = list(range(n))
    last = last_uses(problem, order)
    first: dict[str, int] = {}
    for k, t in enumerate(problem.tasks):
        for b in t.reads + t.writes:
            first.setdefault(b, k)
    # crossing[c] = bytes of buffers used both before step c and at or after it
    crossing = [0] * (n + 1)
    for b, f in first.items():
        for c in range(f + 1, last[b] + 1):
            crossing[c] += problem.placed(b)
    cuts = [0]
    while n - cuts[-1] > window:
        lo, hi = cuts[-1] + max(1, window // 2), cuts[-1] + window
        cuts.append(min(range(lo, hi + 1), key=lambda c: (crossing[c], -c)))
    cuts.append(n)
    return cuts


def schedule_dc(problem: Problem, time_limit_s: float = 10.0, progress: bool = False, window: int = WINDOW,
                reorder: bool = False) -> Schedule:
    """Schedule ``problem`` window by window; ``time_limit_s`` is shared among the windows by size. As in COSMA's
    heuristic the order is fixed (the problem's topological order) unless ``reorder``."""
    from qcc.backends.accel.schedule_baselines import schedule_baseline

    t0 = time.perf_counter()
    n = len(problem.tasks)
    order = list(range(n))
    cuts = cut_points(problem, window)
    state = State()
    loaded: set[str] = set()
    events = []
    objective, bound, constant, optimal = 0, 0.0, 0, 0
    base = schedule_baseline(problem, "belady")
    for s, e in zip(cuts, cuts[1:], strict=False):
        budget = max(1.0, time_limit_s * (e - s) / max(n, 1))
        try:
            res = solve_window(problem, order, s, e, state, budget, reorder=reorder, ever_loaded=loaded,
                               progress=progress)
        except ScratchpadError as err:  # no solution within the window's time: keep the baseline's schedule
            return Schedule(problem, base.events, "dc", "heuristic", float("nan"), time.perf_counter() - t0,
                            info={"windows": len(cuts) - 1, "fallback": "belady", "why": str(err)})
        order[s:e] = res.order
        evs, state = plan_events(problem, order, res.plans, start=s, state=state, finish=e == n)
        events.extend(evs)
        loaded.update(ev.name for ev in evs if ev.kind == "load")
        objective, bound, constant = objective + res.objective, bound + res.bound, constant + res.constant
        optimal += res.status == "optimal"
    sched = Schedule(problem, events, "dc", "heuristic", float("nan"), time.perf_counter() - t0,
                     info={"windows": len(cuts) - 1, "windows_optimal": optimal,
                           "window_gap": gap_of(objective, bound, constant)})
    if sched.traffic()["noncompulsory"] > base.traffic()["noncompulsory"]:
        sched.events, sched.info["fallback"] = base.events, "belady"
    return sched
