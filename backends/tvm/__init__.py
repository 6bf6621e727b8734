"""qcc's TVM backend: lower a qcc Graph to Relax/TIR, build it for cpu or cuda, run, time, export, load.

    from qcc.backends.tvm import build, load_library
    exe = build(graph, Target("cpu-fp32", num_threads=2))
    outputs = exe.run([x])
    exe.export_library("model.so", metadata={...})
    exe2, metadata = load_library("model.so")

Importing this package does not import TVM; the names below load on first use. (`qcc.backends` itself never
imports this package.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Thread-pool environment defaults (spin count, no core pinning) before any TVM pool can start; no TVM import.
from qcc.backends.tvm import runtime as _runtime  # noqa: F401

if TYPE_CHECKING:
    from qcc.backends.tvm.build import build
    from qcc.backends.tvm.executable import TVMExecutable
    from qcc.backends.tvm.library import load_library

__all__ = ["TVMExecutable", "build", "load_library"]

_EXPORTS = {
    "build": "qcc.backends.tvm.build",
    "TVMExecutable": "qcc.backends.tvm.executable",
    "load_library": "qcc.backends.tvm.library",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # Importing submodule `build` binds the package attribute `build` to the module; rebind the function.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qcc.backends.tvm' has no attribute {name!r}")
