"""The passes ask the cost model through `CostModel.predict`: a fake model whose predictions flip a decision
proves the pass uses it (fusion of an epilogue step, attention tiles); the CUDA target keeps the analytic rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from qcc.costmodel.model import AnalyticCostModel, using
from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext
from qcc.passes import get_pass
from qcc.passes.fuse import GroupCost, groups_of
from qcc.target import Target

RNG = np.random.default_rng(0)


class FusedIsSlow:
    """Predicts a kernel with an activation in its epilogue 1000× slower than the analytic model says."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self.calls += [dict(k) for k in kernels]
        base = AnalyticCostModel().predict(kernels)
        slow = [any(step[0] == "relu" for step in k["epilogue"]) for k in kernels]
        return base * np.where(slow, 1000.0, 1.0)


def _linear_relu() -> Any:
    b = GraphBuilder()
    x = b.input((8, 32), "f32", "x")
    w, bias = b.param(RNG.standard_normal((16, 32)).astype(np.float32), "w"), b.param(np.zeros(16, np.float32), "b")
    y = b.emit("linear", [x, w, bias])
    return b.output(b.emit("relu", [y]))


def _fuse(graph: Any, device: str = "cpu") -> Any:
    return get_pass("fuse").run(graph, PassContext(target=Target(f"{device}-fp32")))


def test_fusion_asks_the_learned_model_and_its_prediction_flips_the_merge():
    g = _linear_relu()
    with using("rule"):  # no learned model: the analytic roofline fuses the activation into the linear kernel
        assert [[n.op for n in grp] for grp in groups_of(_fuse(g))] == [["linear", "relu"]]
    fake = FusedIsSlow()
    with using(fake):
        out = _fuse(g)
    assert [[n.op for n in grp] for grp in groups_of(out)] == [["linear"], ["relu"]]
    assert fake.calls and {k["kind"] for k in fake.calls} == {"dense"}
    assert any(k["epilogue"] == [["bias"], ["relu"]] for k in fake.calls)  # the merged kernel was predicted
    declined = [n.meta["fusion"]["declined"] for n in out.nodes if "fusion" in n.meta]
    assert any("predicted slower" in d for ds in declined for d in ds)
    # CUDA keeps the analytic roofline whatever model is active.
    with using(FusedIsSlow()):
        assert [[n.op for n in grp] for grp in groups_of(_fuse(g, "cuda"))] == [["linear", "relu"]]


def test_group_cost_covers_anchor_epilogues_only():
    g = _linear_relu()
    lin, relu = g.nodes
    cost = GroupCost(g, learned=FusedIsSlow())
    k = cost.kernel([lin, relu])
    assert k is not None and k["kind"] == "dense" and k["epilogue"] == [["bias"], ["relu"]]
    assert cost.kernel([relu]) is None  # an elementwise node alone: the roofline
    fused, apart = cost.compare([lin], [relu])
    assert fused > apart
    assert GroupCost(g).kernel([lin, relu]) is None  # no learned model: nothing covered


def _attention_node() -> Any:
    b = GraphBuilder()
    q, k, v = (b.input((1, 2, 40, 16), "f32", n) for n in "qkv")
    g = b.output(b.emit("attention", [q, k, v], {"scale": 0.25, "causal": False}))
    return g.nodes[0]


class PrefersTile:
    """Predicts the (br, bc) tile `best` fastest, every other tile slower."""

    def __init__(self, best: tuple[int, int]) -> None:
        self.best, self.seen = best, 0

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self.seen += len(kernels)
        return np.array([1e-3 if (k["params"]["br"], k["params"]["bc"]) == self.best else 2e-3 for k in kernels])


@pytest.mark.tvm
def test_attention_tiles_come_from_the_cost_model():
    pytest.importorskip("tvm")
    from qcc.backends.tvm.kernels.attention import choose_tiles, tile_candidates
    from qcc.backends.tvm.lower_attention import attention_shape, tiles_for

    node = _attention_node()
    s, _ = attention_shape(node)
    with using("rule"):
        rule = tiles_for(node, s, "cpu")
    assert node.meta["attention_tile_source"] == "rule"
    other = next(t for t in tile_candidates(s, rule) if t != rule)
    fake = PrefersTile(other)
    with using(fake):
        assert tiles_for(node, s, "cpu") == other
    assert fake.seen == len(tile_candidates(s, rule)) and node.meta["attention_tile_source"] == "cost model"
    with using(fake):
        assert tiles_for(node, s, "cuda") == choose_tiles(s, "cuda")  # CUDA: the shared-memory rule
    node.meta["attention_tile"] = (8, 16)  # the compile option still forces them
    with using(fake):
        assert tiles_for(node, s, "cpu") == (8, 16)
