"""recognize-attention: golden text + interpreter equivalence for the forms the frontends produce, the
declines, the tile option, and the digits ViT through the float pipeline against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import OptionError
from qcc.interpreter import interpret
from qcc.ir.parser import parse
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.ir.printer import print_graph
from qcc.passes import RecognizeAttention, get_pass

HEAD_SPLIT = """
  %0 = transpose(%q) {perm=(0, 2, 1, 3)} : f32[1,2,5,4]
  %1 = transpose(%k) {perm=(0, 2, 3, 1)} : f32[1,2,4,5]
  %2 = transpose(%v) {perm=(0, 2, 1, 3)} : f32[1,2,5,3]"""


def test_bert_style_head_split_scale_after_and_mask(check_pass):
    ctx = PassContext()
    check_pass(RecognizeAttention(), ctx=ctx, before=f"""
        func @main(%q: f32[1,5,2,4], %k: f32[1,5,2,4], %v: f32[1,5,2,3], %m: f32[1,1,1,5]) -> (f32[1,2,5,3]) {{
          %s = param "s" : f32[] dense<[0.5]>{HEAD_SPLIT}
          %3 = matmul(%0, %1) : f32[1,2,5,5]  // matmul
          %4 = mul(%3, %s) : f32[1,2,5,5]
          %5 = add(%4, %m) : f32[1,2,5,5]
          %6 = softmax(%5) {{axis=3}} : f32[1,2,5,5]
          %7 = matmul(%6, %2) : f32[1,2,5,3]  // matmul_1
          return %7
        }}""", after="""
        func @main(%q: f32[1,5,2,4], %k: f32[1,5,2,4], %v: f32[1,5,2,3], %m: f32[1,1,1,5]) -> (f32[1,2,5,3]) {
          %0 = transpose(%q) {perm=(0, 2, 1, 3)} : f32[1,2,5,4]
          %1 = transpose(%v) {perm=(0, 2, 1, 3)} : f32[1,2,5,3]
          %2 = transpose(%k) {perm=(0, 2, 1, 3)} : f32[1,2,5,4]
          %3 = attention(%0, %2, %1, %m) {causal=False, scale=0.5} : f32[1,2,5,3]  // matmul
          return %3
        }""")
    assert ctx.stats["recognize-attention"] == {"fuse_attention": 1}


def test_scale_before_split_over_q_and_k_and_divide(check_pass):
    # torch's SDPA decomposition scales Q and Kᵀ by √s each; a hand-written model may divide by √d
    check_pass(RecognizeAttention(), before="""
        func @main(%q: f32[3,6,4], %kt: f32[3,4,7], %v: f32[3,7,2]) -> (f32[3,6,2]) {
          %a = param "a" : f32[] dense<[0.5]>
          %b = param "b" : f32[] dense<[0.25]>
          %d = param "d" : f32[] dense<[2.0]>
          %0 = mul(%a, %q) : f32[3,6,4]
          %1 = mul(%kt, %b) : f32[3,4,7]
          %2 = matmul(%0, %1) : f32[3,6,7]
          %3 = div(%2, %d) : f32[3,6,7]
          %4 = softmax(%3) {axis=2} : f32[3,6,7]
          %5 = matmul(%4, %v) : f32[3,6,2]
          return %5
        }""", after="""
        func @main(%q: f32[3,6,4], %kt: f32[3,4,7], %v: f32[3,7,2]) -> (f32[3,6,2]) {
          %0 = transpose(%kt) {perm=(0, 2, 1)} : f32[3,7,4]
          %1 = attention(%q, %0, %v) {causal=False, scale=0.0625} : f32[3,6,2]
          return %1
        }""")


def test_sdpa_causal_decomposition_becomes_causal(check_pass):
    n = 6
    causal = np.where(np.triu(np.ones((n, n), bool), 1), -np.inf, 0.0).astype(np.float32)
    result = check_pass(RecognizeAttention(), params={"cm": causal, "z": np.zeros((1, 2, n, n), np.float32)},
                        before=f"""
        func @main(%q: f32[1,2,6,4], %k: f32[1,2,6,4], %v: f32[1,2,6,4]) -> (f32[1,2,6,4]) {{
          %s = param "s" : f32[] dense<[0.7071067690849304]>
          %cm = param "cm" : f32[{n},{n}]
          %ninf = param "ninf" : f32[] dense<[-inf]>
          %z = param "z" : f32[1,2,{n},{n}]
          %0 = mul(%q, %s) : f32[1,2,6,4]
          %1 = transpose(%k) {{perm=(0, 1, 3, 2)}} : f32[1,2,4,6]
          %2 = mul(%1, %s) : f32[1,2,4,6]
          %3 = matmul(%0, %2) : f32[1,2,6,6]  // matmul
          %4 = add(%3, %cm) : f32[1,2,6,6]
          %5 = softmax(%4) {{axis=3}} : f32[1,2,6,6]
          %6 = equal(%4, %ninf) : bool[1,2,6,6]
          %7 = logical_not(%6) : bool[1,2,6,6]
          %8 = reduce_max(%7) {{axes=(3,), keepdims=True}} : bool[1,2,6,1]
          %9 = logical_not(%8) : bool[1,2,6,1]
          %10 = where(%9, %z, %5) : f32[1,2,6,6]
          %11 = matmul(%10, %v) : f32[1,2,6,4]
          return %11
        }}""", after="""
        func @main(%q: f32[1,2,6,4], %k: f32[1,2,6,4], %v: f32[1,2,6,4]) -> (f32[1,2,6,4]) {
          %0 = attention(%q, %k, %v) {causal=True, scale=0.4999999828857291} : f32[1,2,6,4]  // matmul
          return %0
        }""")
    assert [n.op for n in result.nodes] == ["attention"]


def test_constant_boolean_mask_through_where(check_pass):
    keep = np.array([[True, True, False], [True, False, True]])
    check_pass(RecognizeAttention(), params={"keep": keep}, before="""
        func @main(%q: f32[2,4], %kt: f32[4,3], %v: f32[3,5]) -> (f32[2,5]) {
          %keep = param "keep" : bool[2,3]
          %fill = param "fill" : f32[] dense<[-1000.0]>
          %0 = matmul(%q, %kt) : f32[2,3]  // scores
          %1 = where(%keep, %0, %fill) : f32[2,3]
          %2 = softmax(%1) {axis=1} : f32[2,3]
          %3 = matmul(%2, %v) : f32[2,5]
          return %3
        }""", after="""
        func @main(%q: f32[2,4], %kt: f32[4,3], %v: f32[3,5]) -> (f32[2,5]) {
          %"attention.mask" = param "attention.mask" : f32[2,3] dense<[0.0, 0.0, -1000.0, 0.0, -1000.0, 0.0]>
          %0 = transpose(%kt) {perm=(1, 0)} : f32[3,4]
          %1 = attention(%q, %0, %v, %"attention.mask") {causal=False, scale=1.0} : f32[2,5]  // scores
          return %1
        }""")


@pytest.mark.parametrize("body", [
    # softmax over the query axis: not attention
    """%0 = matmul(%q, %kt) : f32[2,3,3]
       %1 = softmax(%0) {axis=1} : f32[2,3,3]
       %2 = matmul(%1, %v) : f32[2,3,4]""",
    # the first matmul is not a product of two activations with the same batch dims (broadcast kᵀ)
    """%0 = matmul(%q, %k2) : f32[2,3,3]
       %1 = softmax(%0) {axis=2} : f32[2,3,3]
       %2 = matmul(%1, %v) : f32[2,3,4]""",
    # a non-constant scale factor
    """%0 = matmul(%q, %kt) : f32[2,3,3]
       %a = mul(%0, %q3) : f32[2,3,3]
       %1 = softmax(%a) {axis=2} : f32[2,3,3]
       %2 = matmul(%1, %v) : f32[2,3,4]""",
])
def test_declines_what_is_not_attention(check_pass, body):
    before = f"""
        func @main(%q: f32[2,3,5], %kt: f32[2,5,3], %v: f32[2,3,4], %k2: f32[5,3], %q3: f32[2,3,3]) -> (f32[2,3,4]) {{
          {body}
          return %2
        }}"""
    ctx = PassContext()
    check_pass(RecognizeAttention(), ctx=ctx, before=before, after=print_graph(parse(before)))
    assert ctx.stats["recognize-attention"] == {}


def test_tile_option_goes_to_meta_and_bad_tiles_are_rejected():
    g = parse("""
        func @main(%q: f32[2,3,5], %k: f32[2,3,5], %v: f32[2,3,4]) -> (f32[2,3,4]) {
          %0 = transpose(%k) {perm=(0, 2, 1)} : f32[2,5,3]
          %1 = matmul(%q, %0) : f32[2,3,3]
          %2 = softmax(%1) {axis=2} : f32[2,3,3]
          %3 = matmul(%2, %v) : f32[2,3,4]
          return %3
        }""")
    out = run_passes(g, [get_pass("recognize-attention", tile="16,32")], PassContext())
    assert [n.meta.get("attention_tile") for n in out.nodes] == [(16, 32)]
    out = run_passes(g, [get_pass("recognize-attention", tile=(8, 64))], PassContext())
    assert out.nodes[0].meta["attention_tile"] == (8, 64)
    for bad in ("16", "a,b", "0,16"):
        with pytest.raises(OptionError, match="tile"):
            run_passes(g, [get_pass("recognize-attention", tile=bad)], PassContext())


def _torch_check(model, args, expected_count):
    """Import, run the float pipeline (with recognize-attention), compare with the model and the unfused graph."""
    import qcc
    from qcc.frontends import import_model
    from qcc.pipeline import float_pipeline

    torch = pytest.importorskip("torch")
    imported = import_model(model, args)
    ctx = PassContext(target=qcc.Target("cpu-fp32"))
    graph = run_passes(imported, float_pipeline(ctx), ctx)
    assert graph.op_counts().get("attention", 0) == expected_count
    assert "softmax" not in graph.op_counts()
    arrays = [a.numpy() for a in args]
    with torch.no_grad():
        want = model(*args).numpy()
    np.testing.assert_allclose(interpret(graph, arrays)[0], want, rtol=1e-4, atol=1e-5)
    off = PassContext(target=qcc.Target("cpu-fp32"), options={"attention": "off"})
    plain = run_passes(imported, float_pipeline(off), off)
    assert "attention" not in plain.op_counts()
    return graph


@pytest.mark.torch
def test_digits_vit_is_recognised_and_matches_pytorch():
    # BERT (padding mask) and the SDPA forms are compiled end to end in tests/e2e/test_attention.py
    torch = pytest.importorskip("torch")
    from tests.zoo import digits_vit

    graph = _torch_check(digits_vit(), (torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),), 2)
    assert all(len(n.inputs) == 3 and not n.attrs["causal"] for n in graph.nodes if n.op == "attention")
