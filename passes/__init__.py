"""qcc's graph passes and their registry.

Each pass lives in its own module named like the pass (`constant-folding` is `passes/constant_folding.py`, tested
in `tests/passes/test_constant_folding.py`). A pass is a frozen dataclass with a kebab-case `name` class variable
and `run(graph, ctx) -> graph`; its dataclass fields are its options. Passes are pure: they return a new graph and
never mutate the one they are given. `qcc.ir.pass_manager.run_passes` runs them with verification, printing,
dumping and timing.

`PASSES` maps each pass name to its class; `get_pass("name", **options)` builds one, converting option strings
(as the CLI passes them) to the field's type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qcc.errors import OptionError
from qcc.ir.pass_manager import Pass
from qcc.passes.canonicalize import Canonicalize
from qcc.passes.constant_folding import ConstantFolding
from qcc.passes.dead_code_elimination import DeadCodeElimination
from qcc.passes.fold_batchnorm import FoldBatchNorm
from qcc.passes.fuse import Fuse
from qcc.passes.gnn.gnn_fuse import GnnFuse
from qcc.passes.gnn.gnn_reorganize import GnnReorganize
from qcc.passes.quant import Calibrate, CheckIntegerOnly, Quantize, RealizeInteger
from qcc.passes.recognize_attention import RecognizeAttention
from qcc.passes.recognize_qattention import RecognizeQAttention

PASSES: dict[str, type] = {
    cls.name: cls
    for cls in (ConstantFolding, DeadCodeElimination, Canonicalize, FoldBatchNorm, GnnReorganize, GnnFuse,
                Calibrate, Quantize, RealizeInteger, CheckIntegerOnly, Fuse, RecognizeAttention,
                RecognizeQAttention)
}


def _coerce(pass_name: str, field: dataclasses.Field[Any], value: Any) -> Any:
    """Convert a string option (from the command line) to the type of the field's default value."""
    default = field.default
    if not isinstance(value, str) or default is dataclasses.MISSING or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise OptionError(f"pass {pass_name!r}: option {field.name}={value!r} is not a valid "
                          f"{type(default).__name__}") from None
    return value


def get_pass(name: str, **options: Any) -> Pass:
    """The pass registered as `name`, built with `options` (its dataclass fields).

    Raises OptionError for an unknown pass name or an option the pass does not accept.
    """
    try:
        cls = PASSES[name]
    except KeyError:
        raise OptionError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}") from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise OptionError(f"pass {name!r}: unknown option(s) {unknown}; accepted options: {accepted}")
    kwargs = {k: _coerce(name, fields[k], v) for k, v in options.items()}
    return cls(**kwargs)  # type: ignore[no-any-return]


__all__ = ["PASSES", "Calibrate", "Canonicalize", "CheckIntegerOnly", "ConstantFolding", "DeadCodeElimination",
           "FoldBatchNorm", "Fuse", "GnnFuse", "GnnReorganize", "Quantize", "RealizeInteger", "RecognizeAttention",
           "RecognizeQAttention", "get_pass"]
