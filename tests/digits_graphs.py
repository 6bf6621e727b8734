"""Shared helpers of the digits accuracy tests: the float IR an integer target quantizes, and interpreter accuracy.

The float graph is built with an integer target in the pass context, as `qcc.compile` does for cpu-int8: passes
that only float targets run (attention recognition, GNN fusion) then leave the graph in the form the quantizer
turns into integer-only ops.
"""

from __future__ import annotations

import numpy as np
import torch

from qcc.frontends import import_model
from qcc.interpreter import interpret
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import PassContext, run_passes
from qcc.pipeline import float_pipeline
from qcc.target import Target
from tests import zoo

BATCH = 50  # graph batch size; 450 test digits = 9 batches


def float_graph(model: torch.nn.Module, target: str = "cpu-int8") -> Graph:
    """The cleaned-up float graph of a digits model (input [BATCH, 1, 8, 8]) as `target`'s pipeline leaves it."""
    g = import_model(model, (torch.zeros(BATCH, 1, 8, 8),))
    ctx = PassContext(target=Target(target))
    return run_passes(g, float_pipeline(ctx), ctx)


def accuracy(graph: Graph, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a graph on digits `x` (a multiple of BATCH rows) run through the reference interpreter."""
    logits = [interpret(graph, [np.ascontiguousarray(x[i:i + BATCH])])[0] for i in range(0, len(x), BATCH)]
    return zoo.accuracy(np.concatenate(logits), y)
