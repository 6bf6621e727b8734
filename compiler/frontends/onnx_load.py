"""Loading ONNX models: parse and sanity-check the protobuf, read external data safely, normalize the opset.

External tensor data is read only from files inside the model file's folder: absolute locations, '..' and
symbolic links that lead out of the folder raise `ModelLoadError`.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from qcc.errors import ModelLoadError

MIN_OPSET, MAX_OPSET = 13, 21
DEFAULT_DOMAINS = ("", "ai.onnx")


def load_model(model: Any) -> tuple[Any, str]:
    """(checked ModelProto with its external data loaded and opset in range, label naming it in messages)."""
    proto, label, base_dir = _load(model)
    _check_model(proto, label)
    if base_dir is not None:
        _load_external_data(proto, base_dir, label)
    _check_no_external(proto, label)
    return _normalize_opset(proto, label), label


def _load(model: Any) -> tuple[Any, str, Path | None]:
    """(ModelProto, label for messages, folder external data may come from)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "onnx model", None
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), "onnx model (bytes)"), "onnx model (bytes)", None
    if isinstance(model, (str, os.PathLike)):
        path = Path(os.fspath(model))
        if not path.is_file():
            raise ModelLoadError(f"ONNX model file {str(path)!r} does not exist or is not a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read ONNX model file {str(path)!r}: {e}") from e
        return _parse(data, str(path)), str(path), path.resolve().parent
    raise ModelLoadError(f"cannot import an ONNX model from a {type(model).__name__}: expected a path, bytes "
                         "or onnx.ModelProto")


def _parse(data: bytes, label: str) -> Any:
    import onnx

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (or RuntimeError in some builds)
        raise ModelLoadError(f"{label}: not a valid ONNX model (truncated or corrupt file: {e})") from e
    return proto


def _check_model(proto: Any, label: str) -> None:
    """Reject protobufs that parsed but are not models (random bytes can parse as an almost empty message)."""
    problems = []
    if proto.ir_version <= 0:
        problems.append("no IR version")
    if not proto.HasField("graph"):
        problems.append("no graph")
    elif not proto.graph.output:
        problems.append("the graph has no outputs")
    if not any(op.domain in DEFAULT_DOMAINS for op in proto.opset_import):
        problems.append("no opset import for the default domain")
    if problems:
        raise ModelLoadError(f"{label}: not a valid ONNX model (truncated or corrupt file: {'; '.join(problems)})")


def _all_tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _safe_location(location: str, base: Path, label: str, tensor: str) -> Path:
    """The file of an external-data location, refusing anything that escapes the model's folder."""
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(location)
        if p.is_absolute() or p.drive or p.root or ".." in p.parts:
            raise ModelLoadError(f"{label}: tensor {tensor!r} has external data location {location!r} outside the "
                                 "model's folder (absolute paths and '..' are refused)")
    path = (base / location).resolve()
    if not path.is_relative_to(base):  # a symbolic link pointing out of the folder
        raise ModelLoadError(f"{label}: tensor {tensor!r} external data {location!r} resolves outside the "
                             "model's folder")
    return path


def _load_external_data(proto: Any, base: Path, label: str) -> None:
    """Read external tensor data into the tensors (only from files inside `base`)."""
    import onnx

    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        if not info.get("location"):
            raise ModelLoadError(f"{label}: tensor {tensor.name!r} has external data without a location")
        path = _safe_location(info["location"], base, label, tensor.name)
        if not path.is_file():
            raise ModelLoadError(f"{label}: external data file {info['location']!r} of tensor {tensor.name!r} "
                                 "is missing")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length if length >= 0 else -1)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{label}: cannot read external data of tensor {tensor.name!r}: {e}") from e
        if length >= 0 and len(data) != length:
            raise ModelLoadError(f"{label}: external data file {info['location']!r} is truncated "
                                 f"(tensor {tensor.name!r} wants {length} bytes at offset {offset})")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _check_no_external(proto: Any, label: str) -> None:
    import onnx

    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelLoadError(f"{label}: tensor {tensor.name!r} keeps its data in an external file; pass the "
                                 "model as a file path so the data can be found next to it")


def _normalize_opset(proto: Any, label: str) -> Any:
    """Inline local functions and upgrade opsets 7-12; refuse opsets qcc does not know."""
    import onnx

    if len(proto.functions):
        try:
            import onnx.inliner

            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise ModelLoadError(f"{label}: cannot inline the model's local functions: {e}") from e
    opset = default_opset(proto)
    if opset > MAX_OPSET:
        raise ModelLoadError(f"{label}: opset {opset} is newer than qcc supports ({MIN_OPSET}-{MAX_OPSET}); "
                             f"convert it with onnx.version_converter.convert_version(model, {MAX_OPSET})")
    if opset < MIN_OPSET:
        try:
            import onnx.version_converter

            proto = onnx.version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:
            raise ModelLoadError(f"{label}: opset {opset} is older than qcc supports ({MIN_OPSET}-{MAX_OPSET}) "
                                 f"and onnx.version_converter cannot upgrade it: {e}") from e
    return proto


def default_opset(proto: Any) -> int:
    """The opset version of the default (ai.onnx) domain."""
    return max(op.version for op in proto.opset_import if op.domain in DEFAULT_DOMAINS)
