"""The model zoo shared by tests, examples and benchmarks.

Plain PyTorch definitions (no torchvision, no torch_geometric) of the model families qcc targets: a ResNet-18-style
CNN, a MobileNet-V2-style CNN, a BERT-style encoder, GCN and GAT layers written with ``index_select``/``index_add``,
and a small CNN trained on scikit-learn's digits. Every factory seeds torch, so a model (and its outputs) is the
same on every run. ``ZOO`` maps each benchmark model name to ``(model factory, input factory)`` at the benchmark
size; ``TINY_ZOO`` holds the same families at test size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------------------------- CNNs


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv/BN layers and a residual (with a 1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """ResNet-18 layout: 7×7/2 stem, 3×3/2 max pool, four stages of two basic blocks, global average pool, fc."""

    def __init__(self, width: int = 64, num_classes: int = 1000, blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1×1 expand (ReLU6), depthwise 3×3 (ReLU6), 1×1 linear projection, residual when the
    shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


# (expand ratio t, channels c, repeats n, first stride s) of MobileNet-V2 (Sandler et al., Table 2).
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNet-V2 with a width multiplier and a configurable block table."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings=MOBILENET_V2_SETTINGS, last: int = 1280):
        super().__init__()
        ch = lambda c: max(8, int(c * width + 4) // 8 * 8)  # round channels to a multiple of 8 as in the paper
        cin = ch(32)
        layers: list[nn.Module] = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        last = ch(last) if width > 1.0 else last
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _finish(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics (so BN folding is really tested) and switch to eval."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def resnet18(num_classes: int = 1000, width: int = 64) -> nn.Module:
    """ResNet-18 (11.7 M parameters at width 64); input 1×3×224×224."""
    torch.manual_seed(0)
    return _finish(ResNet(width, num_classes))


def resnet_tiny(num_classes: int = 10) -> nn.Module:
    """ResNet-18 structure at width 8 (≈0.2 M parameters); input 1×3×32×32."""
    return resnet18(num_classes, width=8)


def mobilenet(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """MobileNet-V2 (3.5 M parameters at width 1.0); input 1×3×224×224."""
    torch.manual_seed(0)
    return _finish(MobileNetV2(num_classes, width))


def mobilenet_tiny(num_classes: int = 10) -> nn.Module:
    """A short MobileNet-V2 (expand-1 block, strided blocks, residual blocks) at width 0.25; input 1×3×32×32."""
    torch.manual_seed(0)
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))
    return _finish(MobileNetV2(num_classes, 0.25, settings, last=64))


def image_input(size: int = 224, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor]:
    """A deterministic N×3×size×size float image batch."""
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


# ---------------------------------------------------------------------------------------------------------------- BERT


class EncoderLayer(nn.Module):
    """Post-LN BERT layer with hand-written multi-head attention (reshape/transpose/matmul/scale/softmax)."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.heads, self.dh = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, s, h = x.shape
        split = lambda t: t.reshape(b, s, self.heads, self.dh).transpose(1, 2)  # [b, heads, s, dh]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / self.dh**0.5)
        if bias is not None:
            scores = scores + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class BertEncoder(nn.Module):
    """BERT-style encoder. ``forward(ids_or_hidden, mask=None)``: int64 token ids [B, S] (embedded by word plus
    position embeddings and LayerNorm) or, with ``embed=False``, float hidden states [B, S, H]. ``mask`` is an
    optional float [B, S] of 1 (attend) / 0 (padding), turned into an additive bias as in BERT."""

    def __init__(self, layers: int, seq: int, hidden: int, heads: int, vocab: int = 1000, embed: bool = True):
        super().__init__()
        self.embed = embed
        if embed:
            self.word = nn.Embedding(vocab, hidden)
            self.pos = nn.Parameter(torch.randn(seq, hidden) * 0.02)
            self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, 4 * hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed:
            x = self.ln(self.word(x) + self.pos[: x.shape[1]])
        bias = None if mask is None else ((1.0 - mask) * -10000.0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x


def bert_encoder(layers: int = 4, seq: int = 128, hidden: int = 256, heads: int = 4, vocab: int = 1000,
                 embed: bool = True) -> nn.Module:
    """A BERT-style encoder (defaults: 4 layers, hidden 256, 4 heads, FFN 1024; ≈3.4 M parameters)."""
    torch.manual_seed(0)
    return BertEncoder(layers, seq, hidden, heads, vocab, embed).eval()


def bert_tiny(embed: bool = True) -> nn.Module:
    """2 layers, sequence 16, hidden 32, 2 heads, vocabulary 100."""
    return bert_encoder(2, 16, 32, 2, vocab=100, embed=embed)


def bert_inputs(seq: int = 128, batch: int = 1, vocab: int = 1000, mask: bool = False, hidden: int | None = None,
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Token ids [batch, seq] (int64), or float hidden states if ``hidden`` is given; with ``mask`` also a 0/1
    float mask whose last quarter is padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, hidden, generator=g) if hidden else torch.randint(0, vocab, (batch, seq), generator=g)
    if not mask:
        return (x,)
    m = torch.ones(batch, seq)
    m[:, seq - seq // 4:] = 0.0
    return x, m


# ---------------------------------------------------------------------------------------------------------------- GNNs


class GCNConv(nn.Module):
    """Kipf & Welling GCN layer: ``h = xW``, then ``out_i = h_i/d_i + Σ_{j→i} h_j/√(d_i d_j) + b`` with
    ``d = 1 + in-degree`` (the self loop of Â = A + I is implicit, so isolated vertices are fine)."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.lin = nn.Linear(fin, fout, bias=False)
        self.bias = nn.Parameter(torch.randn(fout) * 0.1)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        deg = torch.ones(n, dtype=x.dtype).index_add(0, dst, torch.ones(dst.shape[0], dtype=x.dtype))
        inv = torch.rsqrt(deg)
        h = self.lin(x)
        norm = torch.index_select(inv, 0, src) * torch.index_select(inv, 0, dst)  # per-edge 1/√(d_src d_dst)
        msg = torch.index_select(h, 0, src) * norm.unsqueeze(1)
        return (h * (inv * inv).unsqueeze(1)).index_add(0, dst, msg) + self.bias


class GATConv(nn.Module):
    """Veličković et al. GAT layer in its textbook per-edge form ``e_ij = LeakyReLU(aᵀ[W h_i ‖ W h_j])``: the
    score linear is applied to gathered edge features (what propagation-postponed reorganisation rewrites), then
    ``exp``, a segment sum onto destinations with ``index_add``, a divide and the weighted aggregation.
    Heads are concatenated (``concat``) or averaged."""

    def __init__(self, fin: int, fout: int, heads: int = 1, concat: bool = True):
        super().__init__()
        self.heads, self.fout, self.concat = heads, fout, concat
        self.lin = nn.Linear(fin, heads * fout, bias=False)
        self.att = nn.Parameter(torch.randn(heads, 2 * fout) * (1.0 / fout**0.5))
        self.bias = nn.Parameter(torch.randn(heads * fout if concat else fout) * 0.1)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        n, hd, f = x.shape[0], self.heads, self.fout
        h = self.lin(x).reshape(n, hd, f)
        hs, ht = torch.index_select(h, 0, src), torch.index_select(h, 0, dst)  # [E, heads, f]
        e = F.leaky_relu((torch.cat([ht, hs], dim=-1) * self.att).sum(-1), 0.2)  # [E, heads]
        # Scores stay small (scaled attention weights), so exp without the max shift cannot overflow here.
        ex = torch.exp(e)
        denom = torch.zeros(n, hd, dtype=x.dtype).index_add(0, dst, ex)
        alpha = ex / torch.index_select(denom, 0, dst)
        out = torch.zeros(n, hd, f, dtype=x.dtype).index_add(0, dst, hs * alpha.unsqueeze(-1))
        out = out.reshape(n, hd * f) if self.concat else out.mean(1)
        return out + self.bias


class GNN(nn.Module):
    """Two graph-conv layers with an activation between: ``forward(x, src, dst)`` -> per-vertex logits."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.conv1, self.conv2, self.act = conv1, conv2, act

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x, src, dst)), src, dst)


def gcn(features: int = 128, hidden: int = 64, num_classes: int = 16) -> nn.Module:
    """A two-layer GCN (ReLU between)."""
    torch.manual_seed(0)
    return GNN(GCNConv(features, hidden), GCNConv(hidden, num_classes), F.relu).eval()


def gat(features: int = 128, hidden: int = 16, num_classes: int = 16, heads: int = 4) -> nn.Module:
    """A two-layer GAT: ``heads`` concatenated heads of width ``hidden``, ELU, then one averaged output head."""
    torch.manual_seed(0)
    return GNN(GATConv(features, hidden, heads), GATConv(hidden * heads, num_classes, 1, concat=False), F.elu).eval()


def synthetic_graph(num_vertices: int, num_edges: int, features: int, seed: int = 0,
                    power_law: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random directed graph: (x float32 [V, F], src int64 [E], dst int64 [E]), edges sorted by destination.
    With ``power_law`` endpoints follow a Zipf-like law (exponent 1), giving the skewed degrees of real graphs."""
    if num_vertices < 1 or num_edges < 1 or features < 1:
        raise ValueError("synthetic_graph needs at least one vertex, edge and feature")
    rng = np.random.default_rng(seed)
    if power_law:
        p = 1.0 / np.arange(1, num_vertices + 1)
        p /= p.sum()
        perm = rng.permutation(num_vertices)  # hubs at random ids, not 0..k
        src, dst = perm[rng.choice(num_vertices, num_edges, p=p)], perm[rng.choice(num_vertices, num_edges, p=p)]
    else:
        src, dst = rng.integers(0, num_vertices, num_edges), rng.integers(0, num_vertices, num_edges)
    order = np.argsort(dst, kind="stable")
    x = rng.standard_normal((num_vertices, features), dtype=np.float32)
    src, dst = src[order].astype(np.int64), dst[order].astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(src), torch.from_numpy(dst)


def gcn_tiny() -> nn.Module:
    """GCN for the tiny graph (16 features, hidden 8, 4 classes)."""
    return gcn(16, 8, 4)


def gat_tiny(heads: int = 2) -> nn.Module:
    """GAT for the tiny graph (16 features, hidden 8 per head, 4 classes)."""
    return gat(16, 8, 4, heads)


def tiny_graph(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """50 vertices, 200 edges, 16 features."""
    return synthetic_graph(50, 200, 16, seed)


# -------------------------------------------------------------------------------------------------------------- digits


class DigitsCNN(nn.Module):
    """A small CNN for 1×8×8 digits: conv/BN/ReLU stem, a residual block, a depthwise-separable conv, max pool,
    global average pool and a linear classifier (≈6 k parameters)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU(),
                                nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res(x))
        x = self.pool(self.dw(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_cnn() -> nn.Module:
    """An untrained ``DigitsCNN`` (seeded)."""
    torch.manual_seed(0)
    return DigitsCNN()


def digits_data(test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits as ``(x_train, y_train, x_test, y_test)``: x float32 [N, 1, 8, 8] scaled to
    [0, 1], y int64; a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # reshape, not [:, None]: the latter gives the channel axis stride 4, which torch reads as channels-last,
    # and torch.export then traces the model in that layout (an as_strided node before the classifier).
    x = (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def train_digits_cnn(epochs: int = 15, seed: int = 0, batch: int = 64) -> nn.Module:
    """Train ``digits_cnn`` with Adam on the digits training split (a few seconds on 2 cores); returns it in eval
    mode with trained BatchNorm statistics."""
    xtr, ytr, _, _ = digits_data()
    model = digits_cnn().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits [N, classes] against integer labels."""
    pred = np.asarray(logits.detach() if isinstance(logits, torch.Tensor) else logits).argmax(-1)
    return float((pred == np.asarray(labels)).mean())


class ViTBlock(nn.Module):
    """Pre-LN transformer block: multi-head softmax attention written with matmul / softmax, and a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.ln1(x)
        split = lambda t: t.reshape(b, s, self.heads, self.dh).transpose(1, 2)  # [b, heads, s, dh]
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1.0 / self.dh**0.5), dim=-1)
        x = x + self.o(torch.matmul(att, v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class DigitsViT(nn.Module):
    """A small ViT-style encoder for 1×8×8 digits: ``patch``×``patch`` patches (16 tokens of 2×2 pixels by default)
    by reshape/transpose, a linear patch embedding plus learned position embeddings, ``depth`` pre-LN blocks
    (LayerNorm, softmax attention, GELU MLP), a final LayerNorm, mean pooling over tokens and a linear classifier."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, mlp: int = 64, patch: int = 2):
        super().__init__()
        self.patch, self.grid = patch, 8 // patch
        self.embed = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, g = x.shape[0], self.patch, self.grid
        x = x.reshape(b, 1, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, p * p)
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def digits_vit() -> nn.Module:
    """An untrained ``DigitsViT`` (seeded)."""
    torch.manual_seed(0)
    return DigitsViT()


def train_digits_vit(epochs: int = 40, seed: int = 0, batch: int = 64) -> nn.Module:
    """Train ``digits_vit`` with AdamW on the digits training split (seconds on 2 cores); returns it in eval mode."""
    xtr, ytr, _, _ = digits_data()
    model = digits_vit().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    steps = epochs * -(-len(xtr) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------- zoo

Factory = Callable[[], nn.Module]
InputFactory = Callable[[], tuple[torch.Tensor, ...]]

# Benchmark sizes. Graphs: 4096 vertices, 32768 edges (average in-degree 8), power-law degrees, 128 features.
GRAPH_SIZE = (4096, 32768, 128)

ZOO: dict[str, tuple[Factory, InputFactory]] = {
    "resnet18": (resnet18, lambda: image_input(224)),
    "mobilenet": (mobilenet, lambda: image_input(224)),
    "bert": (bert_encoder, lambda: bert_inputs(128)),
    "gcn": (gcn, lambda: synthetic_graph(*GRAPH_SIZE, power_law=True)),
    "gat": (gat, lambda: synthetic_graph(*GRAPH_SIZE, power_law=True)),
}

TINY_ZOO: dict[str, tuple[Factory, InputFactory]] = {
    "resnet18": (resnet_tiny, lambda: image_input(32)),
    "mobilenet": (mobilenet_tiny, lambda: image_input(32)),
    "bert": (bert_tiny, lambda: bert_inputs(16, vocab=100)),
    "gcn": (gcn_tiny, tiny_graph),
    "gat": (gat_tiny, tiny_graph),
}


# ------------------------------------------------------------------------------------------- more GNNs (issue #8)


class EdgeConv(nn.Module):
    """DGCNN EdgeConv in dgNN's form ``y_i = max_{j→i} Θ(x_j − x_i) + Φ x_i``, written per edge with
    ``index_select`` and a max onto destinations with ``index_reduce(amax, include_self=False)`` (0 when a vertex
    has no in-edge)."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        self.fout = fout
        self.theta = nn.Linear(fin, fout)
        self.phi = nn.Linear(fin, fout, bias=False)

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        xj, xi = torch.index_select(x, 0, src), torch.index_select(x, 0, dst)
        msg = self.theta(xj - xi) + self.phi(xi)  # [E, fout]: two GEMMs over edges before reorganisation
        out = torch.zeros(x.shape[0], self.fout, dtype=x.dtype)
        return out.index_reduce(0, dst, msg, "amax", include_self=False)


def edgeconv_tiny() -> nn.Module:
    """Two EdgeConv layers (ReLU between) for the tiny graph (16 features, hidden 8, 4 classes)."""
    torch.manual_seed(0)
    return GNN(EdgeConv(16, 8), EdgeConv(8, 4), F.relu).eval()


class ScatterGATConv(GATConv):
    """The textbook GAT layer written PyG-style with ``scatter_reduce`` / ``scatter_add`` over an index broadcast
    with ``expand`` (what ONNX exports as ScatterElements) and the max-shifted softmax ``exp(e − max_j e)``."""

    def forward(self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        n, hd, f = x.shape[0], self.heads, self.fout
        h = self.lin(x).reshape(n, hd, f)
        hs, ht = torch.index_select(h, 0, src), torch.index_select(h, 0, dst)
        e = F.leaky_relu((torch.cat([ht, hs], dim=-1) * self.att).sum(-1), 0.2)  # [E, heads]
        idx = dst.view(-1, 1).expand_as(e)
        emax = torch.full((n, hd), float("-inf"), dtype=x.dtype).scatter_reduce(0, idx, e, "amax")
        ex = torch.exp(e - torch.index_select(emax, 0, dst))
        denom = torch.zeros(n, hd, dtype=x.dtype).scatter_add(0, idx, ex)
        alpha = ex / torch.index_select(denom, 0, dst)
        msg = (hs * alpha.unsqueeze(-1)).reshape(-1, hd * f)
        out = torch.zeros(n, hd * f, dtype=x.dtype).scatter_add(0, dst.view(-1, 1).expand_as(msg), msg)
        out = out if self.concat else out.reshape(n, hd, f).mean(1)
        return out + self.bias


def scatter_gat_tiny(heads: int = 2) -> nn.Module:
    """`gat_tiny` with `ScatterGATConv` layers (the same weights as ``gat_tiny(heads)``): for ONNX export."""
    torch.manual_seed(0)
    return GNN(ScatterGATConv(16, 8, heads), ScatterGATConv(8 * heads, 4, 1, concat=False), F.elu).eval()


# ----------------------------------------------------------------------------------------------- attention (SDPA)


class SDPABlock(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``: ``form`` "causal" (is_causal=True),
    "float_mask" (an additive float mask input [B, 1, S, S]), "bool_mask" (a 0/1 float input turned into a bool
    mask [B, 1, 1, S], True = attend) or "masked_fill" (hand-written causal attention with ``masked_fill(-inf)``)."""

    def __init__(self, form: str, dim: int, heads: int):
        super().__init__()
        self.form, self.heads, self.dh = form, heads, dim // heads
        self.qkv, self.o = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (t.reshape(b, s, self.heads, self.dh).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        if self.form == "masked_fill":
            hidden = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
            att = (q @ k.transpose(-2, -1) / self.dh**0.5).masked_fill(hidden, float("-inf"))
            y = torch.softmax(att, dim=-1) @ v
        elif self.form == "causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.form == "bool_mask":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=(mask > 0.5)[:, None, None, :])
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, s, d))


def sdpa_block(form: str = "causal", seq: int = 16, dim: int = 32, heads: int = 2, batch: int = 1,
               seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(an `SDPABlock`, its example inputs): x [batch, seq, dim] and, for the mask forms, the mask."""
    torch.manual_seed(seed)
    model = SDPABlock(form, dim, heads).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, dim, generator=g)
    if form == "float_mask":
        return model, (x, torch.randn(batch, 1, seq, seq, generator=g))
    if form == "bool_mask":
        keep = torch.ones(batch, seq)
        keep[:, seq - seq // 4:] = 0.0
        return model, (x, keep)
    return model, (x,)
