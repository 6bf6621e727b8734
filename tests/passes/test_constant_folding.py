"""constant-folding: golden text + interpreter equivalence."""

from __future__ import annotations

import numpy as np

from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import ConstantFolding, get_pass


def test_folds_a_constant_chain_and_drops_consumed_params(check_pass):
    ctx = PassContext()
    check_pass(ConstantFolding(), ctx=ctx, before="""
        func @main(%x: f32[2]) -> (f32[2]) {
          %a = param "a" : f32[2] dense<[1.0, 2.0]>
          %b = param "b" : f32[2] dense<[3.0, 4.0]>
          %0 = add(%a, %b) : f32[2]
          %1 = neg(%0) : f32[2]
          %2 = mul(%x, %1) : f32[2]
          return %2
        }""", after="""
        func @main(%x: f32[2]) -> (f32[2]) {
          %"neg.folded" = param "neg.folded" : f32[2] dense<[-4.0, -6.0]>
          %0 = mul(%x, %"neg.folded") : f32[2]
          return %0
        }""")
    assert ctx.stats["constant-folding"] == {"folded": 2, "kept_large": 0}


def test_named_nodes_name_their_params_and_shared_params_stay(check_pass):
    # `w` also feeds a node that does not fold, so it stays; the folded param is named after the source node.
    check_pass(ConstantFolding(), before="""
        func @main(%x: f32[2,2]) -> (f32[2,2]) {
          %w = param "w" : f32[2,2] dense<[1.0, 2.0, 3.0, 4.0]>
          %0 = transpose(%w) {perm=(1, 0)} : f32[2,2]  // fc.t
          %1 = matmul(%x, %0) : f32[2,2]
          %2 = add(%1, %w) : f32[2,2]
          return %2
        }""", after="""
        func @main(%x: f32[2,2]) -> (f32[2,2]) {
          %w = param "w" : f32[2,2] dense<[1.0, 2.0, 3.0, 4.0]>
          %"fc.t.folded" = param "fc.t.folded" : f32[2,2] dense<[1.0, 3.0, 2.0, 4.0]>
          %0 = matmul(%x, %"fc.t.folded") : f32[2,2]
          %1 = add(%0, %w) : f32[2,2]
          return %1
        }""")


def test_multi_output_nodes_and_duplicate_names(check_pass):
    check_pass(ConstantFolding(), before="""
        func @main(%x: i64[2]) -> (i64[2], i64[2]) {
          %c = param "c" : i64[4] dense<[7, -7, 9, 2]>
          %d = param "d" : i64[2] dense<[2, 2]>
          %0, %1 = split(%c) {axis=0, sizes=(2, 2)} : i64[2], i64[2]
          %2 = div(%0, %d) : i64[2]
          %3 = div(%1, %d) : i64[2]
          %4 = add(%x, %2) : i64[2]
          %5 = add(%x, %3) : i64[2]
          return %4, %5
        }""", after="""
        func @main(%x: i64[2]) -> (i64[2], i64[2]) {
          %"div.folded" = param "div.folded" : i64[2] dense<[3, -3]>
          %"div.folded_1" = param "div.folded_1" : i64[2] dense<[4, 1]>
          %0 = add(%x, %"div.folded") : i64[2]
          %1 = add(%x, %"div.folded_1") : i64[2]
          return %0, %1
        }""")


def test_split_outputs_get_indexed_names(check_pass):
    result = check_pass(ConstantFolding(), after=None, before="""
        func @main(%x: f32[1]) -> (f32[1], f32[1]) {
          %c = param "c" : f32[2] dense<[5.0, 6.0]>
          %0, %1 = split(%c) {axis=0, sizes=(1, 1)} : f32[1], f32[1]  // chunk
          %2 = add(%x, %0) : f32[1]
          %3 = add(%x, %1) : f32[1]
          return %2, %3
        }""")
    assert sorted(v.name for v in result.params) == ["chunk.folded0", "chunk.folded1"]


def test_keeps_nodes_that_would_grow_the_model(check_pass):
    ctx = PassContext()
    text = """
        func @main(%x: f32[4,8]) -> (f32[4,8]) {
          %c = param "c" : f32[1,8] dense<[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]>
          %0 = neg(%c) : f32[1,8]
          %1 = expand(%0) {shape=(4, 8)} : f32[4,8]
          %2 = add(%x, %1) : f32[4,8]
          return %2
        }"""
    # 32 - 8 = 24 new elements: over a budget of 16, so the expand stays while the neg folds.
    check_pass(ConstantFolding(max_growth=16), before=text, ctx=ctx, after="""
        func @main(%x: f32[4,8]) -> (f32[4,8]) {
          %"neg.folded" = param "neg.folded" : f32[1,8] dense<[-0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]>
          %0 = expand(%"neg.folded") {shape=(4, 8)} : f32[4,8]
          %1 = add(%x, %0) : f32[4,8]
          return %1
        }""")
    assert ctx.stats["constant-folding"] == {"folded": 1, "kept_large": 1}
    # Under the default budget the same expand folds.
    folded = run_passes(parse(text), [ConstantFolding()])
    assert folded.op_counts() == {"add": 1}


def test_default_budget_keeps_a_million_element_tile():
    g = parse("""
        func @main(%x: f32[1024,1100]) -> (f32[1024,1100]) {
          %c = param "c" : f32[1,1] dense<[2.0]>
          %0 = tile(%c) {repeats=(1024, 1100)} : f32[1024,1100]
          %1 = mul(%x, %0) : f32[1024,1100]
          return %1
        }""")
    out = run_passes(g, [ConstantFolding()])
    assert out.op_counts() == {"mul": 1, "tile": 1}


def test_unrelated_dead_params_stay_for_dce_and_nothing_to_fold_is_identity(check_pass):
    text = """
        func @main(%x: f32[2]) -> (f32[2]) {
          %unused = param "unused" : f32[2] dense<[1.0, 2.0]>
          %0 = relu(%x) : f32[2]
          return %0
        }"""
    check_pass(ConstantFolding(), before=text, after=text)


def test_folds_into_a_graph_output_and_matches_large_params(check_pass):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((8, 4)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}
    result = check_pass(get_pass("constant-folding"), params=params, after=None, before="""
        func @main(%x: f32[3,4]) -> (f32[3,8], f32[8]) {
          %w = param "w" : f32[8,4]
          %b = param "b" : f32[8]
          %0 = reduce_sum(%w) {axes=(1,), keepdims=False} : f32[8]
          %1 = add(%0, %b) : f32[8]
          %2 = linear(%x, %w, %1) : f32[3,8]
          return %2, %1
        }""")
    assert result.op_counts() == {"linear": 1}
    assert result.outputs[1] in result.params
    np.testing.assert_allclose(result.params[result.outputs[1]], params["w"].sum(1) + params["b"], rtol=1e-6)


def test_stats_accumulate_over_repeated_runs():
    g = parse("""
        func @main(%x: f32[2]) -> (f32[2]) {
          %c = param "c" : f32[2] dense<[1.0, 2.0]>
          %0 = exp(%c) : f32[2]
          %1 = add(%x, %0) : f32[2]
          return %1
        }""")
    ctx = PassContext()
    run_passes(g, [ConstantFolding(), ConstantFolding()], ctx)
    run_passes(g, [ConstantFolding()], ctx)
    assert ctx.stats["constant-folding"] == {"folded": 2, "kept_large": 0}


def test_folds_to_a_scalar_and_to_empty_tensors(check_pass):
    check_pass(ConstantFolding(), before="""
        func @main(%x: f32[3]) -> (f32[3], f32[0,3]) {
          %c = param "c" : f32[3] dense<[1.0, 2.0, 3.5]>
          %0 = reduce_sum(%c) {axes=(), keepdims=False} : f32[]
          %1 = mul(%x, %0) : f32[3]
          %2 = reshape(%c) {shape=(1, 3)} : f32[1,3]
          %3 = slice(%2) {axes=(0,), ends=(0,), starts=(0,), steps=(1,)} : f32[0,3]
          return %1, %3
        }""", after="""
        func @main(%x: f32[3]) -> (f32[3], f32[0,3]) {
          %"reduce_sum.folded" = param "reduce_sum.folded" : f32[] dense<[6.5]>
          %"slice.folded" = param "slice.folded" : f32[0,3] dense<[]>
          %0 = mul(%x, %"reduce_sum.folded") : f32[3]
          return %0, %"slice.folded"
        }""")
