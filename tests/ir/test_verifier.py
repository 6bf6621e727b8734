"""The verifier: a well-formed graph passes; each kind of malformed graph fails with a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.errors import VerificationError
from qcc.ir.graph import Graph, GraphBuilder, Node, Value, make_node
from qcc.ir.types import TensorType
from qcc.ir.verifier import verify


def _graph() -> Graph:
    """x -> relu -> add(w) -> output, with one param."""
    b = GraphBuilder()
    x = b.input((2, 3), "f32", "x")
    w = b.param(np.ones(3, np.float32), "w")
    y = b.emit("relu", [x], name="act")
    return b.output(b.emit("add", [y, w]))


def test_well_formed_graph_passes():
    verify(_graph())


def test_use_before_def():
    g = _graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match=r"node #0 add: input %t0 is used before it is defined"):
        verify(g)


def test_value_from_another_graph():
    g = _graph()
    stranger = Value(TensorType((2, 3), "f32"), "stranger")
    g.nodes[1].inputs = (stranger, g.nodes[1].inputs[1])
    with pytest.raises(VerificationError, match="input %stranger is used before it is defined"):
        verify(g)


def test_value_defined_twice():
    g = _graph()
    g.nodes.append(g.nodes[0])
    with pytest.raises(VerificationError, match="defined twice"):
        verify(g)


def test_wrong_declared_shape_and_dtype():
    g = _graph()
    g.nodes[0].outputs[0].type = TensorType((3, 2), "f32")
    with pytest.raises(VerificationError, match=r"node #0 relu \('act'\): output %t0 is typed f32\[3,2\], "
                                                r"its type rule gives f32\[2,3\]"):
        verify(g)
    g = _graph()
    g.nodes[1].outputs[0].type = TensorType((2, 3), "f16")
    with pytest.raises(VerificationError, match=r"typed f16\[2,3\]"):
        verify(g)


def test_wrong_number_of_outputs():
    g = _graph()
    node = g.nodes[0]
    g.nodes[0] = Node(node.op, node.inputs, node.outputs + (Value(TensorType((2, 3), "f32"), "extra"),))
    with pytest.raises(VerificationError, match="has 2 outputs, its type rule gives 1"):
        verify(g)


def test_unknown_op():
    g = _graph()
    g.nodes[0].op = "frobnicate"
    with pytest.raises(VerificationError, match="unknown op 'frobnicate'"):
        verify(g)


@pytest.mark.parametrize("attrs,match", [
    ({"perm": (0, 1), "bogus": 1}, r"unknown attribute\(s\) \['bogus'\]"),
    ({}, "missing attribute 'perm'"),
    ({"perm": (0, 0)}, r"bad permutation \(0, 0\)"),
])
def test_bad_attrs(attrs, match):
    b = GraphBuilder()
    x = b.input((2, 3), "f32", "x")
    y = b.emit("transpose", [x], {"perm": (1, 0)}, name="tr")
    g = b.output(y)
    g.nodes[0].attrs = attrs
    with pytest.raises(VerificationError, match=match) as info:
        verify(g)
    assert "'tr'" in str(info.value)  # the message names the source node


def test_wrong_arity():
    g = _graph()
    g.nodes[1].inputs = g.nodes[1].inputs[:1]
    with pytest.raises(VerificationError, match="add takes 2..2 inputs, got 1"):
        verify(g)


def test_type_rule_failure_names_shapes():
    with pytest.raises(VerificationError, match=r"do not broadcast"):
        make_node("add", [Value(TensorType((2, 3), "f32")), Value(TensorType((4,), "f32"))])
    with pytest.raises(VerificationError, match="operand dtypes differ: f32 vs i32"):
        make_node("mul", [Value(TensorType((2,), "f32")), Value(TensorType((2,), "i32"))])


@pytest.mark.parametrize("data,match", [
    (np.ones(3, np.float64), r"data float64\[3\] does not match its type f32\[3\]"),
    (np.ones(4, np.float32), r"data float32\[4\] does not match"),
    ([1.0, 1.0, 1.0], "data is list, not an ndarray"),
])
def test_param_data_mismatch(data, match):
    g = _graph()
    w = g.param_by_name("w")
    g.params[w] = data  # type: ignore[assignment]
    with pytest.raises(VerificationError, match=f"param 'w': {match}"):
        verify(g)


def test_missing_output():
    g = _graph()
    g.outputs = []
    with pytest.raises(VerificationError, match="graph has no outputs"):
        verify(g)
    g = _graph()
    g.outputs = [Value(TensorType((2, 3), "f32"), "ghost")]
    with pytest.raises(VerificationError, match="graph output %ghost is never defined"):
        verify(g)


def test_param_may_be_an_output_and_inputs_may_be_unused():
    b = GraphBuilder()
    b.input((2,), "f32", "unused")
    w = b.param(np.zeros(2, np.float32), "w")
    verify(b.output(w))
