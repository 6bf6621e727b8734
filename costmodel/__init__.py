"""qcc.costmodel: kernel features, the SQLite measurement database, cost models and the retraining job.

    from qcc.costmodel import active_model, default_model, using
    with using("model.lgb"):            # or qcc.compile(..., cost_model="model.lgb")
        secs = active_model().predict([kernel_dict, ...])
    secs = predict_nodes(active_model(), nodes, graph)   # a group of IR nodes (qcc.costmodel.describe)

Sits below qcc.passes and never imports the backends: the backend hands its candidate space and measuring
function to `job.collect` (see `qcc costmodel collect`). LightGBM / matplotlib are imported only when used.
"""

from qcc.costmodel.describe import describe_node, int_kernel, predict_nodes
from qcc.costmodel.features import FEATURE_VERSION, kernel_features, node_features
from qcc.costmodel.model import (
    AnalyticCostModel,
    CostModel,
    LightGBMCostModel,
    active_model,
    choose,
    default_model,
    load_model,
    using,
)

__all__ = ["FEATURE_VERSION", "kernel_features", "node_features", "CostModel", "AnalyticCostModel",
           "LightGBMCostModel", "active_model", "choose", "default_model", "load_model", "using", "describe_node",
           "int_kernel", "predict_nodes"]
