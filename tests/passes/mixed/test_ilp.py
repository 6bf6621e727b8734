"""The bit-allocation ILP against brute force on small synthetic problems; ties, pins, infeasible budgets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

pytest.importorskip("ortools")

from qcc.budget import Budget  # noqa: E402
from qcc.errors import InfeasibleBudgetError, OptionError  # noqa: E402
from qcc.passes.mixed.ilp import minimum_achievable, solve, tie_groups  # noqa: E402

BITS = (4, 8)


def _problem(n: int, seed: int):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(n)]
    params = rng.integers(100, 5000, n)
    macs = params * rng.integers(10, 200, n)
    sens = [{4: float(rng.uniform(1e-3, 1e-1)), 8: float(rng.uniform(1e-6, 1e-4))} for _ in range(n)]
    costs = {"size_bytes": [{b: float(p * b // 8) for b in BITS} for p in params],
             "bops": [{b: float(m * b * 8) for b in BITS} for m in macs],
             "latency_ms": [{b: float(m * b / 8e7 + 0.01) for b in BITS} for m in macs]}
    return names, sens, costs


def _brute(names, sens, costs, budgets, ties=(), pins=None):
    groups = tie_groups(names, ties)
    idx = {n: i for i, n in enumerate(names)}
    best = (math.inf, None)
    for combo in itertools.product(BITS, repeat=len(groups)):
        bits = {n: b for g, b in zip(groups, combo, strict=True) for n in g}
        if any(bits[n] != b for n, b in (pins or {}).items()):
            continue
        if any(math.fsum(costs[r][idx[n]][bits[n]] for n in names) > lim for r, lim in budgets.items()):
            continue
        obj = math.fsum(sens[idx[n]][bits[n]] for n in names)
        best = min(best, (obj, bits), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("seed", range(6))
def test_ilp_is_optimal_against_brute_force(seed):
    names, sens, costs = _problem(12, seed)
    rng = np.random.default_rng(100 + seed)
    lo = {r: sum(c[4] for c in t) for r, t in costs.items()}
    hi = {r: sum(c[8] for c in t) for r, t in costs.items()}
    budgets = {r: lo[r] + float(rng.uniform(0.2, 0.8)) * (hi[r] - lo[r]) for r in ("size_bytes", "latency_ms")}
    ties = [("l2", "l5"), ("l7", "l8", "l9")] if seed % 2 else []
    pins = {"l0": 8, "l11": 8} if seed % 3 == 0 else {}
    expected, _ = _brute(names, sens, costs, budgets, ties, pins)
    try:
        got = solve(names, BITS, sens, costs, budgets, ties, pins)
    except InfeasibleBudgetError:
        assert expected == math.inf
        return
    assert got.status == "OPTIMAL"
    assert got.objective == pytest.approx(expected, rel=1e-6)
    for r, lim in budgets.items():
        assert got.used[r] <= lim
    assert got.solve_time_s < 5.0


def test_ties_and_pins_hold_in_every_solution():
    names, sens, costs = _problem(10, 7)
    ties = [("l1", "l3"), ("l3", "l6"), ("l8", "l9")]
    lo, hi = (sum(c[b] for c in costs["size_bytes"]) for b in BITS)
    seen = set()
    for r in np.linspace(0.35, 1.0, 12):
        a = solve(names, BITS, sens, costs, {"size_bytes": lo + r * (hi - lo)}, ties, {"l0": 8})
        assert a.bits["l1"] == a.bits["l3"] == a.bits["l6"]
        assert a.bits["l8"] == a.bits["l9"]
        assert a.bits["l0"] == 8
        assert ("l1", "l3", "l6") in a.groups
        seen.add(tuple(a.bits.values()))
    assert len(seen) > 2  # the sweep really moved the choice


def test_infeasible_budget_states_the_minimum():
    names, sens, costs = _problem(8, 3)
    pins = {"l0": 8, "l7": 8}
    minimum = minimum_achievable(names, BITS, {"size_bytes": costs["size_bytes"]}, (), pins)["size_bytes"]
    expected = sum(costs["size_bytes"][i][8 if i in (0, 7) else 4] for i in range(8))
    assert minimum == pytest.approx(expected)
    with pytest.raises(InfeasibleBudgetError) as e:
        solve(names, BITS, sens, costs, {"size_bytes": minimum - 1, "latency_ms": 1e9}, (), pins)
    assert e.value.minimum["size_bytes"] == pytest.approx(minimum)
    assert f"{minimum:.0f} bytes" in str(e.value) and "latency" in str(e.value)
    solve(names, BITS, sens, costs, {"size_bytes": minimum}, (), pins)  # exactly the minimum fits


def test_jointly_infeasible_budgets():
    names = ["a", "b"]
    sens = [{4: 1.0, 8: 0.0}, {4: 1.0, 8: 0.0}]
    # a is small but slow at 4 bits, b the other way round: each budget alone is fine, not both together
    costs = {"size_bytes": [{4: 10.0, 8: 20.0}, {4: 10.0, 8: 20.0}],
             "latency_ms": [{4: 5.0, 8: 1.0}, {4: 5.0, 8: 1.0}]}
    with pytest.raises(InfeasibleBudgetError, match="together"):
        solve(names, BITS, sens, costs, {"size_bytes": 20.0, "latency_ms": 2.0})


def test_bad_inputs():
    names, sens, costs = _problem(3, 0)
    with pytest.raises(OptionError):
        solve(names, BITS, sens, costs, {"watts": 1.0})
    with pytest.raises(OptionError):
        solve(names, BITS, sens, costs, {"size_bytes": 1e9}, [("l0", "nope")])
    with pytest.raises(OptionError):
        solve(names, BITS, sens, costs, {"size_bytes": 1e9}, [("l0", "l1")], {"l0": 8, "l1": 4})


def test_budget_dataclass():
    assert Budget.parse("size_mb=0.05, latency_ms=2") == Budget(size_mb=0.05, latency_ms=2.0)
    for bad in ("size_mb", "watts=3", "size_mb=abc"):
        with pytest.raises(OptionError):
            Budget.parse(bad)
    with pytest.raises(OptionError):
        Budget()
    with pytest.raises(OptionError):
        Budget(size_mb=-1)
