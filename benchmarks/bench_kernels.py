"""GFLOP/s of qcc's CPU kernel templates against NumPy's SGEMM and PyTorch on the same machine.

    python benchmarks/bench_kernels.py [--threads 2] [--repeats 15] [--only conv|dense] [--calibrate] [--write]

Cases: the largest ResNet-18 convolutions, its 7×7/2 stem and a 1×1/2 shortcut, a MobileNet depthwise 3×3, and
the dense / batched-matmul shapes of a BERT-style encoder (seq 128, hidden 256, FFN 1024, 4 heads of 64).
Contenders, timed round-robin (`common.run_interleaved`), medians:

- qcc: the kernel `make_kernel` returns with the default rule's parameters (no tuning), bias+ReLU epilogue on
  convs, bias on dense; convs read and write NCHW16c (the layout inside a network);
- numpy: one SGEMM (OpenBLAS) of the same FLOPs (conv: [OH·OW, C·KH·KW] × [C·KH·KW, O], the im2col GEMM
  without building the patch matrix; depthwise has no GEMM form); OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are
  removed from this process's environment so OpenBLAS detects the CPU itself, and OPENBLAS_THREAD_TIMEOUT=4
  keeps its idle workers from spinning into the next contender's time;
- torch: torch.nn.functional.conv2d / linear / bmm, `torch.set_num_threads(threads)`.

`--calibrate` also times the im2col template against the direct one on each conv (the measurements behind
`choose_conv_impl`). The machine may be shared; compare columns within one run only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # before NumPy loads OpenBLAS
    os.environ.pop(_var, None)
# OpenBLAS's idle workers spin for 2^28 cycles (~0.1 s) after each call by default, stealing a core from the
# contender timed next; 2^4 cycles makes them sleep at once, like OMP_WAIT_POLICY=PASSIVE for the others.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CONVS = {  # name: (x shape, w shape, attrs)
    "r18 conv 64×56×56 3×3": ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": (1, 1, 1, 1)}),
    "r18 conv 128×28×28 3×3": ((1, 128, 28, 28), (128, 128, 3, 3), {"padding": (1, 1, 1, 1)}),
    "r18 conv 256×14×14 3×3": ((1, 256, 14, 14), (256, 256, 3, 3), {"padding": (1, 1, 1, 1)}),
    "r18 conv 512×7×7 3×3": ((1, 512, 7, 7), (512, 512, 3, 3), {"padding": (1, 1, 1, 1)}),
    "r18 stem 3×224×224 7×7/2": ((1, 3, 224, 224), (64, 3, 7, 7), {"stride": (2, 2), "padding": (3, 3, 3, 3)}),
    "r18 shortcut 64→128 1×1/2": ((1, 64, 56, 56), (128, 64, 1, 1), {"stride": (2, 2)}),
    "mbv2 depthwise 144×56×56 3×3": ((1, 144, 56, 56), (144, 1, 3, 3), {"padding": (1, 1, 1, 1), "groups": 144}),
}
DENSES = {  # name: (M, K, N)
    "bert qkv/out 128×256→256": (128, 256, 256),
    "bert ffn1 128×256→1024": (128, 256, 1024),
    "bert ffn2 128×1024→256": (128, 1024, 256),
}
BMMS = {  # name: (B, M, K, N)
    "bert attn Q·Kᵀ 4×128×64×128": (4, 128, 64, 128),
    "bert attn P·V 4×128×128×64": (4, 128, 128, 64),
}


def qcc_case(kind: str, shapes: list, attrs: dict, epi: tuple, impl: str | None = None) -> tuple[Callable, float]:
    """A zero-argument runner of the qcc kernel on random data, and its GFLOP count."""
    import numpy as np
    import tvm

    from qcc.backends.tvm.kernels import make_kernel
    from qcc.backends.tvm.kernels.tune import random_inputs

    k = make_kernel(impl or kind, shapes, attrs=attrs, epilogue=epi, use_db=False)
    lib = k.build().lib  # type: ignore[attr-defined]
    args = [tvm.runtime.tensor(a) for a in random_inputs(k)]
    args.append(tvm.runtime.tensor(np.zeros(k.output.shape, np.float32)))
    f = lib["main"] if hasattr(lib, "__getitem__") else lib
    return (lambda: f(*args)), k.flops / 1e9


def _openblas_set_threads() -> Callable[[int], None] | None:
    """OpenBLAS's set_num_threads (cheap: a global), found through threadpoolctl; None if unavailable."""
    try:
        import ctypes

        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for info in threadpool_info():
        if info.get("internal_api") == "openblas":
            lib = ctypes.CDLL(info["filepath"])
            for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
                if hasattr(lib, sym):
                    fn = getattr(lib, sym)
                    return lambda n: fn(ctypes.c_int(n))
    return None


def numpy_gemm(m: int, k: int, n: int, batch: int = 1, threads: int | None = None) -> Callable:
    """One (batched) SGEMM of these sizes; with `threads`, OpenBLAS runs that many threads for this call and
    is set back to the benchmark's thread count after it."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, m, k) if batch > 1 else (m, k)).astype(np.float32)
    b = rng.standard_normal((batch, k, n) if batch > 1 else (k, n)).astype(np.float32)
    out = np.empty((batch, m, n) if batch > 1 else (m, n), np.float32)
    setter = _openblas_set_threads() if threads is not None else None
    if setter is None:
        return lambda: np.matmul(a, b, out=out)
    default = int(os.environ.get("OMP_NUM_THREADS", "1"))

    def run() -> None:
        setter(threads)
        np.matmul(a, b, out=out)
        setter(default)
    return run


def torch_case(kind: str, shapes: list, attrs: dict) -> Callable:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(*s, generator=g) for s in shapes)
    if kind == "conv2d":
        b = torch.randn(shapes[1][0], generator=g)
        pt, pl, pb, pr = attrs.get("padding", (0, 0, 0, 0))
        assert (pt, pl) == (pb, pr)
        kw = {"stride": attrs.get("stride", (1, 1)), "padding": (pt, pl), "groups": attrs.get("groups", 1)}
        return lambda: torch.relu_(F.conv2d(x, w, b, **kw))
    if kind == "dense":
        b = torch.randn(shapes[1][0], generator=g)
        return lambda: F.linear(x, w, b)
    return lambda: torch.bmm(x, w)


def run_case(name: str, flops: float, contenders: dict[str, Callable], repeats: int) -> dict[str, float]:
    """GFLOP/s (from the median time) of each contender, timed interleaved."""
    cs = []
    for cname, fn in contenders.items():
        c = common.Contender(cname, fn=fn)
        cs.append(c)
    common.run_interleaved(cs, repeats, single_budget_s=5.0, total_budget_s=20.0)
    return {c.name: (flops / c.median_s if c.ok and c.times else float("nan")) for c in cs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per contender (x 5 calls per sample)")
    ap.add_argument("--only", choices=("conv", "dense"), default=None)
    ap.add_argument("--calibrate", action="store_true", help="also time the im2col conv template")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    common.setup_threads(args.threads)
    os.environ["TVM_BIND_THREADS"] = "0"
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)

    def batched(fn: Callable, n: int = 5) -> Callable:
        def run() -> None:
            for _ in range(n):
                fn()
        return run

    rows = []
    heads = ["qcc", "numpy sgemm", "torch", "numpy 1 thread"] + (["qcc im2col"] if args.calibrate else [])
    if args.only in (None, "conv"):
        for name, (xs, ws, attrs) in CONVS.items():
            q, gflop = qcc_case("conv2d", [xs, ws], attrs, (("bias",), ("relu",)))
            o, c, kh, kw = ws
            from qcc.backends.tvm.kernels import workload

            s = workload("conv2d", [xs, ws], attrs)
            cont = {"qcc": batched(q), "torch": batched(torch_case("conv2d", [xs, ws], attrs))}
            if not s.depthwise:
                cont["numpy sgemm"] = batched(numpy_gemm(s.OH * s.OW, c * kh * kw, o))
                cont["numpy 1 thread"] = batched(numpy_gemm(s.OH * s.OW, c * kh * kw, o, threads=1))
                if args.calibrate:
                    cont["qcc im2col"] = batched(qcc_case("conv2d", [xs, ws], attrs, (("bias",), ("relu",)),
                                                          "conv2d_im2col")[0])
            rows.append((name, gflop, run_case(name, 5 * gflop, cont, args.repeats)))
            print(name, {k: round(v, 1) for k, v in rows[-1][2].items()}, flush=True)
    if args.only in (None, "dense"):
        for name, (m, k, n) in DENSES.items():
            q, gflop = qcc_case("dense", [(m, k), (n, k)], {}, (("bias",),))
            cont = {"qcc": batched(q), "numpy sgemm": batched(numpy_gemm(m, k, n)),
                    "numpy 1 thread": batched(numpy_gemm(m, k, n, threads=1)),
                    "torch": batched(torch_case("dense", [(m, k), (n, k)], {}))}
            rows.append((name, gflop, run_case(name, 5 * gflop, cont, args.repeats)))
            print(name, {k: round(v, 1) for k, v in rows[-1][2].items()}, flush=True)
        for name, (b, m, k, n) in BMMS.items():
            q, gflop = qcc_case("batch_matmul", [(b, m, k), (b, k, n)], {}, ())
            cont = {"qcc": batched(q), "numpy sgemm": batched(numpy_gemm(m, k, n, b)),
                    "numpy 1 thread": batched(numpy_gemm(m, k, n, b, threads=1)),
                    "torch": batched(torch_case("bmm", [(b, m, k), (b, k, n)], {}))}
            rows.append((name, gflop, run_case(name, 5 * gflop, cont, args.repeats)))
            print(name, {k: round(v, 1) for k, v in rows[-1][2].items()}, flush=True)

    def fmt(v: float) -> str:
        return "—" if v != v else f"{v:.1f}"

    table_rows = []
    for name, gflop, r in rows:
        ratio = r.get("qcc", float("nan")) / r.get("numpy sgemm", float("nan")) if "numpy sgemm" in r else float(
            "nan")
        table_rows.append([name, f"{gflop * 1e3:.0f}", *(fmt(r.get(h, float("nan"))) for h in heads),
                           "—" if ratio != ratio else f"{ratio:.2f}"])
    table = common.markdown_table(["case", "MFLOP", *(f"{h} GFLOP/s" for h in heads), "qcc / numpy"],
                                  table_rows)
    print()
    print(table)
    if args.write:
        info = common.machine_info(args.threads, {"numpy": np.__version__, "torch": torch.__version__})
        common.append_results(common.REPO / "benchmarks" / "RESULTS.md", "qcc kernel templates (GFLOP/s)",
                              " ".join(["python", *sys.argv]), info, table)


if __name__ == "__main__":
    main()
