"""Tiled attention (recognize-attention + the online-softmax kernel) against the materialised version and PyTorch SDPA.

    python benchmarks/bench_attention.py [--seqs 512,1024,2048,4096,8192] [--threads 2] [--repeats 5]
                                         [--naive-max 8192] [--qcc-naive-max 2048] [--write]

Workload: self-attention with batch 1, 8 heads, head dim 64, fp32, no mask (or causal with `--causal`), sequence
lengths `--seqs`.
Contenders, timed round-robin per sequence length (`common.run_interleaved`), medians:

- qcc: `qcc.compile` of a PyTorch module written the naive way (softmax(q·kᵀ·s)·v); recognize-attention turns it
  into one `attention` op, lowered to the tiled kernel (tiles from the cache rule);
- qcc-unfused: the same module with `attention="off"`: matmul, softmax, matmul kernels with N×N intermediates;
- torch-sdpa: `torch.nn.functional.scaled_dot_product_attention` (PyTorch's CPU flash kernel);
- torch-naive: the module in eager PyTorch (materialises the scores).

Peak memory: each contender runs once in a fresh subprocess (qcc: its exported library loaded with `qcc.load`, so
no compiler memory is in the process) and reports the growth of the process's peak resident set during that
one call, after the inputs exist (the peak mark VmHWM is reset through /proc/self/clear_refs just before it):
the bytes the call itself allocates (output, workspace, scores).
Also listed analytically: qcc's kernel workspace (tile buffers per thread + the Kᵀ copy, `node.meta
["attention_workspace"]`) and the size of one N×N score tensor of the materialised version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HEADS, DIM = 8, 64


CAUSAL = False  # --causal: every contender hides key j > i


def naive_module():  # noqa: ANN201 - torch is imported lazily
    import torch

    class NaiveAttention(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            s = q @ k.transpose(-1, -2) * (DIM ** -0.5)
            if CAUSAL:
                n = s.shape[-1]
                s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1), float("-inf"))
            return torch.softmax(s, dim=-1) @ v

    return NaiveAttention().eval()


def sdpa(args):  # noqa: ANN001, ANN201
    import torch

    return torch.nn.functional.scaled_dot_product_attention(*args, is_causal=CAUSAL)


def inputs(seq: int):  # noqa: ANN201
    import torch

    g = torch.Generator().manual_seed(seq)
    return tuple(torch.randn(1, HEADS, seq, DIM, generator=g) for _ in range(3))


def compile_qcc(seq: int, threads: int, attention: str):  # noqa: ANN201
    import qcc

    args = inputs(seq)
    lib = qcc.compile(naive_module(), "cpu-fp32", example_inputs=args, num_threads=threads, attention=attention)
    return lib, [a.numpy() for a in args]


def measure_memory(kind: str, seq: int, threads: int, lib_path: str = "") -> int:
    """Run one call of a contender in this (fresh) process; the growth of peak RSS in bytes."""
    import resource

    import torch

    torch.set_num_threads(threads)
    args = inputs(seq)
    if kind.startswith("qcc"):
        import qcc

        lib = qcc.load(lib_path)
        arrays = [a.numpy() for a in args]
        run = lambda: lib(*arrays)  # noqa: E731
    elif kind == "torch-sdpa":
        run = lambda: sdpa(args)  # noqa: E731
    else:
        model = naive_module()
        run = lambda: model(*args)  # noqa: E731
    with torch.no_grad():
        try:  # reset the kernel's peak-RSS mark (VmHWM) so imports and setup do not hide the call's peak
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kb("VmRSS")
            out = run()
            after = _status_kb("VmHWM")
        except OSError:  # no procfs: ru_maxrss (may under-report when setup peaked higher)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out = run()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    return max(0, after - before) * 1024


def _status_kb(key: str) -> int:
    """A `kB` field of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def memory_of(kind: str, seq: int, threads: int, lib_path: str = "") -> float:
    """Peak-RSS growth (bytes) of one call, measured in a subprocess; nan when it failed."""
    cmd = [sys.executable, __file__, "--measure", kind, "--seqs", str(seq), "--threads", str(threads),
           "--lib", lib_path] + (["--causal"] if CAUSAL else [])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ.copy())
        return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])
    except Exception:  # a crashed or killed measurement (out of memory) is reported as missing
        return float("nan")


def bench_seq(seq: int, a: argparse.Namespace, tmp: Path) -> list[list[object]]:
    import torch

    torch.set_num_threads(a.threads)
    args = inputs(seq)
    libs: dict[str, tuple[str, float]] = {}  # contender -> (exported path, analytic workspace bytes)
    contenders = []

    def qcc_builder(name: str, attention: str):  # noqa: ANN202
        def make():  # noqa: ANN202
            lib, arrays = compile_qcc(seq, a.threads, attention)
            path = str(tmp / f"{name}-{seq}.so")
            lib.export_library(path)
            nodes = [n for n in lib.graph.nodes if n.op == "attention"]
            ws = float(nodes[0].meta.get("attention_workspace", np.nan)) if nodes else float("nan")
            libs[name] = (path, ws)
            note = (f"attention tiles {nodes[0].meta.get('attention_tiles')}" if nodes
                    else "matmul + softmax + matmul")
            return (lambda: lib(*arrays)), note
        return make

    contenders.append(common.build("qcc", qcc_builder("qcc", "auto")))
    if seq <= a.qcc_naive_max:
        contenders.append(common.build("qcc-unfused", qcc_builder("qcc-unfused", "off")))

    def sdpa_builder():  # noqa: ANN202
        def run() -> np.ndarray:
            with torch.no_grad():
                return sdpa(args).numpy()
        return run, "F.scaled_dot_product_attention"

    contenders.append(common.build("torch-sdpa", sdpa_builder))
    if seq <= a.naive_max:
        model = naive_module()

        def naive():  # noqa: ANN202
            def run() -> np.ndarray:
                with torch.no_grad():
                    return model(*args).numpy()
            return run, "eager, materialised scores"

        contenders.append(common.build("torch-naive", naive))
    repeats = a.repeats if seq <= 2048 else max(2, a.repeats // 2)
    common.run_interleaved(contenders, repeats, single_budget_s=30.0, total_budget_s=120.0)
    ref = next((c.output for c in contenders if c.name == "torch-sdpa"), None)
    sdpa_s = next((c.median_s for c in contenders if c.name == "torch-sdpa"), float("nan"))
    flops = 4 * HEADS * seq * seq * DIM // (2 if CAUSAL else 1)
    scores_mb = HEADS * seq * seq * 4 / 2**20
    rows = []
    for c in contenders:
        path, ws = libs.get(c.name, ("", float("nan")))
        # measured even when the timing was skipped as too slow: memory is the point of the large sizes
        mem = memory_of(c.name, seq, a.threads, path) if c.fn is not None else float("nan")
        analytic = f"{ws / 2**20:.2f} (workspace)" if c.name == "qcc" else (
            f"≥ {scores_mb:.0f} (one N×N)" if c.name in ("qcc-unfused", "torch-naive") else "")
        rows.append([seq, c.name, f"{c.median_s * 1e3:.1f}" if c.ok else c.error or "skipped",
                     f"{c.median_s / sdpa_s:.2f}" if c.ok else "", f"{flops / c.median_s / 1e9:.1f}" if c.ok else "",
                     f"{mem / 2**20:.1f}" if mem == mem else "n/a", analytic,
                     f"{common.max_abs_diff(c.output, ref):.1e}", f"{c.build_s:.1f}", len(c.times), c.note])
        print(" | ".join(str(x) for x in rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", default="512,1024,2048,4096,8192")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-max", type=int, default=8192, help="largest sequence for torch-naive")
    p.add_argument("--qcc-naive-max", type=int, default=2048, help="largest sequence for qcc-unfused")
    p.add_argument("--causal", action="store_true", help="causal attention (is_causal / masked_fill(triu))")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--measure", default="", help=argparse.SUPPRESS)
    p.add_argument("--lib", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    global CAUSAL
    CAUSAL = a.causal
    common.setup_threads(a.threads)
    seqs = [int(s) for s in a.seqs.split(",")]
    if a.measure:
        print(json.dumps({"peak_bytes": measure_memory(a.measure, seqs[0], a.threads, a.lib)}))
        return
    common.add_repo_to_path()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seq in seqs:
            rows += bench_seq(seq, a, Path(tmp))
    headers = ["seq", "contender", "median ms", "× SDPA", "GFLOP/s", "peak RSS growth MB", "analytic MB",
               "max abs diff vs SDPA", "build s", "runs", "notes"]
    table = common.markdown_table(headers, rows)
    print(table)
    if a.write:
        import torch
        import tvm

        import qcc

        info = common.machine_info(a.threads, {"torch": torch.__version__, "tvm": tvm.__version__,
                                               "qcc": qcc.__version__})
        info.append(f"- load average after the run (1/5/15 min): "
                    f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared with other jobs)")
        body = table + (
            f"\n\nBatch 1, {HEADS} heads, head dim {DIM}, fp32, {'causal' if CAUSAL else 'no mask'}. "
            "`× SDPA`: median latency / torch SDPA's (below 1 is faster). `GFLOP/s`: 4·H·N²·d (halved when "
            "causal) over the median. `peak RSS growth`: one call in a fresh "
            "process (qcc: the exported library loaded with qcc.load), growth of the peak RSS (VmHWM, reset just "
            "before) during the call — "
            "the output (N·d·H·4 bytes) plus what the call allocates. `analytic`: qcc's kernel workspace (tile "
            "buffers for 2 threads + the Kᵀ copy) vs one N×N score tensor of the materialised version.")
        cmd = "python benchmarks/bench_attention.py " + " ".join(sys.argv[1:])
        title = f"Attention{' (causal)' if CAUSAL else ''}: tiled vs materialised vs SDPA"
        common.append_results(Path(__file__).with_name("RESULTS.md"), title,
                              cmd, info, body)


if __name__ == "__main__":
    main()
