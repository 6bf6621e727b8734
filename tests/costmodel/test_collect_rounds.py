"""The robust collect protocol: candidates built first, timed in interleaved rounds (least repeat per round),
the fastest few re-measured; failures stored; the noise floor of the pick slowdown from the stored rounds."""

from __future__ import annotations

from typing import Any

import numpy as np

from qcc.costmodel import job
from qcc.costmodel.database import MeasurementDB
from qcc.costmodel.evaluate import noise_floor

TARGET = {"lanes": 16, "vregs": 32, "l1d": 32768, "l2": 1 << 20, "l3": 32 << 20, "cores": 1}


def space(kind: str, shapes: Any, attrs: Any) -> Any:
    (m, k), (n, _) = shapes
    return "dense", {"type": "DenseShape", "M": m, "N": n, "K": k}, [
        {"type": "DenseParams", "mb": mb, "nv": 1, "lanes": 16, "kc": k, "order": "mn"} for mb in (1, 2, 4, 8)]


class Interleaving:
    """A measurer with `prepare`: records the order of builds and timings; mb=8 fails to build, and every
    timing is disturbed by a load that grows with the number of timings so far (interleaving spreads it)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def __call__(self, *a: Any) -> list[float]:  # the one-by-one protocol (rounds=1)
        return self.prepare(*a)()

    def prepare(self, kind: str, shapes: Any, attrs: Any, params: Any, epilogue: Any) -> Any:
        mb = params["mb"]
        if mb == 8:
            raise RuntimeError("no such schedule")
        self.log.append(("build", mb))

        def run() -> list[float]:
            self.log.append(("time", mb))
            load = 1.0 + 0.01 * len(self.log)
            return [1e-3 * mb * load * f for f in (1.3, 1.0, 1.1)]  # the least repeat is kept

        return run


def test_interleaved_rounds_refine_and_failures(tmp_path):
    spec = {"kind": "dense", "shapes": [[8, 32], [16, 32]], "attrs": {}, "epilogue": [], "model": "a"}
    m = Interleaving()
    with MeasurementDB(tmp_path / "m.sqlite") as db:
        stats = job.collect([spec], db, space, m, TARGET, candidates_per_kernel=4, quiet=True, rounds=3, refine=2)
        rows = db.rows()
        errors = db.conn.execute("SELECT error FROM measurements WHERE error IS NOT NULL").fetchall()
    assert stats["measured"] == 3 and stats["failed"] == 1 and stats["kernels_per_minute"] > 0
    assert errors and "no such schedule" in errors[0][0]
    # Every build before any timing; then rounds that each time every candidate once.
    first_time = next(i for i, e in enumerate(m.log) if e[0] == "time")
    assert all(e[0] == "build" for e in m.log[:first_time]) and first_time == 3
    times = [e[1] for e in m.log if e[0] == "time"]
    assert [sorted(times[i:i + 3]) for i in (0, 3, 6)] == [[1, 2, 4]] * 3
    assert sorted(times[9:]) == [1, 1, 1, 2, 2, 2]  # the two fastest get 3 more rounds
    reps = {r["params"]["mb"]: r["repeats"] for r in rows}
    assert [len(reps[mb]) for mb in (1, 2, 4)] == [6, 6, 3]
    assert all(min(r) >= 1e-3 * mb for mb, r in reps.items())  # the least of the 1.3 / 1.0 / 1.1 repeats
    assert all(r < 1.3e-3 * mb for mb, rs in reps.items() for r in rs)


def test_noise_floor_is_zero_when_halves_agree_and_grows_with_noise():
    def rows(noise: float, seed: int = 0) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        out = []
        for kid in range(20):
            for c, t in enumerate((1.0, 1.02, 1.5)):
                reps = list(t * (1 + noise * rng.standard_normal(6)))
                out.append({"kind": "dense", "shape": {}, "kernel_id": kid, "candidate_id": c, "target": TARGET,
                            "repeats": reps, "seconds": float(np.median(reps))})
        return out

    assert noise_floor(rows(0.0))["noise_slowdown"] == 0.0
    noisy = noise_floor(rows(0.05))
    assert 0.0 < noisy["noise_slowdown"] < 0.05 and noisy["noise_kernels"] == 20
    assert noise_floor([{**r, "repeats": [1.0]} for r in rows(0.0)]) == {}


def test_remeasure_keeps_both_runs_and_rows_take_the_least_disturbed(tmp_path):
    spec = {"kind": "dense", "shapes": [[8, 32], [16, 32]], "attrs": {}, "epilogue": [], "model": "a"}
    load = iter([1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])

    def measure(kind: str, shapes: Any, attrs: Any, params: Any, epilogue: Any) -> list[float]:
        return [1e-3 * params["mb"] * next(load)] * 3

    with MeasurementDB(tmp_path / "m.sqlite") as db:
        job.collect([spec], db, space, measure, TARGET, candidates_per_kernel=3, quiet=True)
        assert job.collect([spec], db, space, measure, TARGET, candidates_per_kernel=3, quiet=True)["measured"] == 0
        again = job.collect([spec], db, space, measure, TARGET, candidates_per_kernel=3, quiet=True, remeasure=True)
        rows = db.rows()
    assert again["measured"] == 3
    assert all(len(r["runs"]) == 2 and r["seconds"] == min(r["runs"]) for r in rows)
    floor = noise_floor(rows)
    assert floor["noise_runs_kernels"] == 1 and floor["noise_slowdown"] == 0.0  # same order in both runs
