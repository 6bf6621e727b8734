"""Frontends: PyTorch (torch.export) and ONNX models to qcc's IR.

`import_model` dispatches on what it is given, importing torch or onnx only when the model needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from qcc.errors import ModelLoadError
from qcc.ir.graph import Graph


def _is_torch_model(model: Any) -> bool:
    mod = type(model).__module__
    return mod.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def import_model(model: Any, example_inputs: Sequence[Any] | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import a model into the IR.

    `model` is a `torch.nn.Module` or `torch.export.ExportedProgram` (needs `example_inputs`), an ONNX file
    path, ONNX bytes, or an `onnx.ModelProto` (`input_shapes` fixes dynamic dimensions).
    """
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ModelLoadError(f"model file {path!r} does not exist")
        if path.endswith((".pt", ".pt2", ".pth")):
            raise ModelLoadError(f"{path!r}: pass PyTorch models as nn.Module objects; qcc never unpickles files")
        from qcc.frontends.onnx_frontend import import_onnx

        return import_onnx(path, input_shapes)
    if isinstance(model, (bytes, bytearray)) or type(model).__name__ == "ModelProto":
        from qcc.frontends.onnx_frontend import import_onnx

        return import_onnx(model, input_shapes)
    if _is_torch_model(model):
        if example_inputs is None:
            raise ModelLoadError("a PyTorch model needs example_inputs=(x, ...) to be traced")
        from qcc.frontends.torch_frontend import import_torch

        return import_torch(model, tuple(example_inputs))
    raise ModelLoadError(f"cannot import a model of type {type(model).__name__}: expected a torch.nn.Module, "
                         "a torch.export.ExportedProgram, an ONNX file path, bytes or onnx.ModelProto")
