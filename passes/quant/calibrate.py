"""calibrate: run the reference interpreter over calibration batches and record each float tensor's range.

Every float value of the graph (float inputs and node outputs) gets an `Observer`; the clipping range comes from
`method` (`minmax`, `percentile`, `entropy`, `mse`; see `qcc.passes.quant.observers`). The ranges are written to
`ctx.options["quant.calibration"]` (a `CalibrationStats`, read by the quantize pass) and, for reading the IR, to
`node.meta["calibration"]` (one (lo, hi) per output). The graph itself is returned unchanged.

Batches come from the pass's `data` field or `ctx.options["calibration"]`: an iterable of arrays, torch tensors,
tuples/lists of them (one per graph input) or dicts by input name. A batch whose leading dimension is a multiple
of the graph's batch size is split into graph-sized chunks. An empty set, a batch of the wrong shape or NaN / inf
values raise `CalibrationError`. A tqdm progress bar on stderr shows the batches (`progress=False` quiets it).
Results are cached in memory per graph, data and options (a SHA-256 key), and on disk under `cache_dir` if set.
A backend may supply a faster way to compute every value (`ctx.options["calibration_runner"]`, a `Runner`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qcc.errors import CalibrationError, OptionError
from qcc.interpreter import interpret_all
from qcc.ir.graph import Graph, Value
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import print_graph, value_names
from qcc.ir.types import FLOAT_DTYPES, numpy_dtype
from qcc.passes._stats import record_stats
from qcc.passes.quant.observers import METHODS, Observer

Feeds = list[np.ndarray]
# Computes every value of a graph on one feed, like qcc.interpreter.interpret_all (e.g. a faster float build).
Runner = Callable[[Graph, Feeds], Mapping[Value, np.ndarray]]
_MEMORY_CACHE: dict[str, dict[str, tuple[float, float]]] = {}


@dataclass
class CalibrationStats:
    """Calibrated (lo, hi) clipping range of each float value, and the method and data that produced them."""

    ranges: dict[Value, tuple[float, float]]
    method: str
    key: str
    batches: list[Feeds] = field(default_factory=list)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def _as_feeds(batch: Any, graph: Graph, index: int) -> Feeds:
    names = [v.name for v in graph.inputs]
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise CalibrationError(f"calibration batch {index}: missing input(s) {missing}; expected {names}")
        arrays = [_to_numpy(batch[n]) for n in names]
    elif isinstance(batch, (tuple, list)):
        arrays = [_to_numpy(b) for b in batch]
    else:
        arrays = [_to_numpy(batch)]
    if len(arrays) != len(names):
        hint = " (batches must hold model inputs only, not labels)" if len(arrays) > len(names) else ""
        raise CalibrationError(f"calibration batch {index}: {len(arrays)} array(s) for {len(names)} graph "
                               f"input(s) {names}{hint}")
    return arrays


def _split(arrays: Feeds, graph: Graph, index: int) -> list[Feeds]:
    """Check shapes, dtypes and values; split a batch larger than the graph's batch size into chunks."""
    chunks = None
    for a, v in zip(arrays, graph.inputs):
        want = v.shape
        if a.shape == want:
            n = 1
        elif (a.ndim == len(want) and a.ndim > 0 and want[0] > 0 and a.shape[1:] == want[1:]
              and a.shape[0] % want[0] == 0 and a.shape[0] > 0):
            n = a.shape[0] // want[0]
        else:
            raise CalibrationError(f"calibration batch {index}, input {v.name!r}: shape {list(a.shape)} does not "
                                   f"match the model input {list(want)} (or a multiple of its batch size)")
        if chunks is not None and n != chunks:
            raise CalibrationError(f"calibration batch {index}: inputs hold different numbers of samples")
        chunks = n
        if a.dtype.kind not in "biuf" or (v.dtype not in FLOAT_DTYPES and a.dtype.kind == "f"):
            raise CalibrationError(f"calibration batch {index}, input {v.name!r}: dtype {a.dtype} is not numeric "
                                   f"or does not fit the model input's {v.dtype}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = "NaN" if np.isnan(a).any() else "inf"
            raise CalibrationError(f"calibration batch {index}, input {v.name!r}: contains {bad} values")
    assert chunks is not None
    out = []
    for i in range(chunks):
        feed = []
        for a, v in zip(arrays, graph.inputs):
            part = a if chunks == 1 else a[i * v.shape[0]:(i + 1) * v.shape[0]]
            feed.append(np.ascontiguousarray(part).astype(numpy_dtype(v.dtype), copy=False))
        out.append(feed)
    return out


def prepare_batches(batches: Iterable[Any] | None, graph: Graph) -> list[Feeds]:
    """Validate calibration batches against the graph inputs; returns graph-sized feeds."""
    if batches is None:
        raise CalibrationError("no calibration data given")
    if isinstance(batches, (np.ndarray, Mapping)) or hasattr(batches, "detach"):
        batches = [batches]  # one array / tensor / dict is one batch
    try:
        items = list(batches)
    except TypeError:
        raise CalibrationError(f"calibration data must be an iterable of batches, got "
                               f"{type(batches).__name__}") from None
    if not items:
        raise CalibrationError("the calibration set is empty: give at least one batch")
    feeds: list[Feeds] = []
    for i, batch in enumerate(items):
        feeds.extend(_split(_as_feeds(batch, graph, i), graph, i))
    return feeds


def cache_key(graph: Graph, feeds: list[Feeds], options: Mapping[str, Any]) -> str:
    """SHA-256 of the graph text, its parameters, the calibration data and the observer options."""
    h = hashlib.sha256(print_graph(graph).encode())
    for a in graph.params.values():
        h.update(np.ascontiguousarray(a).tobytes())
    for feed in feeds:
        for a in feed:
            h.update(str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(dict(options), sort_keys=True).encode())
    return h.hexdigest()


def _progress(items: list[Feeds], enabled: bool) -> Iterator[Feeds]:
    if not enabled:
        return iter(items)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dev dependency
        return iter(items)
    return iter(tqdm(items, desc="calibrating", unit="batch", file=sys.stderr, leave=False))


def observe(graph: Graph, feeds: list[Feeds], progress: bool = False,
            runner: Runner | None = None) -> dict[Value, Observer]:
    """Run the graph on every feed (the reference interpreter, or `runner`) and observe every float value."""
    run = runner or interpret_all
    observers: dict[Value, Observer] = {}
    for v in graph.inputs:
        if v.dtype in FLOAT_DTYPES:
            observers[v] = Observer(seed=len(observers))
    for n in graph.nodes:
        for v in n.outputs:
            if v.dtype in FLOAT_DTYPES:
                observers[v] = Observer(seed=len(observers))
    for feed in _progress(feeds, progress):
        with np.errstate(all="ignore"):
            env = run(graph, feed)
        for v, obs in observers.items():
            obs.update(env[v])
    return observers


def calibrate_graph(graph: Graph, batches: Iterable[Any] | None, method: str = "minmax", bits: int = 8,
                    symmetric: bool = True, percentile: float = 99.99, num_bins: int = 2048,
                    progress: bool = False, cache_dir: str = "", runner: Runner | None = None) -> CalibrationStats:
    """The calibrated range of every float value of `graph` (cached per graph, data and options)."""
    if method not in METHODS:
        raise OptionError(f"calibrate: method must be one of {list(METHODS)}, got {method!r}")
    if not 0.0 < percentile <= 100.0:
        raise OptionError(f"calibrate: percentile must be in (0, 100], got {percentile}")
    if bits < 2 or bits > 16 or num_bins < 8:
        raise OptionError(f"calibrate: bits must be in [2, 16] and num_bins ≥ 8 (got {bits}, {num_bins})")
    feeds = prepare_batches(batches, graph)
    options = {"method": method, "bits": bits, "symmetric": symmetric, "percentile": percentile,
               "num_bins": num_bins}
    key = cache_key(graph, feeds, options)
    names = value_names(graph)
    by_name = _MEMORY_CACHE.get(key)
    path = Path(cache_dir) / f"calibration-{key[:32]}.json" if cache_dir else None
    if by_name is None and path is not None and path.is_file():
        by_name = {k: (float(lo), float(hi)) for k, (lo, hi) in json.loads(path.read_text()).items()}
    if by_name is None:
        observers = observe(graph, feeds, progress, runner)
        by_name = {names[v]: obs.range(method, bits, symmetric, percentile, num_bins) for v, obs in observers.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(by_name, sort_keys=True))
            tmp.replace(path)
    _MEMORY_CACHE[key] = by_name
    ranges = {v: by_name[name] for v, name in names.items() if name in by_name}
    return CalibrationStats(ranges, method, key, feeds)


def clear_cache() -> None:
    """Forget the in-memory calibration cache."""
    _MEMORY_CACHE.clear()


@dataclass(frozen=True)
class Calibrate:
    """Observe every float tensor over calibration batches; store (lo, hi) ranges for the quantize pass.

    Options: `method` (minmax | percentile | entropy | mse), `bits` (activation bits the entropy and mse methods
    optimize for), `symmetric`, `percentile`, `num_bins` (entropy histogram), `progress` (tqdm bar on stderr),
    `cache_dir` (on-disk cache), `data` (the batches; default `ctx.options["calibration"]`).
    """

    name: ClassVar[str] = "calibrate"
    method: str = "minmax"
    bits: int = 8
    symmetric: bool = True
    percentile: float = 99.99
    num_bins: int = 2048
    progress: bool = True
    cache_dir: str = ""
    data: Any = field(default=None, compare=False, repr=False)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        batches = self.data if self.data is not None else ctx.options.get("calibration")
        stats = calibrate_graph(graph, batches, self.method, self.bits, self.symmetric, self.percentile,
                                self.num_bins, self.progress, self.cache_dir, ctx.options.get("calibration_runner"))
        ctx.options["quant.calibration"] = stats
        out = graph.copy()
        for n in out.nodes:
            if any(v in stats.ranges for v in n.outputs):
                n.meta["calibration"] = [stats.ranges.get(v) for v in n.outputs]
        record_stats(ctx, self.name, {"values": len(stats.ranges), "batches": len(stats.batches)})
        return out
