"""The op registry and every op definition (importing this package registers them all)."""

from qcc.ir.ops import (  # noqa: F401  (registration)
    attention,
    elementwise,
    gnn,
    nn,
    pool,
    qgnn,
    quant,
    quant_nonlinear,
    scatter,
    shape,
)
from qcc.ir.ops.registry import OPS, REQUIRED, OpDef, complete_attrs, evaluate, get_op, infer_types

__all__ = ["OPS", "REQUIRED", "OpDef", "complete_attrs", "evaluate", "get_op", "infer_types"]
