"""qcc's graph IR: types, values, nodes, graphs, the op registry, printer/parser, verifier, rewriting."""

from qcc.ir.graph import Attr, Graph, GraphBuilder, Node, Value, make_node
from qcc.ir.ops import OPS, OpDef, evaluate, get_op, infer_types
from qcc.ir.types import QuantParams, TensorType

__all__ = ["OPS", "Attr", "Graph", "GraphBuilder", "Node", "OpDef", "QuantParams", "TensorType", "Value",
           "evaluate", "get_op", "infer_types", "make_node"]
