"""`TVMExecutable`: a compiled qcc graph on the Relax VM. NumPy in, NumPy out.

The executable knows its signature (input names, shapes, dtypes; output shapes, dtypes, in qcc's dtype
names) so that it can check calls and export a self-describing library. A CUDA executable can be built and
exported on a machine without a GPU; running it there raises `BackendError`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from qcc.backends.tvm import runtime
from qcc.errors import BackendError, ShapeMismatchError
from qcc.ir.graph import Graph
from qcc.ir.types import numpy_dtype
from qcc.target import Target

Spec = dict[str, Any]  # {"name": str, "shape": list[int], "dtype": str}


def io_specs(graph: Graph) -> tuple[list[Spec], list[Spec]]:
    """The JSON-able signature of a graph: input specs (with names) and output specs."""
    inputs = [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in graph.inputs]
    outputs = [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in graph.outputs]
    return inputs, outputs


def cuda_available() -> bool:
    """Whether a CUDA device is usable from this process."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # a TVM without the CUDA runtime
        return False


class TVMExecutable:
    """A graph compiled by the TVM backend.

    `run(inputs)` checks the inputs against the signature (`ShapeMismatchError` names the offending input),
    runs the VM and returns NumPy arrays; `time(inputs, number, repeat)` measures with the VM's
    time_evaluator; `export_library(path, metadata)` writes `path` and its sidecar `path.json` atomically.
    `module` is None for a CUDA library loaded where no GPU exists (metadata only).
    """

    def __init__(self, module: Any, target: Target, tvm_target: dict[str, Any], inputs: list[Spec],
                 outputs: list[Spec], kernels: Mapping[str, Any] | None = None, lib_path: str | None = None) -> None:
        self.module = module
        self.target = target
        self.tvm_target = dict(tvm_target)
        self.inputs = [dict(s) for s in inputs]
        self.outputs = [dict(s) for s in outputs]
        self.kernels = dict(kernels or {})  # kernel name -> (anchor op, member ops), when built here
        self.lib_path = lib_path  # the library this executable was loaded from, if any
        self.sidecar: dict[str, Any] | None = None  # the sidecar it was loaded with, if any
        self._vm: Any = None
        self._lock = threading.Lock()

    # -- calling ---------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.target.device

    def _device(self) -> Any:
        if self.device == "cuda":
            if self.module is None or not cuda_available():
                raise BackendError("built for cuda; no CUDA device here")
            return tvm.cuda(0)
        return tvm.cpu(0)

    def _get_vm(self) -> tuple[Any, Any]:
        dev = self._device()
        if self.module is None:
            raise BackendError(f"this {self.device} library has no loadable code here")
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.module, dev)
        return self._vm, dev

    def check_inputs(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Match arrays to the signature by position or name; safe same-kind dtype casts are applied."""
        names = [s["name"] for s in self.inputs]
        if isinstance(inputs, Mapping):
            missing = [n for n in names if n not in inputs]
            if missing:
                raise ShapeMismatchError(f"missing input(s) {missing}; expected {names}")
            arrays = [inputs[n] for n in names]
        else:
            arrays = list(inputs)
            if len(arrays) != len(names):
                raise ShapeMismatchError(f"expected {len(names)} input(s) {names}, got {len(arrays)}")
        out = []
        for spec, a in zip(self.inputs, arrays):
            a = np.asarray(a)
            if list(a.shape) != list(spec["shape"]):
                raise ShapeMismatchError(f"input {spec['name']!r}: expected shape {list(spec['shape'])}, "
                                         f"got {list(a.shape)}")
            want = numpy_dtype(spec["dtype"])
            if a.dtype != want:
                if not np.can_cast(a.dtype, want, casting="same_kind"):
                    raise ShapeMismatchError(f"input {spec['name']!r}: expected dtype {spec['dtype']}, got {a.dtype}")
                a = a.astype(want)
            out.append(np.ascontiguousarray(a))
        return out

    def _args(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], dev: Any) -> list[Any]:
        return [tvm.runtime.tensor(a, dev) for a in self.check_inputs(inputs)]

    def _prepare(self) -> tuple[Any, Any]:
        vm, dev = self._get_vm()
        if self.device == "cpu":
            runtime.configure_threads(self.target.num_threads)
        return vm, dev

    def run(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on NumPy inputs (by position or input name); returns the outputs as NumPy arrays."""
        with self._lock:
            vm, dev = self._prepare()
            args = self._args(inputs, dev)
            try:
                result = vm["main"](*args)
            except Exception as e:
                raise BackendError(f"running the {self.device} executable failed: {e}") from e
            outs = [result[i] for i in range(len(result))]
        arrays = []
        for spec, t in zip(self.outputs, outs):
            a = t.numpy()
            want = numpy_dtype(spec["dtype"])
            arrays.append(a if a.dtype == want else a.astype(want))
        return arrays

    __call__ = run

    def time(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], number: int = 10,
             repeat: int = 3) -> list[float]:
        """Seconds per run: `repeat` measurements, each the mean over `number` back-to-back runs."""
        if number < 1 or repeat < 1:
            raise ValueError("number and repeat must be >= 1")
        with self._lock:
            vm, dev = self._prepare()
            args = self._args(inputs, dev)
            res = vm.time_evaluator("main", dev, number=number, repeat=repeat)(*args)
        return [float(r) for r in res.results]

    # -- export ----------------------------------------------------------------------------------------
    def export_library(self, path: str, metadata: Mapping[str, Any] | None = None) -> str:
        """Write the shared library to `path` and qcc's sidecar to `path + ".json"` (atomically)."""
        from qcc.backends.tvm.library import export_library

        return export_library(self, path, dict(metadata or {}))

    def __repr__(self) -> str:
        sig = ", ".join(f"{s['name']}: {s['dtype']}{s['shape']}" for s in self.inputs)
        return f"TVMExecutable({self.target}, ({sig}) -> {len(self.outputs)} output(s))"
