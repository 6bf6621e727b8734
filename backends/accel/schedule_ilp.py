"""COSMA-style joint scheduling, scratchpad allocation and spill/reload as a CP-SAT model.

One step per task. For a window of steps ``[s, e)`` of a task order (the whole problem, or one window of the
divide-and-conquer solve) the model has, following COSMA (Li et al. 2023, Eq. 1-12, CP-SAT form):

- ``x[i,k]``: task i runs at step k (a bijection; each task restricted to its ASAP/ALAP range inside the window,
  with precedence ``pos(producer) < pos(reader)``; with ``reorder=False`` every task keeps its step);
- ``r[b,k]``: buffer b is resident during step k; a task's operands and outputs must be resident when it runs, and
  an activation cannot be resident before its producer ran;
- ``ld[b,k] >= r[b,k] - r[b,k-1] - created[b,k]``: a load (first load of an input/weight, or a reload);
- ``sp[b]``: activation b is stored to DRAM once (needed for any reload, or to leave the window non-resident);
- ``L[b,k]``: address (in alignment units), optional intervals in a per-step NoOverlap, the address pinned while
  the buffer stays resident (COSMA Eq. 11), so fragmentation is modelled exactly.

Minimised: load bytes + activation store bytes (equal to non-compulsory traffic plus a constant). The window may
start from a given `State` (resident buffers with fixed addresses, activations already in DRAM).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from qcc.backends.accel.problem import Problem, Schedule, State, plan_events
from qcc.errors import ScratchpadError


@dataclass
class WindowResult:
    """The solution of one window: its task order (global indices), per-step residency plans, and quality."""

    order: list[int]
    plans: list[dict[str, int]]
    objective: int
    bound: float
    constant: int  # compulsory part of the objective (first loads of inputs/weights in this window)
    status: str
    seconds: float


def _ranges(problem: Problem, window: list[int], s: int, e: int, reorder: bool) -> dict[int, tuple[int, int]]:
    """Task -> (earliest, latest) step inside ``[s, e)``, from the dependences among the window's tasks."""
    if not reorder:
        return {i: (s + j, s + j) for j, i in enumerate(window)}
    inw = set(window)
    prod = problem.producers()
    preds = {i: {prod[b] for b in problem.tasks[i].reads if prod.get(b) in inw} for i in window}
    succs: dict[int, set[int]] = {i: set() for i in window}
    for i, ps in preds.items():
        for p in ps:
            succs[p].add(i)
    anc: dict[int, set[int]] = {}
    for i in window:  # window is topologically ordered
        anc[i] = set().union(*[anc[p] | {p} for p in preds[i]]) if preds[i] else set()
    desc: dict[int, set[int]] = {}
    for i in reversed(window):
        desc[i] = set().union(*[desc[c] | {c} for c in succs[i]]) if succs[i] else set()
    return {i: (s + len(anc[i]), e - 1 - len(desc[i])) for i in window}


def solve_window(problem: Problem, order: list[int], s: int, e: int, state: State, time_limit_s: float,
                 reorder: bool = True, hint: tuple[list[int], list[dict[str, int]]] | None = None,
                 ever_loaded: set[str] | None = None, progress: bool = False) -> WindowResult:
    """Solve steps ``[s, e)`` of ``order`` starting from ``state``; see the module docstring for the model."""
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    al = problem.alignment
    units = problem.usable // al
    window = order[s:e]
    rng = _ranges(problem, window, s, e, reorder)
    prod = problem.producers()
    inw = set(window)
    later = {b for i in order[e:] for b in problem.tasks[i].reads + problem.tasks[i].writes}
    kinds = {n: b.kind for n, b in problem.buffers.items()}
    ever_loaded = ever_loaded or set()

    m = cp_model.CpModel()
    x = {(i, k): m.NewBoolVar(f"x{i}_{k}") for i in window for k in range(rng[i][0], rng[i][1] + 1)}
    for i in window:
        m.AddExactlyOne(x[i, k] for k in range(rng[i][0], rng[i][1] + 1))
    for k in range(s, e):
        m.AddExactlyOne(x[i, k] for i in window if (i, k) in x)
    pos = {i: sum(k * x[i, k] for k in range(rng[i][0], rng[i][1] + 1)) for i in window}
    for i in window:
        for b in problem.tasks[i].reads:
            if prod.get(b) in inw:
                m.Add(pos[prod[b]] + 1 <= pos[i])

    # Step range in which each buffer may be resident.
    span: dict[str, tuple[int, int]] = {}
    for i in window:
        t = problem.tasks[i]
        for b in t.reads + t.writes:
            # No prefetching (loading before the first use never saves traffic): a buffer that is not produced
            # in the window and not resident at its start becomes resident no earlier than its first user's step.
            if prod.get(b) in inw:
                lo = rng[prod[b]][0]
            else:
                lo = s if b in state.resident else rng[i][0]
            hi = e - 1 if b in later else rng[i][1]
            old = span.get(b, (lo, hi))
            span[b] = (min(old[0], lo), max(old[1], hi))
    for b in state.resident:
        if b in later and b not in span:
            span[b] = (s, e - 1)

    r: dict[tuple[str, int], cp_model.IntVar] = {}
    addr: dict[tuple[str, int], cp_model.IntVar] = {}
    cap: dict[int, list] = {k: [] for k in range(s, e)}  # (residency literal, placed units) per step
    ivs: dict[int, list] = {k: [] for k in range(s, e)}  # optional address intervals per step
    cost = []
    constant = 0
    for b, (lo, hi) in span.items():
        size, placed = problem.buffers[b].size, problem.placed(b) // al
        for k in range(lo, hi + 1):
            r[b, k] = m.NewBoolVar(f"r{b}_{k}")
            addr[b, k] = m.NewIntVar(0, units - placed, f"L{b}_{k}")
            cap[k].append(placed * r[b, k])
            ivs[k].append(m.NewOptionalFixedSizeIntervalVar(addr[b, k], placed, r[b, k], f"I{b}_{k}"))
        p = prod.get(b)
        need_sp = kinds[b] == "activation" and b not in state.stored
        sp = m.NewBoolVar(f"sp{b}") if need_sp else None
        if sp is not None:
            cost.append(size * sp)
        if kinds[b] in ("input", "weight") and b not in ever_loaded:
            constant += size
        lds = []
        for k in range(lo, hi + 1):
            if p in inw:  # not resident before its producer ran
                m.Add(r[b, k] <= sum(x[p, q] for q in range(rng[p][0], min(k, rng[p][1]) + 1)))
            prev = r.get((b, k - 1), 0)
            if k == s and b in state.resident:
                # Resident when the window starts: it stays at its address, or is dropped and reloaded elsewhere
                # (a relocation costing a reload), since the fixed starting addresses may fragment the scratchpad.
                prev = m.NewBoolVar(f"stay{b}")
                m.AddImplication(prev, r[b, k])
                m.Add(addr[b, k] == state.resident[b] // al).OnlyEnforceIf(prev)
            created = x.get((p, k), 0) if p in inw else 0
            ld = m.NewBoolVar(f"ld{b}_{k}")
            lds.append(ld)
            m.Add(ld >= r[b, k] - prev - created)
            cost.append(size * ld)
            if kinds[b] == "activation":
                if sp is not None:
                    m.AddImplication(ld, sp)
                elif b not in state.stored:
                    m.Add(ld == 0)
            if k > lo:
                m.Add(addr[b, k] == addr[b, k - 1]).OnlyEnforceIf([r[b, k], r[b, k - 1]])
        if kinds[b] in ("input", "weight") and b not in state.resident:
            m.Add(sum(lds) >= 1)  # loaded at least once: makes the compulsory part visible to the LP bound
        if sp is not None and b in later:  # leaving the window non-resident requires a DRAM copy
            m.AddImplication(r[b, hi].Not(), sp)
    for i in window:
        t = problem.tasks[i]
        for k in range(rng[i][0], rng[i][1] + 1):
            for b in dict.fromkeys(t.reads + t.writes):
                m.AddImplication(x[i, k], r[b, k])
    for k in range(s, e):
        m.Add(sum(cap[k]) <= units)
        m.AddNoOverlap(ivs[k])
    m.Minimize(sum(cost))

    if hint is not None:
        h_order, h_plans = hint
        for j, i in enumerate(h_order):
            for k in range(rng[i][0], rng[i][1] + 1):
                m.AddHint(x[i, k], k == s + j)
        for j, plan in enumerate(h_plans):
            for b in span:
                if (b, s + j) in r:
                    m.AddHint(r[b, s + j], b in plan)
                    if b in plan:
                        m.AddHint(addr[b, s + j], plan[b] // al)

    solver = cp_model.CpSolver()
    # The limit is wall time for the whole call: building the model counts against it.
    solver.parameters.max_time_in_seconds = max(0.05, float(time_limit_s) - (time.perf_counter() - t0))
    solver.parameters.num_workers = 4
    solver.parameters.log_search_progress = progress
    solver.parameters.linearization_level = 2
    status = solver.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise ScratchpadError(f"the scratchpad ILP found no schedule for steps [{s}, {e}) in {time_limit_s} s "
                              f"(solver status {solver.StatusName(status)})")
    new_order = [next(i for i in window if (i, k) in x and solver.BooleanValue(x[i, k])) for k in range(s, e)]
    plans = [{b: solver.Value(addr[b, k]) * al for b in span if (b, k) in r and solver.BooleanValue(r[b, k])}
             for k in range(s, e)]
    return WindowResult(new_order, plans, int(round(solver.ObjectiveValue())), solver.BestObjectiveBound(),
                        constant, "optimal" if status == cp_model.OPTIMAL else "feasible",
                        time.perf_counter() - t0)


def hint_from(schedule: Schedule) -> tuple[list[int], list[dict[str, int]]]:
    """Task order and per-step residency (buffer -> address at each run) of an existing schedule."""
    index = {t.name: i for i, t in enumerate(schedule.problem.tasks)}
    resident: dict[str, int] = {}
    order, plans = [], []
    for ev in schedule.events:
        if ev.kind in ("load", "alloc"):
            resident[ev.name] = ev.addr
        elif ev.kind == "free":
            resident.pop(ev.name, None)
        elif ev.kind == "run":
            order.append(index[ev.name])
            plans.append(dict(resident))
    return order, plans


def gap_of(found: float, bound: float, constant: float) -> float:
    """Relative gap of the non-compulsory part: (found - bound) / (found - constant), 0 when nothing to gain."""
    nc = found - constant
    return 0.0 if nc <= 0 else min(1.0, max(0.0, (found - max(bound, constant)) / nc))


def schedule_ilp(problem: Problem, time_limit_s: float = 10.0, progress: bool = False,
                 reorder: bool = True) -> Schedule:
    """Solve the whole problem with CP-SAT, never worse than the Belady baseline.

    Two phases: the fixed-order model (COSMA-FS, fast; hinted with Belady), then, with ``reorder`` and time left,
    the model that also reorders tasks, hinted with the phase-one solution. The status and gap describe the
    broadest model that ran: "optimal" only when it was proven optimal within ``time_limit_s``."""
    from qcc.backends.accel.schedule_baselines import schedule_baseline

    t0 = time.perf_counter()
    base = schedule_baseline(problem, "belady")
    n = len(problem.tasks)
    order = list(range(n))
    try:
        res = solve_window(problem, order, 0, n, State(), time_limit_s, reorder=False, hint=hint_from(base),
                           progress=progress)
    except ScratchpadError as err:  # nothing found in time (a huge model on a slow machine): keep the baseline
        return Schedule(problem, base.events, "ilp", "heuristic", float("nan"), time.perf_counter() - t0,
                        info={"fallback": "belady", "why": str(err)})
    phases = {"fixed_order": res.status}
    left = time_limit_s - (time.perf_counter() - t0)
    if reorder and res.objective > res.constant and left > 0.1:
        # Only reordering can still lower the traffic; its proven bound also replaces the fixed-order one.
        res2 = solve_window(problem, order, 0, n, State(), left, reorder=True, hint=(res.order, res.plans),
                            progress=progress)
        phases["reorder"] = res2.status
        if res2.objective > res.objective:  # time ran out before the hint was even restored
            res2.order, res2.plans, res2.objective = res.order, res.plans, res.objective
        res = res2
        if res.bound >= res.objective:  # the bound meets the solution although the search was cut short
            res.status = "optimal"
    elif reorder and res.objective > res.constant:
        res.status = "feasible"  # proven only for the fixed order; reordering was not tried
        res.bound = res.constant
    events, _ = plan_events(problem, res.order, res.plans)
    sched = Schedule(problem, events, "ilp", res.status, gap_of(res.objective, res.bound, res.constant),
                     time.perf_counter() - t0, info={"objective": res.objective, "bound": res.bound,
                                                     "phases": phases})
    if sched.traffic()["noncompulsory"] > base.traffic()["noncompulsory"]:
        # Only possible when the time limit stopped the solver before it reached the hinted solution.
        sched.events, sched.info["fallback"] = base.events, "belady"
    return sched
