"""recognize-qattention: the realized integer attention chain becomes one `qattention` node, bit-exactly (golden
text + exact interpreter equivalence), with the mask on either side of the qadd; declines what it cannot express."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext
from qcc.ir.printer import print_graph
from qcc.passes import RecognizeQAttention

CONSTS = """
          %m1 = param "m1" : i32[] dense<[1073741824]>
          %s1 = param "s1" : i32[] dense<[33]>"""
SOFTMAX = "isoftmax(%2) {axis=2, b=1353, c=959554, k=0, ln2=693, n=30}"


def test_integer_chain_with_mask_first_in_qadd(check_pass):
    ctx = PassContext()
    check_pass(RecognizeQAttention(), ctx=ctx, before=f"""
        func @main(%q: i8[2,3,4], %kt: i8[2,4,5], %v: i8[2,5,6], %m: i16[1,5]) -> (i32[2,3,6]) {{{CONSTS}
          %0 = qmatmul(%q, %kt) {{a_zero_point=1, b_zero_point=0}} : i32[2,3,5]  // matmul
          %1 = requantize(%0, %m1, %s1) {{dtype="i16", input_zero_point=0, max=None, min=None, zero_point=0}} : i16[2,3,5]
          %2 = qadd(%m, %1) {{a_multiplier=536870912, a_zero_point=2, b_multiplier=1073741824, b_zero_point=0, dtype="i16", max=None, min=None, shift=30, zero_point=0}} : i16[2,3,5]
          %3 = {SOFTMAX} : u8[2,3,5]
          %4 = qmatmul(%3, %v) {{a_zero_point=0, b_zero_point=-3}} : i32[2,3,6]  // matmul_1
          return %4
        }}""", after="""
        func @main(%q: i8[2,3,4], %kt: i8[2,4,5], %v: i8[2,5,6], %m: i16[1,5]) -> (i32[2,3,6]) {
          %0 = transpose(%kt) {perm=(0, 2, 1)} : i8[2,5,4]
          %1 = qattention(%q, %0, %v, %m) {k_zero_point=0, q_zero_point=1, softmax=("isoftmax", 693, 1353, 959554, 30, 0), steps=(("requantize", 1073741824, 33, "i16", 0, 0, None, None), ("qadd", 1073741824, 536870912, 30, 0, 2, 0, "i16", None, None)), v_zero_point=-3} : i32[2,3,6]  // matmul
          return %1
        }""")  # noqa: E501
    assert ctx.stats["recognize-qattention"] == {"fuse_qattention": 1}


def test_exact_on_wide_random_integers():
    # the check_pass inputs are small; here full-range int8 q, k, v: the rewrite stays bit-exact
    from qcc.interpreter import interpret
    from qcc.ir.pass_manager import run_passes

    g = parse(f"""
        func @main(%q: i8[1,2,7,8], %kt: i8[1,2,8,9], %v: u8[1,2,9,3]) -> (i32[1,2,7,3]) {{{CONSTS}
          %0 = qmatmul(%q, %kt) {{a_zero_point=0, b_zero_point=0}} : i32[1,2,7,9]
          %1 = requantize(%0, %m1, %s1) {{dtype="i16", input_zero_point=0, max=None, min=None, zero_point=0}} : i16[1,2,7,9]
          %2 = requantize(%1, %m1, %s1) {{dtype="i16", input_zero_point=0, max=None, min=None, zero_point=0}} : i16[1,2,7,9]
          %3 = shiftmax(%2) {{axis=3, one=20, n=30, k=4}} : u8[1,2,7,9]
          %4 = qmatmul(%3, %v) {{a_zero_point=0, b_zero_point=128}} : i32[1,2,7,3]
          return %4
        }}""")  # noqa: E501
    out = run_passes(g, [RecognizeQAttention()], PassContext())
    assert [n.op for n in out.nodes] == ["transpose", "qattention"]
    # min_keys (attention="auto" asks for long sequences only): 9 keys stay unfused below the threshold
    assert [n.op for n in run_passes(g, [RecognizeQAttention(min_keys=9)], PassContext()).nodes][-1] == "qattention"
    assert "qattention" not in run_passes(g, [RecognizeQAttention(min_keys=10)], PassContext()).op_counts()
    rng = np.random.default_rng(3)
    for _ in range(3):
        ins = [rng.integers(-128, 128, (1, 2, 7, 8)).astype(np.int8),
               rng.integers(-128, 128, (1, 2, 8, 9)).astype(np.int8),
               rng.integers(0, 256, (1, 2, 9, 3)).astype(np.uint8)]
        np.testing.assert_array_equal(interpret(g, ins)[0], interpret(out, ins)[0])


@pytest.mark.parametrize("change", ["per_channel_multiplier", "softmax_axis", "nonzero_p_zero_point"])
def test_declines(check_pass, change):
    mult = 'param "m1" : i32[5] dense<[1073741824, 1073741824, 1073741824, 1073741824, 1073741824]>' \
        if change == "per_channel_multiplier" else 'param "m1" : i32[] dense<[1073741824]>'
    axis = 1 if change == "softmax_axis" else 2
    azp = 5 if change == "nonzero_p_zero_point" else 0
    before = f"""
        func @main(%q: i8[2,5,4], %kt: i8[2,4,5], %v: i8[2,5,6]) -> (i32[2,5,6]) {{
          %m1 = {mult}
          %s1 = param "s1" : i32[] dense<[33]>
          %0 = qmatmul(%q, %kt) {{a_zero_point=0, b_zero_point=0}} : i32[2,5,5]
          %2 = requantize(%0, %m1, %s1) {{dtype="i16", input_zero_point=0, max=None, min=None, zero_point=0}} : i16[2,5,5]
          %3 = isoftmax(%2) {{axis={axis}, b=1353, c=959554, k=0, ln2=693, n=30}} : u8[2,5,5]
          %4 = qmatmul(%3, %v) {{a_zero_point={azp}, b_zero_point=0}} : i32[2,5,6]
          return %4
        }}"""  # noqa: E501
    ctx = PassContext()
    check_pass(RecognizeQAttention(), ctx=ctx, before=before, after=print_graph(parse(before)))
    assert ctx.stats["recognize-qattention"] == {}


def test_pipeline_uses_the_tiled_integer_kernel_for_long_sequences_by_default():
    from qcc.pipeline import QATTENTION_AUTO_KEYS, qattention_passes
    from qcc.target import Target

    def keys(target: str, **options):
        passes = qattention_passes(Target(target), PassContext(options=options))
        return [p.min_keys for p in passes]

    assert keys("cpu-int8") == [QATTENTION_AUTO_KEYS] and keys("cuda-int8") == [QATTENTION_AUTO_KEYS]
    assert keys("cpu-int8", attention="on") == [0]
    assert keys("cpu-int8", attention="off") == [] and keys("accel-int8") == []
