"""Graph-operator recognisers on hand-written IR: every matched form, and the look-alikes they must refuse."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.interpreter import interpret_all
from qcc.ir.parser import parse
from qcc.passes.gnn import (
    EdgeGather,
    SegmentReduce,
    SegmentSoftmax,
    find_graph_ops,
    has_graph_ops,
    match_gather,
    match_segment_reduce,
    match_segment_softmax,
)

HEAD = "func @main(%x: f32[6,3], %e: f32[8,3], %s: f32[8,2], %src: i64[8], %dst: i64[8], %k: i64[2,2])"


def _graph(ret: str, body: str, **params: np.ndarray):
    lines = "\n".join(f"  {ln.strip()}" for ln in body.strip().splitlines())
    data = {"z": np.zeros((6, 3), np.float32), "z2": np.zeros((6, 2), np.float32),
            "ones": np.ones((6, 3), np.float32), "ninf": np.full((6, 2), -np.inf, np.float32), **params}
    return parse(f"{HEAD} -> ({ret}) {{\n{lines}\n}}", data)


def _node(g, name):
    return next(n for n in g.nodes if n.outputs[0].name == name)


def test_gathers_on_axis_zero_with_a_vector_index_only():
    g = _graph("f32[8,3], f32[6,2], f32[2,2,3]", """
        %0 = gather(%x, %src) {axis=0} : f32[8,3]
        %1 = gather(%x, %src) {axis=1} : f32[6,8]
        %2 = gather(%x, %k) {axis=0} : f32[2,2,3]
        %3 = slice(%1) {starts=(0,), ends=(2,), axes=(1,), steps=(1,)} : f32[6,2]
        return %0, %3, %2""")
    m = match_gather(g.nodes[0], g)
    assert isinstance(m, EdgeGather) and m.table is g.inputs[0] and m.index is g.inputs[3] and m.out is g.outputs[0]
    assert match_gather(g.nodes[1], g) is None and match_gather(g.nodes[2], g) is None


def test_segment_reductions_from_index_add_index_reduce_and_scatter():
    g = _graph("f32[6,3], f32[6,3], f32[6,3], f32[6,3], f32[6,3], f32[6,3]", """
        %z = param "z" : f32[6,3]
        %ones = param "ones" : f32[6,3]
        %0 = index_add(%z, %dst, %e) {axis=0} : f32[6,3]
        %1 = index_add(%ones, %dst, %e) {axis=0} : f32[6,3]
        %2 = index_reduce(%z, %dst, %e) {axis=0, include_self=False, reduce="mean"} : f32[6,3]
        %3 = index_reduce(%x, %dst, %e) {axis=0, include_self=True, reduce="amax"} : f32[6,3]
        %4 = reshape(%dst) {shape=(8, 1)} : i64[8,1]
        %5 = expand(%4) {shape=(8, 3)} : i64[8,3]
        %6 = scatter_elements(%z, %5, %e) {axis=0, reduction="add"} : f32[6,3]
        %7 = scatter_elements(%z, %5, %e) {axis=0, reduction="min"} : f32[6,3]
        return %0, %1, %2, %3, %6, %7""")
    got = [match_segment_reduce(n, g) for n in g.nodes]
    kinds = [(r.reduce, r.base.name if r.base is not None else None) for r in got if r is not None]
    assert kinds == [("sum", None), ("sum", "ones"), ("mean", None), ("max", "x"), ("sum", None), ("min", "z")]
    assert all(r.index is g.inputs[4] and r.src is g.inputs[1] and r.num_segments == 6 for r in got if r)


@pytest.mark.parametrize("body", [
    '%0 = index_reduce(%x, %dst, %e) {axis=0, include_self=False, reduce="amax"} : f32[6,3]',  # keeps x untouched
    '%0 = index_reduce(%z, %dst, %e) {axis=0, include_self=True, reduce="mean"} : f32[6,3]',  # base counted
    '%0 = index_reduce(%z, %dst, %e) {axis=0, include_self=False, reduce="prod"} : f32[6,3]',
    '%0 = scatter_elements(%z, %k3, %e) {axis=0, reduction="add"} : f32[6,3]',  # index varies along the row
    '%0 = scatter_elements(%z, %k3, %e) {axis=0, reduction="none"} : f32[6,3]',
])
def test_segment_reduction_look_alikes_are_refused(body):
    k3 = np.arange(24, dtype=np.int64).reshape(8, 3) % 6
    g = _graph("f32[6,3]", f"""
        %z = param "z" : f32[6,3]
        %k3 = param "k3" : i64[8,3]
        {body}
        return %0""", k3=k3)
    assert match_segment_reduce(g.nodes[0], g) is None


SOFTMAX_FORMS = {
    "div": """
        %0 = exp(%s) : f32[8,2]
        %1 = index_add(%z2, %dst, %0) {axis=0} : f32[6,2]
        %2 = gather(%1, %dst) {axis=0} : f32[8,2]
        %out = div(%0, %2) : f32[8,2]""",
    "reciprocal_after_gather": """
        %0 = exp(%s) : f32[8,2]
        %1 = index_add(%z2, %dst, %0) {axis=0} : f32[6,2]
        %2 = gather(%1, %dst) {axis=0} : f32[8,2]
        %3 = reciprocal(%2) : f32[8,2]
        %out = mul(%3, %0) : f32[8,2]""",
    "reciprocal_before_gather": """
        %0 = exp(%s) : f32[8,2]
        %1 = index_add(%z2, %dst, %0) {axis=0} : f32[6,2]
        %2 = reciprocal(%1) : f32[6,2]
        %3 = gather(%2, %dst) {axis=0} : f32[8,2]
        %out = mul(%0, %3) : f32[8,2]""",
    "max_shift": """
        %m = scatter_elements(%ninf, %di, %s) {axis=0, reduction="max"} : f32[6,2]
        %g = gather(%m, %dst) {axis=0} : f32[8,2]
        %t = sub(%s, %g) : f32[8,2]
        %0 = exp(%t) : f32[8,2]
        %1 = scatter_elements(%z2, %di, %0) {axis=0, reduction="add"} : f32[6,2]
        %2 = gather(%1, %dst) {axis=0} : f32[8,2]
        %out = div(%0, %2) : f32[8,2]""",
}


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # empty segments: 1/0 never gathered
@pytest.mark.parametrize("form", sorted(SOFTMAX_FORMS))
def test_segment_softmax_forms_and_their_semantics(form):
    g = _graph("f32[8,2]", f"""
        %z2 = param "z2" : f32[6,2]
        %ninf = param "ninf" : f32[6,2]
        %u = unsqueeze(%dst) {{axes=(1,)}} : i64[8,1]
        %di = expand(%u) {{shape=(8, 2)}} : i64[8,2]
        {SOFTMAX_FORMS[form]}
        return %out""")
    sm = match_segment_softmax(g.nodes[-1], g)
    assert isinstance(sm, SegmentSoftmax) and sm.out is g.outputs[0] and sm.num_segments == 6
    assert sm.scores is g.inputs[2] and sm.index is g.inputs[4] and sm.nodes[-1] is g.nodes[-1]
    assert len(sm.nodes) == (7 if form == "max_shift" else 5 if "reciprocal" in form else 4)
    # The recognised op means what the dataclass says: a softmax over each destination's edges.
    rng = np.random.default_rng(0)
    s, dst = rng.standard_normal((8, 2)).astype(np.float32), rng.integers(0, 6, 8)
    env = interpret_all(g, [np.zeros((6, 3), np.float32), np.zeros((8, 3), np.float32), s, dst, dst,
                            np.zeros((2, 2), np.int64)])
    want = np.exp(s) / np.stack([np.exp(s)[dst == d].sum(0) for d in dst])
    np.testing.assert_allclose(env[sm.out], want, rtol=1e-5)


@pytest.mark.parametrize("change", ["other_index", "nonzero_base", "not_exp", "other_tensor"])
def test_segment_softmax_look_alikes_are_refused(change):
    base = "%ones2" if change == "nonzero_base" else "%z2"
    idx = "%src" if change == "other_index" else "%dst"
    ex = "%0 = sigmoid(%s) : f32[8,2]" if change == "not_exp" else "%0 = exp(%s) : f32[8,2]"
    num = "%s" if change == "other_tensor" else "%0"
    g = _graph("f32[8,2]", f"""
        %z2 = param "z2" : f32[6,2]
        %ones2 = param "ones2" : f32[6,2]
        {ex}
        %1 = index_add({base}, %dst, %0) {{axis=0}} : f32[6,2]
        %2 = gather(%1, {idx}) {{axis=0}} : f32[8,2]
        %out = div({num}, %2) : f32[8,2]
        return %out""", ones2=np.ones((6, 2), np.float32))
    assert match_segment_softmax(g.nodes[-1], g) is None


def test_find_graph_ops_lists_everything_in_node_order():
    g = _graph("f32[6,2]", f"""
        %z2 = param "z2" : f32[6,2]
        {SOFTMAX_FORMS["div"]}
        %3 = gather(%out, %src) {{axis=0}} : f32[8,2]
        %4 = index_add(%z2, %dst, %3) {{axis=0}} : f32[6,2]
        return %4""")
    kinds = [type(o).__name__ for o in find_graph_ops(g)]
    assert kinds == ["SegmentReduce", "EdgeGather", "SegmentSoftmax", "EdgeGather", "SegmentReduce"]
    assert has_graph_ops(g)
    assert isinstance(find_graph_ops(g)[0], SegmentReduce)


def test_a_graph_without_segment_reductions_has_no_graph_ops():
    g = _graph("f32[8,3]", """
        %0 = gather(%x, %src) {axis=0} : f32[8,3]
        return %0""")
    assert not has_graph_ops(g) and len(find_graph_ops(g)) == 1
