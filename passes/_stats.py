"""Shared helper of the passes: accumulate per-pass counters in `PassContext.stats`."""

from __future__ import annotations

from collections.abc import Mapping

from qcc.ir.pass_manager import PassContext


def record_stats(ctx: PassContext, pass_name: str, counts: Mapping[str, int]) -> None:
    """Add `counts` to `ctx.stats[pass_name]`: a pass that runs twice in a pipeline reports its totals."""
    stats = ctx.stats.setdefault(pass_name, {})
    for key, n in counts.items():
        stats[key] = stats.get(key, 0) + n
    ctx.stats[pass_name] = dict(sorted(stats.items()))
