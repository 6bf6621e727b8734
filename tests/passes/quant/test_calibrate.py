"""calibrate: observers against hand-computed cases, OCTAV's Gaussian optimum, the pass (ranges, cache, progress)
and every way calibration data can be wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcc.errors import CalibrationError, OptionError
from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import get_pass
from qcc.passes.quant import calibrate as calib_mod
from qcc.passes.quant.calibrate import Calibrate, calibrate_graph, clear_cache, prepare_batches
from qcc.passes.quant.observers import (
    Observer,
    entropy_candidate_kl,
    entropy_threshold,
    octav_clip,
    octav_clip_rows,
    percentile_threshold,
)


# -- observers vs hand-computed cases ----------------------------------------------------------------------------------
def test_minmax():
    obs = Observer()
    obs.update(np.array([-0.5, 2.0]))
    obs.update(np.array([[1.0, -3.0]]))
    assert obs.range("minmax") == (-3.0, 3.0)
    assert obs.range("minmax", symmetric=False) == (-3.0, 2.0)
    pos = Observer()
    pos.update(np.array([0.0, 0.5, 4.0]))
    assert pos.range("minmax") == (0.0, 4.0)  # non-negative: unsigned range


def test_percentile():
    x = np.arange(1, 101, dtype=np.float64)  # |x| = 1..100
    assert percentile_threshold(x, 99.0) == pytest.approx(1 + 0.99 * 99)  # linear interpolation: 99.01
    obs = Observer()
    obs.update(-x)
    assert obs.range("percentile", percentile=50.0) == pytest.approx((-50.5, 50.5))


def test_entropy_hand_computed_kl():
    # hist [3, 1, 0, 1] cut at i = 2 into 1 level: P = [3, 2] (outliers into the last bin), Q = [2, 2] (the cut
    # histogram's mass 4 spread over P's two non-empty bins); KL(P‖Q) = Σ p ln(p/q) with p, q normalized.
    hist = np.array([3, 1, 0, 1])
    want = 0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.5)
    assert entropy_candidate_kl(hist, 2, 1) == pytest.approx(want, rel=1e-3)  # smoothing moves ~1e-4 mass


def test_entropy_keeps_a_range_that_loses_nothing_and_clips_a_lone_outlier():
    # Two equally filled bins at 0 and max: every candidate below max merges differently, the full range is exact.
    x = np.array([0.05] * 10 + [7.95] * 10)
    assert entropy_threshold(x, num_bins=8, levels=2) == pytest.approx(7.95)  # KL = 0 only at the full range
    # Mass in the first bins and one far outlier: the KL-optimal threshold clips the outlier (candidates start at
    # `levels` bins, here 128 · 100/2048 = 6.25).
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.uniform(0, 1, 10000), [100.0]])
    t = entropy_threshold(y, num_bins=2048, levels=128)
    assert 6.25 <= t < 25.0


def test_octav_hand_computed_fixed_point():
    # From s0 = mean|x| = 2.8: one value (10) above s, four below: s = 10 / (4 · 4^-2/3 + 1) = 120/13, stable.
    assert octav_clip(np.array([1.0, 1.0, 1.0, 1.0, 10.0]), bits=2) == pytest.approx(120 / 13)
    # Unsigned noise is 4^-B/12: s = 10 / (4/192 + 1)
    assert octav_clip(np.array([1.0, 1.0, 1.0, 1.0, 10.0]), bits=2, unsigned=True) == pytest.approx(10 / (1 + 1 / 48))


@pytest.mark.parametrize("bits,ratio,rel", [(2, 1.742, 0.01), (3, 2.168, 0.01), (4, 2.572, 0.01), (8, 3.945, 0.03)])
def test_octav_converges_to_the_gaussian_optimum(bits, ratio, rel):
    # quantization.md §6: s*/σ = 2.572 at 4 bits; the 8-bit optimum sits in the sparse tail (sampling noise).
    sigma = 0.7
    x = np.random.default_rng(1).normal(0.0, sigma, 400_000)
    assert octav_clip(x, bits) / sigma == pytest.approx(ratio, rel=rel)


def test_octav_per_row_matches_per_tensor():
    rows = np.random.default_rng(2).normal(0, [[1.0], [3.0]], (2, 50_000))
    got = octav_clip_rows(rows, 4)
    assert got == pytest.approx([octav_clip(rows[0], 4), octav_clip(rows[1], 4)])
    assert got[1] / got[0] == pytest.approx(3.0, rel=0.03)


# -- the pass -----------------------------------------------------------------------------------------------------
def _graph():
    b = GraphBuilder()
    x = b.input((2, 3), "f32", "x")
    w = b.param(np.eye(3, dtype=np.float32) * 2, "w")
    y = b.emit("linear", [x, w], name="fc")
    return b.output(b.emit("relu", [y], name="act"))


def _batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (2, 3)).astype(np.float32) for _ in range(n)]


def test_pass_records_ranges_in_ctx_and_meta():
    g = _graph()
    data = _batches()
    data[1][0, 0] = 5.0
    ctx = PassContext()
    out = run_passes(g, [Calibrate(progress=False, data=data)], ctx)
    stats = ctx.options["quant.calibration"]
    assert stats.ranges[g.inputs[0]] == (-5.0, 5.0)
    assert stats.ranges[g.nodes[0].output] == (-10.0, 10.0)  # 2·x
    assert stats.ranges[g.outputs[0]] == (0.0, 10.0)  # after relu: unsigned
    assert out.nodes[1].meta["calibration"] == [(0.0, 10.0)]
    assert ctx.stats["calibrate"] == {"batches": 3, "values": 3}


def test_data_from_ctx_options_and_batch_splitting():
    g = _graph()
    big = np.concatenate(_batches(2))  # [4, 3]: two graph-sized samples
    ctx = PassContext(options={"calibration": [big]})
    run_passes(g, [get_pass("calibrate", progress="false")], ctx)
    assert len(ctx.options["quant.calibration"].batches) == 2


def test_progress_bar_goes_to_stderr_and_can_be_quieted(capsys):
    clear_cache()
    calibrate_graph(_graph(), _batches(), progress=True)
    assert "calibrating" in capsys.readouterr().err
    clear_cache()
    calibrate_graph(_graph(), _batches(), progress=False)
    assert capsys.readouterr().err == ""


def test_cache_in_memory_and_on_disk(tmp_path, monkeypatch):
    clear_cache()
    calls = []
    real = calib_mod.observe
    monkeypatch.setattr(calib_mod, "observe", lambda *a, **k: calls.append(1) or real(*a, **k))
    g, data = _graph(), _batches()
    a = calibrate_graph(g, data, cache_dir=str(tmp_path))
    b = calibrate_graph(g, data, cache_dir=str(tmp_path))
    assert len(calls) == 1 and a.key == b.key and a.ranges == b.ranges
    assert len(list(tmp_path.glob("calibration-*.json"))) == 1
    clear_cache()
    c = calibrate_graph(g, data, cache_dir=str(tmp_path))  # from disk
    assert len(calls) == 1 and c.ranges == a.ranges
    calibrate_graph(g, data, method="percentile")  # other options: computed again
    calibrate_graph(g, _batches(seed=1))  # other data: computed again
    assert len(calls) == 3


def test_a_backend_runner_replaces_the_interpreter():
    clear_cache()
    seen = []

    def runner(graph, feed):
        seen.append(feed[0].shape)
        return calib_mod.interpret_all(graph, feed)

    ctx = PassContext(options={"calibration_runner": runner})
    run_passes(_graph(), [Calibrate(progress=False, data=_batches(2))], ctx)
    assert seen == [(2, 3), (2, 3)]


def test_methods_give_ranges_within_minmax():
    clear_cache()
    g, data = _graph(), _batches(4)
    mm = calibrate_graph(g, data, "minmax").ranges
    for method in ("percentile", "entropy", "mse"):
        r = calibrate_graph(g, data, method, percentile=90.0).ranges
        for v, (lo, hi) in r.items():
            assert mm[v][0] <= lo <= 0.0 <= hi <= mm[v][1] + 1e-9


@pytest.mark.parametrize("data,match", [
    ([], "calibration set is empty"),
    (None, "no calibration data"),
    (5, "iterable of batches"),
    ([np.zeros((2, 4), np.float32)], r"batch 0, input 'x': shape \[2, 4\] does not match the model input \[2, 3\]"),
    ([np.zeros((3, 3), np.float32)], "shape"),
    ([np.zeros((2, 3), np.float32), np.full((2, 3), np.nan, np.float32)], "batch 1, input 'x': contains NaN"),
    ([np.full((2, 3), np.inf, np.float32)], "contains inf"),
    ([(np.zeros((2, 3)), np.zeros((2, 3)))], "2 array.* for 1 graph input"),
    ([{"y": np.zeros((2, 3))}], r"missing input\(s\) \['x'\]"),
    ([np.array([["a"] * 3] * 2)], "not numeric"),
])
def test_bad_calibration_data(data, match):
    with pytest.raises(CalibrationError, match=match):
        prepare_batches(data, _graph())


def test_bad_options():
    with pytest.raises(OptionError, match="method must be one of"):
        calibrate_graph(_graph(), _batches(), method="kl")
    with pytest.raises(OptionError, match="percentile"):
        calibrate_graph(_graph(), _batches(), method="percentile", percentile=0.0)
