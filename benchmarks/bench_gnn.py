"""GNN benchmark: qcc's reorganization + fusion passes vs PyTorch eager, torch.sparse and PyTorch Geometric.

The zoo's GCN and GAT (``tests/zoo.py``, written with index_select / index_add, the way users write them) run on a
synthetic graph (default 100k vertices, 1M edges, 64 features), with uniform and power-law degrees. Contenders:

- ``pytorch``: the model in eager mode;
- ``torch.sparse`` (GCN): the same GCN as ``Â·(XW) + b`` with ``torch.sparse.mm`` on a CSR ``Â`` built once per graph;
- ``pyg``: ``torch_geometric`` GCNConv / GATConv with the same weights (when the package is installed);
- ``qcc-nognn``: qcc cpu-fp32 without the GNN passes (the float clean-up only);
- ``qcc-reorg``: with propagation-postponed reorganization only (``gnn_fuse="off"``);
- ``qcc``: the default pipeline (reorganization + gnn-fuse: CSR gather_aggregate kernels);
- ``qcc-int8`` (with ``--target cpu-int8``): the integer-only cpu-int8 build (calibrated on another random graph
  of the same size; integer GCN sums and EdgeConv maxima fused, the integer GAT aggregation unfused).

Latencies are medians of an interleaved run (one call per contender per round). FLOPs, bytes moved and the peak
intermediate memory come from `qcc.passes.gnn.analysis` on each qcc graph (the unfused graph models the eager
executor); the measured peak is the process's resident-set high-water mark over one call (VmHWM after a reset).

    python benchmarks/bench_gnn.py --threads 2 --repeats 7 --write
    python benchmarks/bench_gnn.py --vertices 2000 --edges 20000 --repeats 2       # a quick check of the harness
    python benchmarks/bench_gnn.py --target cpu-int8 ...                           # adds the qcc-int8 rows
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - the benchmarks folder is not a package
    REPO,
    Contender,
    add_repo_to_path,
    append_results,
    build,
    machine_info,
    markdown_table,
    max_abs_diff,
    run_interleaved,
    setup_threads,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=100_000)
    p.add_argument("--edges", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--models", default="gcn,gat")
    p.add_argument("--graphs", default="uniform,powerlaw")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=30.0, help="drop a contender when one run exceeds this (s)")
    p.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    p.add_argument("--target", action="append", default=[], choices=["cpu-int8"],
                   help="also benchmark qcc on this integer target (calibrated on another random graph)")
    return p.parse_args(argv)


def make_model(name: str, features: int) -> Any:
    from tests import zoo

    return zoo.gcn(features, 64, 16) if name == "gcn" else zoo.gat(features, 16, 16, heads=4)


# ---------------------------------------------------------------------------------------------------- baselines
def sparse_gcn(model: Any, x: Any, src: Any, dst: Any) -> Callable[[], tuple[Callable[[], np.ndarray], str]]:
    """The zoo GCN as Â·(XW) + b with torch.sparse.mm; Â = D^-½ (A + I) D^-½ (CSR) is built once per graph."""
    import torch

    def make() -> tuple[Callable[[], np.ndarray], str]:
        n = x.shape[0]
        loops = torch.arange(n)
        rows, cols = torch.cat([dst, loops]), torch.cat([src, loops])
        deg = torch.ones(n).index_add(0, dst, torch.ones(dst.shape[0]))
        inv = deg.rsqrt()
        adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), inv[rows] * inv[cols], (n, n)).coalesce()
        adj = adj.to_sparse_csr()
        c1, c2 = model.conv1, model.conv2

        def run() -> np.ndarray:
            with torch.inference_mode():
                h = torch.relu(torch.sparse.mm(adj, c1.lin(x)) + c1.bias)
                return (torch.sparse.mm(adj, c2.lin(h)) + c2.bias).numpy()

        return run, "CSR Â built once"

    return make


def pyg_model(name: str, model: Any, x: Any, src: Any, dst: Any) -> Callable[[], tuple[Callable[[], np.ndarray], str]]:
    """torch_geometric GCNConv / GATConv carrying the zoo model's weights."""
    import torch

    def make() -> tuple[Callable[[], np.ndarray], str]:
        import torch_geometric
        from torch_geometric.nn import GATConv, GCNConv

        edge_index = torch.stack([src, dst])
        if name == "gcn":
            # One self loop per vertex on top of the graph's own edges, as the zoo GCN (PyG's default would merge
            # the loops already in a random graph); the normalisation then sees d = 1 + in-degree.
            loops = torch.arange(x.shape[0])
            edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
            convs = [GCNConv(c.lin.in_features, c.lin.out_features, add_self_loops=False)
                     for c in (model.conv1, model.conv2)]
            for conv, c in zip(convs, (model.conv1, model.conv2)):
                conv.lin.weight.data.copy_(c.lin.weight)
                conv.bias.data.copy_(c.bias)
        else:
            convs = []
            for c in (model.conv1, model.conv2):
                conv = GATConv(c.lin.in_features, c.fout, heads=c.heads, concat=c.concat, add_self_loops=False)
                conv.lin.weight.data.copy_(c.lin.weight)
                conv.att_dst.data.copy_(c.att[:, :c.fout].reshape(1, c.heads, c.fout))
                conv.att_src.data.copy_(c.att[:, c.fout:].reshape(1, c.heads, c.fout))
                conv.bias.data.copy_(c.bias)
                convs.append(conv.eval())
        act = torch.relu if name == "gcn" else torch.nn.functional.elu

        def run() -> np.ndarray:
            with torch.inference_mode():
                return convs[1](act(convs[0](x, edge_index)), edge_index).numpy()

        return run, f"torch_geometric {torch_geometric.__version__}"

    return make


# ----------------------------------------------------------------------------------------------------------- qcc
def qcc_graphs(model: Any, inputs: tuple[Any, ...], threads: int) -> dict[str, Any]:
    """The three qcc graphs: without GNN passes, reorganization only, and the default pipeline."""
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext, run_passes
    from qcc.passes import get_pass
    from qcc.target import Target

    target = Target("cpu-fp32", num_threads=threads)
    imported = import_model(model, inputs)
    clean = ["constant-folding", "canonicalize", "fold-batchnorm", "constant-folding", "canonicalize",
             "dead-code-elimination"]
    graphs = {"qcc-nognn": run_passes(imported, [get_pass(p) for p in clean], PassContext(target=target))}
    from qcc.pipeline import optimize

    for name, fuse in (("qcc-reorg", "off"), ("qcc", "auto")):
        graphs[name] = optimize(imported, target, PassContext(target=target, options={"gnn_fuse": fuse}))
    return graphs


def qcc_int8_graph(model: Any, inputs: tuple[Any, ...], threads: int, calibration: list[tuple[np.ndarray, ...]],
                   target_name: str) -> Any:
    """The integer-only graph of `target_name` (quantized with `calibration`), with qcc's fuse groups as
    `qcc.compile` makes it (built with fusion="auto")."""
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext
    from qcc.pipeline import fuse, optimize
    from qcc.target import Target

    target = Target(target_name, num_threads=threads)
    ctx = PassContext(target=target, options={"calibration": calibration, "progress": False})
    return fuse(optimize(import_model(model, inputs), target, ctx), target, ctx)


def qcc_builder(graph: Any, inputs: list[np.ndarray], threads: int,
                target_name: str = "cpu-fp32") -> Callable[[], tuple[Callable, str]]:
    def make() -> tuple[Callable[[], np.ndarray], str]:
        from qcc.backends.tvm import build as tvm_build
        from qcc.target import Target

        target = Target(target_name, num_threads=threads)
        exe = tvm_build(graph, target, fusion="auto" if target.is_integer else "tvm")
        kernels = sum(1 for ops in exe.kernels.values() if ops[0] == "gather_aggregate")
        return (lambda: exe.run(inputs)[0]), f"{kernels} fused kernels"

    return make


def peak_rss_mb(fn: Callable[[], Any]) -> float:
    """Resident-set high-water mark above the current RSS over one call of `fn` (Linux; nan elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the reset starts from live memory
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS

        def field(key: str) -> float:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key):
                    return float(line.split()[1]) / 1024
            return float("nan")

        before = field("VmRSS")
        fn()
        return field("VmHWM") - before
    except OSError:
        return float("nan")


def bench_one(model_name: str, graph_name: str, args: argparse.Namespace) -> tuple[list[list[Any]], list[str]]:
    import torch

    from qcc.passes.gnn.analysis import analyze
    from tests import zoo

    x, src, dst = zoo.synthetic_graph(args.vertices, args.edges, args.features, power_law=graph_name == "powerlaw")
    model = make_model(model_name, args.features)
    inputs = [x.numpy(), src.numpy(), dst.numpy()]
    graphs = qcc_graphs(model, (x, src, dst), args.threads)
    int_targets: dict[str, str] = {}
    for target_name in args.target:
        cx, cs, cd = zoo.synthetic_graph(args.vertices, args.edges, args.features, seed=1,
                                         power_law=graph_name == "powerlaw")
        name = "qcc-" + target_name.split("-")[1]
        graphs[name] = qcc_int8_graph(model, (x, src, dst), args.threads, [(cx.numpy(), cs.numpy(), cd.numpy())],
                                      target_name)
        int_targets[name] = target_name
    costs = {k: analyze(g) for k, g in graphs.items()}
    contenders: list[Contender] = []

    def eager() -> tuple[Callable[[], np.ndarray], str]:
        def run() -> np.ndarray:
            with torch.inference_mode():
                return model(x, src, dst).numpy()

        return run, "eager"

    contenders.append(build("pytorch", eager))
    if model_name == "gcn":
        contenders.append(build("torch.sparse", sparse_gcn(model, x, src, dst)))
    contenders.append(build("pyg", pyg_model(model_name, model, x, src, dst)))
    for name, g in graphs.items():
        contenders.append(build(name, qcc_builder(g, inputs, args.threads, int_targets.get(name, "cpu-fp32"))))
    run_interleaved(contenders, args.repeats, single_budget_s=args.budget, total_budget_s=args.budget * args.repeats)
    peaks = {c.name: peak_rss_mb(c.fn) if c.ok else float("nan") for c in contenders}
    ref = next((c.output for c in contenders if c.name == "pytorch" and c.output is not None), None)
    eager_s = next((c.median_s for c in contenders if c.name == "pytorch"), float("nan"))
    rows = []
    for c in contenders:
        cost = costs.get(c.name) or (costs["qcc-nognn"] if c.name == "pytorch" else None)
        err = max_abs_diff(c.output, ref) / max(float(np.abs(ref).max()), 1e-30) if ref is not None else float("nan")
        rows.append([model_name, graph_name, c.name,
                     f"{c.median_s * 1e3:.0f}" if c.ok else c.error, f"{eager_s / c.median_s:.2f}x" if c.ok else "",
                     f"{cost.flops / 1e9:.2f}" if cost else "", f"{cost.bytes_moved / 1e9:.2f}" if cost else "",
                     f"{cost.peak_bytes / 2**20:.0f}" if cost else "", f"{peaks[c.name]:.0f}",
                     f"{err:.1e}", c.note])
    base, best = costs["qcc-nognn"], costs["qcc"]
    notes = [f"{model_name}/{graph_name}: memory IO {base.bytes_moved / best.bytes_moved:.2f}x less, FLOPs "
             f"{base.flops / best.flops:.2f}x less, peak intermediate {base.peak_bytes / best.peak_bytes:.2f}x less, "
             f"edge tensors {base.edge_bytes / 2**20:.0f} MiB -> {best.edge_bytes / 2**20:.0f} MiB (unfused -> qcc)"]
    return rows, notes


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_threads(args.threads)
    add_repo_to_path()
    import torch

    torch.set_num_threads(args.threads)
    rows: list[list[Any]] = []
    notes: list[str] = []
    for model_name in args.models.split(","):
        for graph_name in args.graphs.split(","):
            r, n = bench_one(model_name, graph_name, args)
            rows += r
            notes += n
            print(markdown_table(HEADERS, r), flush=True)
    table = markdown_table(HEADERS, rows)
    notes.append("GFLOP / GB moved / peak interm. are the analytic counts of `qcc.passes.gnn.analysis` (each node one "
                 "kernel; the pytorch row uses the unfused graph); 'measured peak' is the RSS high-water mark over one "
                 "call, which misses memory a runtime keeps pooled from earlier calls (TVM's VM reuses its storage, "
                 "so qcc rows show little)")
    body = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(body)
    if args.write:
        import tvm

        try:
            import torch_geometric

            pyg = torch_geometric.__version__
        except ImportError:
            pyg = "not installed"
        info = machine_info(args.threads, {"torch": torch.__version__, "tvm": tvm.__version__, "torch_geometric": pyg})
        info.append(f"- graph: {args.vertices} vertices, {args.edges} edges, {args.features} features; "
                    f"{args.repeats} interleaved rounds, medians")
        command = "python benchmarks/bench_gnn.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        title = "GNN: reorganization + fusion (" + ", ".join(["cpu-fp32", *args.target]) + ")"
        append_results(REPO / "benchmarks" / "RESULTS.md", title, command, info,
                       body)


HEADERS = ["model", "graph", "contender", "median ms", "vs eager", "GFLOP", "GB moved", "peak interm. MiB",
           "measured peak MiB", "rel. err", "note"]

if __name__ == "__main__":
    main()
