"""The Kernel record every template returns, building a kernel alone, and the TVM runtime thread settings.

A `Kernel` is what the backend needs to emit one `call_tir`: the scheduled PrimFunc, the layout and shape of
every argument (inputs in call order, then the output), and NumPy functions that put a weight / bias into the
layout the kernel reads. Packing runs once, at compile time, on constant parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcc.backends.tvm.kernels.epilogue import Epilogue
from qcc.backends.tvm.kernels.params import Params, Shape
from qcc.errors import BackendError


@dataclass(frozen=True)
class ArgSpec:
    """One PrimFunc argument: `role` is "data", "weight", "bias", "residual", "b" (second activation operand)
    or "output"; `layout` names the element order (e.g. "NCHW", "NCHW16c", "NK", "packed[N/32,K,32]")."""

    name: str
    shape: tuple[int, ...]
    role: str
    layout: str
    dtype: str = "float32"


@dataclass(frozen=True, eq=False)
class Kernel:
    """A scheduled kernel: `func` (a tvm.tirx.PrimFunc with its schedule applied, ready for `bb.add_func` and
    `relax.call_tir`), its arguments (`args`, inputs in call order, the output last) and the packers that
    bring constant weights / biases into the layout the kernel reads."""

    kind: str
    shape: Shape
    params: Params
    epilogue: Epilogue
    func: Any
    args: tuple[ArgSpec, ...]
    weight_packer: Callable[[np.ndarray], np.ndarray] | None = None
    bias_packer: Callable[[np.ndarray], np.ndarray] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Marked scheduled, so dlight / MetaSchedule passes of a later pipeline leave the schedule alone.
        if self.func is not None and "tirx.is_scheduled" not in (self.func.attrs or {}):
            object.__setattr__(self, "func", self.func.with_attr("tirx.is_scheduled", True))

    @property
    def inputs(self) -> tuple[ArgSpec, ...]:
        return self.args[:-1]

    @property
    def output(self) -> ArgSpec:
        return self.args[-1]

    def arg(self, role: str) -> ArgSpec:
        """The first argument with this role."""
        for a in self.args:
            if a.role == role:
                return a
        raise BackendError(f"{self.kind} kernel has no {role!r} argument")

    def pack_weight(self, w: np.ndarray) -> np.ndarray:
        """The constant weight, in the docs/ops.md layout, rearranged (and zero padded) for this kernel."""
        if self.weight_packer is None:
            raise BackendError(f"{self.kind} kernel has no constant weight to pack")
        out = np.ascontiguousarray(self.weight_packer(np.asarray(w, dtype=np.float32)))
        assert out.shape == self.arg("weight").shape, (out.shape, self.arg("weight").shape)
        return out

    def pack_bias(self, b: np.ndarray) -> np.ndarray:
        """The bias [O], laid out (and zero padded) as the kernel reads it."""
        spec = self.arg("bias")
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        flat = np.zeros(int(np.prod(spec.shape)), np.float32)
        flat[:b.size] = b
        return flat.reshape(spec.shape) if self.bias_packer is None else self.bias_packer(b)

    @property
    def flops(self) -> int:
        return int(self.shape.flops)

    def build(self, target: Any = None) -> Callable[..., np.ndarray]:
        """Compile this kernel alone (for tests, tuning, benchmarks): returns `f(*inputs) -> output` taking and
        returning NumPy arrays already in the kernel's layouts (weights packed)."""
        import tvm

        lib = tvm.compile(tvm.IRModule({"main": self.func}), target=tvm.target.Target(target or host_target()))
        out_spec = self.output

        def run(*arrays: np.ndarray) -> np.ndarray:
            if len(arrays) != len(self.inputs):
                raise BackendError(f"{self.kind} kernel takes {len(self.inputs)} inputs, got {len(arrays)}")
            targs = []
            for spec, a in zip(self.inputs, arrays):
                if tuple(a.shape) != spec.shape:
                    raise BackendError(f"{self.kind} input {spec.name!r}: expected shape {spec.shape} "
                                       f"({spec.layout}), got {tuple(a.shape)}")
                targs.append(tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)))
            out = tvm.runtime.tensor(np.zeros(out_spec.shape, np.float32))
            lib(*targs, out)
            return out.numpy()

        run.lib = lib  # type: ignore[attr-defined]
        return run


def host_target(num_threads: int | None = None) -> dict[str, Any]:
    """The TVM LLVM target dict of this machine (features detected, `num-cores` = threads)."""
    from qcc.backends.tvm.host import llvm_target
    from qcc.target import Target

    opts = {} if num_threads is None else {"num_threads": int(num_threads)}
    return llvm_target(Target("cpu-fp32", **opts))


def shape_str(dims: Sequence[int]) -> str:
    """"128x256x256" for a PrimFunc name."""
    return "x".join(str(int(d)) for d in dims)
