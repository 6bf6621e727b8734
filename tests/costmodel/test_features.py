"""Feature extraction: every IR op kind (node level) and every kernel template kind (kernel level)."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.costmodel.features import (
    FEATURE_NAMES,
    KINDS,
    NODE_FEATURE_NAMES,
    analytic_cycles,
    feature_matrix,
    kernel_features,
    node_features,
)
from qcc.errors import CostModelError
from qcc.ir.graph import Node, Value
from qcc.ir.ops import OPS
from qcc.ir.types import TensorType

TARGET = {"lanes": 16, "vregs": 32, "l1d": 32768, "l2": 1 << 20, "l3": 32 << 20, "cores": 1}
CONV = {"type": "Conv2dShape", "N": 1, "C": 32, "H": 14, "W": 14, "O": 64, "KH": 3, "KW": 3, "stride": [1, 1],
        "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}
DW = {**CONV, "C": 32, "O": 32, "groups": 32}
KERNELS = {
    "dense": ({"type": "DenseShape", "M": 16, "N": 64, "K": 128},
              {"type": "DenseParams", "mb": 4, "nv": 2, "lanes": 16, "kc": 128, "order": "mn"}),
    "batch_matmul": ({"type": "BatchMatmulShape", "B": 4, "M": 16, "N": 16, "K": 32, "transpose_b": False},
                     {"type": "DenseParams", "mb": 2, "nv": 1, "lanes": 16, "kc": 32, "order": "mn"}),
    "conv2d_direct": (CONV, {"type": "ConvParams", "ic_bn": 16, "oc_bn": 16, "ow_bn": 7, "oc_tile": 2, "lanes": 16,
                             "unroll_kw": True}),
    "conv2d_im2col": (CONV, {"type": "Im2colParams", "ow_bn": 7, "oc_bn": 16, "oc_tile": 2, "lanes": 16, "kc": 288}),
    "depthwise_conv2d": (DW, {"type": "DepthwiseParams", "c_bn": 16, "ow_bn": 14, "lanes": 16}),
}


def kernel(kind: str, **over) -> dict:
    shape, params = KERNELS[kind]
    return {"kind": kind, "shape": shape, "params": params, "epilogue": [["bias"], ["relu"]], "target": TARGET,
            **over}


@pytest.mark.parametrize("op", sorted(OPS))
def test_node_features_every_op(op):
    n_in = OPS[op].num_inputs
    n_in = n_in[0] if isinstance(n_in, tuple) else (n_in if isinstance(n_in, int) and n_in >= 0 else 2)
    t = TensorType((2, 8, 4, 4), "f32")
    node = Node(op, tuple(Value(t, f"x{i}") for i in range(max(n_in, 1))), (Value(TensorType((2, 8, 4, 4), "i8")),))
    f = node_features(node)
    assert f.shape == (len(NODE_FEATURE_NAMES),) and np.all(np.isfinite(f))
    assert f[0] == sorted(OPS).index(op)  # the op kind is encoded
    assert f[NODE_FEATURE_NAMES.index("out_bits")] == 8


def test_node_features_flops_of_conv_and_unknown_op():
    x, w = Value(TensorType((1, 4, 8, 8), "f32")), Value(TensorType((6, 4, 3, 3), "f32"))
    y = Value(TensorType((1, 6, 6, 6), "f32"))
    f = node_features(Node("conv2d", (x, w), (y,)))
    assert f[NODE_FEATURE_NAMES.index("log_flops")] == pytest.approx(np.log2(2 * 6 * 36 * 36 + 1))
    with pytest.raises(CostModelError, match="unknown op"):
        node_features(Node("no_such_op", (x,), (y,)))


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_features_every_kind(kind):
    f = kernel_features(kernel(kind))
    assert f.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(f))
    assert f[FEATURE_NAMES.index(f"kind_{kind}")] == 1.0
    assert f[FEATURE_NAMES.index("fusion")] == 2.0 and f[FEATURE_NAMES.index("epi_relu")] == 1.0
    assert f[FEATURE_NAMES.index("log_flops")] > 10
    assert analytic_cycles(kind, KERNELS[kind][0], KERNELS[kind][1], TARGET) > 0


def test_schedule_and_target_change_features():
    a = kernel_features(kernel("dense"))
    b = kernel_features(kernel("dense", params={**KERNELS["dense"][1], "mb": 8}))
    c = kernel_features(kernel("dense", target={**TARGET, "cores": 2}))
    d = kernel_features(kernel("dense", dtype="i8"))
    assert a[FEATURE_NAMES.index("p_mb")] == 4 and b[FEATURE_NAMES.index("p_mb")] == 8
    assert c[FEATURE_NAMES.index("t_cores")] == 2
    assert d[FEATURE_NAMES.index("bits")] == 8
    assert d[FEATURE_NAMES.index("log_read")] < a[FEATURE_NAMES.index("log_read")]
    assert feature_matrix([kernel(k) for k in KINDS]).shape == (len(KINDS), len(FEATURE_NAMES))


def test_bad_kernels_are_clear_errors():
    with pytest.raises(CostModelError, match="unknown kernel kind"):
        kernel_features({**kernel("dense"), "kind": "winograd"})
    with pytest.raises(CostModelError, match="needs 'kind'"):
        kernel_features({"shape": {}})
    with pytest.raises(CostModelError, match="unknown dtype"):
        kernel_features(kernel("dense", dtype="f8"))
    with pytest.raises(CostModelError, match="does not describe"):
        kernel_features(kernel("dense", shape={"type": "DenseShape", "M": 1}))


QCONV = {**CONV, "type": "QConv2dShape", "x_dtype": "u8", "w_bits": 8, "out_dtype": "u8"}
QLIN = {"type": "QDenseShape", "M": 16, "N": 64, "K": 128, "x_dtype": "i8", "w_bits": 4, "out_dtype": "u8"}


@pytest.mark.parametrize("kind,shape", [("qconv2d", QCONV), ("qlinear", QLIN)])
def test_integer_kernels_carry_their_bit_widths(kind, shape):
    from qcc.costmodel.features import INT_KINDS

    assert kind in INT_KINDS
    k = {"kind": kind, "shape": shape, "params": {"type": "IntParams", "impl": "vnni"},
         "epilogue": [["requantize"]], "dtype": shape["x_dtype"], "layout": "NCHW", "target": TARGET}
    f = kernel_features(k)
    named = dict(zip(FEATURE_NAMES, f, strict=True))
    assert named[f"kind_{kind}"] == 1 and named["is_int"] == 1 and named["epi_requantize"] == 1
    assert (named["x_bits"], named["w_bits"], named["acc_bits"], named["out_bits"]) == (8, shape["w_bits"], 32, 8)
    assert named["p_vnni"] == 1 and named["layout_blocked"] == 0
    w4 = dict(zip(FEATURE_NAMES, kernel_features({**k, "shape": {**shape, "w_bits": 4}}), strict=True))
    w8 = dict(zip(FEATURE_NAMES, kernel_features({**k, "shape": {**shape, "w_bits": 8}}), strict=True))
    assert w4["log_read"] < w8["log_read"] and w4["w_bits"] == 4  # packed 4-bit weights read half the bytes
    generic = {**k, "params": {"type": "IntParams", "impl": "generic"}}
    assert analytic_cycles(kind, shape, generic["params"], TARGET) > 10 * analytic_cycles(kind, shape, k["params"],
                                                                                           TARGET)
    with pytest.raises(CostModelError, match="lowering"):
        kernel_features({**k, "params": {"type": "IntParams", "impl": "magic"}})
    with pytest.raises(CostModelError, match="widths"):
        kernel_features({**k, "shape": {**shape, "x_dtype": "q7"}})
    # a float kernel reports its dtype's width everywhere and is not integer
    fl = dict(zip(FEATURE_NAMES, kernel_features(kernel("dense")), strict=True))
    assert fl["is_int"] == 0 and fl["w_bits"] == 32 and fl["acc_bits"] == 32


def test_attention_kernels_carry_their_tiles():
    from qcc.costmodel.features import ATTN_KINDS, FEATURE_VERSION

    assert "attention" in ATTN_KINDS and FEATURE_VERSION == 3
    shape = {"type": "AttentionShape", "bh": 8, "heads": 8, "n": 128, "m": 256, "d": 64, "dv": 64, "causal": False}

    def feats(br: int, bc: int, **kw: object) -> dict[str, float]:
        k = {"kind": "attention", "shape": {**shape, **kw}, "params": {"type": "AttentionParams", "br": br, "bc": bc},
             "epilogue": [], "target": TARGET}
        return dict(zip(FEATURE_NAMES, kernel_features(k), strict=True))

    a, b = feats(32, 64), feats(8, 16)
    assert a["kind_attention"] == 1 and (a["p_br"], a["p_bc"]) == (32, 64) and (b["p_br"], b["p_bc"]) == (8, 16)
    assert a["log_flops"] == pytest.approx(np.log2(2 * 8 * 128 * 256 * 128 + 1))
    assert a["panel_l1"] > b["panel_l1"] and a["tasks"] < b["tasks"]
    assert feats(32, 64, causal=True)["log_flops"] < a["log_flops"]  # causal skips about half the keys
    assert feats(32, 48)["pad"] > a["pad"]  # 256 keys in tiles of 48 pad the last one
