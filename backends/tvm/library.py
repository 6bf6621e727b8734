"""Exported libraries: a TVM shared library plus qcc's JSON sidecar `<path>.json`.

The sidecar holds the format version, the qcc and TVM versions, the qcc target and the TVM target dict, the
input/output signature, the SHA-256 and size of the shared library, and the caller's metadata. Export is
atomic: both files are written to temporary names in the destination folder, fsync'ed, and moved into
place with `os.replace`, the library first and the sidecar last. A crash in between leaves the old sidecar,
whose hash no longer matches, so a half-written pair is detected at load time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from qcc.backends.tvm import host
from qcc.errors import BackendError, LibraryLoadError, TargetError
from qcc.target import Target

if TYPE_CHECKING:
    from qcc.backends.tvm.executable import TVMExecutable

FORMAT = "qcc-tvm-library"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "target", "tvm_target", "inputs", "outputs", "library")


def sidecar_path(path: str) -> str:
    return os.fspath(path) + ".json"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'ed
        _fsync_file(folder)


def _temp_name(folder: str, suffix: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".qcc-export-", suffix=suffix, dir=folder)
    os.close(fd)
    return tmp


def export_library(exe: TVMExecutable, path: str, metadata: dict[str, Any]) -> str:
    """Write `exe` to `path` (shared library) and `path.json` (sidecar); returns the absolute path."""
    import tvm

    from qcc.version import __version__

    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise BackendError(f"cannot export to {path}: folder {folder} does not exist")
    try:
        meta_json = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as e:
        raise BackendError(f"library metadata must be JSON-serialisable: {e}") from e
    tmp_so = _temp_name(folder, ".so")
    tmp_json = _temp_name(folder, ".json")
    try:
        if exe.module is not None and exe.lib_path is None:
            exe.module.export_library(tmp_so)
        elif exe.lib_path is not None:  # a loaded library: copy the bytes it came from
            shutil.copyfile(exe.lib_path, tmp_so)
        else:
            raise BackendError("this executable has no code to export")
        _fsync_file(tmp_so)
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "qcc_version": __version__,
            "tvm_version": str(tvm.__version__),
            "target": exe.target.to_dict(),
            "tvm_target": exe.tvm_target,
            "inputs": exe.inputs,
            "outputs": exe.outputs,
            "library": {"file": os.path.basename(path), "sha256": sha256_file(tmp_so),
                        "size": os.path.getsize(tmp_so)},
            "metadata": meta_json,
        }
        with open(tmp_json, "w", encoding="utf-8") as f:
            json.dump(sidecar, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_so, path)
        os.replace(tmp_json, sidecar_path(path))
        _fsync_dir(folder)
    except BackendError:
        raise
    except Exception as e:
        raise BackendError(f"exporting the library to {path} failed: {type(e).__name__}: {e}") from e
    finally:
        for tmp in (tmp_so, tmp_json):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    return path


def read_sidecar(path: str) -> dict[str, Any]:
    """Read and validate the sidecar of library `path` (without loading the library)."""
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise LibraryLoadError(f"{path}: the qcc sidecar {side} is missing (not a qcc library, or a partial copy)")
    try:
        with open(side, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LibraryLoadError(f"{path}: the sidecar {side} is corrupt: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LibraryLoadError(f"{path}: {side} is not a qcc TVM library sidecar")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise LibraryLoadError(f"{path}: the sidecar lacks {missing}")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise LibraryLoadError(f"{path}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise LibraryLoadError(f"{path}: library format version {version} is newer than this qcc understands "
                               f"({FORMAT_VERSION}); it was written by qcc {data.get('qcc_version', '?')}. "
                               f"Upgrade qcc or re-export the model.")
    lib = data["library"]
    if not isinstance(lib, dict) or not isinstance(lib.get("sha256"), str):
        raise LibraryLoadError(f"{path}: the sidecar has no library hash")
    return data


def load_library(path: str) -> tuple[TVMExecutable, dict[str, Any]]:
    """Load a library exported by `TVMExecutable.export_library`; returns (executable, caller's metadata).

    Raises `LibraryLoadError` for a missing library or sidecar, a corrupt sidecar, a hash mismatch, a newer
    format version, or a target that cannot run here (a non-TVM device, CPU features this host lacks). A CUDA
    library on a machine without a GPU loads its metadata; its `run()` raises `BackendError`.
    """
    from qcc.backends.tvm.executable import TVMExecutable, cuda_available

    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise LibraryLoadError(f"library {path} does not exist")
    data = read_sidecar(path)
    digest = sha256_file(path)
    if digest != data["library"]["sha256"]:
        raise LibraryLoadError(f"{path}: the library does not match its sidecar (sha256 {digest[:12]}… vs "
                               f"{str(data['library']['sha256'])[:12]}…): a partial write or a mixed-up pair")
    try:
        target = Target.from_dict(data["target"])
    except (TargetError, KeyError, TypeError) as e:
        raise LibraryLoadError(f"{path}: unknown target in the sidecar: {e}") from e
    tvm_target = data["tvm_target"]
    if target.device not in ("cpu", "cuda") or not isinstance(tvm_target, dict) \
            or tvm_target.get("kind") not in ("llvm", "cuda"):
        raise LibraryLoadError(f"{path}: built for {target.name!r}, which the TVM runtime cannot run")
    if target.device == "cpu":
        lacking = host.missing_features(tvm_target.get("mattr", []))
        if lacking:
            raise LibraryLoadError(f"{path}: built for CPU features {lacking} that this machine lacks; "
                                   f"rebuild it here (or with Target(..., mattr=[...]))")
    module = None
    if target.device == "cpu" or cuda_available():
        import tvm

        from qcc.backends.tvm import runtime as _runtime  # noqa: F401  (thread-pool environment defaults)

        try:
            module = tvm.runtime.load_module(path)
        except Exception as e:
            raise LibraryLoadError(f"{path}: TVM cannot load the library: {e}") from e
    exe = TVMExecutable(module, target, tvm_target, data["inputs"], data["outputs"], lib_path=path)
    exe.sidecar = data
    return exe, dict(data.get("metadata") or {})
