"""Scratchpad scheduling benchmark: non-compulsory DRAM traffic of the ILP vs LRU and Belady, and solve time.

Models: the ResNet-18-style and MobileNet-V2-style CNNs of tests/zoo.py, imported and quantized for cpu-int8 (two
random calibration batches, interpreter runner), giving the integer graphs the accelerator backend compiles.
Two problem families per model:

- ``pipeline``: the accelerator backend's own problem (`qcc.backends.accel.problem_builder.build_problem`) at
  several scratchpad sizes. Operations that do not fit are tiled there and their tensors live in DRAM, so only
  the untiled tensors (and 1-byte ordering tokens) are scheduling decisions.
- ``cosma``: the COSMA evaluation protocol (Li et al. 2023): every node of the integer graph is one atomic task,
  every value one buffer (reshapes alias their input), weights streamed (compulsory, not buffers: COSMA's
  activation setting). Budgets: M_R, the largest single-task footprint (the tightest that is feasible at all);
  1.1 and 1.25 M_R; and M_T, the peak of the topological order with no spills (COSMA's M_P is the minimum peak
  over all orders; M_T >= M_P, so M_T is the looser budget).

Every schedule is replayed by `check_schedule` (no overlap, within capacity). Reduction = 1 - ILP / baseline,
averaged over the rows where the baseline has non-compulsory traffic. The divide-and-conquer solver (windows of
at most 32 tasks, `schedule(..., "dc")`) runs on every problem too, to show what the windows cost.

    python benchmarks/bench_accel.py                        # both models, 224x224, 10 s per ILP
    python benchmarks/bench_accel.py --size 64 --write
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, add_repo_to_path, append_results, machine_info, markdown_table, setup_threads  # noqa: E402


def integer_graph(model: str, size: int):
    """The cpu-int8 integer graph of a zoo model at ``size`` x ``size`` input."""
    add_repo_to_path()
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext
    from qcc.pipeline import optimize
    from qcc.target import Target
    from tests import zoo

    net = getattr(zoo, model)()
    graph = import_model(net, zoo.image_input(size))
    rng = np.random.default_rng(0)
    cal = [rng.normal(0, 1, (1, 3, size, size)).astype(np.float32) for _ in range(2)]
    ctx = PassContext(options={"calibration": cal, "calibration_runner": "interpreter", "progress": False})
    return optimize(graph, Target("cpu-int8"), ctx)


ALIASES = ("reshape", "flatten", "squeeze", "unsqueeze")


def cosma_problem(graph, capacity: int = 1 << 40, alignment: int = 64):
    """One atomic task per node, one buffer per value, weights streamed (COSMA's activation setting)."""
    from qcc.backends.accel.problem import Buffer, Problem, Task
    from qcc.ir.types import numpy_dtype

    outputs, inputs = set(graph.outputs), set(graph.inputs)
    name_of: dict = {}
    buffers: dict = {}

    def buf(v) -> str:
        if v not in name_of:
            name = f"{v.name or 'v'}#{len(name_of)}"
            size = int(np.prod(v.type.shape, dtype=np.int64)) * np.dtype(numpy_dtype(v.type.dtype)).itemsize
            kind = "input" if v in inputs else "output" if v in outputs else "activation"
            name_of[v] = name
            buffers[name] = Buffer(name, max(size, 1), kind)
        return name_of[v]

    tasks = []
    for i, node in enumerate(graph.nodes):
        if node.op in ALIASES and node.outputs[0] not in outputs:
            name_of[node.outputs[0]] = buf(node.inputs[0])
            continue
        reads = tuple(dict.fromkeys(buf(v) for v in node.inputs if v not in graph.params))
        tasks.append(Task(f"{node.op}:{node.name or i}", reads, tuple(buf(v) for v in node.outputs)))
    return Problem(buffers, tasks, capacity, alignment)


def topo_peak(problem) -> int:
    """Peak aligned bytes live at once in the given order with no spills (buffers freed after their last use)."""
    first, last = {}, {}
    for k, t in enumerate(problem.tasks):
        for b in t.reads + t.writes:
            first.setdefault(b, k)
            last[b] = k
    return max(sum(problem.placed(b) for b in first if first[b] <= k <= last[b]) for k in range(len(problem.tasks)))


def run_problem(problem, time_limit: float) -> dict:
    from qcc.backends.accel.scheduler import schedule

    out = {}
    for method in ("lru", "belady", "ilp", "dc"):
        t0 = time.perf_counter()
        s = schedule(problem, method, time_limit_s=time_limit)
        wall = time.perf_counter() - t0
        tr = s.traffic()
        assert s.peak() <= problem.capacity
        out[method] = {"nc": tr["noncompulsory"], "total": tr["load"] + tr["store"], "s": wall,
                       "status": s.status, "gap": s.gap, "info": s.info, "method": s.method}
    return out


def kb(n: float) -> str:
    return f"{n / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet"])
    ap.add_argument("--size", type=int, default=224, help="input image size")
    ap.add_argument("--kb", nargs="+", type=int, default=[64, 128, 256, 512], help="pipeline scratchpad sizes")
    ap.add_argument("--time-limit", type=float, default=10.0, help="ILP time limit per problem (s)")
    ap.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    setup_threads(2)
    import ortools

    from qcc.backends.accel.problem_builder import build_problem
    from qcc.errors import ScratchpadError

    rows, red_lru, red_bel, times = [], [], [], []
    for model in args.models:
        t0 = time.perf_counter()
        graph = integer_graph(model, args.size)
        print(f"{model}: integer graph with {len(graph.nodes)} nodes in {time.perf_counter() - t0:.0f} s",
              flush=True)
        cases = []
        for size_kb in args.kb:
            try:
                cases.append(("pipeline", f"{size_kb} KB", build_problem(graph, size_kb * 1024).problem))
            except ScratchpadError as err:
                print(f"  pipeline {size_kb} KB: {err}")
        base = cosma_problem(graph)
        m_r = max(base.footprint(t) for t in base.tasks)
        m_t = topo_peak(base)
        budgets: dict[int, str] = {}
        for label, cap in (("M_R", m_r), ("1.1 M_R", int(m_r * 1.1)), ("1.25 M_R", int(m_r * 1.25)), ("M_T", m_t)):
            budgets.setdefault(cap, label)  # M_T often equals M_R (the peak is one big operator)
        for cap, label in sorted(budgets.items()):
            cases.append(("cosma", f"{label} = {kb(cap)} KB", cosma_problem(graph, cap)))
        for family, budget, problem in cases:
            res = run_problem(problem, args.time_limit)
            lru, bel, ilp = res["lru"]["nc"], res["belady"]["nc"], res["ilp"]["nc"]
            if lru > 0:
                red_lru.append(1 - ilp / lru)
            if bel > 0:
                red_bel.append(1 - ilp / bel)
            times.append(res["ilp"]["s"])
            info = res["ilp"]["info"]
            status = res["ilp"]["status"] + (f", gap {res['ilp']['gap']:.1%}" if res["ilp"]["gap"] > 0 else "")
            if res["ilp"]["method"] != "ilp":  # above DC_THRESHOLD tasks schedule(..., "ilp") is windowed
                status += f" ({res['ilp']['method']}: {info.get('windows')} windows)"
            status += f", fallback {info['fallback']}" if "fallback" in info else ""
            rows.append([model, family, budget, len(problem.tasks), kb(lru), kb(bel), kb(ilp),
                         kb(res["dc"]["nc"]), kb(res["belady"]["total"]), kb(res["ilp"]["total"]),
                         f"{res['lru']['s']:.2f} / {res['belady']['s']:.2f} / {res['ilp']['s']:.2f}", status])
            print("  " + " | ".join(str(x) for x in rows[-1]), flush=True)
    headers = ["model", "problems", "scratchpad", "tasks", "LRU nc KB", "Belady nc KB", "ILP nc KB", "D&C nc KB",
               "Belady total KB", "ILP total KB", "solve s LRU / Belady / ILP", "ILP status"]
    table = markdown_table(headers, rows)

    def mean(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.1%} over {len(xs)} rows" if xs else "n/a (no baseline traffic)"

    summary = (f"Non-compulsory (nc) traffic reduction of the ILP, averaged over rows where the baseline has any: "
               f"vs LRU {mean(red_lru)}, vs Belady {mean(red_bel)} (COSMA's goal: >= 84%). "
               f"ILP solve time: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
               f"(limit {args.time_limit:g} s per problem). Input {args.size}x{args.size}, alignment 64 B.")
    print(table + "\n\n" + summary)
    if args.write:
        cmd = "python benchmarks/bench_accel.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        info = machine_info(2, {"ortools": ortools.__version__, "numpy": np.__version__})
        append_results(REPO / "benchmarks" / "RESULTS.md", "Accelerator scratchpad scheduling (ILP vs LRU/Belady)",
                       cmd.strip(), info, table + "\n\n" + summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
