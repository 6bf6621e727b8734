"""The backend side of the cost-model collect job: the candidate space of a kernel and a measuring function.

`qcc.costmodel` sits below the backends and never imports them; the CLI hands it the two callables here:

    space(kind, shapes, attrs)      -> (template kind, workload dict, [params dict, ...])   (no TVM needed)
    Measurer(...)(kind, shapes, attrs, params) -> [seconds per call, one per repeat]

Kernels are described as plain dicts (the kernels' `Shape` / `Params` dataclasses with a "type" field), the
form `qcc.costmodel.features` reads.

Remote measurement uses TVM's RPC, the standard mechanism for measuring on another machine or device:
`Measurer(rpc="host:port")` builds here, uploads the shared library to a `tvm.rpc` server (started on the
device with `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`) and times it there with the remote
`time_evaluator`; `rpc="tracker:host:port:key"` asks a `tvm.rpc` tracker for a device registered under `key`.
The build then targets this machine's LLVM target unless `target` says otherwise (set it to the device's).
Local measurement (no RPC) is the default.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import choose_conv_impl, make_kernel, workload
from qcc.backends.tvm.kernels import params as P
from qcc.backends.tvm.kernels.params import CpuInfo, candidates, default_params
from qcc.backends.tvm.kernels.tune import params_from_json, params_to_json, random_inputs
from qcc.errors import BackendError

_SHAPE_TYPES = {c.__name__: c for c in (P.DenseShape, P.BatchMatmulShape, P.Conv2dShape)}


def shape_to_dict(shape: P.Shape) -> dict[str, Any]:
    """A workload as a plain dict: its dataclass fields plus "type" (the class name)."""
    return {"type": type(shape).__name__, **{k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in dataclasses.asdict(shape).items()}}


def cpu_to_dict(cpu: CpuInfo) -> dict[str, Any]:
    """The target features the cost model reads (vector lanes and registers, caches, cores)."""
    return dataclasses.asdict(cpu)


def space(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
          cpu: CpuInfo | None = None) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The template kind (conv2d resolved by `choose_conv_impl`), workload and every valid parameter set of a
    kernel, the rule's default first."""
    cpu = cpu or CpuInfo.detect()
    shape = workload(kind, shapes, attrs or {})
    if kind == "conv2d":
        kind = choose_conv_impl(shape, cpu)  # type: ignore[arg-type]
    d = default_params(kind, shape, cpu)
    cands = [d] + [c for c in candidates(kind, shape, cpu) if c != d]
    return kind, shape_to_dict(shape), [params_to_json(c) for c in cands]


def _parse_rpc(spec: str) -> tuple[str, str, int, str]:
    """"host:port" (a server) or "tracker:host:port:key" -> (mode, host, port, key)."""
    parts = spec.split(":")
    try:
        if parts[0] == "tracker" and len(parts) == 4:
            return "tracker", parts[1], int(parts[2]), parts[3]
        if len(parts) == 2:
            return "server", parts[0], int(parts[1]), ""
    except ValueError:
        pass
    raise BackendError(f"--rpc expects HOST:PORT or tracker:HOST:PORT:KEY, got {spec!r}")


class Measurer:
    """Build a kernel alone with `make_kernel` and time it: `number` calls per repeat, `repeat` repeats, each
    result the mean seconds per call of one repeat. Locally by default, or on a TVM RPC server / tracker device
    (`rpc`, see the module docstring)."""

    def __init__(self, number: int = 3, repeat: int = 3, min_repeat_ms: int = 5, rpc: str | None = None,
                 target: Any = None, cpu: CpuInfo | None = None, timeout: int = 60) -> None:
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.rpc, self.target, self.timeout = rpc, target, timeout
        self.cpu = cpu or CpuInfo.detect()
        self._session: Any = None

    def session(self) -> Any:
        """The RPC session (connected on first use), or None for local measurement."""
        if self.rpc is None:
            return None
        if self._session is None:
            from tvm import rpc

            mode, host, port, key = _parse_rpc(self.rpc)
            try:
                if mode == "tracker":
                    self._session = rpc.connect_tracker(host, port).request(key, session_timeout=self.timeout)
                else:
                    self._session = rpc.connect(host, port, session_timeout=self.timeout)
            except Exception as e:  # TVMError / OSError: say where
                raise BackendError(f"cannot connect to the TVM RPC {mode} at {host}:{port}: {e}") from e
        return self._session

    def __call__(self, kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None,
                 params: dict[str, Any], epilogue: Sequence[Any] = ()) -> list[float]:
        import tvm

        from qcc.backends.tvm.kernels.kernel import host_target

        p = params_from_json(params)
        kern = make_kernel(kind, shapes, attrs=attrs, params=p, epilogue=epilogue, cpu=self.cpu, use_db=False)
        target = tvm.target.Target(self.target or host_target())
        lib = tvm.compile(tvm.IRModule({"main": kern.func}), target=target)
        inputs = random_inputs(kern)
        sess = self.session()
        if sess is None:
            dev, mod = tvm.cpu(), lib.mod
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "kernel.so")
                lib.export_library(path)
                sess.upload(path)
            mod, dev = sess.load_module("kernel.so"), sess.cpu()
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        args.append(tvm.runtime.tensor(np.zeros(kern.output.shape, np.float32), dev))
        timer = mod.time_evaluator("main", dev, number=self.number,
                                   repeat=self.repeat, min_repeat_ms=self.min_repeat_ms)
        return [float(r) for r in timer(*args).results]
