"""A calibration runner on a float TVM build: every observed value of a graph, computed by compiled kernels.

The calibrate pass (`qcc.passes.quant.calibrate`) observes every float value of the graph on every calibration
batch. Its default runner is the NumPy reference interpreter, which is exact but slow on convolutions (a
ResNet-18 batch takes seconds). `TVMCalibrationRunner` compiles the float graph once for the host CPU, with
every observed value as an extra output, and runs that build per batch:

- the graph is rebuilt with the same nodes and outputs = the float values the calibrate pass observes, then
  built for `cpu-fp32` with the kernel templates on. A value that is a graph output is never folded into a
  producer's epilogue (epilogue_groups), so every observed value is materialized; the template lowering
  converts values it keeps in NCHW[x]c back to NCHW for outputs, so arrays come back in the graph's layout;
- the build happens on the first call (a cached calibration never pays for it) and is kept per graph object;
- results agree with the interpreter to float32 rounding (different summation orders), which the calibrated
  ranges absorb (tests/backends/test_calibration_runner.py compares them).

`choose_runner(mode, graph, num_batches, target)` is the policy the compile pipeline applies for the option
`calibration_runner`: "interpreter", "tvm", or "auto" (TVM when the work — multiply-accumulates of the graph
times calibration batches — is large enough for the one-off build to pay off, see `AUTO_MIN_MACS`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcc.errors import BackendError, OptionError, QccError
from qcc.ir.graph import Graph, Value
from qcc.ir.types import FLOAT_DTYPES
from qcc.target import Target

MODES = ("auto", "interpreter", "tvm")
# "auto" builds when macs(graph) × batches reaches this. Measured on ResNet-18 (1.8 GMAC per 1×3×224×224 batch;
# 2 cores shared, load ~12): calibrating 8 batches took 13.5-21 s with the interpreter and 15-16 s with the TVM
# runner (7 s build + LLVM JIT on the first run), 32 batches 103-119 s against 41-47 s. The build pays off from
# roughly 10 ResNet-18 batches, ~20 GMAC of interpreted work.
AUTO_MIN_MACS = 20e9


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates of one run of `graph` (conv2d, linear, matmul; the rest is cheap by comparison)."""
    total = 0
    for n in graph.nodes:
        if n.op == "conv2d" and n.outputs:
            w = n.inputs[1].shape  # [O, C/groups, KH, KW]
            total += _prod(n.outputs[0].shape) * _prod(w[1:])
        elif n.op in ("linear", "matmul") and n.outputs and n.inputs[0].shape:
            total += _prod(n.outputs[0].shape) * int(n.inputs[0].shape[-1])
    return total


def observed_values(graph: Graph) -> list[Value]:
    """The node outputs the calibrate pass observes (float dtype), in graph order."""
    return [v for n in graph.nodes for v in n.outputs if v.dtype in FLOAT_DTYPES]


class TVMCalibrationRunner:
    """Computes every value of a graph on one feed with a float TVM build (a `calibrate.Runner`).

    `target`: the qcc target whose thread count the build uses (any device; the build is for the host CPU).
    After a run, `build_seconds` and `runs` say what it cost.
    """

    def __init__(self, target: Target | None = None) -> None:
        threads = target.options.get("num_threads") if target is not None else None
        self.target = Target("cpu-fp32", num_threads=threads) if threads else Target("cpu-fp32")
        self._graph: Graph | None = None
        self._exe: Any = None
        self._observed: list[Value] = []
        self.build_seconds = 0.0
        self.runs = 0

    def build(self, graph: Graph) -> None:
        """Compile `graph` with its observed values as outputs (done by the first call for that graph)."""
        # Through the package attribute: importing the submodule directly would shadow the package's `build`
        # function with the module for everyone else (qcc.pipeline). If someone did, take its function.
        from qcc.backends.tvm import build as build_attr

        build = getattr(build_attr, "build", build_attr)

        observed = observed_values(graph)
        if not observed:
            raise BackendError(f"graph {graph.name!r} has no float value to observe")
        probe = Graph(list(graph.inputs), dict(graph.params), list(graph.nodes), observed, graph.name)
        start = time.perf_counter()
        self._exe = build(probe, self.target, quiet=True, templates=True)
        self.build_seconds = time.perf_counter() - start
        self._graph, self._observed = graph, observed

    def __call__(self, graph: Graph, feed: Sequence[np.ndarray]) -> Mapping[Value, np.ndarray]:
        if graph is not self._graph:
            self.build(graph)
        outs = self._exe.run(list(feed))
        self.runs += 1
        env: dict[Value, np.ndarray] = dict(graph.params)
        env.update(zip(graph.inputs, feed))
        env.update(zip(self._observed, outs))
        return env


class AutoRunner:
    """The TVM runner, falling back to the interpreter for good if the float build fails (an op without a
    lowering, a template that rejects a shape): calibration must not fail because a speed-up is unavailable."""

    def __init__(self, target: Target | None = None) -> None:
        self.tvm = TVMCalibrationRunner(target)
        self.failed: str | None = None

    def __call__(self, graph: Graph, feed: Sequence[np.ndarray]) -> Mapping[Value, np.ndarray]:
        if self.failed is None:
            try:
                return self.tvm(graph, feed)
            except QccError as e:
                self.failed = str(e)
        from qcc.interpreter import interpret_all

        return interpret_all(graph, list(feed))


def tvm_available() -> bool:
    """Whether TVM imports here."""
    try:
        import tvm  # noqa: F401
    except ImportError:
        return False
    return True


def choose_runner(mode: Any, graph: Graph, num_batches: int | None, target: Target | None = None) -> Any:
    """The calibration runner for the option `calibration_runner` (None = the reference interpreter).

    "tvm" always builds (BackendError if TVM is missing); "interpreter" never does; "auto" builds when TVM is
    available and `graph_macs(graph) × num_batches ≥ AUTO_MIN_MACS` (an unknown batch count counts as one)."""
    if mode is None:
        mode = "auto"
    if mode not in MODES:
        raise OptionError(f"calibration_runner must be one of {list(MODES)}, got {mode!r}")
    if mode == "interpreter":
        return None
    if mode == "tvm":
        if not tvm_available():
            raise BackendError("calibration_runner='tvm' needs TVM (pip install apache-tvm)")
        return TVMCalibrationRunner(target)
    work = graph_macs(graph) * max(int(num_batches or 1), 1)
    if work < AUTO_MIN_MACS or not tvm_available():
        return None
    return AutoRunner(target)


def count_batches(calibration: Any, graph: Graph) -> int | None:
    """How many graph-sized feeds a calibration set holds, when that is known without consuming it."""
    if calibration is None or not graph.inputs:
        return None
    lead = graph.inputs[0].shape[0] if graph.inputs[0].shape else 1

    def feeds_in(batch: Any) -> int:
        first = batch
        if isinstance(batch, Mapping):
            first = batch.get(graph.inputs[0].name)
        elif isinstance(batch, (tuple, list)) and batch:
            first = batch[0]
        shape = getattr(first, "shape", None)
        if shape is None or len(shape) == 0 or not lead:
            return 1
        return max(int(shape[0]) // int(lead), 1)

    if isinstance(calibration, Mapping) or hasattr(calibration, "shape"):
        return feeds_in(calibration)
    if isinstance(calibration, (list, tuple)):
        return sum(feeds_in(b) for b in calibration)
    return None
