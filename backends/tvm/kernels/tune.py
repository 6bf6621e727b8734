"""Measure a few candidates of a kernel and remember the winner in a local database.

The database is one JSON file (env QCC_TUNE_DB, default ~/.cache/qcc/tuning.json) mapping
(kind, workload shape, TVM target string) to the winning parameters and their time. Writes take an advisory
file lock, re-read the file, and replace it atomically (temp file + os.replace), so concurrent compiles never
see a torn file and never lose each other's records. `lookup` is what later compiles call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels import params as P
from qcc.backends.tvm.kernels.kernel import Kernel, host_target
from qcc.errors import BackendError

_PARAM_TYPES = {c.__name__: c for c in (P.DenseParams, P.ConvParams, P.Im2colParams, P.DepthwiseParams)}
_SHAPE_TYPES = {c.__name__: c for c in (P.DenseShape, P.BatchMatmulShape, P.Conv2dShape)}
DB_VERSION = 1


def db_path() -> Path:
    """The tuning database file: $QCC_TUNE_DB, else ~/.cache/qcc/tuning.json."""
    env = os.environ.get("QCC_TUNE_DB")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qcc" / "tuning.json"


def _target_str(target: Any) -> str:
    t = target if target is not None else host_target()
    if isinstance(t, dict):
        return json.dumps(t, sort_keys=True)
    return str(t)


def _shape_dict(shape: P.Shape) -> dict[str, Any]:
    return {"type": type(shape).__name__, **{k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in dataclasses.asdict(shape).items()}}


def record_key(kind: str, shape: P.Shape, target: Any = None) -> str:
    """The database key of a kernel: kind, workload and target, as canonical JSON."""
    return json.dumps([kind, _shape_dict(shape), _target_str(target)], sort_keys=True)


def params_to_json(p: P.Params) -> dict[str, Any]:
    return {"type": type(p).__name__, **dataclasses.asdict(p)}


def params_from_json(d: dict[str, Any]) -> P.Params:
    d = dict(d)
    cls = _PARAM_TYPES.get(d.pop("type", ""))
    if cls is None:
        raise BackendError(f"tuning record has unknown parameter type: {d}")
    return cls(**d)  # type: ignore[return-value]


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"version": DB_VERSION, "records": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise BackendError(f"cannot read the tuning database {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise BackendError(f"{path} is not a qcc tuning database")
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_record(kind: str, shape: P.Shape, params: P.Params, seconds: float, target: Any = None,
                path: Path | None = None, extra: dict[str, Any] | None = None) -> None:
    """Store (or replace) the winner for a kernel; the write is locked and atomic."""
    path = path or db_path()
    with _locked(path):
        data = _read(path)
        data["records"][record_key(kind, shape, target)] = {
            "kind": kind, "shape": _shape_dict(shape), "target": _target_str(target),
            "params": params_to_json(params), "seconds": float(seconds), "time": time.time(), **(extra or {})}
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def lookup(kind: str, shape: P.Shape, target: Any = None, path: Path | None = None) -> P.Params | None:
    """The recorded winner for this kernel on this target, or None."""
    path = path or db_path()
    if not path.exists():
        return None
    rec = _read(path)["records"].get(record_key(kind, shape, target))
    return None if rec is None else params_from_json(rec["params"])


def random_inputs(kernel: Kernel, seed: int = 0) -> list[np.ndarray]:
    """Random float32 arrays for every input of a kernel (already in its layouts)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(a.shape).astype(np.float32) for a in kernel.inputs]


def measure(kernel: Kernel, target: Any = None, number: int = 5, repeat: int = 3, min_repeat_ms: int = 20) -> float:
    """Seconds per call of a kernel built alone: the best of `repeat` averages (the least disturbed by other
    processes on a shared machine), each over at least `number` calls / `min_repeat_ms`."""
    import tvm

    run = kernel.build(target)
    lib = run.lib  # type: ignore[attr-defined]
    args = [tvm.runtime.tensor(a) for a in random_inputs(kernel)]
    args.append(tvm.runtime.tensor(np.zeros(kernel.output.shape, np.float32)))
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(min(timer(*args).results))


def tune(kind: str, shapes: Sequence[Sequence[int]], attrs: dict[str, Any] | None = None,
         epilogue: Sequence[Any] = (), target: Any = None, max_candidates: int = 6,
         candidates: Sequence[P.Params] | None = None, path: Path | None = None,
         save: bool = True) -> tuple[P.Params, list[tuple[P.Params, float]]]:
    """Build and time up to `max_candidates` parameter sets (the default rule's first, then the candidates the
    analytic score ranks best) and record the fastest. Returns (best, [(params, seconds), ...])."""
    from qcc.backends.tvm.kernels import choose_conv_impl, make_kernel, rank_candidates, workload

    shape = workload(kind, shapes, attrs or {})
    if kind == "conv2d":
        kind = choose_conv_impl(shape)  # type: ignore[arg-type]
    cands = list(candidates) if candidates is not None else rank_candidates(kind, shape)[:max_candidates]
    results: list[tuple[P.Params, float]] = []
    for p in cands:
        kern = make_kernel(kind, shapes, attrs=attrs, params=p, epilogue=epilogue)
        results.append((p, measure(kern, target)))
    if not results:
        raise BackendError(f"no candidates to tune for {kind} {shape}")
    best, secs = min(results, key=lambda r: r[1])
    if save:
        save_record(kind, shape, best, secs, target, path, {"measured": len(results)})
    return best, results
