"""The op registry and every op definition (importing this package registers them all)."""

from qcc.ir.ops import elementwise, nn, pool, quant, quant_nonlinear, scatter, shape  # noqa: F401  (registration)
from qcc.ir.ops.registry import OPS, REQUIRED, OpDef, complete_attrs, evaluate, get_op, infer_types

__all__ = ["OPS", "REQUIRED", "OpDef", "complete_attrs", "evaluate", "get_op", "infer_types"]
