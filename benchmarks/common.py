"""Shared benchmark machinery: thread set-up, contenders, interleaved timing, tables and the results file.

This module imports no heavy library at the top: ``setup_threads`` must run before torch, onnxruntime or tvm is
imported, because their thread pools read the environment once, at import or first use.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def setup_threads(n: int) -> None:
    """Pin every runtime to ``n`` threads and make idle workers sleep instead of spinning.

    Spinning workers (OpenMP's default ACTIVE policy, TVM's pool spin count) steal cycles from whichever contender
    runs next in an interleaved benchmark, so all of them are set to passive here.
    """
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
    heavy = [m for m in ("torch", "tvm", "onnxruntime") if m in sys.modules]
    if heavy:
        print(f"warning: {heavy} imported before setup_threads; thread settings may not apply", file=sys.stderr)


def add_repo_to_path() -> None:
    """Make ``tests.zoo`` importable when a script in benchmarks/ or examples/ runs directly."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[list[str]]:
    """Silence file descriptor 2 (C++ libraries warn there) for the block; the captured text is appended to the
    yielded list, so a caller can show it when the block failed."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


@dataclass
class Contender:
    """One implementation of one model: ``fn()`` runs it on fixed inputs and returns the first output as NumPy."""

    name: str
    fn: Callable[[], np.ndarray] | None = None
    build_s: float = float("nan")
    error: str = ""  # why it was skipped (build failure, too slow, wrong output); empty when it ran
    note: str = ""  # extra facts for the table (frontend used, ...)
    times: list[float] = field(default_factory=list)
    output: np.ndarray | None = None
    spent_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.fn is not None and not self.error

    @property
    def median_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def build(name: str, builder: Callable[[], tuple[Callable[[], np.ndarray], str]]) -> Contender:
    """Run ``builder`` (returns ``(run function, note)``), timing it; a failure is recorded on the contender
    (first line of the error), never raised."""
    c = Contender(name)
    t0 = time.perf_counter()
    with quiet_stderr():
        try:
            c.fn, c.note = builder()
        except Exception as e:  # any failure of a third-party build is a result to report
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            c.error = f"build failed: {type(e).__name__}: {first}".replace("`", "'")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc(file=sys.stdout)
        gc.collect()  # half-built C++ objects warn on stderr when freed; free them while it is silenced
    c.build_s = time.perf_counter() - t0
    return c


def run_interleaved(contenders: Sequence[Contender], repeats: int, single_budget_s: float = 5.0,
                    total_budget_s: float = 90.0) -> None:
    """Time the contenders round-robin: one warm-up call each (its output is kept for checking), then ``repeats``
    rounds of one call each, so slow drifts of the machine hit every contender alike.

    A contender whose warm-up call or any timed call takes over ``single_budget_s`` is dropped with a note; one
    whose timed calls add up to over ``total_budget_s`` stops early and keeps the samples it has.
    """
    for c in contenders:
        if not c.ok:
            continue
        t0 = time.perf_counter()
        try:
            c.output = np.asarray(c.fn())  # type: ignore[misc]
        except Exception as e:
            c.error = f"run failed: {type(e).__name__}: {str(e).strip()[:160]}"
            continue
        dt = time.perf_counter() - t0
        if dt > single_budget_s:
            c.error = f"skipped: one run took {dt:.1f} s (> {single_budget_s:g} s budget)"
    active = [c for c in contenders if c.ok]
    for r in range(repeats):
        # Rotate who goes first each round, so no contender always runs right after the same neighbour.
        k = r % len(active) if active else 0
        for c in active[k:] + active[:k]:
            t0 = time.perf_counter()
            c.fn()  # type: ignore[misc]
            dt = time.perf_counter() - t0
            c.times.append(dt)
            c.spent_s += dt
            if dt > single_budget_s:
                c.error = f"skipped: a run took {dt:.1f} s (> {single_budget_s:g} s budget)"
            if dt > single_budget_s or c.spent_s > total_budget_s:
                active.remove(c)
        if not active:
            break


def max_abs_diff(a: np.ndarray | None, ref: np.ndarray | None) -> float:
    """max |a - ref| (inf when shapes differ, nan when either is missing)."""
    if a is None or ref is None:
        return float("nan")
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a - ref).max()) if a.size else 0.0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int, versions: dict[str, str]) -> list[str]:
    """Lines describing the machine and software, for the results file."""
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- CPU: {cpu_model()} ({cores} logical cores, {usable} usable); load average at start: {load}",
        f"- threads per contender: {threads}; OMP_WAIT_POLICY=PASSIVE, TVM_THREAD_POOL_SPIN_COUNT=0",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def append_results(path: Path, title: str, command: str, info: Sequence[str], body: str) -> None:
    """Append a dated section (title, exact command, machine lines, body) to the results file."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = "" if path.exists() else "# Benchmark results\n\nAppended by `benchmarks/*.py --write`; newest last.\n"
    text = f"{header}\n## {title} — {stamp}\n\n```\n{command}\n```\n\n" + "\n".join(info) + f"\n\n{body}\n"
    with path.open("a") as f:
        f.write(text)
