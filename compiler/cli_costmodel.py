"""`qcc costmodel collect | train | eval`: the cost-model retraining job on the command line.

The CLI is the one place that joins the layers: it imports models with the frontends, hands the TVM backend's
candidate space and measuring function (`qcc.backends.tvm.measure`) to `qcc.costmodel.job.collect`, which
itself imports no backend.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from qcc.errors import CostModelError, OptionError


def _zoo_specs(which: str) -> list[dict[str, Any]]:
    """Kernel specs of the test zoo (tests/zoo.py, importable from the repository root): benchmark and tiny
    sizes, each kernel tagged with its model family."""
    from qcc.costmodel.job import kernels_of_graph
    from qcc.frontends import import_model
    from qcc.ir.pass_manager import PassContext
    from qcc.passes import get_pass

    sys.path.insert(0, os.getcwd())
    try:
        from tests import zoo
    except ImportError as e:
        raise OptionError(f"--models {which} needs tests/zoo.py (run from the qcc repository root): {e}") from None
    sets = {"zoo": [zoo.TINY_ZOO, zoo.ZOO], "tiny": [zoo.TINY_ZOO]}[which]
    specs: list[dict[str, Any]] = []
    for table in sets:
        for name, (factory, inputs) in table.items():
            graph = import_model(factory(), inputs())
            specs += kernels_of_graph(graph, name)
            # The attention kernels the compile pipeline makes of the model (recognize-attention), tiles to rank.
            att = get_pass("recognize-attention").run(graph, PassContext())
            specs += [s for s in kernels_of_graph(att, name) if s["kind"] == "attention"]
    return specs


def cmd_collect(args: argparse.Namespace) -> int:
    from qcc.costmodel.database import MeasurementDB
    from qcc.costmodel.job import (
        collect,
        integer_specs,
        kernels_of_graph,
        random_attention,
        random_int_variants,
        random_variants,
    )

    if args.target != "cpu":
        raise OptionError(f"costmodel collect measures the cpu target only, got {args.target!r}")
    try:
        int_bits = [int(b) for b in args.int_bits.split(",") if b.strip()] if args.int_bits != "none" else []
    except ValueError:
        raise OptionError(f"--int-bits expects widths like 4,8 or 'none', got {args.int_bits!r}") from None
    if any(b not in (4, 8) for b in int_bits):
        raise OptionError(f"--int-bits: integer kernels are measured with 4- or 8-bit weights, got {int_bits}")
    if int_bits and args.rpc:
        raise OptionError("integer kernels are measured on this machine only; add --int-bits none with --rpc")
    if int_bits:
        from qcc.backends.tvm.measure import preload

        preload()  # before the models are imported (see preload)
    specs: list[dict[str, Any]] = []
    for m in args.models.split(","):
        if m in ("zoo", "tiny"):
            specs += _zoo_specs(m)
        else:
            from qcc.frontends import import_model

            specs += kernels_of_graph(import_model(m), os.path.splitext(os.path.basename(m))[0])
    base = [s for s in specs if s["kind"] != "attention"]
    if not args.no_float:
        specs += random_variants(base, args.random, seed=args.seed)
        specs += random_attention(args.attention_random, seed=args.seed)
    else:
        specs = []
    if int_bits:
        specs += integer_specs(base, int_bits) + random_int_variants(base, args.int_random, args.seed, int_bits)
    from qcc.backends.tvm.kernels import configure_threads
    from qcc.backends.tvm.kernels.params import CpuInfo
    from qcc.backends.tvm.measure import AnyMeasurer, IntMeasurer, Measurer, any_space, cpu_to_dict

    configure_threads(args.num_threads)
    cpu = CpuInfo.detect()
    target = {**cpu_to_dict(cpu), "cores": args.num_threads}
    measurer = AnyMeasurer(Measurer(number=args.number, repeat=args.repeat, rpc=args.rpc, cpu=cpu),
                           IntMeasurer(number=args.number, repeat=args.repeat, num_threads=args.num_threads))
    with MeasurementDB(args.db) as db:
        stats = collect(specs, db, lambda k, s, a: any_space(k, s, a, cpu), measurer, target,
                        candidates_per_kernel=args.candidates, max_kernels=args.max_kernels, quiet=args.quiet,
                        rounds=args.rounds, refine=args.refine, remeasure=args.remeasure)
        counts = db.counts()
    print(f"measured {stats['measured']} (failed {stats['failed']}, already in the database {stats['skipped']}) "
          f"candidates of {stats['kernels']} kernels in {stats['seconds']:.0f} s: {stats['per_minute']:.0f} "
          f"measurements/min, {stats['kernels_per_minute']:.1f} kernels/min; {args.db}: {counts}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qcc.costmodel.database import MeasurementDB
    from qcc.costmodel.evaluate import cross_validate, format_report
    from qcc.costmodel.model import LightGBMCostModel

    with MeasurementDB(args.db) as db:
        rows = db.rows()
    if not rows:
        raise CostModelError(f"{args.db} holds no successful measurements")
    holdout = args.holdout.split(",") if args.holdout else None
    report, _ = cross_validate(rows, holdout)
    print(format_report(report))
    model = LightGBMCostModel.fit(rows)
    model.save(args.output)
    print(f"wrote {args.output} (trained on {len(rows)} measurements)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qcc.costmodel.database import MeasurementDB
    from qcc.costmodel.evaluate import cross_validate, evaluate, format_report, plot_fit
    from qcc.costmodel.model import load_model

    with MeasurementDB(args.db) as db:
        rows = db.rows()
    if not rows:
        raise CostModelError(f"{args.db} holds no successful measurements")
    if args.model:
        report = evaluate(load_model(args.model), rows)
        preds = report.pop("_pred")
        title = f"{args.model} on {args.db} (in-sample unless the database is new)"
        rows_used = rows
    else:
        report, (rows_used, preds) = cross_validate(rows, args.holdout.split(",") if args.holdout else None)
        title = f"held-out models, {args.db}"
    print(format_report(report))
    if args.plot:
        plot_fit(rows_used, preds, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


def add_parser(sub: Any) -> None:
    """Add the `costmodel` command group to the top-level subparsers."""
    cm = sub.add_parser("costmodel", help="collect measurements, train and evaluate the learned cost model")
    cs = cm.add_subparsers(dest="costmodel_command", required=True)
    c = cs.add_parser("collect", help="measure kernel schedules of a model set into a database")
    c.add_argument("--models", default="zoo", help="'zoo' (tests/zoo.py, both sizes), 'tiny', or ONNX files, "
                   "comma separated")
    c.add_argument("--target", default="cpu", help="cpu (the CUDA target uses the analytic model)")
    c.add_argument("--db", required=True, help="SQLite measurement database (created or appended to)")
    c.add_argument("--max-kernels", type=int, help="stop after this many distinct kernels")
    c.add_argument("--candidates", type=int, default=8, help="schedules measured per kernel (default 8)")
    c.add_argument("--random", type=int, default=24, help="random shape variants added (default 24)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--int-bits", default="4,8", help="weight widths of the integer kernels (qconv2d / qlinear + "
                   "requantize, u8 activations) measured for every conv / dense layer; 'none' for float only")
    c.add_argument("--int-random", type=int, default=16, help="random integer variants (shapes, widths, u8/i8)")
    c.add_argument("--attention-random", type=int, default=12, help="random attention kernels (tile candidates)")
    c.add_argument("--no-float", action="store_true", help="integer kernels only")
    c.add_argument("--number", type=int, default=3, help="calls per timed repeat")
    c.add_argument("--repeat", type=int, default=3, help="timed repeats")
    c.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per kernel's candidates "
                   "(each round's value: the least of its repeats; 1: one candidate after another)")
    c.add_argument("--refine", type=int, default=3, help="the fastest few candidates get --rounds more rounds")
    c.add_argument("--remeasure", action="store_true", help="measure candidates already in the database again "
                   "(an independent second measurement; the noise floor of the evaluation compares them)")
    c.add_argument("--num-threads", type=int, default=1, help="TVM threads while measuring (default 1: stable "
                   "timings on a shared machine)")
    c.add_argument("--rpc", help="measure on a TVM RPC server HOST:PORT or tracker:HOST:PORT:KEY")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(fn=cmd_collect)
    t = cs.add_parser("train", help="train the LightGBM model; prints leave-one-model-out metrics")
    t.add_argument("--db", required=True)
    t.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.lgb)")
    t.add_argument("--holdout", help="models to hold out for the printed metrics (default: each in turn)")
    t.set_defaults(fn=cmd_train)
    e = cs.add_parser("eval", help="evaluate a model (or leave-one-model-out training) on a database")
    e.add_argument("--db", required=True)
    e.add_argument("--model", help="a trained model file; without it, leave-one-model-out cross-validation")
    e.add_argument("--holdout", help="models to hold out (without --model)")
    e.add_argument("--plot", help="write a predicted-vs-measured PNG")
    e.set_defaults(fn=cmd_eval)
