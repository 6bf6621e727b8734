"""Kernel descriptions of IR nodes, for passes that ask a `CostModel` about a node or a group of nodes.

    from qcc.costmodel import active_model
    from qcc.costmodel.describe import describe_node, int_kernel, predict_nodes

    k = describe_node(node, graph)                      # kernel dict (features.py form), or None
    secs = predict_nodes(active_model(), group, graph)  # predicted seconds of a group of nodes
    k4 = int_kernel("qconv2d", x_shape, w_shape, attrs, w_bits=4)   # a layer's integer kernel at 4-bit weights

The kernels of conv2d / linear / matmul (float) and qconv2d / qlinear (integer) nodes are described with the
schedule a CPU backend would use by default (a rough restatement of the template rules: the cost model needs
some schedule, and these are the candidates' common shape); every other node gets the analytic elementwise
roofline, since no learned model covers it. Needs neither TVM nor the backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from qcc.costmodel.features import DEFAULT_TARGET, DTYPE_BITS, INT_IMPLS, conv_out, node_flops
from qcc.errors import CostModelError

_CONV_ATTRS = ("stride", "padding", "dilation", "groups")


def _conv_shape(x: Sequence[int], w: Sequence[int], attrs: Mapping[str, Any]) -> dict[str, Any]:
    if len(x) != 4 or len(w) != 4:
        raise CostModelError(f"conv2d kernels need 4-d x and w, got {list(x)} and {list(w)}")
    return {"N": int(x[0]), "C": int(x[1]), "H": int(x[2]), "W": int(x[3]), "O": int(w[0]), "KH": int(w[2]),
            "KW": int(w[3]), "stride": list(attrs.get("stride", (1, 1))),
            "padding": list(attrs.get("padding", (0, 0, 0, 0))), "dilation": list(attrs.get("dilation", (1, 1))),
            "groups": int(attrs.get("groups", 1))}


def int_kernel(op: str, x_shape: Sequence[int], w_shape: Sequence[int], attrs: Mapping[str, Any] | None = None,
               x_dtype: str = "u8", w_bits: int = 8, impl: str = "vnni", requantize: bool = True,
               out_dtype: str = "u8", target: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The kernel dict of an integer qconv2d / qlinear (x [.., K], w [N, K]) with weights of `w_bits` bits and,
    with `requantize`, its requantize epilogue to `out_dtype` (else the int32 accumulator is the output)."""
    attrs = dict(attrs or {})
    if impl not in INT_IMPLS:
        raise CostModelError(f"unknown integer kernel lowering {impl!r}; known: {', '.join(INT_IMPLS)}")
    if op == "qconv2d":
        shape: dict[str, Any] = {"type": "QConv2dShape", **_conv_shape(x_shape, w_shape, attrs)}
    elif op == "qlinear":
        if len(w_shape) != 2 or not x_shape or int(x_shape[-1]) != int(w_shape[1]):
            raise CostModelError(f"qlinear needs x [..., K] and w [N, K], got {list(x_shape)} and {list(w_shape)}")
        shape = {"type": "QDenseShape", "M": int(np.prod(x_shape[:-1], dtype=np.int64)), "N": int(w_shape[0]),
                 "K": int(w_shape[1])}
    else:
        raise CostModelError(f"no integer kernel for op {op!r} (qconv2d, qlinear)")
    shape.update(x_dtype=x_dtype, w_bits=int(w_bits), out_dtype=out_dtype if requantize else "i32")
    return {"kind": op, "shape": shape, "params": {"type": "IntParams", "impl": impl},
            "epilogue": [["requantize"]] if requantize else [], "dtype": x_dtype, "layout": "NCHW",
            "target": dict(target or DEFAULT_TARGET)}


def _tile(extent: int, choices: Iterable[int]) -> int:
    """The largest choice dividing `extent`, else the largest not above it."""
    choices = sorted(choices, reverse=True)
    return next((c for c in choices if extent % c == 0), next((c for c in choices if c <= extent), 1))


def float_kernel(op: str, x_shape: Sequence[int], w_shape: Sequence[int], attrs: Mapping[str, Any] | None = None,
                 epilogue: Sequence[Any] = (), target: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The kernel dict of a float conv2d / linear (w [N, K]) / matmul (x [B.., M, K] · w [B.., K, N] or a
    2-d weight [K, N]) with a rule-like default schedule for `target` (lanes, vregs)."""
    attrs = dict(attrs or {})
    t = {**DEFAULT_TARGET, **dict(target or {})}
    lanes = int(t["lanes"])
    if op == "conv2d":
        s = {"type": "Conv2dShape", **_conv_shape(x_shape, w_shape, attrs)}
        ow = conv_out(s)[1]
        if s["groups"] > 1 and s["groups"] == s["C"] == s["O"]:
            kind, p = "depthwise_conv2d", {"type": "DepthwiseParams", "c_bn": lanes, "lanes": lanes,
                                           "ow_bn": _tile(ow, (16, 14, 8, 7, 4, 2, 1))}
        else:
            cg = s["C"] // s["groups"]
            kind, p = "conv2d_direct", {"type": "ConvParams", "ic_bn": _tile(cg, (16, 8, 4, 2, 1)), "oc_bn": lanes,
                                        "ow_bn": _tile(ow, (14, 8, 7, 4, 2, 1)), "oc_tile": 1, "lanes": lanes,
                                        "unroll_kw": s["KW"] <= 3}
    elif op in ("linear", "matmul"):
        if op == "linear" or len(w_shape) == 2:
            k_ = int(x_shape[-1])
            n = int(w_shape[0] if op == "linear" else w_shape[1])
            kind, s = "dense", {"type": "DenseShape", "M": int(np.prod(x_shape[:-1], dtype=np.int64)), "N": n, "K": k_}
        else:
            kind = "batch_matmul"
            s = {"type": "BatchMatmulShape", "B": int(np.prod(x_shape[:-2], dtype=np.int64)), "M": int(x_shape[-2]),
                 "N": int(w_shape[-1]), "K": int(x_shape[-1]), "transpose_b": False}
        nv = 2 if s["N"] > lanes else 1
        p = {"type": "DenseParams", "mb": 1 if s["M"] == 1 else _tile(s["M"], (8, 6, 4, 2, 1)), "nv": nv,
             "lanes": lanes, "kc": s["K"], "order": "mn"}
    else:
        raise CostModelError(f"no float kernel template for op {op!r} (conv2d, linear, matmul)")
    return {"kind": kind, "shape": s, "params": p, "epilogue": [list(e) for e in epilogue], "dtype": "f32",
            "layout": "NCHWc", "target": t}


_EPILOGUE = {"relu": "relu", "relu6": "relu6", "gelu": "gelu", "hardswish": "hardswish", "add": "add",
             "requantize": "requantize"}


def describe_node(node: Any, graph: Any = None, impl: str = "vnni",
                  target: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The kernel dict of an IR node that a kernel template implements (conv2d, linear, matmul, qconv2d,
    qlinear), or None for any other op. With `graph`, a qconv2d / qlinear whose only user is a requantize gets
    it as epilogue (as the backend fuses it), and a float kernel its bias."""
    shapes = [v.type.shape for v in node.inputs]
    if node.op in ("qconv2d", "qlinear"):
        if len(shapes) < 2:
            return None
        x_t, w_t = node.inputs[0].type, node.inputs[1].type
        users = graph.users().get(node.outputs[0], []) if graph is not None else []
        rq = users[0] if len(users) == 1 and users[0].op == "requantize" else None
        return int_kernel(node.op, shapes[0], shapes[1], node.attrs, x_dtype=x_t.dtype,
                          w_bits=DTYPE_BITS.get(w_t.dtype, 8), impl=impl, requantize=rq is not None,
                          out_dtype=rq.outputs[0].type.dtype if rq is not None else "i32", target=target)
    if node.op in ("conv2d", "linear", "matmul") and len(shapes) >= 2:
        if any(v.type.dtype not in ("f32", "f16") for v in node.inputs[:2]):
            return None
        epi = [["bias"]] if len(shapes) > 2 and node.op in ("conv2d", "linear") else []
        try:
            return float_kernel(node.op, shapes[0], shapes[1], node.attrs, epi, target)
        except (CostModelError, IndexError, ZeroDivisionError):
            return None
    return None


def _elementwise_seconds(node: Any, clock_hz: float = 3.0e9, bandwidth: float = 20e9) -> float:
    """The analytic roofline of a node no template covers (8 flops per cycle, compulsory traffic)."""
    def nbytes(v: Any) -> float:
        return float(np.prod(v.type.shape) if v.type.shape else 1) * DTYPE_BITS.get(v.type.dtype, 32) / 8.0

    traffic = sum(nbytes(v) for v in node.inputs) + sum(nbytes(v) for v in node.outputs)
    return max(node_flops(node) / (8.0 * clock_hz), traffic / bandwidth)


def predict_nodes(model: Any, nodes: Sequence[Any], graph: Any = None, impl: str = "vnni",
                  target: Mapping[str, Any] | None = None) -> float:
    """Predicted seconds of running `nodes`: `model.predict` on the kernels `describe_node` finds (a requantize
    folded into its qconv2d / qlinear is not counted again), plus the analytic roofline of every other node.
    `model` None means the analytic `AnalyticCostModel`."""
    from qcc.costmodel.model import AnalyticCostModel

    model = model if model is not None else AnalyticCostModel()
    kernels: list[dict[str, Any]] = []
    folded: set[int] = set()
    rest = 0.0
    users = graph.users() if graph is not None else {}
    for n in nodes:
        if id(n) in folded:
            continue
        k = describe_node(n, graph, impl, target)
        if k is None:
            rest += _elementwise_seconds(n)
            continue
        kernels.append(k)
        if k["kind"] in ("qconv2d", "qlinear") and k["epilogue"]:
            folded.update(id(u) for u in users.get(n.outputs[0], []))
    pred = np.asarray(model.predict(kernels), dtype=np.float64) if kernels else np.zeros(0)
    return float(pred.sum()) + rest
