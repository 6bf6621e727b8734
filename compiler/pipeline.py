"""Per-target pass pipelines, readable top to bottom, and the driver from IR to a built library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qcc.errors import TargetError
from qcc.ir.graph import Graph
from qcc.ir.pass_manager import Pass, PassContext, run_passes
from qcc.target import Target


def float_pipeline(ctx: PassContext) -> list[Pass]:
    """cpu-fp32 / cuda-fp32 / cuda-fp16: clean the imported graph, fold BatchNorm, fold constants."""
    from qcc.passes import get_pass

    return [
        get_pass("constant-folding"),
        get_pass("canonicalize"),
        get_pass("fold-batchnorm"),
        get_pass("constant-folding"),
        get_pass("canonicalize"),
        get_pass("dead-code-elimination"),
    ]


PIPELINES: dict[str, Callable[[PassContext], list[Pass]]] = {
    "cpu-fp32": float_pipeline,
    "cuda-fp32": float_pipeline,
    "cuda-fp16": float_pipeline,
}


def pipeline_for(target: Target, ctx: PassContext) -> list[Pass]:
    """The pass list of a target; a target without a pipeline yet gets a clear TargetError."""
    try:
        make = PIPELINES[target.name]
    except KeyError:
        raise TargetError(f"target {target.name!r} is not available in this version of qcc; "
                          f"available: {sorted(PIPELINES)}") from None
    return make(ctx)


def optimize(graph: Graph, target: Target, ctx: PassContext) -> Graph:
    """Run the target's pipeline over an imported graph."""
    return run_passes(graph, pipeline_for(target, ctx), ctx)


def build(graph: Graph, target: Target, options: dict[str, Any] | None = None) -> Any:
    """Build an optimized graph with the target's backend; returns the backend executable."""
    if target.device in ("cpu", "cuda"):
        from qcc.backends.tvm import build as tvm_build

        return tvm_build(graph, target)
    raise TargetError(f"no backend for device {target.device!r} in this version of qcc")


def load_executable(path: str) -> tuple[Any, dict[str, Any]]:
    """Load a library written by `export_library`; returns (executable, metadata)."""
    from qcc.backends.tvm import load_library

    return load_library(path)
