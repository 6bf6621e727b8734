"""Collect (with a fake backend), train, evaluate, save / load, version refusal, the CLI: all on a small
synthetic database whose latencies follow a known rule, in a few seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcc.costmodel import job
from qcc.costmodel.database import MeasurementDB
from qcc.costmodel.evaluate import cross_validate, evaluate
from qcc.costmodel.model import AnalyticCostModel, LightGBMCostModel, active_model, choose, load_model, using
from qcc.errors import CostModelError

pytest.importorskip("lightgbm")

TARGET = {"lanes": 16, "vregs": 32, "l1d": 32768, "l2": 1 << 20, "l3": 32 << 20, "cores": 1}


def fake_space(kind, shapes, attrs):
    (m, k), (n, _) = shapes
    params = [{"type": "DenseParams", "mb": mb, "nv": nv, "lanes": 16, "kc": k, "order": "mn"}
              for mb in (1, 2, 4, 8) for nv in (1, 2, 4)]
    return "dense", {"type": "DenseShape", "M": m, "N": n, "K": k}, params


def fake_measure(kind, shapes, attrs, params, epilogue):
    """A latency with a known optimum: the register tile 4x2 is best, wasted (padded) rows cost time."""
    (m, k), (n, _) = shapes
    mb, nv = params["mb"], params["nv"]
    eff = 1.0 + 0.3 * abs(np.log2(mb / 4)) + 0.4 * abs(np.log2(nv / 2)) + 0.2 * (-(-m // mb) * mb / m - 1)
    return [2 * m * n * k / 20e9 * eff * f for f in (1.0, 1.02, 0.99)]


def specs():
    out = []
    for i, model in enumerate(("a", "b", "c", "d")):
        for j in range(6):
            m, n, k = 4 + 12 * j + i, 32 * (1 + (i + j) % 4), 64 * (1 + j % 3)
            out.append({"kind": "dense", "shapes": [[m, k], [n, k]], "attrs": {}, "epilogue": [], "model": model})
    return out


@pytest.fixture(scope="module")
def db_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("cm") / "m.sqlite"
    with MeasurementDB(path) as db:
        calls = []
        measure = lambda *a: calls.append(a) or fake_measure(*a)  # noqa: E731
        stats = job.collect(specs(), db, fake_space, measure, TARGET, candidates_per_kernel=8, quiet=True)
        assert stats["measured"] == 24 * 8 == len(calls) and stats["failed"] == 0
        again = job.collect(specs(), db, fake_space, measure, TARGET, candidates_per_kernel=8, quiet=True)
        assert again["measured"] == 0 and again["skipped"] == 24 * 8 and len(calls) == 24 * 8  # resumed: nothing new
        rows = db.rows()
    return path, rows


def test_collect_stores_failures_and_limits_kernels(tmp_path):
    def broken(*a):
        raise RuntimeError("llvm crashed")

    with MeasurementDB(tmp_path / "f.sqlite") as db:
        stats = job.collect(specs(), db, fake_space, broken, TARGET, candidates_per_kernel=2, max_kernels=3, quiet=True)
        assert stats == {**stats, "kernels": 3, "measured": 0, "failed": 6}
        assert db.rows() == [] and db.counts()["measurements"] == 6


def test_train_eval_round_trip(db_rows, tmp_path):
    path, rows = db_rows
    train, test = job.split_by_model(rows, ["d"])
    assert not {r["kernel_id"] for r in train} & {r["kernel_id"] for r in test}
    model = LightGBMCostModel.fit(train)
    rep = evaluate(model, test)
    assert rep["spearman"] > 0.9 and rep["mape"] < 0.5
    assert rep["top5"] >= 0.8 and rep["slowdown"] < rep["rule_slowdown"] + 0.05
    f = tmp_path / "model.lgb"
    model.save(f)
    again = load_model(f)
    np.testing.assert_allclose(again.predict(test), model.predict(test), rtol=1e-9)
    assert choose(again, test[:8]) == choose(model, test[:8])


def test_cross_validation_holds_out_every_model(db_rows):
    _, rows = db_rows
    rep, (held, pred) = cross_validate(rows)
    assert set(rep["folds"]) == {"a", "b", "c", "d"} and len(held) == len(rows) == len(pred)
    assert rep["spearman"] > 0.9 and np.all(pred > 0)


def test_analytic_model_orders_sizes():
    k = lambda m: {"kind": "dense", "shape": {"type": "DenseShape", "M": m, "N": 64, "K": 64},  # noqa: E731
                   "params": {"type": "DenseParams", "mb": 4, "nv": 2, "lanes": 16, "kc": 64}, "target": TARGET}
    t = AnalyticCostModel().predict([k(8), k(64), k(512)])
    assert t[0] < t[1] < t[2]


def test_other_feature_version_is_refused(db_rows, tmp_path):
    _, rows = db_rows
    f = tmp_path / "model.lgb"
    LightGBMCostModel.fit(rows[:40]).save(f)
    doc = json.loads(f.read_text())
    doc["feature_version"] += 1
    f.write_text(json.dumps(doc))
    with pytest.raises(CostModelError, match="features of version"):
        LightGBMCostModel.load(f)
    f.write_text("garbage")
    with pytest.raises(CostModelError, match="not a qcc cost model"):
        load_model(f)
    with pytest.raises(CostModelError, match="does not exist"):
        load_model(tmp_path / "missing.lgb")


def test_using_selects_the_active_model():
    analytic = AnalyticCostModel()
    with using(analytic):
        assert active_model() is analytic
    assert active_model() is not analytic


def test_cli_train_and_eval(db_rows, tmp_path, capsys):
    from qcc.cli import main

    path, _ = db_rows
    out = tmp_path / "model.lgb"
    assert main(["costmodel", "train", "--db", str(path), "-o", str(out)]) == 0
    assert "Spearman" in capsys.readouterr().out and out.exists()
    png = tmp_path / "fit.png"
    assert main(["costmodel", "eval", "--db", str(path), "--model", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"x" * 200)
    assert main(["costmodel", "train", "--db", str(bad), "-o", str(out)]) == 13
