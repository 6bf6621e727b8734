"""qcc: a quantization-aware deep-learning compiler.

`import qcc` needs NumPy alone; torch, onnx and tvm load only when a frontend or backend needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qcc.version import __version__ as __version__

if TYPE_CHECKING:
    from qcc.api import CompiledModel, compile, load, plot_schedule
    from qcc.budget import Budget
    from qcc.interpreter import interpret
    from qcc.mixed import pareto, plot_bits
    from qcc.target import Target


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import qcc` light.
    if name in ("compile", "load", "CompiledModel", "import_model", "plot_schedule"):
        from qcc import api

        return getattr(api, name)
    if name == "interpret":
        from qcc.interpreter import interpret

        return interpret
    if name == "Budget":
        from qcc.budget import Budget

        return Budget
    if name in ("pareto", "plot_bits"):
        from qcc import mixed

        return getattr(mixed, name)
    if name == "Target":
        from qcc.target import Target

        return Target
    raise AttributeError(f"module 'qcc' has no attribute {name!r}")


__all__ = ["Budget", "CompiledModel", "Target", "compile", "interpret", "load", "import_model", "plot_schedule",
           "pareto", "plot_bits"]
