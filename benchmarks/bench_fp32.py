"""FP32 CPU benchmark: PyTorch eager vs ONNX Runtime vs TVM (its own frontend, default pipeline) vs qcc cpu-fp32.

For each zoo model at its benchmark size (``--tiny``: the test sizes) every contender is built from the same
``nn.Module``, run once to check its output against PyTorch, then timed round-robin (one call each per round) so
load changes on the shared machine hit all of them alike. Prints a markdown table with the median latency, the
ratio to ONNX Runtime, the build time and the output error; ``--write`` appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_fp32.py                            # all models, 20 rounds, all usable cores
    python benchmarks/bench_fp32.py --tiny --models gcn,bert --repeats 5 --contenders pytorch,onnxruntime
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

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

CONTENDERS = ("pytorch", "onnxruntime", "tvm", "qcc")
RELATIVE_TOLERANCE = 1e-3  # an output further than this (relative to max |reference|) from PyTorch is flagged


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    try:
        default_threads = len(os.sched_getaffinity(0))
    except AttributeError:
        default_threads = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet,bert,gcn,gat", help="comma-separated zoo names")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the default")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (one call per contender per round)")
    p.add_argument("--threads", type=int, default=default_threads, help="threads per contender")
    p.add_argument("--tiny", action="store_true", help="use the test-size models (for developing the harness)")
    p.add_argument("--budget", type=float, default=5.0, help="drop a contender when one run exceeds this (s)")
    p.add_argument("--total-budget", type=float, default=90.0, help="stop timing a contender after this (s)")
    p.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- contender builders
# Each returns a builder for `common.build`: a zero-argument function returning (run, note), where run() executes
# the model on pre-converted inputs and returns the first output as NumPy.


def torch_builder(model, inputs) -> Callable[[], tuple[Callable[[], np.ndarray], str]]:
    import torch

    def make():
        def run() -> np.ndarray:
            with torch.inference_mode():
                return model(*inputs).numpy()

        return run, "eager"

    return make


class OnnxFile:
    """The model exported once with ``torch.onnx.export`` (dynamo exporter); shared by ORT and the TVM fallback."""

    def __init__(self, model, inputs, workdir: Path):
        self.model, self.inputs, self.path = model, inputs, workdir / "model.onnx"
        self.error: Exception | None = None

    def get(self) -> Path:
        if self.error is not None:
            raise self.error
        if not self.path.exists():
            import torch

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(self.model, tuple(self.inputs), str(self.path), dynamo=True, verbose=False)
            except Exception as e:
                self.error = e
                raise
        return self.path


def ort_builder(onnx_file: OnnxFile, inputs, threads: int):
    def make():
        import onnxruntime as ort

        path = onnx_file.get()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        return (lambda: sess.run(None, feeds)[0]), "torch.onnx.export (dynamo)"

    return make


def tvm_builder(model, inputs, onnx_file: OnnxFile, threads: int):
    def make():
        import tvm
        from tvm import relax

        target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                                    "num-cores": threads})
        try:  # TVM's PyTorch frontend first; its ONNX frontend when that cannot import the model
            import torch
            from tvm.relax.frontend.torch import from_exported_program

            ep = torch.export.export(model, tuple(inputs))
            ex, note = tvm.compile(from_exported_program(ep), target=target), "from_exported_program"
        except Exception as e:
            import onnx
            from tvm.relax.frontend.onnx import from_onnx

            proto = onnx.load(str(onnx_file.get()))
            shapes = {i.name: list(x.shape) for i, x in zip(proto.graph.input, inputs)}
            ex = tvm.compile(from_onnx(proto, shape_dict=shapes), target=target)
            note = f"from_onnx (from_exported_program failed: {str(e).strip().splitlines()[0][:50]}…)"
        vm = relax.VirtualMachine(ex, tvm.cpu())
        main = vm["main"]
        args = [tvm.runtime.tensor(x.numpy()) for x in inputs]

        def run() -> np.ndarray:
            out = main(*args)
            while not hasattr(out, "numpy"):  # the torch frontend returns a tuple of outputs
                out = out[0]
            return out.numpy()

        return run, note + ", default pipeline"

    return make


def qcc_builder(model, inputs, threads: int):
    def make():
        import qcc

        lib = qcc.compile(model, target="cpu-fp32", example_inputs=tuple(inputs), num_threads=threads)
        arrays = [x.numpy() for x in inputs]

        def run() -> np.ndarray:
            out = lib(*arrays)
            return out[0] if isinstance(out, tuple) else out

        return run, "cpu-fp32"

    return make


# ------------------------------------------------------------------------------------------------------------ main


def describe(inputs) -> str:
    """Input shapes for the table, e.g. ``1×3×224×224`` or ``1×128 int64``."""
    dtype = lambda x: "" if x.is_floating_point() else " " + str(x.dtype).replace("torch.", "")
    return ", ".join("×".join(map(str, x.shape)) + dtype(x) for x in inputs)


def bench_model(name: str, zoo: dict, args: argparse.Namespace, wanted: Sequence[str]) -> list[list[object]]:
    """Build, check and time every wanted contender on one model; returns its table rows."""
    import torch

    factory, input_factory = zoo[name]
    model, inputs = factory(), input_factory()
    with torch.inference_mode():
        ref = model(*inputs).numpy()
    scale = max(float(np.abs(ref).max()), 1e-30)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        onnx_file = OnnxFile(model, inputs, Path(tmp))
        builders = {
            "pytorch": torch_builder(model, inputs),
            "onnxruntime": ort_builder(onnx_file, inputs, args.threads),
            "tvm": tvm_builder(model, inputs, onnx_file, args.threads),
            "qcc": qcc_builder(model, inputs, args.threads),
        }
        contenders: list[Contender] = []
        for cname in wanted:
            print(f"  {name}: building {cname} ...", file=sys.stderr, flush=True)
            contenders.append(build(cname, builders[cname]))
        print(f"  {name}: timing {args.repeats} rounds ...", file=sys.stderr, flush=True)
        run_interleaved(contenders, args.repeats, args.budget, args.total_budget)
    ort = next((c for c in contenders if c.name == "onnxruntime" and c.times), None)
    rows = []
    for c in contenders:
        diff = max_abs_diff(c.output, ref)
        notes = [c.note] if c.note else []
        if c.error:
            notes.insert(0, c.error)
        elif not diff <= RELATIVE_TOLERANCE * scale:
            notes.insert(0, f"**output mismatch** (max |ref| = {scale:.3g})")
        med = c.median_s * 1e3
        ratio = f"{c.median_s / ort.median_s:.2f}" if (ort and c.times) else "–"
        rows.append([f"{name} ({describe(inputs)})", c.name, f"{med:.2f}" if c.times else "–", ratio,
                     len(c.times), f"{c.build_s:.1f}", f"{diff:.2e}" if c.output is not None else "–",
                     "; ".join(notes).replace("|", "/")])
    del contenders, model, inputs
    gc.collect()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_threads(args.threads)  # before torch / onnxruntime / tvm are imported
    add_repo_to_path()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import torch

    from tests.zoo import TINY_ZOO, ZOO

    torch.set_num_threads(args.threads)
    zoo = TINY_ZOO if args.tiny else ZOO
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [m for m in models if m not in zoo] + [c for c in wanted if c not in CONTENDERS]
    if bad:
        print(f"unknown model/contender {bad}; models: {list(zoo)}, contenders: {list(CONTENDERS)}", file=sys.stderr)
        return 2

    rows: list[list[object]] = []
    for name in models:
        rows += bench_model(name, zoo, args, wanted)
    headers = ["model (input)", "contender", "median ms", "× ORT", "runs", "build s", "max abs diff", "notes"]
    table = markdown_table(headers, rows)
    legend = ("`× ORT`: median latency divided by ONNX Runtime's (below 1 is faster). `build s`: from the "
              "nn.Module to a callable (export + import + compile). `max abs diff`: against PyTorch eager.")
    print(table + "\n\n" + legend)
    if args.write:
        versions = {"torch": torch.__version__}
        for mod in ("onnxruntime", "onnx", "tvm", "qcc"):
            try:
                versions[mod] = __import__(mod).__version__
            except Exception:
                versions[mod] = "unavailable"
        command = shlex.join(["python", "benchmarks/bench_fp32.py", *(sys.argv[1:] if argv is None else argv)])
        title = "FP32 CPU" + (" (tiny models)" if args.tiny else "")
        append_results(REPO / "benchmarks" / "RESULTS.md", title, command, machine_info(args.threads, versions),
                       table + "\n\n" + legend)
        print(f"appended to {REPO / 'benchmarks' / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
