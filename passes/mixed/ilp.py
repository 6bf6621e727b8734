"""The bit-allocation integer program (HAWQV3 §2.5 of quantization.md), solved with OR-Tools CP-SAT.

One-hot choice per layer: x[i,b] ∈ {0,1}, Σ_b x[i,b] = 1. Budgets, any subset of
    Σ size[i,b]·x[i,b] ≤ size_bytes,   Σ bops[i,b]·x[i,b] ≤ bops,   Σ latency[i,b]·x[i,b] ≤ latency_ms;
tie groups (layers that must share a width) get one shared choice, so ties hold in every solution by construction;
pinned layers (first and last by default) are fixed. Objective: minimise Σ sensitivity[i,b]·x[i,b].

CP-SAT works on integers: sizes and BOPs are integers already, latencies are rounded *up* to nanoseconds (so a
solution within the integer budget is within the real one) and sensitivities are scaled to about 1e9 in total.
OR-Tools is imported here only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qcc.errors import InfeasibleBudgetError, OptionError, PassError

RESOURCES = ("size_bytes", "bops", "latency_ms")
_LATENCY_SCALE = 1e6  # ms → ns
_OBJECTIVE_RANGE = 1e9


@dataclass
class Allocation:
    """The ILP's answer: bits per layer, predicted total sensitivity, solver status and time, budgets and use."""

    bits: dict[str, int]
    objective: float
    status: str
    solve_time_s: float
    budgets: dict[str, float]
    used: dict[str, float]
    groups: list[tuple[str, ...]] = field(default_factory=list)
    pinned: dict[str, int] = field(default_factory=dict)


def tie_groups(names: Sequence[str], ties: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Union-find over `ties`: the groups of layers that share one choice, in first-layer order."""
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for tie in ties:
        unknown = [n for n in tie if n not in parent]
        if unknown:
            raise OptionError(f"tie constraint names unknown layer(s) {unknown}")
        for other in tie[1:]:
            a, b = find(tie[0]), find(other)
            if a != b:
                parent[max(a, b, key=names.index)] = min(a, b, key=names.index)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return [tuple(g) for g in groups.values()]


def _group_choices(names: Sequence[str], candidates: Sequence[int], groups: list[tuple[str, ...]],
                   pins: Mapping[str, int]) -> list[tuple[int, ...]]:
    allowed = []
    for g in groups:
        fixed = {pins[n] for n in g if n in pins}
        if any(b not in candidates for b in fixed):
            raise OptionError(f"pinned bits {sorted(fixed)} of {list(g)} are not candidates {list(candidates)}")
        if len(fixed) > 1:
            raise OptionError(f"tied layers {list(g)} are pinned to different bits {sorted(fixed)}")
        allowed.append(tuple(fixed) if fixed else tuple(candidates))
    return allowed


def minimum_achievable(names: Sequence[str], candidates: Sequence[int],
                       costs: Mapping[str, Sequence[Mapping[int, float]]], ties: Sequence[Sequence[str]] = (),
                       pins: Mapping[str, int] | None = None) -> dict[str, float]:
    """The smallest value each resource can take on its own under the ties and pins (groups are independent)."""
    groups = tie_groups(names, ties)
    allowed = _group_choices(names, candidates, groups, pins or {})
    index = {n: i for i, n in enumerate(names)}
    return {r: math.fsum(min(math.fsum(table[index[n]][b] for n in g) for b in bits)
                         for g, bits in zip(groups, allowed, strict=True))
            for r, table in costs.items()}


def solve(names: Sequence[str], candidates: Sequence[int], sensitivity: Sequence[Mapping[int, float]],
          costs: Mapping[str, Sequence[Mapping[int, float]]], budgets: Mapping[str, float],
          ties: Sequence[Sequence[str]] = (), pins: Mapping[str, int] | None = None, time_limit_s: float = 10.0,
          workers: int = 2) -> Allocation:
    """Choose one width per layer minimising total sensitivity within `budgets` (keys from RESOURCES).

    `costs[resource][i][b]` is layer i's cost at b bits; only resources named in `budgets` constrain. Raises
    InfeasibleBudgetError (with the smallest achievable value of every budget given) when no choice fits.
    """
    from ortools.sat.python import cp_model

    names = list(names)
    if len(set(names)) != len(names):
        raise OptionError("layer names must be unique for bit allocation")
    unknown = sorted(set(budgets) - set(RESOURCES))
    if unknown or any(r not in costs for r in budgets):
        raise OptionError(f"budgets must be among {list(RESOURCES)} with costs given, got {sorted(budgets)}")
    pins = dict(pins or {})
    groups = tie_groups(names, ties)
    allowed = _group_choices(names, candidates, groups, pins)
    index = {n: i for i, n in enumerate(names)}
    minimum = minimum_achievable(names, candidates, {r: costs[r] for r in budgets}, ties, pins)
    _raise_if_below(budgets, minimum, jointly=False)

    model = cp_model.CpModel()
    x = [{b: model.new_bool_var(f"x{gi}_{b}") for b in bits} for gi, bits in enumerate(allowed)]
    for row in x:
        model.add_exactly_one(row.values())
    for r, limit in budgets.items():
        scale = _LATENCY_SCALE if r == "latency_ms" else 1.0
        terms = [(math.ceil(scale * math.fsum(costs[r][index[n]][b] for n in g) - 1e-9), var)
                 for g, row in zip(groups, x, strict=True) for b, var in row.items()]
        model.add(sum(c * v for c, v in terms) <= math.floor(scale * limit + 1e-9))
    group_sens = [{b: math.fsum(sensitivity[index[n]][b] for n in g) for b in bits}
                  for g, bits in zip(groups, allowed, strict=True)]
    top = math.fsum(max(s.values()) for s in group_sens)
    k = _OBJECTIVE_RANGE / top if top > 0 else 1.0
    model.minimize(sum(round(k * s[b]) * row[b] for s, row in zip(group_sens, x, strict=True) for b in row))

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = max(1, int(workers))
    t0 = time.perf_counter()
    status = solver.solve(model)
    elapsed = time.perf_counter() - t0
    if status == cp_model.INFEASIBLE:
        _raise_if_below(budgets, minimum, jointly=True)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PassError(f"bit allocation: the solver found no solution within {time_limit_s} s "
                        f"(status {solver.status_name(status)})")
    bits: dict[str, int] = {}
    for g, row in zip(groups, x, strict=True):
        chosen = next(b for b, var in row.items() if solver.boolean_value(var))
        bits.update(dict.fromkeys(g, chosen))
    objective = math.fsum(sensitivity[index[n]][bits[n]] for n in names)
    used = {r: math.fsum(costs[r][index[n]][bits[n]] for n in names) for r in costs}
    return Allocation(bits, objective, solver.status_name(status), elapsed, dict(budgets), used,
                      [g for g in groups if len(g) > 1], pins)


def _fmt(resource: str, value: float) -> str:
    if resource == "size_bytes":
        return f"size {value / 1e6:.6g} MB ({value:.0f} bytes)"
    if resource == "bops":
        return f"BOPs {value:.6g}"
    return f"latency {value:.6g} ms"


def _raise_if_below(budgets: Mapping[str, float], minimum: Mapping[str, float], jointly: bool) -> None:
    below = [r for r, limit in budgets.items() if limit < minimum[r] * (1 - 1e-12)]
    if not below and not jointly:
        return
    parts = [f"{_fmt(r, budgets[r])} < smallest achievable {_fmt(r, minimum[r])}" if r in below
             else f"{_fmt(r, budgets[r])} (smallest achievable alone: {_fmt(r, minimum[r])})" for r in budgets]
    head = ("the budgets cannot be met" if below else
            "the budgets cannot be met together (each is achievable alone)")
    raise InfeasibleBudgetError(f"{head}: " + "; ".join(parts) + " — with the pinned first/last layers and tied "
                                "layers; loosen a budget or allow lower bit widths", dict(minimum))
