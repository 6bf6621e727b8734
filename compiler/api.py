"""The Python API: `qcc.compile(model, target, ...)` and `qcc.load(path)`."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcc.errors import LibraryLoadError, OptionError, TargetError
from qcc.frontends import import_model
from qcc.interpreter import bind_inputs
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import print_graph
from qcc.pipeline import QUANT_OPTIONS, build, fuse, load_executable, optimize
from qcc.target import OPTIONS, Target

# Compile options that are not target options (target options are listed in qcc.target.OPTIONS).
COMPILE_OPTIONS = ("input_shapes", "print_after_all", "print_after", "dump_dir", "verify", "out", "tune", "quiet",
                   "cost_model", "schedule", "schedule_time_limit",  # accel-*: scheduler method, time limit
                   "calibration_runner", "fusion", "attention", "attention_tile", "gnn_fuse",
                   *QUANT_OPTIONS)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


class CompiledModel:
    """A compiled library: call it with NumPy arrays (or torch tensors); export it; read its IR and report."""

    def __init__(self, executable: Any, target: Target, ir: str, input_names: Sequence[str],
                 graph: Graph | None = None, timings: Mapping[str, float] | None = None,
                 source: str = "", imported_ops: Mapping[str, int] | None = None, quant_report: Any = None,
                 tir_check: Any = None) -> None:
        self._exe = executable
        self.target = target
        self.ir = ir
        self.input_names = list(input_names)
        self.graph = graph
        self.pass_timings = dict(timings or {})
        self.source = source
        self.imported_ops = dict(imported_ops or {})
        self.quant_report = quant_report  # a QuantReport after compile; its text after load
        self.quant_text: str | None = quant_report if isinstance(quant_report, str) else (
            quant_report.text() if quant_report is not None else None)
        # The TIR no-float check of an integer build (qcc.backends.tvm.integer_check); its text after load.
        self.tir_check = tir_check if tir_check is not None else getattr(executable, "tir_check", None)
        self.tir_text: str | None = tir_check if isinstance(tir_check, str) else (
            self.tir_check.text() if self.tir_check is not None else None)
        self.gnn_before: Any = None  # qcc.passes.gnn.analysis.GraphCost of the graph before the GNN passes
        self.gnn_rules: dict[str, int] | None = None  # gnn-reorganize's rule counts

    def __call__(self, *inputs: Any, **named: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run on inputs given by position or by input name; one output → an array, several → a tuple."""
        arrays = self._bind(inputs, named)
        outs = self._exe.run(arrays)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _bind(self, inputs: Sequence[Any], named: Mapping[str, Any]) -> list[np.ndarray]:
        if named:
            if inputs:
                raise OptionError("pass inputs either by position or by name, not both")
            feeds: Mapping[str, np.ndarray] | list[np.ndarray] = {k: _to_numpy(v) for k, v in named.items()}
        else:
            feeds = [_to_numpy(x) for x in inputs]
        if self.graph is not None:
            env = bind_inputs(self.graph, feeds)  # checks count, shape and dtype, naming the input
            return [env[v] for v in self.graph.inputs]
        if isinstance(feeds, Mapping):
            return [feeds[n] for n in self.input_names]
        return list(feeds)

    def time(self, *inputs: Any, repeat: int = 20, number: int = 1) -> float:
        """Median seconds per run over `repeat` timed batches of `number` runs."""
        arrays = self._bind(inputs, {})
        self._exe.run(arrays)  # warm up
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                self._exe.run(arrays)
            samples.append((time.perf_counter() - t0) / number)
        return float(np.median(samples))

    def export_library(self, path: str | os.PathLike[str]) -> None:
        """Write the shared library and its qcc metadata (atomically); `qcc.load(path)` reads it back."""
        self._exe.export_library(os.fspath(path), {"ir": self.ir, "input_names": self.input_names,
                                                    "source": self.source, "quant_report": self.quant_text,
                                                    "tir_check": self.tir_text})

    def export_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write the compiled graph as ONNX (QDQ form for integer builds; see qcc.frontends.onnx_export), atomically."""
        if self.graph is None:
            raise OptionError("export_onnx needs the compiled graph; a library loaded with qcc.load has only code")
        from qcc.frontends.onnx_export import export_qdq

        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            export_qdq(self.graph, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def report(self) -> str:
        """A human-readable summary: target, ops, per-pass timings."""
        lines = [f"qcc library for {self.target}" + (f" from {self.source}" if self.source else "")]
        if self.graph is not None:
            counts = self.graph.op_counts()
            lines.append(f"  {len(self.graph.nodes)} ops: " + ", ".join(f"{k}×{v}" for k, v in counts.items()))
            nparams = sum(a.size for a in self.graph.params.values())
            nbytes = sum(a.nbytes for a in self.graph.params.values())
            lines.append(f"  parameters: {nparams} values, {nbytes / 1e6:.3f} MB")
        if self.imported_ops:
            lines.append(f"  imported: {sum(self.imported_ops.values())} ops")
        lines += self._kernel_lines()
        if self.pass_timings:
            lines.append("  passes: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.pass_timings.items()))
        if self.graph is not None:
            lines.extend(self._gnn_section())
        accel_report = getattr(self._exe, "accel_report", None)  # accel-*: schedule, scratchpad, traffic, cycles
        if callable(accel_report):
            lines.append(accel_report())
        if self.quant_text is not None:
            lines.append(self.quant_text)
            if self.tir_text is not None:
                lines.append(self.tir_text)
        elif self.target.is_integer:
            lines.append(f"  precision: {self.target.precision}")
        else:
            lines.append(f"  precision: {self.target.precision} (floating point throughout)")
        return "\n".join(lines)

    def _kernel_lines(self) -> list[str]:
        """The kernels the fuse pass decided (qcc.passes.fuse): counts, then name, kind, ops, predicted time."""
        if self.graph is None or not any("fusion_group" in n.meta for n in self.graph.nodes):
            return []
        from qcc.passes.fuse import summary

        s = summary(self.graph)
        launches = getattr(self._exe, "launches", None)
        lines = [f"  kernels: {s['kernels_before']} ops -> {s['kernels_after']} kernels after fusion"
                 + (f", {launches} launches per run" if launches is not None else "")]
        for r in s["groups"]:
            lines.append(f"    {r['name']:<28} {r['kind']:<16} [{', '.join(r['ops'])}]  predicted "
                         f"{r['predicted_s'] * 1e6:.1f} us (unfused {r['unfused_s'] * 1e6:.1f} us)"
                         + (f"; declined: {'; '.join(r['declined'])}" if r["declined"] else ""))
        return lines

    def _gnn_section(self) -> list[str]:
        """FLOPs / bytes moved / peak memory before the GNN passes and after all passes, for message-passing graphs."""
        from qcc.passes.gnn.analysis import analyze, format_analysis
        from qcc.passes.gnn.graph_ops import has_graph_ops

        before = getattr(self, "gnn_before", None)
        if self.graph is None or (before is None and not has_graph_ops(self.graph)):
            return []
        return [format_analysis(before, analyze(self.graph), getattr(self, "gnn_rules", None))]

    def __repr__(self) -> str:
        return f"<qcc.CompiledModel target={self.target} inputs={self.input_names}>"


def _split_options(target: str | Target, options: Mapping[str, Any]) -> tuple[Target, dict[str, Any]]:
    base = target if isinstance(target, Target) else Target(target)
    accepted = OPTIONS[base.device]
    target_opts = {k: v for k, v in options.items() if k in accepted}
    unknown = sorted(set(options) - set(target_opts) - set(COMPILE_OPTIONS))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown} for target {base.name!r}; compile options: "
                          f"{sorted(COMPILE_OPTIONS)}, target options: {sorted(accepted)}")
    return Target(base, **target_opts), {k: v for k, v in options.items() if k in COMPILE_OPTIONS}


def compile(model: Any, target: str | Target = "cpu-fp32", example_inputs: Sequence[Any] | None = None,
            **options: Any) -> CompiledModel:
    """Compile a PyTorch module, ExportedProgram, ONNX path/bytes/ModelProto for `target`.

    Options: `input_shapes={name: shape}` (ONNX dynamic dims), `print_after_all=True` or
    `print_after=[pass names]` (IR to `out`, default stderr), `dump_dir=path`, `verify=False`, `tune=True`
    (cpu: measure kernel parameter candidates, record the winners in the tuning database; progress on stderr
    unless `quiet=True`), `cost_model="model.lgb"` (the learned model that ranks kernel schedules without a
    tuning record; "analytic" for the analytic one; default: the model shipped for the CPU),
    `calibration_runner="auto"|"interpreter"|"tvm"` (integer targets: observe the calibration batches with the
    reference interpreter or a float TVM build of the graph; "auto" builds when the model is large),
    `fusion="auto"` (the fuse pass groups nodes into kernels) or "off" (one kernel per op),
    `attention="auto"` (float targets: softmax(Q·Kᵀ·s + mask)·V becomes one tiled attention kernel; integer
    targets: the integer chain becomes one exact `qattention` kernel from 1024 keys), "on" (`qattention` at any
    length) or "off",
    `attention_tile=(br, bc)` (force the attention kernel's query / key tile sizes), and target
    options such as `num_threads`, `mcpu`, `arch`.
    """
    if not isinstance(target, (str, Target)):
        raise TargetError(f"target must be a string like 'cpu-fp32' or a qcc.Target, got {type(target).__name__}")
    tgt, opts = _split_options(target, options)
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    graph = import_model(model, example_inputs, opts.get("input_shapes"))
    imported_ops = graph.op_counts()
    print_after = frozenset({"*"} if opts.get("print_after_all") else opts.get("print_after") or ())
    dump = opts.get("dump_dir")
    ctx = PassContext(target=tgt, options=opts, verify_each=opts.get("verify", True), print_after=print_after,
                      out=opts.get("out"), dump_dir=Path(dump) if dump else None)
    graph = optimize(graph, tgt, ctx)
    graph = fuse(graph, tgt, ctx)  # fusion="auto" | "off": the kernels the backend emits
    from qcc.costmodel.model import using

    with using(opts.get("cost_model")):  # a model file ranks kernel schedules (default: the shipped CPU model)
        exe = build(graph, tgt, {k: opts[k] for k in ("tune", "quiet", "fusion", "schedule", "schedule_time_limit")
                                 if k in opts})
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    compiled = CompiledModel(exe, tgt, print_graph(graph), [v.name for v in graph.inputs], graph, ctx.timings,
                             source, imported_ops, ctx.options.get("quant_report"))
    compiled.gnn_before = ctx.options.get("gnn_analysis_before")  # set by gnn-reorganize (message-passing graphs)
    compiled.gnn_rules = ctx.options.get("gnn_rules")
    return compiled


def plot_schedule(lib: CompiledModel, path: str | os.PathLike[str]) -> None:
    """Plot an accel-* library's scratchpad occupancy over time, buffer by buffer, to an image (matplotlib)."""
    from qcc.backends.accel.report import plot_schedule as _plot

    _plot(lib, path)


def load(path: str | os.PathLike[str]) -> CompiledModel:
    """Load a library written by `CompiledModel.export_library`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LibraryLoadError(f"library {path!r} does not exist")
    exe, meta = load_executable(path)  # validates format, version, hash and target
    return CompiledModel(exe, exe.target, meta.get("ir", ""), meta.get("input_names", []), None, None,
                         meta.get("source", ""), None, meta.get("quant_report"), meta.get("tir_check"))
