"""The TVM calibration runner: same values and ranges as the interpreter, same integer graph, the "auto" policy,
the calibration cache, and the compile pipeline's `calibration_runner` option."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from qcc.errors import OptionError
from qcc.interpreter import interpret_all
from qcc.ir.graph import Graph, GraphBuilder
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import print_graph
from qcc.passes.quant import quantize_graph
from qcc.passes.quant.calibrate import calibrate_graph, clear_cache
from qcc.target import Target

pytest.importorskip("tvm")
from qcc.backends.tvm.calibration_runner import (  # noqa: E402
    AUTO_MIN_MACS,
    AutoRunner,
    TVMCalibrationRunner,
    choose_runner,
    count_batches,
    graph_macs,
    observed_values,
)

pytestmark = pytest.mark.tvm


def small_cnn() -> Graph:
    """conv → relu → conv (+ residual) → relu → max_pool → global mean → linear: 16 channels, so the template
    lowering keeps activations in NCHW16c and must convert the observed values back."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input((1, 3, 12, 12), "f32", "x")
    w1 = b.param(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1")
    b1 = b.param(rng.normal(0, 0.1, (16,)).astype(np.float32), "b1")
    w2 = b.param(rng.normal(0, 0.1, (16, 16, 3, 3)).astype(np.float32), "w2")
    wf = b.param(rng.normal(0, 0.2, (10, 16)).astype(np.float32), "wf")
    conv = {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": 1}
    y = b.emit("relu", [b.emit("conv2d", [x, w1, b1], conv)])
    z = b.emit("relu", [b.emit("add", [b.emit("conv2d", [y, w2], conv), y])])
    p = b.emit("max_pool2d", [z], {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0, 0, 0),
                                   "dilation": (1, 1), "ceil_mode": False})
    m = b.emit("reshape", [b.emit("reduce_mean", [p], {"axes": (2, 3), "keepdims": False})], {"shape": (1, 16)})
    return b.output(b.emit("linear", [m, wf]))


def batches(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def runner() -> TVMCalibrationRunner:
    return TVMCalibrationRunner(Target("cpu-int8", num_threads=1))


@pytest.fixture(scope="module")
def cnn() -> Graph:
    return small_cnn()  # one graph object for the module: the runner builds once for it


def test_every_observed_value_matches_the_interpreter(runner, cnn):
    g = cnn
    feed = [batches(1)[0]]
    got, want = runner(g, feed), interpret_all(g, feed)
    assert runner.build_seconds > 0
    import qcc.backends.tvm as backend

    assert inspect.isfunction(backend.build)  # building did not shadow the package's build() (qcc.pipeline uses it)
    observed = observed_values(g)
    assert len(observed) == len(g.nodes)  # every node here has one float output
    for v in observed:
        assert got[v].shape == want[v].shape and got[v].dtype == want[v].dtype
        np.testing.assert_allclose(got[v], want[v], rtol=1e-4, atol=1e-5, err_msg=v.name)


def test_ranges_and_integer_graph_match_the_interpreter(runner, cnn):
    g = cnn
    clear_cache()
    ref = calibrate_graph(g, batches(), "minmax")
    clear_cache()
    fast = calibrate_graph(g, batches(), "minmax", runner=runner)
    assert ref.ranges.keys() == fast.ranges.keys()
    for v, (lo, hi) in ref.ranges.items():
        np.testing.assert_allclose(fast.ranges[v], (lo, hi), rtol=1e-5, atol=1e-7, err_msg=v.name)
    clear_cache()
    q_ref, _ = quantize_graph(g, calibration=batches(), progress=False, weight_method="minmax")
    clear_cache()
    ctx = PassContext(options={"calibration_runner": runner})
    q_fast, _ = quantize_graph(g, calibration=batches(), progress=False, weight_method="minmax", ctx=ctx)
    clear_cache()
    if print_graph(q_ref) != print_graph(q_fast):  # else only the scales may differ, by float rounding
        assert [n.op for n in q_ref.nodes] == [n.op for n in q_fast.nodes]
        pairs = [(a.type.quant, b.type.quant) for a, b in zip(_values(q_ref), _values(q_fast))]
        assert all((a is None) == (b is None) for a, b in pairs)
        scales = [(a.scale, b.scale) for a, b in pairs if a is not None]
        assert scales
        for a, b in scales:
            np.testing.assert_allclose(a, b, rtol=1e-6)


def _values(g: Graph) -> list:
    return list(g.inputs) + list(g.params) + [v for n in g.nodes for v in n.outputs]


def test_the_cache_skips_the_runner():
    g = small_cnn()
    calls = []

    def counting(graph, feed):
        calls.append(1)
        return interpret_all(graph, feed)

    clear_cache()
    first = calibrate_graph(g, batches(), runner=counting)
    second = calibrate_graph(g, batches(), runner=counting)
    assert len(calls) == 3 and first.ranges == second.ranges and first.key == second.key
    lazy = TVMCalibrationRunner()  # a cache hit never builds the float library
    third = calibrate_graph(g, batches(), runner=lazy)
    assert lazy.runs == 0 and lazy.build_seconds == 0 and third.ranges == first.ranges
    clear_cache()


def test_the_disk_cache_skips_the_build(runner, cnn, tmp_path):
    g = cnn
    clear_cache()
    runs = runner.runs
    first = calibrate_graph(g, batches(), cache_dir=str(tmp_path), runner=runner)
    assert runner.runs == runs + 3 and list(tmp_path.glob("calibration-*.json"))
    clear_cache()  # a new process: only the file remains
    lazy = TVMCalibrationRunner()
    second = calibrate_graph(g, batches(), cache_dir=str(tmp_path), runner=lazy)
    assert lazy.runs == 0 and second.ranges == first.ranges
    clear_cache()


def test_auto_policy_and_batch_counting():
    g = small_cnn()
    macs = graph_macs(g)
    assert macs == 16 * 144 * 27 + 16 * 144 * 144 + 10 * 16
    assert choose_runner("auto", g, 4) is None  # far below the threshold: the interpreter
    assert choose_runner("interpreter", g, 10**9) is None
    assert isinstance(choose_runner("tvm", g, 1), TVMCalibrationRunner)
    assert isinstance(choose_runner("auto", g, int(AUTO_MIN_MACS // macs) + 1), AutoRunner)
    with pytest.raises(OptionError, match="calibration_runner"):
        choose_runner("gpu", g, 1)
    x = np.zeros((1, 3, 12, 12), np.float32)
    assert count_batches([x, x], g) == 2
    assert count_batches(np.zeros((5, 3, 12, 12), np.float32), g) == 5
    assert count_batches([{"x": x}, (np.zeros((3, 3, 12, 12)),)], g) == 4
    assert count_batches(iter([x]), g) is None


def test_auto_falls_back_to_the_interpreter_when_the_build_fails(monkeypatch):
    from qcc.errors import BackendError

    auto = AutoRunner()

    def broken(graph):
        raise BackendError("no kernel")

    monkeypatch.setattr(auto.tvm, "build", broken)
    g = small_cnn()
    feed = [batches(1)[0]]
    env = auto(g, feed)
    assert auto.failed == "no kernel"
    np.testing.assert_array_equal(env[g.outputs[0]], interpret_all(g, feed)[g.outputs[0]])


def test_pipeline_option():
    from qcc.pipeline import optimize

    for mode, kind in (("tvm", TVMCalibrationRunner), ("interpreter", type(None))):
        clear_cache()
        ctx = PassContext(options={"calibration": batches(2), "calibration_runner": mode, "progress": False})
        optimize(small_cnn(), Target("cpu-int8"), ctx)
        used = ctx.options["calibration_runner"]
        assert isinstance(used, kind)
        if used is not None:
            assert used.runs == 2
    clear_cache()
    with pytest.raises(OptionError, match="calibration_runner"):
        optimize(small_cnn(), Target("cpu-fp32"), PassContext(options={"calibration_runner": "tvm"}))
    with pytest.raises(OptionError, match="calibration_runner"):
        optimize(small_cnn(), Target("cpu-int8"), PassContext(options={"calibration_runner": "fast"}))
