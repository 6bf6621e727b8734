"""gnn-reorganize: golden IR + interpreter equivalence for each rule, the cases it must decline, and the no-op on
graphs without graph operators.

Tables have 6 rows and indices 8 entries: the seeded random indices lie in [-5, 5], valid for 6 rows."""

from __future__ import annotations

import re

import numpy as np

from qcc.ir.pass_manager import PassContext
from qcc.passes import GnnReorganize

HEAD = "func @main(%x: f32[6,3], %y: f32[6,3], %src: i64[8], %dst: i64[8])"


def _func(ret: str, body: str, head: str = HEAD) -> str:
    lines = "\n".join(f"  {ln.strip()}" for ln in body.strip().splitlines())
    return f"{head} -> ({ret}) {{\n{lines}\n}}"


def _zeros(text: str) -> dict[str, np.ndarray]:
    """Zero data for the params the text declares without inline data (``z`` / ``z2`` / ``index_add.const0``)."""
    out = {}
    for m in re.finditer(r'param "([^"]+)" : f32\[([0-9,]+)\]\s*$', text, re.M):
        out[m.group(1)] = np.zeros(tuple(int(d) for d in m.group(2).split(",")), np.float32)
    return out


def _check(check_pass, ret: str, before: str, after: str | None, head: str = HEAD) -> dict[str, int]:
    ctx = PassContext()
    check_pass(GnnReorganize(), params=_zeros(before), ctx=ctx, before=_func(ret, before, head),
               after=None if after is None else _func(ret, after, head))
    return ctx.stats.get("gnn-reorganize", {})


# A segment sum at the end of every graph, so the graph counts as message passing.
SUM = "%s = index_add(%z, %dst, %m) {axis=0} : f32[6,3]"
ZERO = '%z = param "z" : f32[6,3]'


def test_unary_ops_move_before_the_gather(check_pass):
    stats = _check(check_pass, "f32[6,3]", f"""
        {ZERO}
        %0 = gather(%x, %src) {{axis=0}} : f32[8,3]
        %1 = leaky_relu(%0) {{alpha=0.2}} : f32[8,3]
        %m = exp(%1) : f32[8,3]
        {SUM}
        return %s""", """
        %z = param "z" : f32[6,3]
        %0 = leaky_relu(%x) {alpha=0.2} : f32[6,3]
        %1 = exp(%0) : f32[6,3]
        %2 = gather(%1, %src) {axis=0} : f32[8,3]
        %3 = index_add(%z, %dst, %2) {axis=0} : f32[6,3]
        return %3""")
    assert stats == {"move_unary": 2}


def test_linear_and_row_reductions_move_but_axis_zero_ops_stay(check_pass):
    head = "func @main(%x: f32[6,3], %src: i64[8], %dst: i64[8])"
    _check(check_pass, "f32[6,2], f32[3]", """
        %w = param "w" : f32[2,3] dense<[0.5, -1.0, 2.0, 1.5, 0.25, -0.5]>
        %z = param "z" : f32[6,2] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %0 = gather(%x, %src) {axis=0} : f32[8,3]
        %1 = softmax(%0) {axis=1} : f32[8,3]
        %m = linear(%1, %w) : f32[8,2]
        %s = index_add(%z, %dst, %m) {axis=0} : f32[6,2]
        %2 = reduce_sum(%0) {axes=(0,), keepdims=False} : f32[3]
        return %s, %2""", """
        %w = param "w" : f32[2,3] dense<[0.5, -1.0, 2.0, 1.5, 0.25, -0.5]>
        %z = param "z" : f32[6,2] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %0 = gather(%x, %src) {axis=0} : f32[8,3]
        %1 = softmax(%x) {axis=1} : f32[6,3]
        %2 = linear(%1, %w) : f32[6,2]
        %3 = gather(%2, %src) {axis=0} : f32[8,2]
        %4 = index_add(%z, %dst, %3) {axis=0} : f32[6,2]
        %5 = reduce_sum(%0) {axes=(0,), keepdims=False} : f32[3]
        return %4, %5""", head)


def test_layer_norm_and_constant_scale_move(check_pass):
    _check(check_pass, "f32[6,3]", f"""
        {ZERO}
        %g = param "g" : f32[3] dense<[1.0, 2.0, 0.5]>
        %b = param "b" : f32[3] dense<[0.0, 0.125, -0.125]>
        %0 = gather(%x, %src) {{axis=0}} : f32[8,3]
        %1 = layer_norm(%0, %g, %b) {{axis=1, eps=1e-05}} : f32[8,3]
        %m = mul(%g, %1) : f32[8,3]
        {SUM}
        return %s""", """
        %z = param "z" : f32[6,3]
        %g = param "g" : f32[3] dense<[1.0, 2.0, 0.5]>
        %b = param "b" : f32[3] dense<[0.0, 0.125, -0.125]>
        %0 = layer_norm(%x, %g, %b) {axis=1, eps=1e-05} : f32[6,3]
        %1 = mul(%g, %0) : f32[6,3]
        %2 = gather(%1, %src) {axis=0} : f32[8,3]
        %3 = index_add(%z, %dst, %2) {axis=0} : f32[6,3]
        return %3""")


def test_same_index_binary_moves_and_different_indices_regroup(check_pass):
    """x[src]·y[src] is (x·y)[src]; x[src] − y[dst] + x[dst] groups to x[src] + (x − y)[dst] (EdgeConv)."""
    stats = _check(check_pass, "f32[6,3], f32[6,3]", f"""
        {ZERO}
        %0 = gather(%x, %src) {{axis=0}} : f32[8,3]
        %1 = gather(%y, %src) {{axis=0}} : f32[8,3]
        %m = mul(%0, %1) : f32[8,3]
        {SUM}
        %2 = gather(%y, %dst) {{axis=0}} : f32[8,3]
        %3 = gather(%x, %dst) {{axis=0}} : f32[8,3]
        %4 = sub(%0, %2) : f32[8,3]
        %5 = add(%4, %3) : f32[8,3]
        %6 = index_reduce(%z, %dst, %5) {{axis=0, reduce="amax", include_self=False}} : f32[6,3]
        return %s, %6""", """
        %z = param "z" : f32[6,3]
        %0 = mul(%x, %y) : f32[6,3]
        %1 = gather(%0, %src) {axis=0} : f32[8,3]
        %2 = index_add(%z, %dst, %1) {axis=0} : f32[6,3]
        %3 = gather(%x, %src) {axis=0} : f32[8,3]
        %4 = sub(%x, %y) : f32[6,3]
        %5 = gather(%4, %dst) {axis=0} : f32[8,3]
        %6 = add(%3, %5) : f32[8,3]
        %7 = index_reduce(%z, %dst, %6) {axis=0, include_self=False, reduce="amax"} : f32[6,3]
        return %2, %7""")
    assert stats == {"move_binary_same_index": 1, "regroup": 1}


def test_gat_score_split_over_the_concat(check_pass):
    """a·[h[dst] ‖ h[src]] = (h·a_l)[dst] + (h·a_r)[src], per head."""
    head = "func @main(%h: f32[6,2,2], %src: i64[8], %dst: i64[8])"
    stats = _check(check_pass, "f32[6,2]", """
        %a = param "a" : f32[2,4] dense<[1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]>
        %z = param "z" : f32[6,2] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %0 = gather(%h, %src) {axis=0} : f32[8,2,2]
        %1 = gather(%h, %dst) {axis=0} : f32[8,2,2]
        %2 = concat(%1, %0) {axis=2} : f32[8,2,4]
        %3 = mul(%2, %a) : f32[8,2,4]
        %4 = reduce_sum(%3) {axes=(2,), keepdims=False} : f32[8,2]
        %m = leaky_relu(%4) {alpha=0.2} : f32[8,2]
        %s = index_add(%z, %dst, %m) {axis=0} : f32[6,2]
        return %s""", """
        %z = param "z" : f32[6,2] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %"reduce_sum.const0" = param "reduce_sum.const0" : f32[2,2] dense<[1.0, 2.0, -1.0, -2.0]>
        %"reduce_sum.const1" = param "reduce_sum.const1" : f32[2,2] dense<[3.0, 4.0, -3.0, -4.0]>
        %0 = mul(%h, %"reduce_sum.const0") : f32[6,2,2]
        %1 = reduce_sum(%0) {axes=(2,), keepdims=False} : f32[6,2]
        %2 = gather(%1, %dst) {axis=0} : f32[8,2]
        %3 = mul(%h, %"reduce_sum.const1") : f32[6,2,2]
        %4 = reduce_sum(%3) {axes=(2,), keepdims=False} : f32[6,2]
        %5 = gather(%4, %src) {axis=0} : f32[8,2]
        %6 = add(%2, %5) : f32[8,2]
        %7 = leaky_relu(%6) {alpha=0.2} : f32[8,2]
        %8 = index_add(%z, %dst, %7) {axis=0} : f32[6,2]
        return %8""", head)
    assert stats["split_concat_score"] == 1 and stats["move_binary_const"] == 2 and stats["move_unary"] == 2


def test_linear_over_concat_and_over_difference(check_pass):
    """W[x[dst] ‖ x[src]] splits into two linears; Θ(x[src] − x[dst]) distributes (EdgeConv)."""
    head = "func @main(%x: f32[6,2], %src: i64[8], %dst: i64[8])"
    stats = _check(check_pass, "f32[6,1], f32[6,2]", """
        %w = param "w" : f32[1,4] dense<[1.0, 2.0, 3.0, 4.0]>
        %t = param "t" : f32[2,2] dense<[1.0, -1.0, 0.5, 2.0]>
        %z = param "z" : f32[6,1]
        %z2 = param "z2" : f32[6,2]
        %0 = gather(%x, %src) {axis=0} : f32[8,2]
        %1 = gather(%x, %dst) {axis=0} : f32[8,2]
        %2 = concat(%1, %0) {axis=1} : f32[8,4]
        %3 = linear(%2, %w) : f32[8,1]
        %s = index_add(%z, %dst, %3) {axis=0} : f32[6,1]
        %4 = sub(%0, %1) : f32[8,2]
        %5 = matmul(%4, %t) : f32[8,2]
        %6 = index_add(%z2, %dst, %5) {axis=0} : f32[6,2]
        return %s, %6""", """
        %t = param "t" : f32[2,2] dense<[1.0, -1.0, 0.5, 2.0]>
        %z = param "z" : f32[6,1] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %z2 = param "z2" : f32[6,2] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %"linear.const0" = param "linear.const0" : f32[1,2] dense<[1.0, 2.0]>
        %"linear.const1" = param "linear.const1" : f32[1,2] dense<[3.0, 4.0]>
        %0 = linear(%x, %"linear.const0") : f32[6,1]
        %1 = gather(%0, %dst) {axis=0} : f32[8,1]
        %2 = linear(%x, %"linear.const1") : f32[6,1]
        %3 = gather(%2, %src) {axis=0} : f32[8,1]
        %4 = add(%1, %3) : f32[8,1]
        %5 = index_add(%z, %dst, %4) {axis=0} : f32[6,1]
        %6 = matmul(%x, %t) : f32[6,2]
        %7 = gather(%6, %src) {axis=0} : f32[8,2]
        %8 = gather(%6, %dst) {axis=0} : f32[8,2]
        %9 = sub(%7, %8) : f32[8,2]
        %10 = index_add(%z2, %dst, %9) {axis=0} : f32[6,2]
        return %5, %10""", head)
    assert {"split_concat_linear", "distribute_linear", "move_linear"} <= set(stats)


def test_score_written_as_separate_matmuls(check_pass):
    """x[dst] @ A + x[src] @ B (the concat already split by hand) moves each GEMM before its gather."""
    head = "func @main(%x: f32[6,2], %src: i64[8], %dst: i64[8])"
    stats = _check(check_pass, "f32[6,1]", """
        %a = param "a" : f32[2,1] dense<[1.0, 2.0]>
        %b = param "b" : f32[2,1] dense<[3.0, 4.0]>
        %z = param "z" : f32[6,1] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %0 = gather(%x, %src) {axis=0} : f32[8,2]
        %1 = gather(%x, %dst) {axis=0} : f32[8,2]
        %2 = matmul(%1, %a) : f32[8,1]
        %3 = matmul(%0, %b) : f32[8,1]
        %4 = add(%2, %3) : f32[8,1]
        %s = index_add(%z, %dst, %4) {axis=0} : f32[6,1]
        return %s""", """
        %a = param "a" : f32[2,1] dense<[1.0, 2.0]>
        %b = param "b" : f32[2,1] dense<[3.0, 4.0]>
        %z = param "z" : f32[6,1] dense<[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]>
        %0 = matmul(%x, %a) : f32[6,1]
        %1 = gather(%0, %dst) {axis=0} : f32[8,1]
        %2 = matmul(%x, %b) : f32[6,1]
        %3 = gather(%2, %src) {axis=0} : f32[8,1]
        %4 = add(%1, %3) : f32[8,1]
        %5 = index_add(%z, %dst, %4) {axis=0} : f32[6,1]
        return %5""", head)
    assert stats == {"move_linear": 2}


def test_gcn_normalisation_regroups_and_postscales(check_pass):
    """h[src]·(u[src]·u[dst]) summed onto dst is u · segment_sum((h·u)[src])."""
    head = "func @main(%h: f32[6,3], %u: f32[6], %src: i64[8], %dst: i64[8])"
    stats = _check(check_pass, "f32[6,3]", f"""
        {ZERO}
        %0 = gather(%u, %src) {{axis=0}} : f32[8]
        %1 = gather(%u, %dst) {{axis=0}} : f32[8]
        %2 = mul(%0, %1) : f32[8]
        %3 = unsqueeze(%2) {{axes=(1,)}} : f32[8,1]
        %4 = gather(%h, %src) {{axis=0}} : f32[8,3]
        %m = mul(%4, %3) : f32[8,3]
        %s = index_add(%h, %dst, %m) {{axis=0}} : f32[6,3]
        return %s""", """
        %"index_add.const0" = param "index_add.const0" : f32[6,3]
        %0 = unsqueeze(%u) {axes=(1,)} : f32[6,1]
        %1 = mul(%h, %0) : f32[6,3]
        %2 = gather(%1, %src) {axis=0} : f32[8,3]
        %3 = index_add(%"index_add.const0", %dst, %2) {axis=0} : f32[6,3]
        %4 = mul(%3, %0) : f32[6,3]
        %5 = add(%h, %4) : f32[6,3]
        return %5""", head)
    assert stats == {"merge_duplicates": 1, "move_unary": 2, "postscale_segment_sum": 1,
                     "push_shape_through_binary": 1, "regroup": 1}


def test_declines_when_the_gather_shrinks_or_mixes_edges(check_pass):
    """An index shorter than the table (an embedding lookup) keeps its ops; so does a matmul mixing edge rows and
    an op with an edge-varying operand; the segment softmax is left whole."""
    head = "func @main(%x: f32[6,3], %e: f32[8,3], %w: f32[8,8], %src: i64[8], %dst: i64[8], %k: i64[4])"
    text = f"""
        {ZERO}
        %0 = gather(%x, %k) {{axis=0}} : f32[4,3]
        %1 = relu(%0) : f32[4,3]
        %2 = gather(%x, %src) {{axis=0}} : f32[8,3]
        %3 = matmul(%w, %2) : f32[8,3]
        %4 = mul(%2, %e) : f32[8,3]
        %5 = exp(%4) : f32[8,3]
        %6 = index_add(%z, %dst, %5) {{axis=0}} : f32[6,3]
        %7 = gather(%6, %dst) {{axis=0}} : f32[8,3]
        %8 = div(%5, %7) : f32[8,3]
        %9 = unsqueeze(%8) {{axes=(1,)}} : f32[8,1,3]
        %m = add(%3, %8) : f32[8,3]
        {SUM}
        return %s, %1, %9"""
    after = text.replace("%m = add", "%10 = add").replace("%z, %dst, %m)", "%z, %dst, %10)").replace(
        "%s = index_add", "%11 = index_add").replace("return %s,", "return %11,")
    assert _check(check_pass, "f32[6,3], f32[4,3], f32[8,1,3]", text, after, head) == {}


def test_no_op_without_graph_operators(check_pass):
    """A gather with no segment reduction (a CNN's flip, an embedding) is not a message-passing graph."""
    text = """
        %0 = gather(%x, %src) {axis=0} : f32[8,3]
        %1 = relu(%0) : f32[8,3]
        return %1"""
    ctx = PassContext()
    check_pass(GnnReorganize(), ctx=ctx, before=_func("f32[8,3]", text), after=_func("f32[8,3]", text))
    assert "gnn-reorganize" not in ctx.stats and "gnn_analysis_before" not in ctx.options


def test_per_row_norm_written_elementwise_moves_piece_by_piece(check_pass):
    """x[i] / sqrt(Σ x[i]²): every piece is row-wise, so the whole L2 normalisation runs on table rows."""
    stats = _check(check_pass, "f32[6,3]", f"""
        {ZERO}
        %0 = gather(%x, %src) {{axis=0}} : f32[8,3]
        %1 = mul(%0, %0) : f32[8,3]
        %2 = reduce_sum(%1) {{axes=(1,), keepdims=True}} : f32[8,1]
        %3 = sqrt(%2) : f32[8,1]
        %m = div(%0, %3) : f32[8,3]
        {SUM}
        return %s""", """
        %z = param "z" : f32[6,3]
        %0 = mul(%x, %x) : f32[6,3]
        %1 = reduce_sum(%0) {axes=(1,), keepdims=True} : f32[6,1]
        %2 = sqrt(%1) : f32[6,1]
        %3 = div(%x, %2) : f32[6,3]
        %4 = gather(%3, %src) {axis=0} : f32[8,3]
        %5 = index_add(%z, %dst, %4) {axis=0} : f32[6,3]
        return %5""")
    assert stats == {"move_binary_same_index": 2, "move_unary": 2}
