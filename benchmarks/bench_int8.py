"""INT8 CPU benchmark: qcc cpu-int8 vs qcc cpu-fp32 vs ONNX Runtime INT8 (U8S8 QDQ) vs ORT FP32 vs PyTorch FP32.

For the ResNet-18-style CNN (1×3×224×224) and the BERT-style encoder (tests/zoo.py ``ZOO``): latency (interleaved
medians, as common.py does it), model size, and logit SQNR against PyTorch FP32. ONNX Runtime INT8 is
``quantize_static`` in its fast x86 configuration: QDQ format, per-channel, activations QUInt8, weights QInt8.
Both quantizers calibrate on the same batches. Then the digits CNN (trained in seconds): top-1 accuracy of FP32,
qcc int8, qcc int4 and ORT int8 on the held-out split, and their logit SQNR against FP32.

A qcc build that fails is recorded in the table (first line of the error), never raised.

    python benchmarks/bench_int8.py                     # both models, 10 rounds
    python benchmarks/bench_int8.py --models resnet18 --repeats 5 --write
    python benchmarks/bench_int8.py --models resnet18 --int4 --profile   # + cpu-int4 (W4A8), per-kernel times
    python benchmarks/bench_int8.py --models resnet18 --no-digits --threads 2 --profile   # + per-kernel times
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
    run_interleaved,
    setup_threads,
)

CONTENDERS = ("qcc-int8", "qcc-fp32", "ort-int8", "ort-fp32", "pytorch")
PROFILES: dict[str, str] = {}  # --profile: contender -> per-kernel table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    try:
        default_threads = len(os.sched_getaffinity(0))
    except AttributeError:
        default_threads = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,bert", help="comma-separated zoo names")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (one call per contender per round)")
    p.add_argument("--threads", type=int, default=default_threads, help="threads per contender")
    p.add_argument("--calib", type=int, default=4, help="calibration batches for the large models")
    p.add_argument("--budget", type=float, default=10.0, help="drop a contender when one run exceeds this (s)")
    p.add_argument("--total-budget", type=float, default=60.0, help="stop timing a contender after this (s)")
    p.add_argument("--no-digits", action="store_true", help="skip the digits accuracy table")
    p.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    p.add_argument("--profile", action="store_true", help="print where qcc cpu-int8 spends its time, per kernel")
    p.add_argument("--int4", action="store_true", help="also time qcc cpu-int4 (W4A8, weights packed two per byte)")
    return p.parse_args(argv)


def sqnr(ref: np.ndarray | None, test: np.ndarray | None) -> str:
    if ref is None or test is None or np.shape(ref) != np.shape(test):
        return "–"
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((ref - test) ** 2))
    return "∞" if noise == 0 else f"{10 * np.log10(float(np.sum(ref**2)) / noise):.1f}"


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}" if nbytes == nbytes else "–"


class CalibReader:
    """onnxruntime.quantization CalibrationDataReader over a list of input tuples."""

    def __init__(self, names: Sequence[str], batches: Sequence[Sequence[np.ndarray]]):
        self.it = iter([dict(zip(names, b)) for b in batches])

    def get_next(self):
        return next(self.it, None)


def export_onnx(model, inputs, path: Path) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True, verbose=False)
    return path


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_int8(fp32: Path, out: Path, calib: Sequence[Sequence[np.ndarray]]) -> Path:
    """ONNX Runtime's fast x86 static quantization: QDQ, per-channel, U8 activations, S8 weights."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing only helps; quantize the plain export when it fails
        pre = fp32
    names = [i.name for i in ort_session(pre, 1).get_inputs()]
    quantize_static(str(pre), str(out), CalibReader(names, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def make_ort(path_fn: Callable[[], Path], arrays: Sequence[np.ndarray], threads: int, note: str, sizes: dict,
             key: str):
    def make():
        path = path_fn()
        # the dynamo exporter keeps the weights in external data files next to the model: count them too
        sizes[key] = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data*"))
        sess = ort_session(path, threads)
        feeds = {i.name: x for i, x in zip(sess.get_inputs(), arrays)}
        return (lambda: sess.run(None, feeds)[0]), note

    return make


def kernel_profile(lib, arrays: Sequence[np.ndarray], runs: int = 20) -> list[tuple[str, float, int]]:
    """(kernel family, ms per inference, calls per inference) of a qcc CPU library, from the Relax VM's
    instrument hook (wall time around each call), largest first; families merge the numbered copies."""
    import re
    import time
    from collections import Counter, defaultdict

    import tvm
    from tvm import relax

    from qcc.backends.tvm import runtime

    exe = lib._exe
    runtime.configure_threads(exe.target.num_threads)
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(exe.module, dev)
    args = [tvm.runtime.tensor(a, dev) for a in exe.check_inputs(list(arrays))]
    total: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    start: dict[str, float] = {}

    def hook(_func, name, before, _ret, *_args):
        family = re.sub(r"\d+$", "", str(name))
        if before:
            start[name] = time.perf_counter()
        else:
            total[family] += time.perf_counter() - start[name]
            calls[family] += 1
        return 0

    for _ in range(3):
        vm["main"](*args)
    vm.set_instrument(hook)
    for _ in range(runs):
        vm["main"](*args)
    return sorted(((k, v / runs * 1e3, calls[k] // runs) for k, v in total.items()), key=lambda t: -t[1])


def make_qcc(model, inputs, target: str, threads: int, calib, sizes: dict, key: str, workdir: Path,
             profile: bool = False):
    def make():
        import qcc

        opts = {"calibration": calib, "progress": False} if "int" in target else {}
        lib = qcc.compile(model, target=target, example_inputs=tuple(inputs), num_threads=threads, **opts)
        path = workdir / f"{key}.so"
        lib.export_library(path)
        sizes[key] = path.stat().st_size
        arrays = [x.numpy() for x in inputs]
        if profile:  # (stderr is silenced while contenders build: keep the table for the report)
            rows = [[k, f"{ms:.3f}", n] for k, ms, n in kernel_profile(lib, arrays) if ms >= 0.005]
            PROFILES[key] = markdown_table([f"{key} kernel", "ms per inference", "calls"], rows)
        note = target
        if lib.tir_check is not None:
            note += ", TIR check " + ("passed" if lib.tir_check.ok else "FAILED")
        if getattr(lib, "quant_report", None) is not None and hasattr(lib.quant_report, "integer_only"):
            note += ", integer-only" if lib.quant_report.integer_only else ", NOT integer-only"

        def run() -> np.ndarray:
            out = lib(*arrays)
            return out[0] if isinstance(out, tuple) else out

        return run, note

    return make


def calibration_batches(name: str, n: int):
    from tests.zoo import bert_inputs, image_input

    if name == "bert":
        return [tuple(x.numpy() for x in bert_inputs(128, seed=s)) for s in range(1, n + 1)]
    return [tuple(x.numpy() for x in image_input(224, seed=s)) for s in range(1, n + 1)]


def bench_model(name: str, args: argparse.Namespace) -> list[list[object]]:
    import torch

    from tests.zoo import ZOO

    factory, input_factory = ZOO[name]
    model, inputs = factory(), input_factory()
    with torch.inference_mode():
        ref = model(*inputs).numpy()
    arrays = [x.numpy() for x in inputs]
    calib = calibration_batches(name, args.calib)
    qcalib = [b[0] if len(b) == 1 else b for b in calib]
    sizes: dict[str, float] = {"pytorch": sum(t.numel() * t.element_size() for t in model.state_dict().values())}
    with tempfile.TemporaryDirectory(prefix=f"bench-int8-{name}-") as tmp:
        work = Path(tmp)

        def fp32() -> Path:
            path = work / "fp32.onnx"
            return path if path.exists() else export_onnx(model, inputs, path)

        builders = {
            "qcc-int8": make_qcc(model, inputs, "cpu-int8", args.threads, qcalib, sizes, "qcc-int8", work,
                                 args.profile),
            "qcc-int4": make_qcc(model, inputs, "cpu-int4", args.threads, qcalib, sizes, "qcc-int4", work),
            "qcc-fp32": make_qcc(model, inputs, "cpu-fp32", args.threads, None, sizes, "qcc-fp32", work),
            "ort-int8": make_ort(lambda: ort_int8(fp32(), work / "int8.onnx", calib), arrays, args.threads,
                                 "quantize_static QDQ per-channel U8S8", sizes, "ort-int8"),
            "ort-fp32": make_ort(fp32, arrays, args.threads, "torch.onnx.export (dynamo)", sizes, "ort-fp32"),
            "pytorch": (lambda: ((lambda: model(*inputs).detach().numpy()), "eager")),
        }
        contenders: list[Contender] = []
        for cname in ((*CONTENDERS[:1], "qcc-int4", *CONTENDERS[1:]) if args.int4 else CONTENDERS):
            print(f"  {name}: building {cname} ...", file=sys.stderr, flush=True)
            contenders.append(build(cname, builders[cname]))
        print(f"  {name}: timing {args.repeats} rounds ...", file=sys.stderr, flush=True)
        with torch.inference_mode():
            run_interleaved(contenders, args.repeats, args.budget, args.total_budget)
    base = {c.name: c for c in contenders}.get("qcc-fp32")
    rows = []
    for c in contenders:
        ratio = f"{base.median_s / c.median_s:.2f}" if (base is not None and base.times and c.times) else "–"
        notes = "; ".join(x for x in (c.error, c.note) if x).replace("|", "/")
        rows.append([name, c.name, f"{c.median_s * 1e3:.2f}" if c.times else "–", ratio, len(c.times),
                     mb(sizes.get(c.name, float("nan"))), sqnr(ref, c.output), f"{c.build_s:.1f}", notes])
    del contenders
    gc.collect()
    return rows


def digits_table(threads: int) -> tuple[str, list[str]]:
    """Digits CNN: accuracy and logit SQNR vs FP32 of FP32, qcc int8 / int4 and ORT int8 on the test split."""
    import torch

    import qcc
    from tests.zoo import accuracy, digits_data, train_digits_cnn

    xtr, _, xte, yte = digits_data()
    model = train_digits_cnn()
    n = len(xte)
    calib = [xtr[i:i + n] for i in range(0, len(xtr) - n + 1, n)]
    with torch.no_grad():
        ref = model(torch.from_numpy(xte)).numpy()
    rows: list[list[object]] = [["PyTorch FP32", f"{100 * accuracy(ref, yte):.2f}", "∞", "", ""]]
    errors = []
    for target in ("cpu-int8", "cpu-int4"):
        try:
            lib = qcc.compile(model, target, example_inputs=(xte,), calibration=calib, progress=False,
                              num_threads=threads)
            out = lib(xte)
            rows.append([f"qcc {target}", f"{100 * accuracy(out, yte):.2f}", sqnr(ref, out),
                         "yes" if lib.quant_report.integer_only else "no",
                         "passed" if lib.tir_check is not None and lib.tir_check.ok else "FAILED"])
        except Exception as e:
            errors.append(f"qcc {target}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            rows.append([f"qcc {target}", "–", "–", "build failed", "–"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fp32 = export_onnx(model, (torch.from_numpy(xte),), Path(tmp) / "d.onnx")
            q = ort_int8(fp32, Path(tmp) / "d8.onnx", [(c,) for c in calib])
            sess = ort_session(q, threads)
            out = sess.run(None, {sess.get_inputs()[0].name: xte})[0]
            rows.append(["ORT INT8 (U8S8 QDQ)", f"{100 * accuracy(out, yte):.2f}", sqnr(ref, out),
                         "–", "–"])
        except Exception as e:
            errors.append(f"ORT int8: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    headers = [f"digits CNN (held-out, n={n})", "top-1 %", "logit SQNR vs FP32 (dB)", "integer-only", "TIR check"]
    return markdown_table(headers, rows), errors


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_threads(args.threads)
    add_repo_to_path()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows: list[list[object]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows += bench_model(name, args)
    headers = ["model", "contender", "median ms", "speed-up vs qcc fp32", "runs", "size MB", "logit SQNR vs FP32 dB",
               "build s", "notes"]
    table = markdown_table(headers, rows)
    legend = ("ResNet-18-style CNN at 1×3×224×224, BERT-style encoder (4 layers, hidden 256, sequence 128, token "
              "ids). `size MB`: exported qcc library (.so), ONNX file, or PyTorch state_dict bytes. SQNR of the first "
              "output against PyTorch FP32 on the timed input. Calibration: the same random batches for qcc and ORT.")
    body = table + "\n\n" + legend
    for key, prof in PROFILES.items():
        body += (f"\n\nWhere {key} spends its time (Relax VM instrument, wall time per call, {args.threads} "
                 f"threads):\n\n{prof}")
    if not args.no_digits:
        dtable, errors = digits_table(args.threads)
        body += "\n\n" + dtable
        if errors:
            body += "\n\nErrors: " + "; ".join(errors)
    print(body)
    if args.write:
        versions = {"torch": torch.__version__}
        for mod in ("onnxruntime", "onnx", "tvm", "qcc"):
            try:
                versions[mod] = __import__(mod).__version__
            except Exception:
                versions[mod] = "unavailable"
        info = machine_info(args.threads, versions)
        info.append(f"- load average just before the run (1/5/15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} "
                    "(the machine is shared with other jobs)")
        command = shlex.join(["python", "benchmarks/bench_int8.py", *(sys.argv[1:] if argv is None else argv)])
        append_results(REPO / "benchmarks" / "RESULTS.md", "INT8 CPU", command, info, body)
        print(f"appended to {REPO / 'benchmarks' / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
