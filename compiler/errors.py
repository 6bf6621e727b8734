"""The exception hierarchy of qcc. Every user-facing failure raises a subclass of `QccError`.

The CLI prints `error: <message>` in one line and exits non-zero for any of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class QccError(Exception):
    """Base class of every error qcc raises on purpose."""

    exit_code = 1


class ModelLoadError(QccError):
    """A model file or object could not be read: missing, truncated, corrupt, or of an unknown kind."""

    exit_code = 3


class UnsupportedOperatorError(QccError):
    """The model uses operators qcc cannot import. Lists every unsupported (op, node) at once."""

    exit_code = 4

    def __init__(self, unsupported: Sequence[tuple[str, str]], model: str = "model") -> None:
        self.unsupported = list(unsupported)
        self.model = model
        ops = sorted({op for op, _ in self.unsupported})
        where = ", ".join(f"{op} (node {node!r})" for op, node in self.unsupported[:20])
        more = f" and {len(self.unsupported) - 20} more" if len(self.unsupported) > 20 else ""
        super().__init__(
            f"{model}: {len(self.unsupported)} unsupported operator node(s) of {len(ops)} kind(s) "
            f"[{', '.join(ops)}]: {where}{more}"
        )


class ShapeMismatchError(QccError, ValueError):
    """An input has the wrong shape or dtype, at compile or call time; names the input and what was expected."""

    exit_code = 5


class TargetError(QccError, ValueError):
    """An unknown target string or a target option it does not accept."""

    exit_code = 6


class OptionError(QccError, ValueError):
    """An unknown or invalid compile option."""

    exit_code = 6


class VerificationError(QccError):
    """The IR is malformed (a type rule fails, a value is used before definition, ...)."""

    exit_code = 7


class PassError(QccError):
    """A pass failed; the message names it and the passes that ran before it."""

    exit_code = 8


class BackendError(QccError):
    """Code generation or building failed in a backend."""

    exit_code = 9


class LibraryLoadError(QccError):
    """A compiled library cannot be loaded: missing, corrupt, built for another target, or a newer format."""

    exit_code = 10


class IRParseError(QccError, ValueError):
    """The textual IR could not be parsed; names the line."""

    exit_code = 7


class InfeasibleBudgetError(QccError):
    """A resource budget cannot be met; states the smallest achievable value (`minimum`: resource → value)."""

    exit_code = 11

    def __init__(self, message: str, minimum: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.minimum = dict(minimum or {})


class CalibrationError(QccError, ValueError):
    """Calibration data cannot be used: an empty set, a batch of the wrong shape or dtype, NaN or inf values."""

    exit_code = 12


class CostModelError(QccError):
    """The cost model or its measurement database cannot be used: a corrupt or foreign database, a model file
    of another feature version, or bad kernel descriptions."""

    exit_code = 13


class ScratchpadError(QccError):
    """A scratchpad schedule problem or schedule is invalid: a task whose operands can never fit, an overlap,
    an access to a buffer that is not resident, an output never stored; the message names the task or buffer."""

    exit_code = 14
