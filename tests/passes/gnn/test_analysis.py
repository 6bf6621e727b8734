"""GNN cost analysis: FLOPs, bytes moved and peak intermediate memory, checked by hand on tiny graphs."""

from __future__ import annotations

import numpy as np

from qcc.ir.graph import Node
from qcc.ir.parser import parse
from qcc.passes.gnn.analysis import COST_FUNCTIONS, OpCost, analyze, format_analysis, node_cost, register_cost

TEXT = """func @main(%x: f32[4,2], %src: i64[10], %dst: i64[10]) -> (f32[4,3]) {
  %w = param "w" : f32[3,2]
  %z = param "z" : f32[4,3]
  %0 = linear(%x, %w) : f32[4,3]
  %1 = gather(%0, %src) {axis=0} : f32[10,3]
  %2 = relu(%1) : f32[10,3]
  %3 = reshape(%2) {shape=(10, 3)} : f32[10,3]
  %4 = index_add(%z, %dst, %3) {axis=0} : f32[4,3]
  return %4
}"""


def _graph():
    return parse(TEXT, {"w": np.ones((3, 2), np.float32), "z": np.zeros((4, 3), np.float32)})


def test_costs_by_hand():
    g = _graph()
    lin, gat, relu, view, seg = (node_cost(n) for n in g.nodes)
    assert lin == OpCost(2 * 4 * 3 * 2, 4 * (8 + 6 + 12))  # x, w read, out written
    assert gat == OpCost(0, 8 * 10 + 2 * 4 * 30)  # index, rows read, rows written
    assert relu == OpCost(30, 2 * 4 * 30)
    assert view == OpCost(0, 0)
    assert seg == OpCost(30, 4 * 12 + 8 * 10 + 4 * 30 + 4 * 12)
    cost = analyze(g)
    assert cost.flops == 48 + 30 + 30 and cost.num_nodes == 5
    assert cost.bytes_moved == sum(c.bytes for c in (lin, gat, relu, view, seg))
    assert cost.per_op["gather"] == gat and cost.edge_bytes == 2 * 120  # gather and relu outputs (the view aliases)


def test_peak_is_a_liveness_walk_with_views_aliasing():
    # Live: %0 (48 B) until the gather; %1 (120) until relu; %2 (120, aliased by %3) until index_add; %4 (48).
    # Peak while relu runs: %1 + %2 = 240 (%0 died after the gather).
    assert analyze(_graph()).peak_bytes == 240


def test_registered_cost_replaces_the_default_and_the_report_shows_ratios():
    g = _graph()
    saved = COST_FUNCTIONS.get("relu")
    try:
        register_cost("relu", lambda n: OpCost(1, 2))
        assert node_cost(g.nodes[2]) == OpCost(1, 2)
        cheap = analyze(g)
    finally:
        if saved is None:
            COST_FUNCTIONS.pop("relu")
        else:
            COST_FUNCTIONS["relu"] = saved
    full = analyze(g)
    assert cheap.flops == full.flops - 29
    text = format_analysis(full, cheap)
    assert "GNN analysis" in text and "FLOPs" in text and "x less" in text and "5 -> 5" in text
    assert "x less" not in format_analysis(None, cheap)


def test_unknown_ops_get_the_elementwise_default():
    g = _graph()
    node = g.nodes[2]
    fake = Node("some_new_op", node.inputs, node.outputs, {}, {}, "")
    assert node_cost(fake) == OpCost(30, 240)


def test_the_report_lists_the_rules_that_fired():
    cost = analyze(_graph())
    text = format_analysis(cost, cost, {"move_unary": 2, "regroup": 1})
    assert text.splitlines()[-1].split() == ["reorganized", "move_unary×2,", "regroup×1"]
