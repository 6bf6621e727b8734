"""Solve time of the mixed-precision bit-allocation ILP (OR-Tools CP-SAT) on a synthetic 100-layer model under a
size and a latency budget at once (issue 6: goal < 2 s).

    python benchmarks/bench_ilp.py [--layers 100] [--repeat 5] [--write]

Layers get ResNet-like parameter counts and MACs, random sensitivities (Ω at 4 bits ≫ Ω at 8 bits), residual-style
tie pairs every 4 layers, the first and last layer pinned to 8 bits; budgets at r = 0.25 / 0.5 / 0.75 of the way
from uniform W4 to uniform W8 (HAWQV3's interpolation). `--write` appends a dated section to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def synthetic(n: int, seed: int = 0):
    from qcc.passes.mixed.costs import MixedLayer, analytic_latency, cost_table

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n):
        cin, cout, k, hw = int(rng.choice([64, 128, 256, 512])), int(rng.choice([64, 128, 256, 512])), 3, 14
        n_w = cin * cout * k * k
        layers.append(MixedLayer(f"conv{i}", "conv2d", i, f"w{i}", n_w, cout, n_w * hw * hw, 4 * n_w))
    costs = cost_table(layers, (4, 8), analytic_latency("cpu"))
    sens = [{4: float(rng.lognormal(-4, 1)), 8: float(rng.lognormal(-9, 1))} for _ in range(n)]
    ties = [(f"conv{i}", f"conv{i + 2}") for i in range(1, n - 2, 4)]
    pins = {"conv0": 8, f"conv{n - 1}": 8}
    return layers, costs, sens, ties, pins


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    import ortools

    from qcc.passes.mixed.ilp import solve

    layers, costs, sens, ties, pins = synthetic(args.layers)
    names = [layer.name for layer in layers]
    lo, hi = costs.uniform(4), costs.uniform(8)
    table = {"size_bytes": costs.size, "bops": costs.bops, "latency_ms": costs.latency}
    rows = []
    for r in (0.25, 0.5, 0.75):
        budgets = {k: lo[k] + r * (hi[k] - lo[k]) for k in ("size_bytes", "latency_ms")}
        times, statuses = [], set()
        for _ in range(args.repeat):
            a = solve(names, (4, 8), sens, table, budgets, ties, pins)
            times.append(a.solve_time_s)
            statuses.add(a.status)
            assert all(a.used[k] <= v for k, v in budgets.items())
        n4 = sum(b == 4 for b in a.bits.values())
        rows.append(f"| {args.layers} | size + latency, r={r} | {statistics.median(times) * 1e3:.1f} | "
                    f"{max(times) * 1e3:.1f} | {'/'.join(sorted(statuses))} | {n4} of {args.layers} |")
    head = ["| layers | budgets | median solve ms | max ms | status | layers at W4 |", "|---|---|---|---|---|---|"]
    text = "\n".join(head + rows)
    print(text)
    if args.write:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_ilp.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(f"\n## Mixed-precision ILP solve time — {now}\n\n```\n{cmd.strip()}\n```\n\n"
                    f"- OR-Tools CP-SAT {ortools.__version__}, 2 workers; Python {platform.python_version()}; "
                    f"{args.repeat} solves per row; goal < 2 s\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
