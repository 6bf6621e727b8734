"""GNN passes (Zhang et al., MLSys 2022): graph-operator recognition, propagation-postponed reorganization and
the cost analysis of message-passing graphs; `quant_prep` holds the integer-target preparation and fusion
(gnn-quant-prep, gnn-integer-fuse) and gnn-score-linear."""

from __future__ import annotations

from qcc.passes.gnn.graph_ops import (
    EdgeGather,
    SegmentReduce,
    SegmentSoftmax,
    find_graph_ops,
    has_graph_ops,
    match_gather,
    match_segment_reduce,
    match_segment_softmax,
)

__all__ = ["EdgeGather", "SegmentReduce", "SegmentSoftmax", "find_graph_ops", "has_graph_ops", "match_gather",
           "match_segment_reduce", "match_segment_softmax"]
