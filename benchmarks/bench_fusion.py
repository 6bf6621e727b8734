"""Fusion benchmark: qcc cpu-fp32 with the fuse pass (fusion="auto") vs one kernel per op (fusion="off") vs TVM's
own FuseOps on the same lowering ("tvm"), end to end on zoo models.

Each model is compiled once per mode from the same ``nn.Module``; outputs are checked against PyTorch, then the
three libraries are timed round-robin (one call each per round, rotating who goes first) so load changes on the
shared machine hit all of them alike. The table gives kernel launches per run (counted in the built Relax module),
median latency and the ratio to "off".

    python benchmarks/bench_fusion.py --models bert,bert_tiny --repeats 30 --write
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - the benchmarks folder is not a package
    REPO,
    Contender,
    add_repo_to_path,
    append_results,
    machine_info,
    markdown_table,
    max_abs_diff,
    run_interleaved,
    setup_threads,
)

MODES = ("off", "tvm", "auto")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bert,bert_tiny", help="comma-separated: bert, bert_tiny, resnet18, mobilenet")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (one call per mode per round)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def model_and_inputs(name: str) -> tuple[object, tuple[object, ...]]:
    add_repo_to_path()
    from tests import zoo

    if name == "bert":
        return zoo.bert_encoder(), zoo.bert_inputs(128)
    if name == "bert_tiny":
        return zoo.bert_tiny(), zoo.bert_inputs(16, vocab=100)
    if name == "resnet18":
        return zoo.resnet18(), zoo.image_input(224)
    if name == "mobilenet":
        return zoo.mobilenet(), zoo.image_input(224)
    raise SystemExit(f"unknown model {name!r}")


def contenders(name: str, threads: int) -> tuple[list[Contender], dict[str, int | None], np.ndarray]:
    import torch

    import qcc
    from qcc.backends.tvm import build as tvm_build

    model, inputs = model_and_inputs(name)
    with torch.no_grad():
        ref = model(*inputs).numpy()  # type: ignore[operator]
    arrays = [t.numpy() for t in inputs]  # type: ignore[attr-defined]
    out, launches = [], {}
    auto_graph = None
    for mode in MODES:
        c = Contender(mode)
        t0 = time.perf_counter()
        try:
            if mode == "tvm":  # the same optimized graph, fusion left to TVM's FuseOps
                exe = tvm_build(auto_graph, qcc.Target("cpu-fp32", num_threads=threads), fusion="tvm")
                c.fn = lambda exe=exe: exe.run(arrays)[0]
            else:
                lib = qcc.compile(model, "cpu-fp32", inputs, fusion=mode, num_threads=threads, quiet=True)
                exe = lib._exe
                auto_graph = lib.graph if mode == "off" else auto_graph
                c.fn = lambda lib=lib: lib(*arrays)
            launches[mode] = getattr(exe, "launches", None)
        except Exception as e:  # keep the other modes
            c.error = f"build failed: {type(e).__name__}: {str(e)[:160]}"
            launches[mode] = None
        c.build_s = time.perf_counter() - t0
        out.append(c)
    return out, launches, ref


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        cs, launches, ref = contenders(name, args.threads)
        run_interleaved(cs, args.repeats, single_budget_s=10.0, total_budget_s=120.0)
        base = next((c for c in cs if c.name == "off" and c.times), None)
        base_ms = float(np.median(base.times)) * 1e3 if base else float("nan")
        for c in cs:
            if not c.times:
                rows.append([name, c.name, launches.get(c.name), "—", "—", f"{c.build_s:.1f}", c.error])
                continue
            ms = float(np.median(c.times)) * 1e3
            rows.append([name, c.name, launches.get(c.name), f"{ms:.3f}", f"{ms / base_ms:.2f}", f"{c.build_s:.1f}",
                         f"{max_abs_diff(c.output, ref):.1e}"])
        print(markdown_table(["model", "fusion", "launches", "median ms", "vs off", "build s", "max |Δ| vs torch"],
                             rows[-len(cs):]), flush=True)
    table = markdown_table(["model", "fusion", "launches", "median ms", "vs off", "build s", "max |Δ| vs torch"], rows)
    import torch
    import tvm

    info = machine_info(args.threads, {"torch": torch.__version__, "tvm": tvm.__version__})
    note = ("`off`: one kernel per op (templates without epilogues); `tvm`: the same lowering with TVM's FuseOps; "
            "`auto`: qcc's fuse pass (anchor+epilogue, injective chains, reductions with their producers). "
            f"Launches = kernel calls per run in the built module; {args.repeats} interleaved rounds, medians.")
    print(table)
    if args.write:
        cmd = "python benchmarks/bench_fusion.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        append_results(REPO / "benchmarks" / "RESULTS.md", "Fusion on vs off (cpu-fp32)", cmd, info,
                       note + "\n\n" + table)


if __name__ == "__main__":
    main()
