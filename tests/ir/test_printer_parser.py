"""Text IR: `parse(print_graph(g))` prints identically for every op, plus the printer's special cases and parse errors.

`CASES` holds one small graph per op of the registry (inputs as type strings, params as arrays, valid attributes);
`test_cases_cover_every_op` fails when an op is added to `qcc.ir.ops.OPS` without a case here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcc.errors import IRParseError
from qcc.interpreter import interpret
from qcc.ir.graph import Graph, GraphBuilder, Value
from qcc.ir.ops import OPS, evaluate
from qcc.ir.parser import _literal, parse, parse_type
from qcc.ir.printer import INLINE_LIMIT, format_attr, print_graph
from qcc.ir.types import QuantParams, TensorType, numpy_dtype
from qcc.ir.verifier import verify

R = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def _i(*values: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.array(values, np.int64)
    return a.reshape(shape) if shape else a


F23 = "f32[2,3]"
POS23 = np.abs(_f(2, 3)) + 0.5  # for log/sqrt/rsqrt/reciprocal: positive data
FLOAT_UNARY = ["relu6", "sigmoid", "silu", "hardswish", "tanh", "exp", "erf", "sin", "cos", "floor", "ceil", "round"]
POSITIVE_UNARY = ["log", "sqrt", "rsqrt", "reciprocal"]
BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]
LOGICAL = ["logical_and", "logical_or", "logical_xor"]
POOL = (1, 3, 5, 5)

# op -> (inputs: type strings become graph inputs, arrays become params; attrs)
CASES: dict[str, tuple[list, dict]] = {
    **{op: ([F23], {}) for op in FLOAT_UNARY},
    **{op: ([POS23], {}) for op in POSITIVE_UNARY},
    "hardsigmoid": ([F23], {"alpha": 0.2, "beta": 0.5}),
    "gelu": ([F23], {"approximate": "tanh"}),
    "elu": ([F23], {"alpha": 0.5}),
    "leaky_relu": ([F23], {"alpha": 0.1}),
    "relu": (["i8[4]"], {}),
    "neg": (["i32[2,2]"], {}),
    "abs": ([F23], {}),
    "clip": ([F23], {"min": None, "max": 6.0}),
    "cast": ([F23], {"dtype": "i8"}),
    "logical_not": (["bool[3]"], {}),
    **{op: ([F23, "f32[3]"], {}) for op in BINARY},
    "mod": (["i64[2,3]", _i(3, -4, 5)], {}),
    **{op: ([F23, "f32[1,3]"], {}) for op in COMPARE},
    **{op: (["bool[2,3]", "bool[3]"], {}) for op in LOGICAL},
    "where": (["bool[2,3]", F23, "f32[1,3]"], {}),
    "reduce_sum": (["f32[2,3,4]"], {"axes": (1,), "keepdims": True}),
    "reduce_mean": (["f32[2,3,4]"], {"axes": (), "keepdims": False}),
    "reduce_max": (["f32[2,3,4]"], {"axes": (0, 2), "keepdims": False}),
    "reduce_min": (["i32[2,3]"], {"axes": (1,), "keepdims": True}),
    "reduce_prod": ([F23], {"axes": (0,), "keepdims": False}),
    "argmax": (["f32[2,3,4]"], {"axis": 1, "keepdims": False}),
    "argmin": ([F23], {"axis": 0, "keepdims": True}),
    "softmax": ([F23], {"axis": 1}),
    "log_softmax": ([F23], {"axis": 0}),
    "layer_norm": (["f32[2,3,4]", _f(4), _f(4)], {"axis": 2, "eps": 1e-6}),
    "batch_norm": (["f32[2,3,2,2]", _f(3), _f(3), _f(3), np.abs(_f(3)) + 0.1], {"eps": 1e-3}),
    "conv2d": (["f32[1,4,5,5]", _f(4, 2, 3, 3), _f(4)],
               {"stride": (2, 1), "padding": (1, 0, 1, 2), "dilation": (1, 2), "groups": 2}),
    "max_pool2d": (["f32[1,3,5,5]"],
                   {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1), "dilation": (1, 1),
                    "ceil_mode": True}),
    "avg_pool2d": (["f32[1,3,5,5]"],
                   {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0, 1, 1), "ceil_mode": False,
                    "count_include_pad": False}),
    "adaptive_avg_pool2d": (["f32[1,3,5,5]"], {"output_size": (2, 3)}),
    "adaptive_max_pool2d": (["f32[1,3,5,5]"], {"output_size": (1, 1)}),
    "matmul": (["f32[2,3,4]", "f32[4,5]"], {}),
    "linear": ([F23, _f(4, 3)], {}),
    "reshape": ([F23], {"shape": (3, 1, 2)}),
    "transpose": (["f32[2,3,4]"], {"perm": (2, 0, 1)}),
    "concat": ([F23, "f32[1,3]", F23], {"axis": 0}),
    "split": (["f32[2,5]"], {"axis": 1, "sizes": (1, 4)}),
    "slice": (["f32[3,4]"], {"starts": (0, -1), "ends": (2, -5), "axes": (0, 1), "steps": (1, -1)}),
    "squeeze": (["f32[1,3,1]"], {"axes": (0, 2)}),
    "unsqueeze": (["f32[3]"], {"axes": (0, 2)}),
    "expand": (["f32[1,3]"], {"shape": (2, 2, 3)}),
    "pad": ([F23], {"pads": (1, 0, 0, 2), "mode": "constant", "value": -1.5}),
    "gather": (["f32[4,3]", _i(3, -1, 0, 0, shape=(2, 2))], {"axis": 0}),
    "gather_elements": ([F23, _i(0, 2, 1, 1, shape=(2, 2))], {"axis": 1}),
    "scatter_elements": (["f32[3,3]", _i(1, 0, 2, 0, 2, 1, shape=(2, 3)), "f32[2,3]"],
                         {"axis": 0, "reduction": "add"}),
    "index_add": (["f32[4,2]", _i(0, 3, 0), "f32[3,2]"], {"axis": 0}),
    "index_reduce": (["f32[4,2]", _i(0, 3, 0), "f32[3,2]"], {"axis": 0, "reduce": "amax", "include_self": False}),
    "tile": ([F23], {"repeats": (2, 1)}),
    "cumsum": (["i32[2,3]"], {"axis": 1}),
    "attention": (["f32[2,3,4]", "f32[2,5,4]", "f32[2,5,6]", "f32[1,5]"], {"scale": 0.5, "causal": True}),
    "qattention": (["i8[2,3,4]", "i8[2,5,4]", "u8[2,5,6]", "i16[1,5]"],
                   {"q_zero_point": 1, "k_zero_point": -2, "v_zero_point": 128, "softmax": ("isoftmax", 693, 1353,
                                                                                            959554, 30, 0),
                    "steps": (("requantize", 1 << 30, 33, "i16", 0, 0, None, None),
                              ("qadd", 1 << 29, 1 << 30, 31, 0, 0, 0, "i16", None, None))}),
    "segment_csr": ([_i(2, 0, -1, 2)], {"num_segments": 3}),
    "gather_aggregate": ([_i(0, 2, 2, 4), _i(1, 3, 0, 2), _i(0, 2, 1, 1), "f32[3,2]", "f32[3]", "f32[4,2]"],
                         {"kinds": ("src", "dst", "edge"), "score": (("mul", ("x1", "x2"), None),),
                          "message": (("mul", ("x0", "alpha"), None), ("elu", ("t0",), 0.5)), "reduce": "max"}),
    "segment_softmax": (["f32[4,2]", _i(2, 0, -1, 2)], {"num_segments": 3}),
    "qsegment_softmax": (["i16[4,2]", _i(2, 0, -1, 2)], {"num_segments": 3, "ln2": 693, "b": 1353, "c": 959554}),
    "irsqrt": ([_i(0, 1, 5, 100).astype(np.int32)], {"bits": 15}),
    # quantization ops (qcc.ir.ops.quant, quant_nonlinear)
    "quantize": ([F23, np.array(0.1, np.float32), np.array(3, np.int32)], {"dtype": "i8"}),
    "dequantize": (["i8[4,6]", np.full((4, 1), 0.05, np.float32), np.array(1, np.int32),
                    _i(1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 1, 1, shape=(4, 3)).astype(np.int32)],
                   {"group_size": 2, "axis": 1}),
    "requantize": (["i32[2,3]", _i(1 << 30, 1500000000, 900000000).astype(np.int32), _i(31, 33, 30).astype(np.int32)],
                   {"dtype": "u8", "zero_point": 3, "input_zero_point": -1, "min": 3, "max": 200}),
    "qconv2d": (["i8[1,4,5,5]", R.integers(-8, 8, (4, 2, 3, 3)).astype(np.int8), _i(5, -7, 0, 100).astype(np.int32)],
                {"stride": (2, 1), "padding": (1, 0, 1, 2), "dilation": (1, 2), "groups": 2, "x_zero_point": 2,
                 "w_zero_point": 0}),
    "qlinear": (["u8[2,6]", R.integers(-127, 128, (3, 6)).astype(np.int8), _i(1, -2, 3).astype(np.int32),
                 _i(1, 2, 3, 4, 5, 6, shape=(3, 2)).astype(np.int32)], {"x_zero_point": 5, "w_zero_point": 0,
                                                                       "group_size": 3}),
    "qmatmul": (["i8[2,3,4]", "u8[4,5]"], {"a_zero_point": 1, "b_zero_point": 128}),
    "qadd": (["i8[2,3]", "u8[3]"], {"a_multiplier": 1 << 29, "b_multiplier": 3 << 28, "shift": 30, "a_zero_point": 0,
                                    "b_zero_point": 128, "zero_point": -3, "dtype": "i8", "min": None, "max": 100}),
    "qconcat": (["i8[2,3]", "u8[1,3]"], {"axis": 0, "multipliers": (1 << 30, 1 << 29), "shifts": (30, 30),
                                         "input_zero_points": (0, 128), "zero_point": 0, "dtype": "i8"}),
    "qmean": (["i8[2,3,4]"], {"axes": (1, 2), "keepdims": True}),
    "isoftmax": (["i16[2,5]"], {"axis": 1, "ln2": 693, "b": 1353, "c": 959554, "n": 30, "k": 0}),
    "shiftmax": (["i8[2,5]"], {"axis": 1, "one": 16, "n": 30, "k": 17}),
    "igelu": (["i8[2,3]"], {"b": 50, "one": 2800, "shift": 0}),
    "shiftgelu": (["i8[2,3]"], {"one": 12, "n": 30, "k": 18}),
    "ilayer_norm": (["i8[2,3,4]", _i(1 << 29, -(1 << 28), 0, 1 << 30).astype(np.int32),
                     _i(31, 31, 31, 32).astype(np.int32), _i(0, 5, -5, 1).astype(np.int32)],
                    {"axis": 2, "sqrt": "ivit", "zero_point": 1, "dtype": "i8"}),
}


def build_case(op: str) -> Graph:
    """The case graph of `op`: its inputs, params and one node whose outputs are the graph's outputs."""
    specs, attrs = CASES[op]
    b = GraphBuilder()
    values = []
    for i, spec in enumerate(specs):
        if isinstance(spec, np.ndarray):
            values.append(b.param(spec, f"p{i}"))
        else:
            t = parse_type(spec)
            values.append(b.input(t.shape, t.dtype, f"in{i}"))
    node = b.emit_node(op, values, attrs, name=f"{op}_node")
    return b.output(*node.outputs)


def case_inputs(g: Graph) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for v in g.inputs:
        if v.dtype == "bool":
            out.append(rng.random(v.shape) < 0.5)
        else:
            out.append((rng.standard_normal(v.shape) * 4).astype(numpy_dtype(v.dtype)))
    return out


def test_cases_cover_every_op():
    assert sorted(set(OPS) - set(CASES)) == [], "ops without a print/parse round-trip case"
    assert sorted(set(CASES) - set(OPS)) == [], "cases for ops that no longer exist"


@pytest.mark.parametrize("op", sorted(CASES))
def test_round_trip(op):
    g = build_case(op)
    verify(g)
    text = print_graph(g)
    big = {v.name: a for v, a in g.params.items() if a.size > INLINE_LIMIT}
    g2 = parse(text, big)
    verify(g2)
    assert print_graph(g2) == text
    assert [n.op for n in g2.nodes] == [op] and g2.nodes[0].attrs == g.nodes[0].attrs
    # Same params and same semantics: the parsed graph computes exactly what the built one does.
    for a, b in zip(g.params.values(), g2.params.values()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    inputs = case_inputs(g)
    with np.errstate(all="ignore"):
        for want, got in zip(interpret(g, inputs), interpret(g2, inputs)):
            assert np.array_equal(want, got, equal_nan=want.dtype.kind == "f")


@pytest.mark.parametrize("op", sorted(CASES))
def test_reference_matches_type_rule(op):
    # The interpreter casts and reshapes what a reference returns, which would hide a reference that disagrees
    # with its type rule; evaluate() is checked raw here.
    g = build_case(op)
    env = dict(zip(g.inputs, case_inputs(g))) | dict(g.params)
    node = g.nodes[0]
    with np.errstate(all="ignore"):
        outs = evaluate(op, [env[v] for v in node.inputs], node.attrs)
    assert [(a.shape, a.dtype) for a in outs] == [(v.shape, numpy_dtype(v.dtype)) for v in node.outputs]


def test_golden_text():
    b = GraphBuilder()
    x = b.input((1, 3, 4, 4), "f32", "x")
    w = b.param(np.ones((2, 3, 1, 1), np.float32), "conv.weight")
    y = b.emit("conv2d", [x, w], {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1},
               name="conv")
    z = b.emit("reshape", [y], {"shape": (1, 32)})
    assert print_graph(b.output(z, x)) == (
        "func @main(%x: f32[1,3,4,4]) -> (f32[1,32], f32[1,3,4,4]) {\n"
        '  %"conv.weight" = param "conv.weight" : f32[2,3,1,1] dense<[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]>\n'
        "  %0 = conv2d(%x, %\"conv.weight\") {dilation=(1, 1), groups=1, padding=(0, 0, 0, 0), stride=(1, 1)}"
        " : f32[1,2,4,4]  // conv\n"
        "  %1 = reshape(%0) {shape=(1, 32)} : f32[1,32]\n"
        "  return %1, %x\n"
        "}\n")


def test_special_names_types_and_values_round_trip():
    q = QuantParams((0.5,), (-1,), 8)
    b = GraphBuilder()
    x = b.input((2,), "i8", "input.1")
    x.type = TensorType((2,), "i8", q)
    dup = b.input((2,), "i8", "0")  # collides with the node numbering
    wq = Value(TensorType((2,), "i8", QuantParams((0.25, 0.5), (0, 0), 4, axis=0)), "w")
    b.graph.params[wq] = np.array([1, -2], np.int8)
    special = b.param(np.array([np.nan, -np.inf, np.inf, -0.0], np.float32), "x")
    scalar = b.param(np.array(2.5, np.float64), "scalar")
    empty = b.param(np.zeros((0, 3), np.float32), "empty")
    flags = b.param(np.array([True, False]), "flags")
    odd = b.param(np.array([3, 4], np.int8), 'w) : {"x"}')  # parentheses, braces and quotes in a name
    y = b.emit("add", [x, wq], name="layer1/add (fused) // odd")
    y = b.emit("add", [y, dup])
    y = b.emit("add", [odd, y])
    z = b.emit("clip", [special], {"min": -math.inf, "max": math.nan})
    g = b.output(y, z, scalar, empty, flags)
    text = print_graph(g)
    assert '%"input.1": i8[2]{scale=(0.5,), zp=(-1,), bits=8}' in text
    assert "%0: i8[2]" in text and "%1 = add(" in text  # node numbering skips the input's name
    g2 = parse(text)
    assert print_graph(g2) == text
    assert g2.inputs[0].name == "input.1" and g2.inputs[0].type == x.type
    assert g2.param_by_name("w").type == wq.type
    assert g2.nodes[0].name == "layer1/add (fused) // odd"
    assert g2.nodes[2].inputs[0].name == 'w) : {"x"}'
    assert g2.param_by_name("scalar").shape == () and g2.param_by_name("empty").shape == (0, 3)
    sp = g2.param_by_name("x")
    assert np.array_equal(g2.params[sp], g.params[special], equal_nan=True)
    assert np.signbit(g2.params[sp][3])


@pytest.mark.parametrize("value", [0, -7, 1.5, -0.0, 1e-30, 0.1, math.inf, -math.inf, True, False, None, "a", 'q"\\',
                                   (), (1,), (1, 2.5, "x"), ((1, 2), (3,)), (None, -math.inf)])
def test_attribute_literals_round_trip(value):
    back = _literal(format_attr(value))
    assert back == value and type(back) is type(value)


def test_nan_attribute_round_trips():
    assert math.isnan(_literal(format_attr(math.nan)))


def test_unprintable_attribute_is_an_error():
    with pytest.raises(TypeError, match="not printable"):
        format_attr([1, 2])


def test_large_params_need_data():
    b = GraphBuilder()
    x = b.input((20,), "f32", "x")
    w = b.param(np.arange(20, dtype=np.float32), "w")
    text = print_graph(b.output(b.emit("add", [x, w])))
    assert "dense" not in text
    with pytest.raises(IRParseError, match="no data for param 'w'"):
        parse(text)
    zeros = parse(text, allow_missing_params=True)
    assert not zeros.params[zeros.param_by_name("w")].any()
    with pytest.raises(IRParseError, match="param 'w' data is float64"):
        parse(text, {"w": np.arange(20, dtype=np.float64)})
    assert print_graph(parse(text, {"w": np.arange(20, dtype=np.float32)})) == text


@pytest.mark.parametrize("text,match", [
    ("", "empty IR text"),
    ("func main(%x: f32[2]) -> (f32[2]) {\n return %x\n}", "line 1: expected 'func"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%y) : f32[2]\n  return %0\n}", "line 2: undefined value %y"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = frobnicate(%x) : f32[2]\n  return %0\n}",
     "line 2: .*unknown op 'frobnicate'"),
    ("func @main(%x: f32[2]) -> (f32[3]) {\n  %0 = relu(%x) : f32[3]\n  return %0\n}",
     "line 2: declared types f32\\[3\\] differ from inferred f32\\[2\\]"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%x) {bad=(1,} : f32[2]\n  return %0\n}", "line 2: bad literal"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%x) {alpha=1.0} : f32[2]\n  return %0\n}",
     "line 2: .*unknown attribute"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  this is not IR\n  return %x\n}", "line 2: cannot parse"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %0 = relu(%x) : float[2]\n  return %0\n}", "line 2: .*unknown dtype"),
    ("func @main(%x: f32[2]) -> (f32[2]) {\n  %c = param \"c\" : f32[2] dense<[1.0]>\n  return %c\n}", "line 2: "),
])
def test_parse_errors_name_the_line(text, match):
    with pytest.raises(IRParseError, match=match):
        parse(text)


def test_comments_and_blank_lines_are_ignored():
    g = parse("""
        // a comment
        func @net(%x: f32[2]) -> (f32[2]) {

          %0 = relu(%x) : f32[2]
          return %0
        }""")
    assert g.name == "net" and [n.op for n in g.nodes] == ["relu"]
