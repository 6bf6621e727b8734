"""Every qcc op built with the TVM backend (cpu-fp32) against the interpreter.

Each case is one node on its own graph inputs. Cases are grouped into a few graphs (one `tvm.compile` each,
~1 s) built once per module; each case is still its own parametrized test so a failure names the op.
Float outputs: rtol 1e-4, atol 1e-5. Integer and bool outputs: exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcc  # noqa: E402
from qcc.ir import GraphBuilder  # noqa: E402
from qcc.ir.ops import OPS  # noqa: E402
from qcc.ir.types import dtype_from_numpy  # noqa: E402
from qcc.target import Target  # noqa: E402

pytestmark = pytest.mark.tvm
rng = np.random.default_rng(1234)


def f32(*shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def ints(*shape: int, lo: int = -9, hi: int = 10, dtype: Any = np.int32) -> np.ndarray:
    return rng.integers(lo, hi, shape).astype(dtype)


def bools(*shape: int) -> np.ndarray:
    return rng.random(shape) < 0.5


@dataclass(eq=False)
class Case:
    op: str
    inputs: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    group: str = "float"


C = Case
CASES: list[Case] = [
    # unary float
    *[C(op, [f32(2, 3, 4)]) for op in ("relu6", "sigmoid", "silu", "hardswish", "hardsigmoid", "tanh", "exp",
                                         "erf", "sin", "cos", "floor", "ceil", "elu", "leaky_relu")],
    C("relu6", [f32(2, 8, lo=-8, hi=8)], id="relu6-wide"),
    C("log", [f32(3, 5, lo=0.1, hi=5)]),
    C("sqrt", [f32(3, 5, lo=0.0, hi=5)]),
    C("rsqrt", [f32(3, 5, lo=0.1, hi=5)]),
    C("reciprocal", [f32(3, 5, lo=0.5, hi=5)]),
    C("round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 3.7, -3.2], np.float32)], id="round-half-even"),
    C("gelu", [f32(4, 6, lo=-4, hi=4)], {"approximate": "none"}, id="gelu-none"),
    C("gelu", [f32(4, 6, lo=-4, hi=4)], {"approximate": "tanh"}, id="gelu-tanh"),
    C("elu", [f32(4, 6)], {"alpha": 0.7}, id="elu-alpha"),
    C("leaky_relu", [f32(4, 6)], {"alpha": 0.2}, id="leaky-alpha"),
    C("hardsigmoid", [f32(4, 6, lo=-5, hi=5)], {"alpha": 0.2, "beta": 0.5}, id="hardsigmoid-onnx"),
    # any-dtype unary
    C("relu", [f32(2, 5)]),
    C("relu", [ints(2, 5)], id="relu-i32", group="int"),
    C("neg", [f32(2, 5)]),
    C("neg", [ints(2, 5, dtype=np.int8)], id="neg-i8", group="int"),
    C("abs", [f32(2, 5)]),
    C("abs", [ints(2, 5, lo=-128, hi=128, dtype=np.int8)], id="abs-i8", group="int"),
    C("clip", [f32(3, 4)], {"min": -0.5, "max": 1.0}),
    C("clip", [f32(3, 4)], {"min": None, "max": 0.25}, id="clip-nomin"),
    C("clip", [ints(3, 4)], {"min": -2.5, "max": 3.5}, id="clip-i32-frac", group="int"),
    C("clip", [ints(3, 4)], {"min": -3.0, "max": 4.0}, id="clip-i32", group="int"),
    C("cast", [f32(3, 4, lo=-9, hi=9)], {"dtype": "i32"}, id="cast-f32-i32", group="int"),
    C("cast", [np.array([0.0, -0.0, 0.5, -2.0, 3.0], np.float32)], {"dtype": "bool"}, id="cast-f32-bool",
      group="int"),
    C("cast", [ints(3, 4)], {"dtype": "f32"}, id="cast-i32-f32", group="int"),
    C("cast", [bools(3, 4)], {"dtype": "f32"}, id="cast-bool-f32", group="int"),
    C("cast", [ints(3, 4, lo=-300, hi=300)], {"dtype": "i8"}, id="cast-i32-i8-wrap", group="int"),
    C("logical_not", [bools(3, 4)], group="int"),
    # binary float with broadcasting
    *[C(op, [f32(2, 3, 4), f32(3, 1)]) for op in ("add", "sub", "mul", "maximum", "minimum")],
    C("div", [f32(2, 3, 4), f32(4, lo=0.5, hi=2)]),
    C("pow", [f32(3, 4, lo=0.1, hi=3), f32(3, 4, lo=-2, hi=2)]),
    C("mod", [f32(3, 4, lo=-5, hi=5), np.array([1.5, -1.5, 2.0, -0.7], np.float32)], id="mod-f32"),
    # binary integer
    C("add", [ints(2, 3), ints(3)], id="add-i32", group="int"),
    C("mul", [ints(2, 3, lo=-128, hi=128, dtype=np.int8), ints(2, 3, lo=-128, hi=128, dtype=np.int8)],
      id="mul-i8-wrap", group="int"),
    C("div", [ints(4, 5, lo=-20, hi=20), np.array([3, -3, 7, -2, 1], np.int32)], id="div-i32-trunc", group="int"),
    C("mod", [ints(4, 5, lo=-20, hi=20), np.array([3, -3, 7, -2, 1], np.int32)], id="mod-i32-floor", group="int"),
    C("pow", [ints(3, 4, lo=-4, hi=5), ints(3, 4, lo=0, hi=6)], id="pow-i32", group="int"),
    C("maximum", [ints(3, 4), ints(1, 4)], id="max-i32", group="int"),
    # comparisons and logic (integer-valued floats so that ties occur)
    *[C(op, [np.round(f32(3, 4, lo=-2, hi=2)), np.round(f32(4, lo=-2, hi=2))], group="int")
      for op in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")],
    *[C(op, [bools(3, 4), bools(3, 1)], group="int") for op in ("logical_and", "logical_or", "logical_xor")],
    C("where", [bools(2, 1, 4), f32(3, 4), f32(2, 3, 1)]),
    # reductions
    C("reduce_sum", [f32(2, 3, 4)], {"axes": (1,), "keepdims": True}),
    C("reduce_mean", [f32(2, 3, 4)], {"axes": ()}, id="reduce_mean-all"),
    C("reduce_max", [f32(2, 3, 4)], {"axes": (0, 2)}),
    C("reduce_min", [f32(2, 3, 4)], {"axes": (2,), "keepdims": True}),
    C("reduce_prod", [f32(2, 3, 4, lo=0.5, hi=1.5)], {"axes": (1,)}),
    C("reduce_sum", [ints(2, 3, 4)], {"axes": (0,)}, id="reduce_sum-i32", group="int"),
    C("reduce_mean", [ints(2, 3, 4)], {"axes": (2,)}, id="reduce_mean-i32-trunc", group="int"),
    C("reduce_max", [bools(2, 3)], {"axes": (1,)}, id="reduce_max-bool", group="int"),
    C("argmax", [np.round(f32(3, 5, lo=-2, hi=2))], {"axis": 1}, group="int"),
    C("argmin", [np.round(f32(3, 5, lo=-2, hi=2))], {"axis": 0, "keepdims": True}, group="int"),
    C("argmax", [ints(2, 4, 3)], {"axis": 2}, id="argmax-i32", group="int"),
    # softmax / normalization
    C("softmax", [f32(2, 3, 5, lo=-5, hi=5)], {"axis": 2}),
    C("log_softmax", [f32(2, 3, 5, lo=-5, hi=5)], {"axis": 1}),
    C("attention", [f32(2, 7, 8), f32(2, 19, 8), f32(2, 19, 5), f32(2, 1, 19)], {"scale": 0.35, "causal": True},
      id="attention-causal-mask"),
    C("layer_norm", [f32(2, 3, 4), f32(3, 4), f32(3, 4)], {"axis": 1, "eps": 1e-5}),
    C("batch_norm", [f32(2, 3, 4, 4), f32(3), f32(3), f32(3), f32(3, lo=0.5, hi=2)], {"eps": 1e-3}),
    # convolution and pooling
    C("conv2d", [f32(1, 3, 9, 9), f32(4, 3, 3, 3)], {"stride": (2, 1), "padding": (1, 0, 2, 1), "dilation": (1, 2)},
      id="conv2d-asym", group="nn"),
    C("conv2d", [f32(2, 4, 6, 6), f32(6, 2, 3, 3), f32(6)], {"padding": (1, 1, 1, 1), "groups": 2},
      id="conv2d-groups-bias", group="nn"),
    C("conv2d", [f32(1, 4, 5, 5), f32(4, 1, 3, 3)], {"groups": 4}, id="conv2d-depthwise", group="nn"),
    C("conv2d", [ints(1, 2, 5, 5, lo=-3, hi=4), ints(3, 2, 2, 2, lo=-3, hi=4)], id="conv2d-i32", group="int"),
    C("max_pool2d", [f32(1, 2, 7, 7)], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1),
                                        "ceil_mode": True}, id="maxpool-ceil", group="nn"),
    C("max_pool2d", [f32(1, 2, 8, 8)], {"kernel": (2, 3), "stride": (2, 1), "dilation": (2, 1)},
      id="maxpool-dilation", group="nn"),
    C("avg_pool2d", [f32(1, 2, 6, 6)], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1),
                                        "ceil_mode": True, "count_include_pad": True}, id="avgpool-ceil-incl",
      group="nn"),
    C("avg_pool2d", [f32(1, 2, 7, 7)], {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1),
                                        "ceil_mode": True, "count_include_pad": False}, id="avgpool-ceil-excl",
      group="nn"),
    C("avg_pool2d", [ints(1, 2, 6, 6)], {"kernel": (2, 2), "stride": (2, 2), "padding": (1, 1, 0, 0)},
      id="avgpool-i32", group="int"),
    C("adaptive_avg_pool2d", [f32(2, 3, 5, 7)], {"output_size": (3, 2)}, group="nn"),
    C("adaptive_max_pool2d", [f32(2, 3, 5, 7)], {"output_size": (2, 3)}, group="nn"),
    C("adaptive_avg_pool2d", [ints(1, 2, 5, 7)], {"output_size": (3, 2)}, id="adaptive-avg-i32", group="int"),
    # linear algebra
    C("matmul", [f32(4, 6), f32(6, 5)], group="nn"),
    C("matmul", [f32(2, 1, 3, 4), f32(3, 4, 5)], id="matmul-batch-bcast", group="nn"),
    C("matmul", [f32(4), f32(2, 4, 3)], id="matmul-1d-left", group="nn"),
    C("matmul", [f32(2, 3, 4), f32(4)], id="matmul-1d-right", group="nn"),
    C("matmul", [ints(3, 4, lo=-50, hi=50, dtype=np.int8), ints(4, 2, lo=-50, hi=50, dtype=np.int8)],
      id="matmul-i8-wrap", group="int"),
    C("linear", [f32(2, 3, 6), f32(5, 6), f32(5)], id="linear-bias", group="nn"),
    C("linear", [f32(4, 6), f32(5, 6)], id="linear-nobias", group="nn"),
    # data movement
    C("reshape", [f32(2, 3, 4)], {"shape": (4, 6)}, group="shape"),
    C("transpose", [f32(2, 3, 4)], {"perm": (2, 0, 1)}, group="shape"),
    C("concat", [f32(2, 1, 4), f32(2, 3, 4), f32(2, 2, 4)], {"axis": 1}, group="shape"),
    C("split", [f32(2, 6, 3)], {"axis": 1, "sizes": (1, 3, 2)}, group="shape"),
    C("slice", [f32(5, 6, 4)], {"starts": (4, 1), "ends": (-6, 6), "axes": (0, 1), "steps": (-2, 2)},
      group="shape"),
    C("squeeze", [f32(2, 1, 3, 1)], {"axes": (1, 3)}, group="shape"),
    C("unsqueeze", [f32(2, 3)], {"axes": (0, 3)}, group="shape"),
    C("expand", [f32(3, 1)], {"shape": (2, 3, 4)}, group="shape"),
    C("pad", [f32(2, 3, 4)], {"pads": (0, 1, 2, 1, 0, 1), "mode": "constant", "value": 1.5}, id="pad-constant",
      group="shape"),
    C("pad", [f32(2, 3, 4)], {"pads": (0, 2, 5, 1, 0, 3), "mode": "reflect"}, id="pad-reflect", group="shape"),
    C("pad", [f32(2, 3, 4)], {"pads": (1, 2, 0, 0, 1, 3), "mode": "edge"}, id="pad-edge", group="shape"),
    C("pad", [f32(3, 5)], {"pads": (-1, 2, 1, -2), "mode": "constant", "value": 0.0}, id="pad-negative",
      group="shape"),
    C("tile", [f32(2, 3)], {"repeats": (2, 3)}, group="shape"),
    C("cumsum", [f32(3, 5)], {"axis": 1}, group="shape"),
    C("cumsum", [ints(4, 3)], {"axis": 0}, id="cumsum-i32", group="int"),
    C("gather", [f32(5, 4), np.array([[0, -1], [3, 2], [-5, 4]], np.int64)], {"axis": 0}, group="shape"),
    C("gather", [f32(2, 5, 3), np.array([4, 0, -2], np.int32)], {"axis": 1}, id="gather-axis1", group="shape"),
    C("gather_elements", [f32(3, 4), np.array([[0, 3, -1], [1, 1, 0], [3, -4, 2]], np.int64)], {"axis": 1},
      group="shape"),
    # scatter / segment reductions (duplicates on purpose)
    *[C("scatter_elements", [f32(4, 3), np.array([[1, 0, 2], [1, 3, 2], [-1, 0, 1]], np.int64), f32(3, 3)],
        {"axis": 0, "reduction": red}, id=f"scatter-{red}", group="scatter")
      for red in ("none", "add", "mul", "max", "min")],
    C("scatter_elements", [f32(3, 5), np.array([[4, 0], [2, 2], [1, -1]], np.int64), f32(3, 2)],
      {"axis": 1, "reduction": "add"}, id="scatter-axis1", group="scatter"),
    C("index_add", [f32(3, 5, 2), np.array([4, 0, 4, -1], np.int64), f32(3, 4, 2)], {"axis": 1},
      group="scatter"),
    *[C("index_reduce", [f32(6, 3), np.array([1, 4, 1, 0, 4, 1], np.int64), f32(6, 3)],
        {"axis": 0, "reduce": red, "include_self": incl}, id=f"index_reduce-{red}-{incl}", group="scatter")
      for red in ("sum", "mean", "amax", "amin", "prod") for incl in (True, False)],
    C("segment_csr", [np.array([1, 4, 1, 0, -1, 1, 2, 4], np.int64)], {"num_segments": 5}, group="scatter"),
    C("segment_softmax", [f32(8, 2), np.array([1, 4, 1, 0, -1, 1, 2, 4], np.int64)], {"num_segments": 5},
      group="scatter"),
    C("qsegment_softmax", [ints(8, 2, lo=-128, hi=128, dtype=np.int8), np.array([1, 4, 1, 0, -1, 1, 2, 4], np.int64)],
      {"num_segments": 5, "ln2": 13, "b": 27, "c": 383}, group="scatter"),
    C("irsqrt", [np.array([0, 1, 2, 3, 50, 1000, 2**30 + 1], np.int32)], {"bits": 15}, group="scatter"),
    # CSR of dst [1, 4, 1, 0, 4, 1, 2, 4] (vertex 3 has no in-edges), col = src [0, 2, 3, 3, 1, 4, 0, 2] in CSR order
    C("gather_aggregate", [np.array([0, 1, 4, 5, 5, 8], np.int64), np.array([3, 0, 2, 5, 6, 1, 4, 7], np.int64),
                           np.array([3, 0, 3, 4, 0, 2, 1, 2], np.int64), f32(5, 2, 3), f32(5, 2), f32(5, 2),
                           f32(8, 2), f32(3)],
      {"kinds": ("src", "dst", "src", "edge", "const"),
       "score": (("add", ("x1", "x2"), None), ("add", ("t0", "x3"), None), ("leaky_relu", ("t1",), 0.2)),
       "message": (("unsqueeze", ("alpha",), (1,)), ("mul", ("x0", "t0"), None), ("add", ("t1", "x4"), None))},
      group="scatter"),
    C("index_reduce", [ints(5, 2, lo=-100, hi=100, dtype=np.int8), np.array([0, 3, 3, 3], np.int64),
                       ints(4, 2, lo=-100, hi=100, dtype=np.int8)],
      {"axis": 0, "reduce": "mean", "include_self": True}, id="index_reduce-mean-i8", group="int"),
    # quantization and integer-only ops (bit-exact); S = 0.05 for the nonlinears' constants
    C("quantize", [f32(2, 3, 4, lo=-8, hi=8), np.array([[0.05], [0.1], [0.02]], np.float32),
                   np.array([[0], [3], [-5]], np.int32)], {"dtype": "i8"}, group="quant"),
    C("quantize", [np.array([0.5, 1.5, 2.5, -0.5, 9.0, -3.0], np.float32), np.array([1.0], np.float32),
                   np.array([2], np.int32)], {"dtype": "u4"}, id="quantize-u4-half-even", group="quant"),
    C("dequantize", [ints(2, 3, 4, lo=-128, hi=128, dtype=np.int8), np.array([[0.05], [0.1], [0.02]], np.float32),
                     np.array([[1], [0], [-2]], np.int32)], group="quant"),
    C("dequantize", [ints(4, 6, lo=-8, hi=8, dtype=np.int8), np.array([[0.5], [0.25], [0.1], [1.0]], np.float32),
                     np.array([0], np.int32), ints(4, 2, lo=1, hi=9)], {"axis": 1, "group_size": 4},
      id="dequantize-groups", group="quant"),
    C("requantize", [ints(2, 3, 4, lo=-50000, hi=50000), np.array([[1 << 20], [3 << 18], [12345]], np.int32),
                     np.array([[24], [0], [-2]], np.int32)],
      {"dtype": "i8", "zero_point": 3, "input_zero_point": 1, "min": -100, "max": 120}, group="quant"),
    C("qconv2d", [ints(1, 2, 6, 6, lo=0, hi=256, dtype=np.uint8), ints(4, 2, 3, 3, lo=-128, hi=128, dtype=np.int8),
                  ints(4, lo=-1000, hi=1000)], {"padding": (1, 1, 1, 1), "x_zero_point": 128, "w_zero_point": 0},
      group="quant"),
    C("qconv2d", [ints(1, 4, 5, 5, lo=-128, hi=128, dtype=np.int8), ints(4, 2, 3, 3, lo=-8, hi=8, dtype=np.int8)],
      {"groups": 2, "stride": (2, 2), "x_zero_point": -3, "w_zero_point": 1}, id="qconv2d-groups", group="quant"),
    C("qlinear", [ints(2, 8, lo=-128, hi=128, dtype=np.int8), ints(3, 8, lo=-128, hi=128, dtype=np.int8),
                  ints(3, lo=-500, hi=500)], {"x_zero_point": 2, "w_zero_point": -1}, group="quant"),
    C("qlinear", [ints(2, 8, lo=-8, hi=8, dtype=np.int8), ints(3, 8, lo=-8, hi=8, dtype=np.int8),
                  ints(3, lo=-50, hi=50), ints(3, 2, lo=1, hi=20)], {"group_size": 4}, id="qlinear-groups",
      group="quant"),
    C("qmatmul", [ints(2, 3, 4, lo=-128, hi=128, dtype=np.int8), ints(4, 5, lo=0, hi=256, dtype=np.uint8)],
      {"a_zero_point": 1, "b_zero_point": 128}, group="quant"),
    C("qadd", [ints(2, 3, lo=-128, hi=128, dtype=np.int8), ints(3, lo=-128, hi=128, dtype=np.int8)],
      {"a_multiplier": 700, "b_multiplier": 1500, "shift": 10, "a_zero_point": 3, "b_zero_point": -2,
       "zero_point": 5, "dtype": "i8"}, group="quant"),
    C("qconcat", [ints(2, 2, lo=-128, hi=128, dtype=np.int8), ints(2, 3, lo=-2000, hi=2000)],
      {"axis": 1, "multipliers": (3, 5), "shifts": (1, 6), "input_zero_points": (0, 1), "zero_point": -2,
       "dtype": "i8"}, group="quant"),
    C("qmean", [ints(2, 3, 4, lo=-128, hi=128, dtype=np.int8)], {"axes": (2,)}, group="quant"),
    C("qmean", [ints(2, 3, 4, lo=-128, hi=128, dtype=np.int8)], {"axes": (), "keepdims": True}, id="qmean-all",
      group="quant"),
    C("isoftmax", [ints(2, 5, lo=-128, hi=128, dtype=np.int8)], {"axis": 1, "ln2": 13, "b": 27, "c": 383},
      group="quant"),
    C("shiftmax", [ints(2, 5, lo=-128, hi=128, dtype=np.int8)], {"axis": 1, "one": 20, "k": 4}, group="quant"),
    C("qattention", [ints(2, 7, 8, lo=-128, hi=128, dtype=np.int8), ints(2, 11, 8, lo=-128, hi=128, dtype=np.int8),
                     ints(2, 11, 5, lo=0, hi=256, dtype=np.uint8), ints(1, 11, lo=-300, hi=300, dtype=np.int16)],
      {"q_zero_point": 3, "k_zero_point": -1, "v_zero_point": 128, "softmax": ("shiftmax", 20, 30, 4),
       "steps": (("requantize", 1 << 30, 36, "i16", 0, 0, None, None),
                 ("qadd", 1 << 29, 3 << 28, 30, 0, 0, 0, "i16", None, None))}, group="quant"),
    C("igelu", [ints(3, 7, lo=-128, hi=128, dtype=np.int8)], {"b": 50, "one": 2765, "shift": 1}, group="quant"),
    C("shiftgelu", [ints(3, 7, lo=-128, hi=128, dtype=np.int8)], {"one": 12, "k": 3}, group="quant"),
    *[C("ilayer_norm", [ints(2, 3, 4, lo=-128, hi=128, dtype=np.int8), ints(3, 4, lo=500, hi=4000),
                        ints(3, 4, lo=18, hi=24), ints(3, 4, lo=-20, hi=20)],
        {"axis": 1, "sqrt": sq, "zero_point": 1, "dtype": "i8"}, id=f"ilayer_norm-{sq}", group="quant")
      for sq in ("newton", "ivit")],
]


def _case_id(c: Case) -> str:
    return c.id or c.op


GROUPS = sorted({c.group for c in CASES})


def _group_graph(cases: list[Case]) -> tuple[Any, list[np.ndarray], list[int]]:
    """One graph holding every case of a group: returns (graph, inputs, first output index per case)."""
    b = GraphBuilder()
    inputs: list[np.ndarray] = []
    outs, starts = [], []
    for ci, c in enumerate(cases):
        vals = []
        for ai, a in enumerate(c.inputs):
            vals.append(b.input(a.shape, dtype_from_numpy(a.dtype), f"c{ci}_{ai}"))
            inputs.append(a)
        node = b.emit_node(c.op, vals, c.attrs, name=_case_id(c))
        starts.append(len(outs))
        outs.extend(node.outputs)
    return b.output(*outs), inputs, starts


@pytest.fixture(scope="module")
def results() -> dict[int, tuple[list[np.ndarray], list[np.ndarray]]]:
    """id(case) -> (TVM outputs, interpreter outputs) of that case; one build per group."""
    from qcc.backends.tvm import build

    out = {}
    for group in GROUPS:
        cases = [c for c in CASES if c.group == group]
        graph, inputs, starts = _group_graph(cases)
        with np.errstate(all="ignore"):
            ref = qcc.interpret(graph, inputs)
        got = build(graph, Target("cpu-fp32", num_threads=2)).run(inputs)
        for c, lo, hi in zip(cases, starts, [*starts[1:], len(ref)]):
            out[id(c)] = (got[lo:hi], ref[lo:hi])
    return out


def test_every_op_has_a_case() -> None:
    assert sorted(set(OPS) - {c.op for c in CASES}) == []


def test_lower_covers_ops() -> None:
    from qcc.backends.tvm.lower import LOWER

    assert sorted(set(OPS) - set(LOWER)) == [], "ops without a TVM lowering"
    assert sorted(set(LOWER) - set(OPS)) == [], "lowerings of unknown ops"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_op_matches_interpreter(case: Case, results: dict[int, Any]) -> None:
    got, ref = results[id(case)]
    assert len(got) == len(ref) >= 1
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype, f"{g.dtype}{g.shape} vs {r.dtype}{r.shape}"
        if np.issubdtype(r.dtype, np.floating):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, r)


def _cuda_source(module: Any) -> str:
    if module.kind == "cuda":
        return str(module.inspect_source(""))
    return next((s for s in (_cuda_source(m) for m in module.imports) if s), "")


@pytest.mark.parametrize("group", GROUPS)
def test_every_op_builds_for_cuda(group: str) -> None:
    """Every op lowers, gets threads bound (dlight or its own kernel) and generates CUDA, in float16."""
    from qcc.backends.tvm import build

    graph, _, _ = _group_graph([c for c in CASES if c.group == group])
    exe = build(graph, Target("cuda-fp16", arch="sm_80"))
    assert "__global__" in _cuda_source(exe.module.mod)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cuda-fp16"])  # fp32 kernels are compiled in test_tvm_build (conv+matmul)
def test_every_op_cuda_source_compiles_with_nvcc(target: str, tmp_path: Any) -> None:
    import shutil
    import subprocess

    from qcc.backends.tvm import build

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    for group in GROUPS:
        graph, _, _ = _group_graph([c for c in CASES if c.group == group])
        cu = tmp_path / f"{group}.cu"
        cu.write_text(_cuda_source(build(graph, Target(target, arch="sm_80")).module.mod))
        res = subprocess.run(["nvcc", "-arch=sm_80", "-cubin", "-o", str(tmp_path / "k.cubin"), str(cu)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{group}: {res.stderr[-3000:]}"


def test_integer_sqrt_is_exact_near_squares() -> None:
    """ilayer_norm's isqrt (float64 estimate + corrections) equals math.isqrt at the hard points."""
    import math

    import tvm
    from tvm import te

    from qcc.backends.tvm.lower_quant_nonlinear import _isqrt_newton

    roots = [0, 1, 2, 3, 46340, 46341, 2**31 - 1, 2**31, 3037000498, 3037000499]
    vals = sorted({max(r * r + d, 0) for r in roots for d in (-1, 0, 1)} | {2**63 - 1, 2**62, 2**53 + 1})
    n = te.placeholder((len(vals),), "int64", name="n")
    f = tvm.compile(te.create_prim_func([n, _isqrt_newton(n)]), target="llvm")
    out = tvm.runtime.tensor(np.zeros(len(vals), np.int64))
    f(tvm.runtime.tensor(np.array(vals, np.int64)), out)
    assert out.numpy().tolist() == [math.isqrt(v) for v in vals]
