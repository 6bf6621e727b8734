"""fold-batchnorm: golden text + interpreter equivalence, and a PyTorch cross-check."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.interpreter import interpret
from qcc.ir.graph import GraphBuilder
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.passes import FoldBatchNorm

# var + eps = (4, 9), so the scale γ/√(σ²+ε) is exactly (0.5, 1.0) and the goldens print exact numbers.
BN_STATS = """
          %gamma = param "bn.weight" : f32[2] dense<[1.0, 3.0]>
          %beta = param "bn.bias" : f32[2] dense<[0.5, -1.0]>
          %mean = param "bn.running_mean" : f32[2] dense<[1.0, 2.0]>
          %var = param "bn.running_var" : f32[2] dense<[3.75, 8.75]>"""
BN = "batch_norm({y}, %gamma, %beta, %mean, %var) {{eps=0.25}}"


def test_conv_without_bias_folds(check_pass):
    ctx = PassContext()
    result = check_pass(FoldBatchNorm(), ctx=ctx, before=f"""
        func @main(%x: f32[1,2,3,3]) -> (f32[1,2,3,3]) {{
          %w = param "conv.weight" : f32[2,2,1,1] dense<[1.0, 2.0, 3.0, -1.0]>{BN_STATS}
          %0 = conv2d(%x, %w) {{dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)}} : f32[1,2,3,3]  // conv
          %1 = {BN.format(y="%0")} : f32[1,2,3,3]  // bn
          return %1
        }}""", after="""
        func @main(%x: f32[1,2,3,3]) -> (f32[1,2,3,3]) {
          %"conv.weight.folded" = param "conv.weight.folded" : f32[2,2,1,1] dense<[0.5, 1.0, 3.0, -1.0]>
          %"conv.bias.folded" = param "conv.bias.folded" : f32[2] dense<[0.0, -3.0]>
          %0 = conv2d(%x, %"conv.weight.folded", %"conv.bias.folded") {dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)} : f32[1,2,3,3]  // conv
          return %0
        }""")  # noqa: E501
    assert ctx.stats["fold-batchnorm"] == {"fold_conv_bn": 1}
    assert result.nodes[0].name == "conv"


def test_grouped_conv_with_bias_folds(check_pass):
    check_pass(FoldBatchNorm(), before=f"""
        func @main(%x: f32[1,2,4,4]) -> (f32[1,2,2,2]) {{
          %w = param "w" : f32[2,1,2,2] dense<[1.0, 2.0, 3.0, 4.0, -1.0, -2.0, 0.5, 0.25]>
          %b = param "b" : f32[2] dense<[2.0, 1.0]>{BN_STATS}
          %0 = conv2d(%x, %w, %b) {{dilation=(1, 1), groups=2, padding=(0, 0, 0, 0), stride=(2, 2)}} : f32[1,2,2,2]
          %1 = {BN.format(y="%0")} : f32[1,2,2,2]
          return %1
        }}""", after="""
        func @main(%x: f32[1,2,4,4]) -> (f32[1,2,2,2]) {
          %"w.folded" = param "w.folded" : f32[2,1,2,2] dense<[0.5, 1.0, 1.5, 2.0, -1.0, -2.0, 0.5, 0.25]>
          %"b.folded" = param "b.folded" : f32[2] dense<[1.0, -2.0]>
          %0 = conv2d(%x, %"w.folded", %"b.folded") {dilation=(1, 1), groups=2, padding=(0, 0, 0, 0), stride=(2, 2)} : f32[1,2,2,2]
          return %0
        }""")  # noqa: E501


def test_dilated_padded_conv_with_large_params_folds(check_pass):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((18, 2, 3, 3)).astype(np.float32),
              "g": rng.uniform(0.5, 2.0, 18).astype(np.float32), "b": rng.standard_normal(18).astype(np.float32),
              "m": rng.standard_normal(18).astype(np.float32), "v": rng.uniform(0.1, 3.0, 18).astype(np.float32)}
    result = check_pass(FoldBatchNorm(), params=params, after="""
        func @main(%x: f32[2,4,7,7]) -> (f32[2,18,4,7]) {
          %"w.folded" = param "w.folded" : f32[18,2,3,3]
          %"w.bias.folded" = param "w.bias.folded" : f32[18]
          %0 = conv2d(%x, %"w.folded", %"w.bias.folded") {dilation=(2, 1), groups=2, padding=(1, 1, 0, 1), stride=(1, 1)} : f32[2,18,4,7]
          return %0
        }""", before="""
        func @main(%x: f32[2,4,7,7]) -> (f32[2,18,4,7]) {
          %w = param "w" : f32[18,2,3,3]
          %g = param "g" : f32[18]
          %b = param "b" : f32[18]
          %m = param "m" : f32[18]
          %v = param "v" : f32[18]
          %0 = conv2d(%x, %w) {dilation=(2, 1), groups=2, padding=(1, 1, 0, 1), stride=(1, 1)} : f32[2,18,4,7]
          %1 = batch_norm(%0, %g, %b, %m, %v) {eps=1e-05} : f32[2,18,4,7]
          return %1
        }""")  # noqa: E501
    assert all(a.dtype == np.float32 for a in result.params.values())


def test_linear_on_2d_folds(check_pass):
    check_pass(FoldBatchNorm(), before=f"""
        func @main(%x: f32[3,2]) -> (f32[3,2]) {{
          %w = param "fc.weight" : f32[2,2] dense<[1.0, -2.0, 4.0, 0.5]>
          %b = param "fc.bias" : f32[2] dense<[1.0, 2.0]>{BN_STATS}
          %0 = linear(%x, %w, %b) : f32[3,2]  // fc
          %1 = {BN.format(y="%0")} : f32[3,2]
          return %1
        }}""", after="""
        func @main(%x: f32[3,2]) -> (f32[3,2]) {
          %"fc.weight.folded" = param "fc.weight.folded" : f32[2,2] dense<[0.5, -1.0, 4.0, 0.5]>
          %"fc.bias.folded" = param "fc.bias.folded" : f32[2] dense<[0.5, -1.0]>
          %0 = linear(%x, %"fc.weight.folded", %"fc.bias.folded") : f32[3,2]  // fc
          return %0
        }""")


def test_linear_on_3d_does_not_fold_but_lowers(check_pass):
    # On [N, L, C] batch_norm normalises axis 1 (L), not the linear's output features: no fold.
    check_pass(FoldBatchNorm(), before=f"""
        func @main(%x: f32[1,2,3]) -> (f32[1,2,2]) {{
          %w = param "w" : f32[2,3] dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]>{BN_STATS}
          %0 = linear(%x, %w) : f32[1,2,2]
          %1 = {BN.format(y="%0")} : f32[1,2,2]  // bn
          return %1
        }}""", after="""
        func @main(%x: f32[1,2,3]) -> (f32[1,2,2]) {
          %w = param "w" : f32[2,3] dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]>
          %"bn.scale" = param "bn.scale" : f32[2,1] dense<[0.5, 1.0]>
          %"bn.shift" = param "bn.shift" : f32[2,1] dense<[0.0, -3.0]>
          %0 = linear(%x, %w) : f32[1,2,2]
          %1 = mul(%0, %"bn.scale") : f32[1,2,2]  // bn
          %2 = add(%1, %"bn.shift") : f32[1,2,2]  // bn
          return %2
        }""")


def test_conv_with_another_user_is_kept_and_bn_lowered(check_pass):
    ctx = PassContext()
    check_pass(FoldBatchNorm(), ctx=ctx, before=f"""
        func @main(%x: f32[1,2,2,2]) -> (f32[1,2,2,2], f32[1,2,2,2]) {{
          %w = param "w" : f32[2,2,1,1] dense<[1.0, 2.0, 3.0, -1.0]>{BN_STATS}
          %0 = conv2d(%x, %w) {{dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)}} : f32[1,2,2,2]
          %1 = {BN.format(y="%0")} : f32[1,2,2,2]
          %2 = relu(%0) : f32[1,2,2,2]
          return %1, %2
        }}""", after="""
        func @main(%x: f32[1,2,2,2]) -> (f32[1,2,2,2], f32[1,2,2,2]) {
          %w = param "w" : f32[2,2,1,1] dense<[1.0, 2.0, 3.0, -1.0]>
          %"batch_norm.scale" = param "batch_norm.scale" : f32[2,1,1] dense<[0.5, 1.0]>
          %"batch_norm.shift" = param "batch_norm.shift" : f32[2,1,1] dense<[0.0, -3.0]>
          %0 = conv2d(%x, %w) {dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)} : f32[1,2,2,2]
          %1 = mul(%0, %"batch_norm.scale") : f32[1,2,2,2]
          %2 = add(%1, %"batch_norm.shift") : f32[1,2,2,2]
          %3 = relu(%0) : f32[1,2,2,2]
          return %2, %3
        }""")
    assert ctx.stats["fold-batchnorm"] == {"lower_batchnorm": 1}


def test_conv_that_is_a_graph_output_is_kept(check_pass):
    result = check_pass(FoldBatchNorm(), after=None, before=f"""
        func @main(%x: f32[1,2,2,2]) -> (f32[1,2,2,2], f32[1,2,2,2]) {{
          %w = param "w" : f32[2,2,1,1] dense<[1.0, 2.0, 3.0, -1.0]>{BN_STATS}
          %0 = conv2d(%x, %w) {{dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)}} : f32[1,2,2,2]
          %1 = {BN.format(y="%0")} : f32[1,2,2,2]
          return %1, %0
        }}""")
    assert result.op_counts() == {"add": 1, "conv2d": 1, "mul": 1}


def test_runtime_statistics_lower_to_ops(check_pass):
    result = check_pass(FoldBatchNorm(), after="""
        func @main(%x: f32[2,3,2], %g: f32[3], %b: f32[3], %m: f32[3], %v: f32[3]) -> (f32[2,3,2]) {
          %"batch_norm.eps" = param "batch_norm.eps" : f32[] dense<[0.25]>
          %0 = add(%v, %"batch_norm.eps") : f32[3]
          %1 = rsqrt(%0) : f32[3]
          %2 = mul(%g, %1) : f32[3]
          %3 = mul(%m, %2) : f32[3]
          %4 = sub(%b, %3) : f32[3]
          %5 = reshape(%2) {shape=(3, 1)} : f32[3,1]
          %6 = reshape(%4) {shape=(3, 1)} : f32[3,1]
          %7 = mul(%x, %5) : f32[2,3,2]
          %8 = add(%7, %6) : f32[2,3,2]
          return %8
        }""", before="""
        func @main(%x: f32[2,3,2], %g: f32[3], %b: f32[3], %m: f32[3], %v: f32[3]) -> (f32[2,3,2]) {
          %0 = batch_norm(%x, %g, %b, %m, %v) {eps=0.25} : f32[2,3,2]
          return %0
        }""", inputs=[np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32),
                      np.array([1.0, 2.0, 0.5], np.float32), np.array([0.0, 1.0, -1.0], np.float32),
                      np.array([0.1, -0.2, 0.3], np.float32), np.array([1.0, 0.5, 2.0], np.float32)])
    assert "batch_norm" not in result.op_counts()


def _conv_bn_graph(rng: np.random.Generator, groups: int, bias: bool):
    """A conv → bn → relu → conv → bn chain built with GraphBuilder, plus the arrays PyTorch needs."""
    b = GraphBuilder()
    x = b.input((2, 4, 6, 6), "f32", "x")
    arrays = {}
    y = x
    for i, (cin, cout) in enumerate([(4, 8), (8, 4)]):
        w = rng.standard_normal((cout, cin // groups, 3, 3)).astype(np.float32) * 0.3
        stats = [rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout), rng.standard_normal(cout),
                 rng.uniform(0.2, 2.0, cout)]
        stats = [s.astype(np.float32) for s in stats]
        arrays[i] = (w, stats, rng.standard_normal(cout).astype(np.float32) if bias else None)
        ins = [y, b.param(w, f"conv{i}.weight")] + ([b.param(arrays[i][2], f"conv{i}.bias")] if bias else [])
        y = b.emit("conv2d", ins, {"stride": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1),
                                    "groups": groups}, name=f"conv{i}")
        y = b.emit("batch_norm", [y] + [b.param(s, f"bn{i}.{k}") for s, k in zip(stats, "gbmv")], {"eps": 1e-5})
        if i == 0:
            y = b.emit("relu", [y])
    return b.output(y), arrays


def test_two_batchnorms_on_one_conv_both_lower(check_pass):
    result = check_pass(FoldBatchNorm(), after=None, before=f"""
        func @main(%x: f32[1,2,2,2]) -> (f32[1,2,2,2]) {{
          %w = param "w" : f32[2,2,1,1] dense<[1.0, 2.0, 3.0, -1.0]>{BN_STATS}
          %0 = conv2d(%x, %w) {{dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)}} : f32[1,2,2,2]
          %1 = {BN.format(y="%0")} : f32[1,2,2,2]
          %2 = {BN.format(y="%0")} : f32[1,2,2,2]
          %3 = sub(%1, %2) : f32[1,2,2,2]
          return %3
        }}""")
    assert result.op_counts() == {"add": 2, "conv2d": 1, "mul": 2, "sub": 1}


@pytest.mark.parametrize("groups,bias", [(1, False), (2, True)])
def test_conv_bn_relu_chain_folds_everywhere(groups, bias):
    graph, _ = _conv_bn_graph(np.random.default_rng(3), groups, bias)
    folded = run_passes(graph, [FoldBatchNorm()])
    assert folded.op_counts() == {"conv2d": 2, "relu": 1}
    assert len(folded.params) == 4  # two folded weights, two folded biases; the statistics are gone
    x = np.random.default_rng(4).standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(interpret(folded, [x])[0], interpret(graph, [x])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("groups,bias", [(1, False), (2, True), (4, False)])
def test_folded_graph_matches_pytorch_eval_mode(groups, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(groups)
    graph, arrays = _conv_bn_graph(rng, groups, bias)
    folded = run_passes(graph, [FoldBatchNorm()])
    assert folded.op_counts() == {"conv2d": 2, "relu": 1}
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    layers = []
    for i, (cin, cout) in enumerate([(4, 8), (8, 4)]):
        w, (g, be, m, v), bb = arrays[i]
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=bias)
        conv.weight.data = torch.from_numpy(w)
        if bias:
            conv.bias.data = torch.from_numpy(bb)
        bn = torch.nn.BatchNorm2d(cout, eps=1e-5)
        bn.weight.data, bn.bias.data = torch.from_numpy(g), torch.from_numpy(be)
        bn.running_mean.data, bn.running_var.data = torch.from_numpy(m), torch.from_numpy(v)
        layers += [conv, bn] + ([torch.nn.ReLU()] if i == 0 else [])
    model = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(interpret(folded, [x])[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(interpret(graph, [x])[0], want, rtol=1e-4, atol=1e-4)
