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


def test_integer_specs_collect_and_train_with_float_kernels(db_rows, tmp_path):
    base = [{"kind": "conv2d", "shapes": [[1, 8, 10, 10], [16, 8, 3, 3]], "attrs": {"padding": (1, 1, 1, 1)},
             "epilogue": [["bias"]], "model": "a"}, *specs()[:3], {"kind": "batch_matmul", "shapes": [[2, 4, 8],
                                                                                                   [2, 8, 4]]}]
    ints = job.integer_specs(base, (4, 8))
    assert [(s["kind"], s["attrs"]["w_bits"]) for s in ints[:2]] == [("qconv2d", 4), ("qconv2d", 8)]
    assert len(ints) == 8 and all(s["dtype"] == "u8" and s["epilogue"] == [["requantize"]] for s in ints)
    assert ints[2]["shapes"] == [base[1]["shapes"][0], base[1]["shapes"][1]]  # qlinear x [M, K], w [N, K]
    rand = job.random_int_variants(base, 6, bits=(4, 8))
    assert len(rand) == 6 and {s["attrs"]["x_dtype"] for s in rand} <= {"u8", "i8"}

    def int_space(kind, shapes, attrs):
        from qcc.costmodel.describe import int_kernel

        k = int_kernel(kind, shapes[0], shapes[1], attrs, attrs["x_dtype"], attrs["w_bits"])
        return kind, k["shape"], [{"type": "IntParams", "impl": i} for i in ("vnni", "generic")]

    def int_measure(kind, shapes, attrs, params, epilogue):  # the generic lowering is 50x slower
        macs = float(np.prod(shapes[1])) * (100 if kind == "qconv2d" else shapes[0][0])
        return [macs / 1e11 * (50 if params["impl"] == "generic" else 1)] * 2

    path, _ = db_rows
    copy = tmp_path / "m.sqlite"
    copy.write_bytes(path.read_bytes())
    with MeasurementDB(copy) as db:
        stats = job.collect(ints, db, int_space, int_measure, TARGET, quiet=True)
        assert stats["measured"] == 16
        rows = db.rows()
    irows = [r for r in rows if r["kind"] in ("qconv2d", "qlinear")]
    assert len(irows) == 16 and {r["dtype"] for r in irows} == {"u8"} and {r["layout"] for r in irows} == {"NCHW"}
    model = LightGBMCostModel.fit(rows)
    assert {"dense", "qconv2d", "qlinear"} <= set(model.meta["kinds"])
    f = tmp_path / "mixed.lgb"
    model.save(f)
    again = load_model(f)
    assert again.meta["path"] == str(f) and set(again.meta["kinds"]) == set(model.meta["kinds"])
    assert choose(again, [r for r in irows if r["kernel_id"] == irows[0]["kernel_id"]]) == 0  # vnni first


@pytest.mark.parametrize("argv,match", [(["--int-bits", "3"], "4- or 8-bit"), (["--int-bits", "x"], "widths like"),
                                        (["--rpc", "h:1"], "this machine only")])
def test_cli_collect_checks_integer_options(tmp_path, capsys, argv, match):
    from qcc.cli import main

    assert main(["costmodel", "collect", "--db", str(tmp_path / "m.sqlite"), *argv]) != 0
    assert match in capsys.readouterr().err
