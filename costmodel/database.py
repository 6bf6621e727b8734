"""The measurement database: SQLite, append-only, safe for several collectors at once.

Tables: `meta` (format name and schema version), `machines` (where a measurement ran), `targets` (the target
features), `kernels` (kind, workload, epilogue, dtype, layout, and the model it came from), `candidates` (one
schedule of a kernel), `measurements` (per candidate × target × machine: every repeat, median, spread).

The file runs in WAL mode; every write is one `BEGIN IMMEDIATE` transaction (a crash leaves either all or
nothing of it), and a busy timeout lets two writers append concurrently. A file that is not SQLite, or a
SQLite file of another application, is refused with `CostModelError` and never modified.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qcc.errors import CostModelError

FORMAT = "qcc-costmodel-measurements"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS machines (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernels (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, kind TEXT NOT NULL,
    shape TEXT NOT NULL, epilogue TEXT NOT NULL, dtype TEXT NOT NULL, layout TEXT NOT NULL, model TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernel_models (kernel_id INTEGER NOT NULL REFERENCES kernels(id), model TEXT NOT NULL,
    UNIQUE (kernel_id, model));
CREATE TABLE IF NOT EXISTS candidates (id INTEGER PRIMARY KEY, kernel_id INTEGER NOT NULL REFERENCES kernels(id),
    key TEXT NOT NULL, params TEXT NOT NULL, UNIQUE (kernel_id, key));
CREATE TABLE IF NOT EXISTS measurements (id INTEGER PRIMARY KEY,
    candidate_id INTEGER NOT NULL REFERENCES candidates(id), target_id INTEGER NOT NULL REFERENCES targets(id),
    machine_id INTEGER NOT NULL REFERENCES machines(id), repeats TEXT NOT NULL, median REAL, spread REAL,
    error TEXT, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS measurements_candidate ON measurements (candidate_id, target_id);
"""


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): the identity of kernels, schedules and targets."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def machine_info() -> dict[str, Any]:
    """This machine: host name, CPU model, core count, OS."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "system": platform.platform()}


class MeasurementDB:
    """One measurement database file (created when missing). See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise CostModelError(f"cannot open the measurement database {self.path}: {e}") from e
        try:
            self._check_or_create()
        except CostModelError:
            self.conn.close()
            raise

    def _check_or_create(self) -> None:
        try:
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:  # "file is not a database": refuse, and do not touch the file
            raise CostModelError(f"{self.path} is not a qcc measurement database (corrupt or not SQLite: {e})") from e
        if tables and "meta" not in tables:
            raise CostModelError(f"{self.path} is an SQLite database of another application (tables: "
                                 f"{', '.join(sorted(tables))}); refusing to modify it")
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            with self.transaction() as c:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    c.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT),
                                                                    ("schema_version", str(SCHEMA_VERSION))])
                    meta = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION)}
        except sqlite3.DatabaseError as e:
            raise CostModelError(f"{self.path}: cannot use the measurement database: {e}") from e
        if meta.get("format") != FORMAT:
            raise CostModelError(f"{self.path} is not a qcc measurement database (format {meta.get('format')!r})")
        if int(meta.get("schema_version", -1)) != SCHEMA_VERSION:
            raise CostModelError(f"{self.path} has schema version {meta.get('schema_version')}; this qcc reads "
                                 f"version {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (BEGIN IMMEDIATE: takes the write lock up front, waits when busy)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MeasurementDB:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ writes

    @staticmethod
    def _get_or_insert(c: sqlite3.Connection, table: str, key: str, cols: Mapping[str, Any]) -> int:
        row = c.execute(f"SELECT id FROM {table} WHERE key = ?", (key,)).fetchone()
        if row:
            return int(row[0])
        names = ", ".join(["key", *cols])
        marks = ", ".join("?" * (len(cols) + 1))
        cur = c.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", (key, *cols.values()))
        return int(cur.lastrowid or 0)

    def add_kernel(self, kernel: Mapping[str, Any], model: str = "") -> int:
        """Insert a kernel (kind, shape, epilogue, dtype, layout) once, and note that `model` uses it; returns its
        id. A kernel shared by several models is stored once, with every model in `kernel_models`."""
        body = {k: kernel.get(k) for k in ("kind", "shape", "epilogue", "dtype", "layout")}
        body["epilogue"] = [list(s) if isinstance(s, (list, tuple)) else [s] for s in body["epilogue"] or ()]
        body["dtype"], body["layout"] = body["dtype"] or "f32", body["layout"] or "NCHWc"
        with self.transaction() as c:
            kid = self._get_or_insert(c, "kernels", canonical(body), {
                "kind": body["kind"], "shape": canonical(body["shape"]), "epilogue": canonical(body["epilogue"]),
                "dtype": body["dtype"], "layout": body["layout"], "model": model})
            c.execute("INSERT OR IGNORE INTO kernel_models VALUES (?, ?)", (kid, model))
            return kid

    def add_candidates(self, kernel_id: int, params: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert the schedules of a kernel once each; returns their ids in order."""
        out = []
        with self.transaction() as c:
            for p in params:
                key = canonical(p)
                row = c.execute("SELECT id FROM candidates WHERE kernel_id = ? AND key = ?",
                                (kernel_id, key)).fetchone()
                out.append(int(row[0]) if row else int(c.execute(
                    "INSERT INTO candidates (kernel_id, key, params) VALUES (?, ?, ?)",
                    (kernel_id, key, key)).lastrowid or 0))
        return out

    def target_id(self, target: Mapping[str, Any]) -> int:
        with self.transaction() as c:
            return self._get_or_insert(c, "targets", canonical(target), {"info": canonical(target)})

    def machine_id(self, info: Mapping[str, Any] | None = None) -> int:
        info = info or machine_info()
        with self.transaction() as c:
            return self._get_or_insert(c, "machines", canonical(info), {"info": canonical(info)})

    def add_measurement(self, candidate_id: int, target_id: int, machine_id: int, repeats: Sequence[float],
                        error: str | None = None) -> None:
        """Store one measurement: every repeat (seconds per call), their median and relative spread
        ((max - min) / median); `error` instead when the candidate failed to build or run."""
        reps = [float(r) for r in repeats]
        med = statistics.median(reps) if reps else None
        spread = (max(reps) - min(reps)) / med if reps and med else None
        with self.transaction() as c:
            c.execute("INSERT INTO measurements (candidate_id, target_id, machine_id, repeats, median, spread, "
                      "error, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (candidate_id, target_id, machine_id, json.dumps(reps), med, spread, error, time.time()))

    # ------------------------------------------------------------------------------------------------- reads

    def measured(self, target_id: int) -> set[int]:
        """Candidate ids already measured (or failed) on this target: what a resumed collect skips."""
        return {int(r[0]) for r in self.conn.execute(
            "SELECT DISTINCT candidate_id FROM measurements WHERE target_id = ?", (target_id,))}

    def rows(self) -> list[dict[str, Any]]:
        """Every successful measurement joined with its kernel, schedule and target, as kernel dicts with
        "seconds" (the least of the candidate's measurements' medians: each measurement is already a median
        of repeats, and on a shared machine interference only ever adds time, so a second measurement replaces a
        disturbed first one), "runs" (every measurement's median, in order), "repeats" (every stored repeat, in
        order), "kernel_id", "candidate_id" and "models" (every model that uses the kernel)."""
        q = ("SELECT k.id, k.kind, k.shape, k.epilogue, k.dtype, k.layout, k.model, c.id, c.params, t.info, "
             "m.median, m.repeats FROM measurements m JOIN candidates c ON m.candidate_id = c.id "
             "JOIN kernels k ON c.kernel_id = k.id JOIN targets t ON m.target_id = t.id "
             "WHERE m.error IS NULL AND m.median > 0 ORDER BY k.id, c.id, t.id, m.id")
        try:
            raw = self.conn.execute(q).fetchall()
        except sqlite3.DatabaseError as e:
            raise CostModelError(f"{self.path}: cannot read measurements: {e}") from e
        grouped: dict[tuple[int, int, str], dict[str, Any]] = {}
        for kid, kind, shape, epi, dtype, layout, model, cid, params, target, med, reps in raw:
            r = grouped.setdefault((kid, cid, target), {
                "kind": kind, "shape": json.loads(shape), "epilogue": json.loads(epi), "dtype": dtype,
                "layout": layout, "model": model, "params": json.loads(params), "target": json.loads(target),
                "kernel_id": kid, "candidate_id": cid, "_times": [], "repeats": []})
            r["_times"].append(float(med))
            r["repeats"] += [float(x) for x in json.loads(reps)]
        models: dict[int, set[str]] = {}
        for kid, model in self.conn.execute("SELECT kernel_id, model FROM kernel_models"):
            models.setdefault(int(kid), set()).add(model)
        out = []
        for r in grouped.values():
            r["models"] = sorted(models.get(r["kernel_id"], {r["model"]}))
            r["runs"] = r.pop("_times")
            r["seconds"] = min(r["runs"])
            out.append(r)
        return out

    def counts(self) -> dict[str, int]:
        """Row counts per table."""
        return {t: int(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("kernels", "kernel_models", "candidates", "measurements", "targets", "machines")}
