"""The PyTorch frontend: tiny modules per op family imported with torch.export, interpreted, compared with torch."""

from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.errors import ModelLoadError, UnsupportedOperatorError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from qcc.frontends.torch_frontend import import_torch  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:index_reduce.*beta")]


class Fn(nn.Module):
    """A module around a function, so each case is one line."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return [out]


def _plain(v):
    if isinstance(v, tuple):
        return all(_plain(e) for e in v)
    return v is None or (isinstance(v, (bool, int, float, str)) and not isinstance(v, np.generic))


def check(module, *inputs, rtol=1e-4, atol=1e-5):
    """Import, interpret, and compare every output with PyTorch (values and dtypes)."""
    graph = import_torch(module, inputs)
    got = qcc.interpret(graph, [x.numpy() for x in inputs])
    with torch.no_grad():
        ref = module.eval()(*inputs)
    ref = _flatten(ref)
    for n in graph.nodes:  # attributes are plain python values and tuples, never lists or numpy scalars
        assert all(_plain(v) for v in n.attrs.values()), (n.op, dict(n.attrs))
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        r = r.numpy()
        assert g.shape == r.shape, f"output {i}: shape {g.shape} vs torch {r.shape}"
        assert g.dtype == r.dtype, f"output {i}: dtype {g.dtype} vs torch {r.dtype}"
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return graph


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape):
    return torch.randn(*shape)


def _bn(c, dims=2):
    bn = nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)
    with torch.no_grad():  # non-trivial statistics, so a wrong formula shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _gcn_message_pass(x, edges, w):
    """A GCN-style layer: degree by scatter_add, gather of source rows, index_add onto targets."""
    src, dst = edges[0], edges[1]
    n = x.shape[0]
    deg = torch.zeros(n).scatter_add(0, dst, torch.ones(dst.shape[0])) + 1.0
    norm = deg.rsqrt()
    h = x @ w
    msg = h.index_select(0, src) * norm.index_select(0, src).unsqueeze(1) * norm[dst].unsqueeze(1)
    agg = torch.zeros(n, h.shape[1]).index_add_(0, dst, msg) + h * (norm * norm).unsqueeze(1)
    best = torch.gather(agg, 1, agg.argmax(1, keepdim=True))
    mask = (agg > 0) & (deg.unsqueeze(1) >= 2)
    return torch.where(mask, agg, 0.1 * agg), best, agg.ne(agg.max()).sum(1)


def _assign(x, y):
    """In-place slice assignment, functionalized by torch.export into slice_scatter / copy."""
    x = x.clone()
    x[:, 1:3] = y
    x[0] = 5.0
    x[:, -1] = y[:, 0]
    return x * 2


_EDGES = torch.tensor([[0, 1, 2, 3, 4, 0, 2, 5], [1, 2, 3, 4, 5, 3, 0, 1]])
_IDX = torch.tensor([2, 0, 2, 1])

# name -> (module factory, input factory)
CASES = {
    # convolution
    "conv_groups_stride_dilation": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, groups=2, dilation=2),
                                    lambda: (randn(2, 4, 9, 9),)),
    "conv_asym_padding_nobias": (lambda: nn.Conv2d(3, 5, (3, 2), padding=(2, 1), bias=False),
                                 lambda: (randn(1, 3, 6, 7),)),
    "conv_depthwise_same": (lambda: nn.Conv2d(4, 4, 3, padding="same", groups=4), lambda: (randn(1, 4, 5, 5),)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), lambda: (randn(2, 4, 11),)),
    # batch norm (eval)
    "conv_bn_relu": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), _bn(4), nn.ReLU()), lambda: (randn(2, 3, 6, 6),)),
    "bn1d": (lambda: _bn(5, dims=1), lambda: (randn(3, 5),)),
    # pooling
    "maxpool_ceil_pad": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: (randn(1, 2, 8, 8),)),
    "maxpool_dilation": (lambda: nn.MaxPool2d(2, 1, dilation=2), lambda: (randn(1, 2, 6, 6),)),
    "avgpool_ceil_nopad_count": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                 lambda: (randn(1, 2, 8, 8),)),
    "avgpool_include_pad": (lambda: nn.AvgPool2d(3, 2, 1), lambda: (randn(1, 2, 7, 7),)),
    "adaptive_avg_7_to_3": (lambda: nn.AdaptiveAvgPool2d(3), lambda: (randn(2, 3, 7, 7),)),
    "adaptive_avg_global": (lambda: nn.AdaptiveAvgPool2d((1, 1)), lambda: (randn(2, 3, 5, 4),)),
    "adaptive_max_7_to_3": (lambda: nn.AdaptiveMaxPool2d((3, 2)), lambda: (randn(1, 3, 7, 7),)),
    # activations and math
    "activations": (lambda: Fn(lambda x: (F.relu(x), F.relu6(x * 4), F.hardtanh(x, -0.5, 1.5), torch.sigmoid(x),
                                          F.silu(x), F.hardswish(x * 3), F.hardsigmoid(x * 3), F.gelu(x),
                                          F.gelu(x, approximate="tanh"), torch.tanh(x), F.elu(x, 0.7),
                                          F.leaky_relu(x, 0.2), F.selu(x), F.mish(x), F.softplus(x))),
                    lambda: (randn(3, 7),)),
    "math": (lambda: Fn(lambda x: (torch.exp(x), torch.log(x.abs() + 0.1), (x.abs() + 0.1).sqrt(),
                                   (x.abs() + 0.1).rsqrt(), -x, x.abs(), torch.erf(x), (x + 3).reciprocal(),
                                   x ** 2, x.abs() ** x, 2.0 ** x, torch.floor(x * 3), torch.log1p(x.abs()),
                                   torch.sign(x), torch.round(x * 2), torch.trunc(x * 3), torch.expm1(x))),
             lambda: (randn(3, 5),)),
    # arithmetic with scalars and broadcasting
    "arith_broadcast": (lambda: Fn(lambda x, y: (x + 1, 2 - x, x * y, x / 3, x.sub(y, alpha=2), torch.rsub(x, 3),
                                                 torch.div(x, y + 3, rounding_mode="floor"),
                                                 torch.div(x * 5, 2, rounding_mode="trunc"), torch.maximum(x, y),
                                                 torch.minimum(x, y), x.clamp(min=-0.5), x.clamp(-1, 1),
                                                 torch.remainder(x * 5, 2), torch.fmod(x * 5, 2))),
                        lambda: (randn(2, 3, 4), randn(3, 1))),
    "int_arith_promotion": (lambda: Fn(lambda i: (i * 2, i + 0.5, i // 3, i / 2, (i % 3), -i, i.float() * 1.5)),
                            lambda: (torch.tensor([[-7, -2, 0, 5, 9]]),)),
    "compare_logical_where": (lambda: Fn(lambda x, y: (x > 0, x <= y, x == x, x != 0.5, x < y, x >= 0.1,
                                                       (x > 0) & (y > 0), (x > 0) | (y > 0), (x > 0) ^ (y > 0),
                                                       ~(x > 0), torch.where(x > y, x, y),
                                                       torch.where(x > 0, x, 0.0), x.masked_fill(x < 0, -1.0))),
                              lambda: (randn(3, 4), randn(1, 4))),
    # linear algebra
    "matmul_family": (lambda: Fn(lambda a, b: (a @ b, torch.bmm(a, b), a[0] @ b[0], torch.mm(a[0], b[0]),
                                               torch.addmm(b[0, 0], a[0], b[0]), torch.einsum("bij,bjk->bik", a, b),
                                               torch.baddbmm(a @ b, a, b, beta=0.5, alpha=2.0), a[0, 0] @ b[0])),
                      lambda: (randn(2, 3, 4), randn(2, 4, 5))),
    "linear_stack": (lambda: nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3, bias=False)),
                     lambda: (randn(2, 5, 6),)),
    # data movement
    "shape_ops": (lambda: Fn(lambda x: (x.reshape(2, 15), x.permute(2, 0, 1), x.transpose(1, 2), x.flatten(),
                                        x.view(-1, 5), torch.cat([x, x * 2], -1), torch.stack([x, x], 1),
                                        *x.split([1, 2], dim=1), *x.chunk(2, dim=2), *x.unbind(0),
                                        x[:, 1:3, ::2], x[:, -2:, :-1], x[:, 1], x[..., -1], x.unsqueeze(-1),
                                        x[:1].squeeze(0), x[:, :1].expand(2, 4, 5), x.repeat(1, 2, 1),
                                        x.flip(1), x.roll(1, 2), torch.cumsum(x, 1), F.pad(x, (1, 2, 0, 1)),
                                        F.pad(x, (2, 1), mode="reflect"), x.contiguous(), x.mT, x[None])),
                  lambda: (randn(2, 3, 5),)),
    "slice_assignment": (lambda: Fn(_assign), lambda: (randn(3, 5), randn(3, 2))),
    "upsample_nearest": (lambda: nn.Upsample(scale_factor=2), lambda: (randn(1, 2, 3, 4),)),
    # normalization and softmax
    "layer_norm": (lambda: nn.LayerNorm((4, 6)), lambda: (randn(2, 3, 4, 6),)),
    "group_norm": (lambda: nn.GroupNorm(2, 4), lambda: (randn(2, 4, 3, 3),)),
    "instance_norm_batch_stats": (lambda: nn.Sequential(nn.InstanceNorm2d(3, affine=True),
                                                        nn.BatchNorm2d(3, track_running_stats=False)),
                                  lambda: (randn(2, 3, 4, 4),)),
    "attention": (lambda: Fn(lambda q, k, m: (F.scaled_dot_product_attention(q, k, k, attn_mask=m),
                                              F.scaled_dot_product_attention(q, k, k, is_causal=True))),
                  lambda: (randn(2, 4, 6), randn(2, 4, 6), torch.rand(4, 4) > 0.3)),
    "encoder_layer": (lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True),
                      lambda: (randn(2, 5, 8),)),
    "softmax": (lambda: Fn(lambda x: (torch.softmax(x, -1), torch.log_softmax(x, 1), F.softmax(x, 0))),
                lambda: (randn(3, 4, 5),)),
    # reductions
    "reductions": (lambda: Fn(lambda x: (x.mean(1, keepdim=True), x.mean((0, 2)), x.sum(), x.sum(-1, keepdim=True),
                                         x.amax(1), x.amin((1, 2), keepdim=True), x.max(dim=1).values,
                                         x.max(dim=1, keepdim=True).indices, x.min(dim=0)[0], x.argmax(2),
                                         x.argmin(1, keepdim=True), x.argmax(), x.max(), x.var(1), x.std(2),
                                         x.norm(dim=1), x.prod(2), (x > 0).any(1), (x > -3).all())),
                   lambda: (randn(2, 3, 4),)),
    # indexing, scatter, GNN message passing
    "index_family": (lambda: Fn(lambda x, i: (x.index_select(0, i), F.embedding(i, x), x[i], x[:, i[:2]],
                                              torch.gather(x, 0, i[:, None].expand(4, 5)),
                                              torch.gather(x, 1, i[:3, None]),
                                              torch.zeros(3, 5).index_add(0, i, x[:4], alpha=2.0),
                                              torch.zeros(3, 5).scatter_add(0, i[:, None].expand(4, 5), x[:4]),
                                              torch.zeros(3, 5).scatter(0, i[1:, None].expand(3, 5), x[:3]),
                                              torch.zeros(3, 5).scatter_add(1, i[:3, None], x),
                                              torch.zeros(3, 5).scatter(1, i[1:, None], 7.0),
                                              torch.ones(3, 5).scatter_reduce(0, i[:, None].expand(4, 5), x[:4],
                                                                              "amax", include_self=True),
                                              torch.zeros(3, 5).index_reduce(0, i, x[:4], "mean"),
                                              torch.arange(5) * 2 + x.shape[0], torch.full_like(x, 2.0) + x)),
                     lambda: (randn(6, 5), _IDX)),
    "index_put": (lambda: Fn(lambda x, i, v: (x.index_put((i,), v, accumulate=True),
                                              x.index_put((i[1:],), v[1:]))),
                  lambda: (randn(3, 4), torch.tensor([2, 0, 1]), randn(3, 4))),
    "gcn_message_pass": (lambda: Fn(lambda x, e: _gcn_message_pass(x, e, torch.linspace(-1, 1, 12).reshape(4, 3))),
                         lambda: (randn(6, 4), _EDGES)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_module_matches_torch(name):
    make_module, make_inputs = CASES[name]
    check(make_module(), *make_inputs())


def test_conv_attributes_and_kept_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), groups=2, dilation=(2, 1))
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return F.hardswish(self.fc(F.silu(self.norm(y))))

    graph = check(Net(), randn(1, 4, 8, 8))
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    assert dict(conv.attrs) == {"stride": (2, 2), "padding": (1, 2, 1, 2), "dilation": (2, 1), "groups": 2}
    assert conv.name == "convolution"  # the fx node name
    counts = graph.op_counts()
    for op in ("layer_norm", "linear", "silu", "hardswish"):  # kept whole, not decomposed
        assert counts[op] == 1, counts
    for n in graph.nodes:
        assert all(not isinstance(a, list) for a in n.attrs.values()), n


def test_multi_output_tuple_and_input_names():
    class Two(nn.Module):
        def forward(self, image, scale):
            return image.relu() * scale, (image.sum((2, 3)), scale - 1)

    graph = check(Two(), randn(1, 2, 3, 3), randn(1, 2, 1, 1))
    assert [v.name for v in graph.inputs] == ["image", "scale"]
    assert len(graph.outputs) == 3


def test_param_names_are_state_dict_names():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 3), _bn(4))
            self.head = nn.Linear(4, 2)
            self.register_buffer("offset", torch.full((2,), 0.5))

        def forward(self, x):
            return self.head(self.layer1(x).mean((2, 3))) + self.offset * torch.tensor([1.0, -2.0])

    model = Block()
    graph = check(model, randn(1, 3, 5, 5))
    names = {v.name for v in graph.params}
    used = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert used <= names, used - names
    np.testing.assert_array_equal(graph.params[graph.param_by_name("layer1.0.weight")],
                                  model.layer1[0].weight.detach().numpy())
    assert "layer1.1.num_batches_tracked" not in names  # unused buffers are pruned
    lifted = [v for v in graph.params if "lifted_tensor" in v.name]  # torch.tensor(...) in forward
    assert len(lifted) == 1 and graph.params[lifted[0]].tolist() == [1.0, -2.0]


def test_scalar_params_take_the_operand_dtype():
    graph = check(Fn(lambda x, i: (x * 2 + 1, i + 3)), randn(2, 2), torch.tensor([1, 2], dtype=torch.int32))
    consts = [v for v in graph.params if v.shape == ()]
    assert {v.dtype for v in consts} == {"f32", "i32"}


def test_numpy_inputs_and_exported_program():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g1 = import_torch(model, (x,))
    ep = torch.export.export(model, (torch.from_numpy(x),))
    g2 = import_torch(ep, (torch.from_numpy(x),))
    expected = model(torch.from_numpy(x)).detach().numpy()
    for g in (g1, g2):
        np.testing.assert_allclose(qcc.interpret(g, [x])[0], expected, rtol=1e-5, atol=1e-6)


def test_unsupported_ops_are_all_listed():
    class Odd(nn.Module):
        def forward(self, x):
            spectrum = torch.fft.fft(x).abs()
            top = torch.topk(x, 2, dim=-1).values
            return spectrum.sum(-1) + top.sum(-1) + torch.sort(x, dim=-1).values[..., 0]

    with pytest.raises(UnsupportedOperatorError) as info:
        import_torch(Odd(), (randn(3, 4),))
    err = info.value
    ops = {op for op, _ in err.unsupported}
    assert any("fft" in op for op in ops), ops
    assert any("topk" in op for op in ops), ops
    assert any("sort" in op for op in ops), ops
    assert err.model == "Odd" and "Odd" in str(err)
    assert all(node for _, node in err.unsupported)


def test_unsupported_variant_names_the_reason():
    with pytest.raises(UnsupportedOperatorError, match="transposed convolution"):
        import_torch(nn.ConvTranspose2d(2, 2, 3), (randn(1, 2, 4, 4),))


def test_export_failure_is_a_model_load_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ModelLoadError, match="DataDependent"):
        import_torch(DataDependent(), (randn(3),))
    with pytest.raises(ModelLoadError):
        import_torch(object(), ())
    with pytest.raises(ModelLoadError, match="example_inputs"):
        import_torch(nn.ReLU(), 3)


def test_data_dependent_shape_is_unsupported():
    class NonZero(nn.Module):
        def forward(self, x):
            return x.nonzero().sum() + x.sum()

    with pytest.raises(UnsupportedOperatorError) as info:
        import_torch(NonZero(), (randn(4),))
    assert [op for op, _ in info.value.unsupported] == ["aten.nonzero.default"]


def test_export_leaves_training_mode_alone():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    model.train()
    graph = import_torch(model, (randn(4, 3),))
    assert model.training
    assert "batch_norm" in graph.op_counts()  # exported in eval mode: running statistics, no dropout
