"""The pattern-rewrite engine: matching and captures, declining, fixed points, stats, multi-output roots."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.interpreter import interpret
from qcc.ir.graph import Graph
from qcc.ir.parser import parse
from qcc.ir.printer import print_graph
from qcc.ir.rewrite import Const, Pat, RewriteBuilder, Rules, Var, remove_dead_nodes, rewrite
from qcc.ir.verifier import verify


def _g(body: str, sig: str = "%x: f32[4], %y: f32[4]", ret: str = "f32[4]") -> Graph:
    lines = "\n".join(f"  {ln.strip()}" for ln in body.strip().splitlines())
    return parse(f"func @main({sig}) -> ({ret}) {{\n{lines}\n}}")


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def test_captures_nodes_values_and_constants():
    g = _g("""
        %c = param "c" : f32[4] dense<[1.0, 2.0, 3.0, 4.0]>
        %0 = exp(%x) : f32[4]
        %1 = mul(%0, %c) : f32[4]
        %2 = mul(%0, %y) : f32[4]
        %3 = add(%1, %2) : f32[4]
        return %3""")
    seen = []

    def record(b: RewriteBuilder, root, inner, v, k):
        seen.append((root.op, inner.op, v.name, k.name, b.value_of(k).tolist(), b.value_of(v)))
        return None

    rewrite(g, Rules([(Pat("mul", Pat("exp", Var("v"), name="inner"), Const("k"), name="root"), record)]))
    # Only the mul by a param matches: Const does not capture the graph input %y.
    assert seen == [("mul", "exp", "x", "c", [1.0, 2.0, 3.0, 4.0], None)]


def test_repeated_names_must_capture_the_same_value():
    g = _g("""
        %0 = add(%x, %x) : f32[4]
        %1 = add(%x, %y) : f32[4]
        %2 = sub(%0, %1) : f32[4]
        return %2""")

    def double_to_mul(b, x):
        return b.emit("mul", [x, b.const(np.full(4, 2.0, np.float32), "two")])

    stats: dict[str, int] = {}
    out = rewrite(g, Rules([(Pat("add", Var("x"), Var("x")), double_to_mul)]), stats=stats)
    assert _ops(out) == ["mul", "add", "sub"] and stats == {"double_to_mul": 1}
    assert out.param_by_name("two").shape == (4,)
    verify(out)


def test_declining_tries_the_next_rule_and_leaves_the_graph():
    g = _g("""
        %0 = relu(%x) : f32[4]
        return %0""")
    calls = []

    def decline(b, x):
        calls.append("decline")
        return None

    def same(b, root):
        calls.append("same")
        return root.outputs  # returning the root's own outputs means "no change"

    stats: dict[str, int] = {}
    out = rewrite(g, Rules([(Pat("relu", Var("x")), decline), (Pat("relu", any_inputs=True, name="root"), same)]),
                  stats=stats)
    assert calls == ["decline", "same"] and stats == {}
    assert print_graph(out) == print_graph(g)


def test_attribute_predicates_and_op_alternatives():
    g = _g("""
        %0 = transpose(%x) {perm=(0,)} : f32[4]
        %1 = reshape(%0) {shape=(2, 2)} : f32[2,2]
        %2 = reshape(%1) {shape=(4,)} : f32[4]
        %3 = leaky_relu(%2) {alpha=0.5} : f32[4]
        %4 = leaky_relu(%3) {alpha=0.0} : f32[4]
        return %4""")

    def drop(b, x):
        return x

    rules = Rules([(Pat("leaky_relu", Var("x"), attrs={"alpha": 0.5}), drop),
                   (Pat(("transpose", "squeeze"), Var("x"), attrs=lambda a: a["perm"] == (0,)), drop)])
    out = rewrite(g, rules)
    assert _ops(out) == ["reshape", "reshape", "leaky_relu"]
    assert out.nodes[-1].attrs == {"alpha": 0.0}


def test_rewrites_run_to_a_fixed_point_and_max_iters_bounds_them():
    # mul(x, 2) -> add(x, x) makes a new node, which only the next sweep visits; add(x, x) -> relu(x) then fires.
    g = _g("""
        %two = param "two" : f32[] dense<[2.0]>
        %0 = mul(%x, %two) : f32[4]
        %1 = neg(%0) : f32[4]
        return %1""")

    def mul2_to_add(b, x, c):
        return b.emit("add", [x, x]) if np.all(b.value_of(c) == 2.0) else None

    def add_self_to_relu(b, x):
        return b.emit("relu", [x])

    rules = Rules([(Pat("mul", Var("x"), Const("c")), mul2_to_add)]) + Rules(
        [(Pat("add", Var("x"), Var("x")), add_self_to_relu)])
    assert len(rules.rules) == 2 and [f for _, f in rules.for_op("add")] == [add_self_to_relu]
    stats: dict[str, int] = {}
    assert _ops(rewrite(g, rules, stats=stats)) == ["relu", "neg"]
    assert stats == {"add_self_to_relu": 1, "mul2_to_add": 1}
    one = rewrite(g, rules, max_iters=1)
    assert _ops(one) == ["add", "neg"]
    assert [v.name for v in one.params] == []  # the multiplier died with the mul


def test_chains_collapse_in_one_sweep_and_the_input_graph_is_untouched():
    g = _g("""
        %0 = neg(%x) : f32[4]
        %1 = neg(%0) : f32[4]
        %2 = neg(%1) : f32[4]
        %3 = neg(%2) : f32[4]
        %4 = neg(%3) : f32[4]
        return %4""")
    before = print_graph(g)
    stats: dict[str, int] = {}
    out = rewrite(g, Rules([(Pat("neg", Pat("neg", Var("x"))), lambda b, x: x)]), stats=stats)
    assert _ops(out) == ["neg"] and out.nodes[0].inputs == (g.inputs[0],)
    assert stats == {"<lambda>": 2}
    assert print_graph(g) == before


def test_multi_output_root():
    g = _g("""
        %0, %1 = split(%x) {axis=0, sizes=(1, 3)} : f32[1], f32[3]
        %2 = exp(%1) : f32[3]
        return %0, %2""", sig="%x: f32[4]", ret="f32[1], f32[3]")

    def split_to_slices(b, root, x):
        outs = []
        start = 0
        for size in root.attrs["sizes"]:
            outs.append(b.emit("slice", [x], {"starts": (start,), "ends": (start + size,), "axes": (0,),
                                              "steps": (1,)}))
            start += size
        return tuple(outs)

    out = rewrite(g, Rules([(Pat("split", Var("x"), name="root"), split_to_slices)]))
    verify(out)
    assert _ops(out) == ["slice", "slice", "exp"]
    x = np.arange(4, dtype=np.float32)
    for want, got in zip(interpret(g, [x]), interpret(out, [x])):
        assert np.array_equal(want, got)

    with pytest.raises(ValueError, match="returned 1 values for 2 outputs"):
        rewrite(g, Rules([(Pat("split", Var("x")), lambda b, x: (x,))]))


def test_new_nodes_go_before_the_root_and_carry_its_name():
    g = _g("""
        %0 = exp(%x) : f32[4]
        %1 = sub(%0, %y) : f32[4]  // src.sub
        %2 = relu(%1) : f32[4]
        return %2""")

    def sub_to_add_neg(b, a, c):
        return b.emit("add", [a, b.emit("neg", [c])])

    out = rewrite(g, Rules([(Pat("sub", Var("a"), Var("c")), sub_to_add_neg)]))
    verify(out)
    assert _ops(out) == ["exp", "neg", "add", "relu"]
    assert [n.name for n in out.nodes] == ["", "src.sub", "src.sub", ""]


def test_remove_dead_nodes():
    g = _g("""
        %c = param "c" : f32[4] dense<[1.0, 2.0, 3.0, 4.0]>
        %d = param "d" : f32[4] dense<[1.0, 2.0, 3.0, 4.0]>
        %0 = add(%x, %c) : f32[4]
        %1, %2 = split(%y) {axis=0, sizes=(2, 2)} : f32[2], f32[2]
        %3 = exp(%0) : f32[4]
        %4 = concat(%2, %2) {axis=0} : f32[4]
        return %4, %d""", ret="f32[4], f32[4]")
    assert remove_dead_nodes(g) == 2
    assert _ops(g) == ["split", "concat"] and [v.name for v in g.params] == ["d"]
    assert remove_dead_nodes(g) == 0
