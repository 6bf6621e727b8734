"""qcc: a quantization-aware deep-learning compiler.

`import qcc` needs NumPy alone; torch, onnx and tvm load only when a frontend or backend needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from qcc.api import CompiledModel, compile, load
    from qcc.interpreter import interpret
    from qcc.target import Target


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import qcc` light.
    if name in ("compile", "load", "CompiledModel", "import_model"):
        from qcc import api

        return getattr(api, name)
    if name == "interpret":
        from qcc.interpreter import interpret

        return interpret
    if name == "Target":
        from qcc.target import Target

        return Target
    raise AttributeError(f"module 'qcc' has no attribute {name!r}")


__all__ = ["CompiledModel", "Target", "compile", "interpret", "load", "import_model"]
