"""The `qcc` command line: compile, run, inspect.

Every error qcc raises on purpose prints one line (`error: ...`) and exits with the error's exit code;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from qcc.errors import OptionError, QccError


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    if not sep:
        raise OptionError(f"--input-shape expects NAME=D0,D1,..., got {text!r}")
    try:
        return name, tuple(int(d) for d in dims.split(",") if d)
    except ValueError:
        raise OptionError(f"--input-shape {text!r}: dimensions must be integers") from None


def _target_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if getattr(args, "num_threads", None):
        opts["num_threads"] = args.num_threads
    if getattr(args, "arch", None):
        opts["arch"] = args.arch
    if getattr(args, "mcpu", None):
        opts["mcpu"] = args.mcpu
    if getattr(args, "input_shape", None):
        opts["input_shapes"] = dict(_shape_arg(s) for s in args.input_shape)
    if getattr(args, "calibration", None):
        opts["calibration"] = _load_calibration(args.calibration)
        opts["progress"] = not args.quiet
    if getattr(args, "cost_model", None):
        opts["cost_model"] = args.cost_model
    if getattr(args, "tune", False):
        opts["tune"] = True
        opts["quiet"] = bool(args.quiet)
    if getattr(args, "calibration_method", None):
        opts["calibration_method"] = args.calibration_method
    for key in ("scratchpad_kb", "dram_gbps", "schedule", "schedule_time_limit"):  # accel-* targets
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    if getattr(args, "budget", None):
        from qcc.budget import Budget

        opts["budget"] = Budget.parse(",".join(args.budget))
    return opts


def _load_calibration(path: str) -> list[Any]:
    """Calibration data from an .npz (one array per input, by name, batches stacked on axis 0) or an .npy."""
    feeds = _load_inputs([path])
    if isinstance(feeds, dict):
        return [feeds] if len(feeds) > 1 else [next(iter(feeds.values()))]
    return feeds


def _load_inputs(paths: Sequence[str]) -> list[np.ndarray] | dict[str, np.ndarray]:
    from qcc.errors import ModelLoadError

    arrays: list[np.ndarray] = []
    for p in paths:
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read input file {p!r}: {e}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            if len(paths) != 1:
                raise OptionError("an .npz input holds every input by name; pass it alone")
            return {k: data[k] for k in data.files}
        arrays.append(data)
    return arrays


def cmd_compile(args: argparse.Namespace) -> int:
    from qcc.api import compile as qcc_compile

    lib = qcc_compile(args.model, target=args.target, print_after_all=args.print_after_all, out=sys.stdout,
                      **_target_options(args))
    lib.export_library(args.output)
    print(f"wrote {args.output} ({lib.target})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from qcc.api import load

    lib = load(args.library)
    feeds = _load_inputs(args.input)
    outs = lib(**feeds) if isinstance(feeds, dict) else lib(*feeds)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if args.output:
        if len(outs) == 1 and not args.output.endswith(".npz"):
            np.save(args.output, outs[0])
        else:
            np.savez(args.output, **{f"output{i}": o for i, o in enumerate(outs)})
        print(f"wrote {args.output}")
    else:
        for i, o in enumerate(outs):
            print(f"output {i}: {o.dtype}{list(o.shape)} {np.array2string(o.reshape(-1)[:8], precision=5)}"
                  + (" ..." if o.size > 8 else ""))
    return 0


def cmd_disasm(args: argparse.Namespace) -> int:
    from qcc.backends.accel.program import load_qbin

    exe, _ = load_qbin(args.library)
    p = exe.program
    print(f"// {args.library}: {exe.target}, scratchpad {p.capacity} B, DRAM image {p.dram_size} B, "
          f"weights {len(p.weights)} B")
    print(exe.disassemble(), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext
    from qcc.ir.printer import print_graph
    from qcc.pipeline import optimize
    from qcc.target import Target

    opts = _target_options(args)
    graph = import_model(args.model, None, opts.get("input_shapes"))
    print(f"// ----- imported from {args.model} ----- //")
    print(print_graph(graph))
    ctx = PassContext(target=Target(args.target), print_after=frozenset({"*"}) if args.print_after_all else frozenset(),
                      out=sys.stdout)
    graph = optimize(graph, ctx.target, ctx)
    if not args.print_after_all:
        print(f"// ----- after the {args.target} pipeline ----- //")
        print(print_graph(graph))
    print("// pass timings: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in ctx.timings.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcc", description="qcc: a quantization-aware deep-learning compiler")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def model_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="an ONNX model file")
        sp.add_argument("--target", default="cpu-fp32", help="<device>-<precision>, e.g. cpu-fp32, cuda-fp16")
        sp.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix a dynamic input shape (repeatable)")
        sp.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")

    c = sub.add_parser("compile", help="compile a model into a library")
    model_options(c)
    c.add_argument("-o", "--output", required=True, help="library path to write (e.g. model.so)")
    c.add_argument("--num-threads", type=int, help="runtime threads (default: the cores available)")
    c.add_argument("--arch", help="CUDA architecture, e.g. sm_80")
    c.add_argument("--mcpu", help="LLVM CPU name (default: detected)")
    c.add_argument("--calibration", help="calibration data (.npz by input name or .npy) for integer targets")
    c.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy", "mse"])
    c.add_argument("--budget", action="append", metavar="KEY=VALUE",
                   help="bit-allocation budget for integer targets (cpu-mixed, cpu-int4, ...): size_mb, "
                        "size_ratio, bops, latency_ms (comma-separated or repeated), e.g. --budget size_mb=0.05")
    c.add_argument("--tune", action="store_true",
                   help="measure a few parameter candidates per CPU kernel and record the winners in the tuning "
                        "database ($QCC_TUNE_DB, default ~/.cache/qcc/tuning.json) that later compiles reuse")
    c.add_argument("--cost-model", help="learned cost model (qcc costmodel train) ranking kernel schedules; "
                   "'analytic' for the analytic one (default: the model shipped for the CPU)")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.add_argument("--scratchpad-kb", type=int, help="accel-*: scratchpad size in KiB (default 256)")
    c.add_argument("--dram-gbps", type=float, help="accel-*: DRAM bandwidth in GB/s (default 25.6)")
    c.add_argument("--schedule", choices=["ilp", "dc", "lru", "belady"], help="accel-*: scratchpad scheduler")
    c.add_argument("--schedule-time-limit", type=float, help="accel-*: scheduler time limit in seconds")
    c.set_defaults(fn=cmd_compile)

    d = sub.add_parser("disasm", help="print the program of an accelerator library (.qbin)")
    d.add_argument("library")
    d.set_defaults(fn=cmd_disasm)

    r = sub.add_parser("run", help="run a compiled library on .npy/.npz inputs")
    r.add_argument("library")
    r.add_argument("--input", action="append", required=True, help=".npy per input in order, or one .npz by name")
    r.add_argument("--output", help="write outputs to .npy (one output) or .npz")
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", help="print the IR of a model, imported and after the pipeline")
    model_options(i)
    i.set_defaults(fn=cmd_inspect)

    from qcc.cli_costmodel import add_parser as add_costmodel_parser

    add_costmodel_parser(sub)  # qcc costmodel collect | train | eval
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except QccError as e:
        if args.debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in qcc: still one line, the traceback with --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
