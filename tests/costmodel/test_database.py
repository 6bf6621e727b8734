"""The SQLite measurement database: two concurrent writers, corrupt and foreign files, resumable reads."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from qcc.costmodel.database import MeasurementDB
from qcc.errors import CostModelError

TARGET = {"lanes": 16, "vregs": 32, "cores": 1}


def _kernel(m: int) -> dict:
    return {"kind": "dense", "shape": {"type": "DenseShape", "M": m, "N": 32, "K": 32}, "epilogue": [["relu"]]}


def _writer(path: str, who: int, n: int) -> None:
    with MeasurementDB(path) as db:
        tid, mid = db.target_id(TARGET), db.machine_id({"host": f"writer{who}"})
        for i in range(n):
            kid = db.add_kernel(_kernel(1 + i % 5), model=f"m{who}")
            (cid,) = db.add_candidates(kid, [{"type": "DenseParams", "mb": who, "nv": 1, "lanes": 16, "kc": 32}])
            db.add_measurement(cid, tid, mid, [1e-3 * (i + 1), 1.1e-3 * (i + 1), 0.9e-3 * (i + 1)])


def test_two_processes_append_concurrently(tmp_path):
    path = str(tmp_path / "m.sqlite")
    MeasurementDB(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with MeasurementDB(path) as db:
        counts = db.counts()
        rows = db.rows()
    # 5 shared kernels (both writers use them), 2 schedules each, every measurement kept.
    assert counts["measurements"] == 80 and counts["kernels"] == 5 and counts["candidates"] == 10
    assert counts["machines"] == 2 and counts["targets"] == 1
    assert {tuple(r["models"]) for r in rows} == {("m1", "m2")}
    assert all(r["seconds"] > 0 for r in rows)


def test_measurement_statistics_and_resume(tmp_path):
    with MeasurementDB(tmp_path / "m.sqlite") as db:
        tid, mid = db.target_id(TARGET), db.machine_id()
        kid = db.add_kernel(_kernel(4), "net")
        assert db.add_kernel(_kernel(4), "net") == kid  # stored once
        c1, c2 = db.add_candidates(kid, [{"mb": 1}, {"mb": 2}])
        assert db.add_candidates(kid, [{"mb": 2}]) == [c2]
        db.add_measurement(c1, tid, mid, [3.0, 1.0, 2.0])
        db.add_measurement(c2, tid, mid, [], error="BackendError: does not build")
        assert db.measured(tid) == {c1, c2}  # a resumed collect skips both
        (row,) = db.rows()  # the failed one is not training data
        assert row["seconds"] == 2.0 and row["params"] == {"mb": 1}
        spread = db.conn.execute("SELECT spread FROM measurements WHERE candidate_id = ?", (c1,)).fetchone()[0]
        assert spread == pytest.approx(1.0)


def test_failed_transaction_leaves_nothing(tmp_path):
    with MeasurementDB(tmp_path / "m.sqlite") as db:
        with pytest.raises(RuntimeError):
            with db.transaction() as c:
                c.execute("INSERT INTO targets (key, info) VALUES ('x', '{}')")
                raise RuntimeError("interrupted")
        assert db.counts()["targets"] == 0


def test_corrupt_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "m.sqlite"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(CostModelError, match="not a qcc measurement database"):
        MeasurementDB(path)
    assert path.read_bytes() == junk


def test_truncated_database_keeps_what_is_stored(tmp_path):
    path = tmp_path / "m.sqlite"
    with MeasurementDB(path) as db:
        db.target_id(TARGET)
    data = path.read_bytes()
    path.write_bytes(data[:100])  # header survives, pages are gone
    with pytest.raises(CostModelError):
        MeasurementDB(path).rows()
    assert path.read_bytes() == data[:100]


def test_foreign_sqlite_is_refused_and_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (name TEXT)")
    con.execute("INSERT INTO users VALUES ('ada')")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(CostModelError, match="another application"):
        MeasurementDB(path)
    assert path.read_bytes() == before
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM users").fetchall() == [("ada",)]
    con.close()


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "m.sqlite"
    with MeasurementDB(path) as db:
        with db.transaction() as c:
            c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(CostModelError, match="schema version 99"):
        MeasurementDB(path)
