"""Compilation targets: `<device>-<precision>` strings plus keyword options.

`Target("cuda-int4", arch="sm_90")`, `Target("cpu-fp32", num_threads=2)`. Unknown devices, precisions
or options raise `qcc.errors.TargetError` naming what was wrong and what is accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from qcc.errors import TargetError

DEVICES = ("cpu", "cuda", "accel")
PRECISIONS = ("fp32", "fp16", "int8", "int4", "mixed")

# Options each device accepts, with their types.
OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "cpu": {"mcpu": str, "mattr": (list, tuple), "num_threads": int},
    "cuda": {"arch": str, "num_threads": int},
    "accel": {"scratchpad_kb": int, "dram_gbps": (int, float)},
}
SUPPORTED: dict[str, tuple[str, ...]] = {
    "cpu": PRECISIONS,
    "cuda": PRECISIONS,
    "accel": ("int8", "int4", "mixed"),
}


@dataclass(frozen=True)
class Target:
    """A compilation target: device, precision and device options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str | Target, **options: Any) -> None:
        if isinstance(name, Target):
            options = {**name.options, **options}
            name = name.name
        if not isinstance(name, str) or name.count("-") != 1:
            raise TargetError(f"bad target {name!r}: expected '<device>-<precision>', e.g. 'cpu-fp32', "
                              f"devices {list(DEVICES)}, precisions {list(PRECISIONS)}")
        device, precision = name.split("-")
        if device not in DEVICES:
            raise TargetError(f"unknown target device {device!r} in {name!r}; known: {list(DEVICES)}")
        if precision not in SUPPORTED[device]:
            raise TargetError(f"target device {device!r} does not support precision {precision!r}; "
                              f"supported: {list(SUPPORTED[device])}")
        accepted = OPTIONS[device]
        for key, value in options.items():
            if key not in accepted:
                raise TargetError(f"target {name!r} does not accept option {key!r}; accepted: {sorted(accepted)}")
            if not isinstance(value, accepted[key]) or isinstance(value, bool):
                raise TargetError(f"target option {key}={value!r} has the wrong type")
        if "num_threads" in options and options["num_threads"] < 1:
            raise TargetError(f"num_threads must be >= 1, got {options['num_threads']}")
        if device == "cuda" and "arch" in options and not str(options["arch"]).startswith("sm_"):
            raise TargetError(f"cuda arch must look like 'sm_80', got {options['arch']!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", dict(options))

    @property
    def device(self) -> str:
        return self.name.split("-")[0]

    @property
    def precision(self) -> str:
        return self.name.split("-")[1]

    @property
    def is_integer(self) -> bool:
        return self.precision in ("int8", "int4", "mixed")

    @property
    def num_threads(self) -> int:
        """Threads for the runtime: the option, else the cores this process may use."""
        n = self.options.get("num_threads")
        if n is not None:
            return int(n)
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            return os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Target:
        return Target(d["name"], **d.get("options", {}))

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{self.name}({opts})" if opts else self.name

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted((k, repr(v)) for k, v in self.options.items()))))
