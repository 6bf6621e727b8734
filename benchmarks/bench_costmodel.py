"""End-to-end effect of the learned cost model: each zoo model compiled for cpu-fp32 twice, with the kernel
schedules the cost model picks (the shipped costmodel/default_cpu.lgb, or --cost-model) and with the rule-based
defaults (`cost_model="rule"`), then timed round-robin (one call of each per round, so load changes on the
shared machine hit both alike). No tuning database is used (QCC_TUNE_DB points to an empty temporary file).

    python benchmarks/bench_costmodel.py --models resnet18,mobilenet,bert --rounds 20 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_repo_to_path, setup_threads  # noqa: E402 - the benchmarks folder is not a package


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet,bert")
    ap.add_argument("--tiny", action="store_true", help="test-size models")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cost-model", default=None, help="model file (default: the shipped one)")
    args = ap.parse_args()
    setup_threads(args.threads)
    os.environ["QCC_TUNE_DB"] = os.path.join(tempfile.mkdtemp(), "none.json")
    add_repo_to_path()
    import numpy as np

    import qcc
    from tests import zoo

    table = zoo.TINY_ZOO if args.tiny else zoo.ZOO
    print("| model | rule defaults ms | cost-model picks ms | ratio | max abs diff | compile s (rule / model) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        factory, inputs = table[name]
        model, x = factory(), inputs()
        libs, build_s = {}, {}
        for label, cm in (("rule", "rule"), ("model", args.cost_model)):
            t0 = time.perf_counter()
            libs[label] = qcc.compile(model, "cpu-fp32", x, num_threads=args.threads, cost_model=cm)
            build_s[label] = time.perf_counter() - t0
        arrays = [np.asarray(t.detach().numpy()) for t in x]
        outs = {k: lib(*arrays) for k, lib in libs.items()}
        diff = float(np.max(np.abs(np.asarray(outs["rule"]) - np.asarray(outs["model"]))))
        times: dict[str, list[float]] = {k: [] for k in libs}
        for _ in range(args.rounds):
            for k, lib in libs.items():
                t0 = time.perf_counter()
                lib(*arrays)
                times[k].append(time.perf_counter() - t0)
        rule, mod = statistics.median(times["rule"]) * 1e3, statistics.median(times["model"]) * 1e3
        print(f"| {name} | {rule:.2f} | {mod:.2f} | {mod / rule:.3f} | {diff:.1e} | "
              f"{build_s['rule']:.0f} / {build_s['model']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
