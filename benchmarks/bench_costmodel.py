"""End-to-end effect of the learned cost model: each zoo model compiled for cpu-fp32 twice, with the kernel
schedules the cost model picks (the shipped costmodel/default_cpu.lgb, or --cost-model) and with the rule-based
defaults (`cost_model="rule"`), then timed round-robin (one call of each per round, so load changes on the
shared machine hit both alike). No tuning database is used (QCC_TUNE_DB points to an empty temporary file).

    python benchmarks/bench_costmodel.py --models resnet18,mobilenet,bert --rounds 20 --threads 2

`--db m.sqlite` adds the held-out metrics of a measurement database (split into float template, integer and
attention kernels, each with its noise floor), `--collect-log` the collect's throughput line, `--write` appends
all of it to RESULTS.md. `--mixed digits|resnet_tiny` instead runs the bit-allocation experiment
(`mixed_experiment`): the ILP's latency term from the analytic roofline, from the cost model, and from measuring
every layer's integer kernel at each width; allocations under the same relative latency budgets compared (with
`--db`, also the held-out split; `--write` appends both).
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

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _layer_measure(layer, bits: int, threads: int) -> float:
    """Measured ms of the layer's integer kernel (the lowering the backend picks) at `bits`-bit weights."""
    from qcc.backends.tvm.measure import IntMeasurer, any_space

    if layer.op == "conv2d":
        kind, shapes = "qconv2d", [list(layer.x_shape), list(layer.w_shape)]
    else:
        w = layer.w_shape if layer.op == "linear" else layer.w_shape[::-1]
        kind, shapes = "qlinear", [list(layer.x_shape), list(w)]
    attrs = {**dict(layer.attrs), "w_bits": bits, "x_dtype": "u8"}
    _, _, cands = any_space(kind, shapes, attrs)
    import statistics

    return 1e3 * statistics.median(IntMeasurer(number=20, repeat=5, num_threads=threads)(kind, shapes, attrs,
                                                                                          cands[0]))


def mixed_experiment(name: str, cost_model: str | None, threads: int) -> str:
    """Allocate W4/W8 under latency budgets lo + f·(hi − lo) of each latency term (lo: every free layer at its
    faster width, hi: all 8-bit; pins and ties as compile uses them) and compare the allocations."""
    import dataclasses

    from qcc.backends.tvm.measure import preload

    preload()  # before torch (see preload)
    import torch

    from qcc.costmodel.model import load_model
    from qcc.errors import InfeasibleBudgetError
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext
    from qcc.passes.mixed import AllocationProblem, cost_table
    from qcc.passes.mixed.costs import latency_term
    from qcc.passes.quant import _prepare as prepare_float
    from tests import zoo

    if name == "digits":
        xtr = zoo.digits_data()[0]
        model, calib = zoo.digits_cnn().eval(), [xtr[i:i + 8] for i in range(0, 32, 8)]
    else:
        model, calib = zoo.resnet_tiny(), [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(i))
                                           for i in range(4)]
    graph = prepare_float(import_model(model, (calib[0],)), PassContext())
    base = AllocationProblem.build(graph, calib, (4, 8), cost_model="analytic")
    layers, bits = base.costs.layers, base.bits
    fn, source = latency_term("cpu", load_model(cost_model) if cost_model else None)
    measured = {(layer.name, b): _layer_measure(layer, b, threads) for layer in layers for b in bits}
    terms = {"analytic": base,
             "cost model": dataclasses.replace(base, costs=cost_table(layers, bits, fn, source)),
             "measured": dataclasses.replace(base, costs=cost_table(
                 layers, bits, lambda layer, b: measured[layer.name, b], "measured"))}
    rows, allocs = [], {}
    for tname, prob in terms.items():
        lat = prob.costs.latency
        free = [i for i, layer in enumerate(layers) if layer.name not in prob.pins]
        lo = sum(min(lat[i].values()) if i in free else lat[i][8] for i in range(len(layers)))
        hi = sum(lat[i][8] for i in range(len(layers)))
        for f in FRACTIONS:
            budget = lo + f * (hi - lo) + 1e-6
            try:
                a = prob.solve({"latency_ms": budget})
                allocs[tname, f] = a.bits
                true_ms = sum(measured[k, b] for k, b in a.bits.items())
                rows.append((tname, f, f"{budget:.4f}", sum(b == 4 for b in a.bits.values()),
                             f"{a.predicted_sqnr_db:.1f}", f"{true_ms:.4f}"))
            except InfeasibleBudgetError:
                allocs[tname, f] = None
                rows.append((tname, f, f"{budget:.4f}", "infeasible", "", ""))
    from common import markdown_table

    table = markdown_table(["latency term", "budget fraction f", "budget ms (that term's)", "layers at W4",
                            "predicted SQNR dB", "measured ms of the allocation (Σ layers)"], rows)
    diff = {t: sum(allocs[t, f] != allocs["analytic", f] for f in FRACTIONS) for t in ("cost model", "measured")}
    per_layer = markdown_table(["layer", "op", "analytic ms W4 / W8", "cost model ms W4 / W8", "measured ms W4 / W8"],
                               [(layer.name[:24], layer.op,
                                 *(f"{terms[t].costs.latency[i][4]:.4f} / {terms[t].costs.latency[i][8]:.4f}"
                                   for t in terms)) for i, layer in enumerate(layers)])
    return (f"Model {name}: {len(layers)} weighted layers, pins {sorted(base.pins)}, {len(base.ties)} tie groups; "
            f"cost-model term: {source}.\n\n{per_layer}\n\n{table}\n\nAllocations that differ from the analytic "
            f"term's at the same budget fraction: cost model {diff['cost model']}/{len(FRACTIONS)}, measured "
            f"{diff['measured']}/{len(FRACTIONS)}.")


def heldout_split(db: str) -> str:
    """Leave-one-model-out metrics of the measurements in `db`, pooled, and split by float vs integer kernels."""
    from qcc.costmodel.database import MeasurementDB
    from qcc.costmodel.evaluate import cross_validate, format_report

    with MeasurementDB(db) as d:
        rows, counts = d.rows(), d.counts()
    report, _ = cross_validate(rows)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    out = f"{db}: {counts}; successful measurements per kind {kinds}\n\n```\n{format_report(report)}\n```"
    if kinds.get("attention"):
        from qcc.costmodel.evaluate import kfold_kernels, pct_of

        a = kfold_kernels(rows, ("attention",))
        out += (f"\n\nAttention tiles, 4-fold over attention kernels (zoo + random shapes; each fold trains on "
                f"everything but its kernels): n={a['measurements']} kernels={int(a.get('kernels', 0))} Spearman "
                f"{a['spearman']:.3f} MAPE {pct_of(a, 'mape')} top-1 {pct_of(a, 'top1')} top-5 {pct_of(a, 'top5')} "
                f"pick slowdown {pct_of(a, 'slowdown')} (rule {pct_of(a, 'rule_slowdown')}, noise floor "
                f"{pct_of(a, 'noise_slowdown')}).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet,bert")
    ap.add_argument("--tiny", action="store_true", help="test-size models")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cost-model", default=None, help="model file (default: the shipped one)")
    ap.add_argument("--mixed", choices=("digits", "resnet_tiny"), help="run the bit-allocation experiment instead")
    ap.add_argument("--db", help="the held-out metrics (float / int / attention) of this measurement database")
    ap.add_argument("--write", action="store_true", help="append the results to RESULTS.md")
    ap.add_argument("--note", help="a line for RESULTS.md (how the measurements were taken, the load)")
    ap.add_argument("--collect-log", help="`qcc costmodel collect` logs (comma separated) whose summary lines "
                    "(throughput) to report")
    args = ap.parse_args()
    setup_threads(args.threads)
    os.environ["QCC_TUNE_DB"] = os.path.join(tempfile.mkdtemp(), "none.json")
    add_repo_to_path()
    if args.mixed:
        from common import REPO, append_results, machine_info

        body = ""
        if args.db:
            body += "**Held-out (leave-one-model-out) metrics, float vs integer kernels**\n\n" + heldout_split(
                args.db) + "\n\n"
        body += "**Bit allocation: latency term from the cost model vs the analytic roofline**\n\n" + \
            mixed_experiment(args.mixed, args.cost_model, args.threads)
        print(body)
        if args.write:
            import lightgbm
            import tvm

            append_results(REPO / "benchmarks" / "RESULTS.md", "Cost model: integer kernels and the bit-allocation "
                           "latency term", "python " + " ".join(sys.argv), machine_info(args.threads, {
                               "lightgbm": lightgbm.__version__, "tvm": tvm.__version__}), body)
        return 0
    body = ""
    if args.db:
        body += "**Held-out (leave-one-model-out) metrics: float template / integer / attention kernels**\n\n" + \
            heldout_split(args.db) + "\n\n"
    for path in (args.collect_log or "").split(","):
        if path:
            with open(path, errors="replace") as f:
                last = [ln for ln in f.read().replace("\r", "\n").splitlines() if ln.startswith("measured ")]
            body += f"**Collect** (`{path}`): {last[-1] if last else 'no summary line'}\n\n"
    if args.note:
        body += f"{args.note}\n\n"
    body += "**End to end: cost-model-chosen schedules, fusion checks and attention tiles vs the backend's rules**" \
        "\n\n" + end_to_end(args)
    print(body)
    if args.write:
        import lightgbm
        import tvm
        from common import REPO, append_results, machine_info

        append_results(REPO / "benchmarks" / "RESULTS.md", "Cost model: retrained with interleaved measurements "
                       "(held-out metrics, noise floor, end to end)", "python " + " ".join(sys.argv),
                       machine_info(args.threads, {"lightgbm": lightgbm.__version__, "tvm": tvm.__version__}), body)
    return 0


def end_to_end(args: argparse.Namespace) -> str:
    """Each zoo model compiled for cpu-fp32 with the rules (`cost_model="rule"`) and with the cost model, timed
    round-robin; a markdown table."""
    import numpy as np

    import qcc
    from tests import zoo

    table = zoo.TINY_ZOO if args.tiny else zoo.ZOO
    lines = ["| model | rule defaults ms | cost-model picks ms | ratio | max abs diff | compile s (rule / model) |",
             "|---|---|---|---|---|---|"]
    ratios = []
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
        ratios.append(mod / rule)
        lines.append(f"| {name} | {rule:.2f} | {mod:.2f} | {mod / rule:.3f} | {diff:.1e} | "
                     f"{build_s['rule']:.0f} / {build_s['model']:.0f} |")
        print(lines[-1], flush=True)
    geo = float(np.exp(np.mean(np.log(ratios))))
    return "\n".join(lines) + f"\n\nGeometric mean cost-model / rule latency: {geo:.3f} ({args.rounds} " \
        "interleaved rounds, medians)."


if __name__ == "__main__":
    sys.exit(main())
