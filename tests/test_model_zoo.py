"""The test model zoo: tiny variants run, are deterministic, and the GNN layers compute what they claim."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests import zoo  # noqa: E402 - after the torch skip

pytestmark = pytest.mark.torch

TINY_OUT = {"resnet18": (1, 10), "mobilenet": (1, 10), "bert": (1, 16, 32), "gcn": (50, 4), "gat": (50, 4)}


@pytest.mark.parametrize("name", sorted(zoo.TINY_ZOO))
def test_tiny_forward_is_finite_and_deterministic(name):
    factory, inputs = zoo.TINY_ZOO[name]
    with torch.inference_mode():
        a = factory()(*inputs())
        b = factory()(*inputs())
    assert tuple(a.shape) == TINY_OUT[name]
    assert torch.isfinite(a).all()
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_benchmark_zoo_names_and_tiny_zoo_agree():
    assert set(zoo.ZOO) == set(zoo.TINY_ZOO) == {"resnet18", "mobilenet", "bert", "gcn", "gat"}


def test_bn_stats_are_not_identity():
    # BN folding must see non-trivial statistics, or a broken fold would pass unnoticed.
    bn = next(m for m in zoo.resnet_tiny().modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_mobilenet_tiny_has_depthwise_and_residual_blocks():
    m = zoo.mobilenet_tiny()
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert any(c.groups == c.in_channels > 1 for c in convs)
    assert any(isinstance(b, zoo.InvertedResidual) and b.residual for b in m.modules())
    assert any(isinstance(a, torch.nn.ReLU6) for a in m.modules())


def test_bert_mask_and_float_hidden_inputs():
    m = zoo.bert_tiny()
    ids, mask = zoo.bert_inputs(16, vocab=100, mask=True)
    with torch.inference_mode():
        masked, plain = m(ids, mask), m(ids)
        # Changing a padded token must not change the outputs at unpadded positions.
        ids2 = ids.clone()
        ids2[0, -1] = (ids[0, -1] + 1) % 100
        masked2 = m(ids2, mask)
    assert not torch.allclose(masked, plain)
    torch.testing.assert_close(masked[:, :12], masked2[:, :12])
    h = zoo.bert_tiny(embed=False)
    (x,) = zoo.bert_inputs(16, hidden=32)
    assert x.dtype == torch.float32 and h(x).shape == (1, 16, 32)


def _dense_adjacency(src, dst, n):
    a = np.zeros((n, n))
    np.add.at(a, (dst.numpy(), src.numpy()), 1.0)  # a[i, j] = number of edges j -> i
    return a


def test_gcn_layer_matches_dense_formula():
    x, src, dst = zoo.tiny_graph()
    layer = zoo.gcn_tiny().conv1
    a = _dense_adjacency(src, dst, 50) + np.eye(50)
    d = a.sum(1)
    h = x.double().numpy() @ layer.lin.weight.double().detach().numpy().T
    want = (a / np.sqrt(np.outer(d, d))) @ h + layer.bias.detach().double().numpy()
    with torch.inference_mode():
        got = layer(x, src, dst).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gat_attention_is_a_softmax_over_incoming_edges():
    x, src, dst = zoo.tiny_graph()
    layer = zoo.gat_tiny(heads=2).conv1
    with torch.inference_mode():
        out = layer(x, src, dst).numpy()
        h = layer.lin(x).reshape(50, 2, 8).numpy()
    att = layer.att.detach().numpy()
    s, t = src.numpy(), dst.numpy()
    want = np.zeros((50, 2, 8))
    for i in range(50):
        edges = np.nonzero(t == i)[0]
        if len(edges) == 0:
            continue
        for k in range(2):
            e = np.array([np.concatenate([h[i, k], h[s[j], k]]) @ att[k] for j in edges])
            e = np.where(e > 0, e, 0.2 * e)
            w = np.exp(e - e.max())
            want[i, k] = (w / w.sum()) @ h[s[edges], k]
    np.testing.assert_allclose(out, want.reshape(50, 16) + layer.bias.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_synthetic_graph_shapes_and_power_law_skew():
    x, src, dst = zoo.synthetic_graph(1000, 8000, 4, seed=3, power_law=True)
    assert x.shape == (1000, 4) and x.dtype == torch.float32
    assert src.dtype == dst.dtype == torch.int64 and src.shape == dst.shape == (8000,)
    assert int(src.min()) >= 0 and int(max(src.max(), dst.max())) < 1000
    assert bool((dst[1:] >= dst[:-1]).all())  # sorted by destination
    skewed = np.bincount(dst.numpy(), minlength=1000).max()
    uniform = np.bincount(zoo.synthetic_graph(1000, 8000, 4, seed=3)[2].numpy(), minlength=1000).max()
    assert skewed > 5 * uniform
    again = zoo.synthetic_graph(1000, 8000, 4, seed=3, power_law=True)
    assert torch.equal(again[1], src) and torch.equal(again[0], x)
    with pytest.raises(ValueError):
        zoo.synthetic_graph(0, 10, 4)


def test_digits_data_split():
    xtr, ytr, xte, yte = zoo.digits_data()
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert len(xtr) + len(xte) == 1797 and 0.0 <= xtr.min() and xtr.max() <= 1.0
    assert set(np.unique(yte)) == set(range(10))
    # Canonical strides: a channel stride torch reads as channels-last makes torch.export emit as_strided.
    assert torch.from_numpy(xte[:1]).stride() == (64, 64, 8, 1)


def test_digits_cnn_trains_above_90_percent():
    torch.set_num_threads(1)  # tiny batches: extra threads only add wake-up latency
    model = zoo.train_digits_cnn(epochs=6)
    _, _, xte, yte = zoo.digits_data()
    with torch.inference_mode():
        acc = zoo.accuracy(model(torch.from_numpy(xte)), yte)
    assert acc > 0.9
    assert zoo.accuracy(zoo.digits_cnn()(torch.from_numpy(xte)), yte) < 0.5  # untrained: near chance


def test_benchmark_inputs_have_the_documented_sizes():
    shapes = {name: [tuple(x.shape) for x in inputs()] for name, (_, inputs) in zoo.ZOO.items()}
    assert shapes["resnet18"] == shapes["mobilenet"] == [(1, 3, 224, 224)]
    assert shapes["bert"] == [(1, 128)]
    assert shapes["gcn"] == shapes["gat"] == [(4096, 128), (32768,), (32768,)]


@pytest.mark.parametrize("name", sorted(zoo.TINY_ZOO))
def test_tiny_models_export(name):
    # The frontends start from torch.export; a zoo model that cannot be exported is useless to them.
    factory, inputs = zoo.TINY_ZOO[name]
    model, args = factory(), inputs()
    ep = torch.export.export(model, args)
    with torch.inference_mode():
        torch.testing.assert_close(ep.module()(*args), model(*args))
