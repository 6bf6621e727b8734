"""Build a qcc Graph with TVM: lower to Relax, run qcc's Relax pipeline, compile to a VM executable.

The pipeline is TVM's default Relax pipeline for the target (cpu_generic / cuda) with two differences:
qcc's kernels keep their origin through fusion (`RecordFusedOps` / `TagFusedOps`) and the schedule registry
(`qcc.backends.tvm.schedules`) runs where TVM would apply dlight. CPU builds target the host CPU (features
detected, see `host.py`); CUDA builds compile to PTX with nvcc and need no GPU.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from qcc.backends.tvm import host
from qcc.backends.tvm import runtime as _runtime  # noqa: F401  (thread-pool environment defaults)
from qcc.backends.tvm.executable import TVMExecutable, io_specs
from qcc.backends.tvm.integer_check import CheckIntegerTIR
from qcc.backends.tvm.lower import lower
from qcc.backends.tvm.schedules import RecordFusedOps, TagFusedOps, kernel_ops, schedule_passes
from qcc.errors import BackendError, QccError
from qcc.ir.graph import Graph
from qcc.target import Target


def make_tvm_target(tdict: dict[str, Any]) -> tvm.target.Target:
    """A tvm Target from qcc's JSON target dict (`host` nested for GPU targets)."""
    spec = dict(tdict)
    host_spec = spec.pop("host", None)
    try:
        return tvm.target.Target(spec, host=host_spec) if host_spec else tvm.target.Target(spec)
    except Exception as e:
        raise BackendError(f"TVM rejected target {tdict}: {e}") from e


def relax_pipeline(target: tvm.target.Target, report: dict[str, Any] | None = None,
                   fuse_ops: bool = True) -> tvm.transform.Pass:
    """qcc's Relax pipeline for `target`; fills `report["kernels"]` with the kernel -> ops table. Without
    `fuse_ops` TVM's FuseOps / FuseTIR are skipped (fusion="off"). With fusion="auto" FuseOps runs after qcc's
    grouping: the fused kernels of lower_fused are opaque to it, so it only merges what qcc left alone (the Relax
    ops templates emit, such as layout transposes, with their neighbours)."""
    if target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as backend
    else:
        from tvm.relax.backend.cpu_generic import pipeline as backend

    @tvm.transform.module_pass(opt_level=0, name="qcc.RelaxPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fused: dict[str, tuple[list[str], str]] = {}
        with target:
            mod = tvm.transform.Sequential(
                backend.library_dispatch_passes(target)
                + [
                    relax.transform.LegalizeOps(),
                    relax.transform.AnnotateTIROpPattern(),
                    relax.transform.FoldConstant(),
                    # unused calls (a template's superseded call) must go: FuseOps drops them, else DCE
                    *([relax.transform.FuseOps(), RecordFusedOps(fused), relax.transform.FuseTIR()] if fuse_ops
                      else [relax.transform.DeadCodeElimination()]),
                    TagFusedOps(fused),
                    # the no-float check of integer builds, on the fused kernels before scheduling
                    *([CheckIntegerTIR(report)] if report is not None and report.get("integer") else []),
                ]
                + schedule_passes(target)
            )(mod)
            if report is not None:
                report["kernels"] = kernel_ops(mod)
            mod = tvm.transform.Sequential(backend.dataflow_lower_passes(target)
                                           + backend.finalize_passes(target))(mod)
            if report is not None:
                from qcc.backends.tvm.lower_fused import count_launches

                report["launches"] = count_launches(mod)
        return mod

    return _pipeline


def build(graph: Graph, target: Target | str, tune: bool = False, quiet: bool = True,
          templates: bool | None = None, fusion: str = "tvm") -> TVMExecutable:
    """Compile `graph` for a cpu or cuda qcc target; fp16 targets compute f32 values in float16.

    cpu-fp32 routes conv2d / linear / matmul through the kernel templates (`lower_templates`); `tune` measures
    their parameter candidates and records the winners in the tuning database (progress unless `quiet`).
    `templates=False` lowers every node with the generic rules (the schedule registry then sees them).
    `fusion`: "auto" (qcc's fuse pass decides the kernels), "off" (one kernel per node, no epilogues) or "tvm"
    (TVM's FuseOps, the default here)."""
    if fusion not in ("auto", "off", "tvm"):
        raise BackendError(f"fusion must be 'auto', 'off' or 'tvm', got {fusion!r}")
    target = target if isinstance(target, Target) else Target(target)
    if target.device not in ("cpu", "cuda"):
        raise BackendError(f"the TVM backend builds for cpu and cuda targets, not {target.name!r}")
    tdict = host.target_dict(target)
    tvm_target = make_tvm_target(tdict)
    report: dict[str, Any] = {"integer": target.is_integer}
    if templates is None:
        templates = target.device == "cpu" and target.precision == "fp32"
    try:
        with tvm_target:  # GPU TOPI kernels read the current target (thread limits)
            lowered = lower(graph, device=target.device, float16=target.precision == "fp16", tune=tune, quiet=quiet,
                            templates=templates, fusion=fusion)
        with tvm.transform.PassContext(opt_level=3):
            ex = tvm.compile(lowered.mod, target=tvm_target, relax_pipeline=relax_pipeline(tvm_target, report,
                                                                                      fuse_ops=fusion != "off"))
    except QccError:
        raise
    except Exception as e:
        raise BackendError(f"TVM build of graph {graph.name!r} for {target} failed: {type(e).__name__}: "
                           f"{_first_lines(str(e))}") from e
    inputs, outputs = io_specs(graph)
    exe = TVMExecutable(ex, target, tdict, inputs, outputs, kernels=report.get("kernels", {}))
    exe.lowering_stats = dict(lowered.stats)  # type: ignore[attr-defined]
    exe.tir_check = report.get("tir_check")  # type: ignore[attr-defined]
    exe.launches = report.get("launches")  # type: ignore[attr-defined]  (kernel launches per run)
    return exe


def _first_lines(text: str, n: int = 12) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")
