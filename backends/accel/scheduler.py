"""`schedule()`: one entry point for every scratchpad scheduler (ILP, divide-and-conquer, baselines, exhaustive).

Every result is replayed by `check_schedule` before it is returned, so a scheduler bug surfaces as a
`ScratchpadError` here instead of as a corrupted scratchpad on the accelerator.
"""

from __future__ import annotations

from qcc.backends.accel.problem import Problem, Schedule, check_schedule
from qcc.errors import OptionError

METHODS = ("ilp", "dc", "lru", "belady", "exhaustive")

# Above this many tasks the whole-graph ILP is replaced by the windowed divide-and-conquer solve.
DC_THRESHOLD = 400


def schedule(problem: Problem, method: str = "ilp", time_limit_s: float = 10.0, progress: bool = False) -> Schedule:
    """Schedule ``problem`` with ``method``: "ilp" (CP-SAT; windowed divide-and-conquer above `DC_THRESHOLD`
    tasks), "dc" (always windowed), "lru", "belady" (topological order, same allocator) or "exhaustive" (tiny
    problems only). ``time_limit_s`` bounds the solver time; ``progress`` prints solver progress."""
    if method not in METHODS:
        raise OptionError(f"unknown scratchpad scheduling method {method!r}; expected one of {', '.join(METHODS)}")
    if not time_limit_s > 0:
        raise OptionError(f"time_limit_s must be positive, got {time_limit_s}")
    problem.validate()
    if method in ("lru", "belady"):
        from qcc.backends.accel.schedule_baselines import schedule_baseline

        result = schedule_baseline(problem, policy=method)
    elif method == "exhaustive":
        from qcc.backends.accel.schedule_exhaustive import schedule_exhaustive

        result = schedule_exhaustive(problem)
    elif method == "dc" or len(problem.tasks) > DC_THRESHOLD:
        from qcc.backends.accel.schedule_dc import schedule_dc

        result = schedule_dc(problem, time_limit_s=time_limit_s, progress=progress)
    else:
        from qcc.backends.accel.schedule_ilp import schedule_ilp

        result = schedule_ilp(problem, time_limit_s=time_limit_s, progress=progress)
    check_schedule(result)
    return result
