"""`qcc.Budget`: resource limits for mixed-precision compilation (`qcc.compile(..., "cpu-mixed", budget=...)`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from qcc.errors import OptionError


@dataclass(frozen=True)
class Budget:
    """Limits the bit allocation must meet; any subset, at least one.

    `size_mb`: weight bytes (data plus scales of the weighted layers) in MB (10^6 bytes); `size_ratio`: the same
    as a fraction of the float32 weights; `bops`: bit operations (MACs × weight bits × activation bits) per run;
    `latency_ms`: the cost model's latency estimate (analytic until the learned model lands).
    """

    size_mb: float | None = None
    size_ratio: float | None = None
    bops: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if not given:
            raise OptionError("a Budget needs at least one of size_mb, size_ratio, bops, latency_ms")
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise OptionError(f"Budget {name} must be a positive number, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """From the command-line form `size_mb=0.05,latency_ms=2` (also `;`-separated)."""
        values: dict[str, float] = {}
        names = {f.name for f in fields(cls)}
        for part in text.replace(";", ",").split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise OptionError(f"--budget expects KEY=VALUE with KEY in {sorted(names)}, got {part.strip()!r}")
            try:
                values[key] = float(val)
            except ValueError:
                raise OptionError(f"--budget {key}: {val.strip()!r} is not a number") from None
        return cls(**values)

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name))
