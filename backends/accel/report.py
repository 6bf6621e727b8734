"""The accelerator section of `lib.report()` and `qcc.plot_schedule` (scratchpad occupancy over time)."""

from __future__ import annotations

import os
from typing import Any


def report_text(exe: Any) -> str:
    """Schedule (method, status, gap, solve time), scratchpad peak vs capacity, DRAM traffic (compulsory and not),
    simulated cycles and the estimated time at the model's clock."""
    info, p = exe.info, exe.program
    lines = [f"  accelerator: scratchpad {p.capacity // 1024} KiB, DRAM {p.timing.dram_gbps:g} GB/s, "
             f"clock {p.timing.clock_mhz:g} MHz; {len(p.code)} instructions"]
    if info:
        gap = f", gap {100 * info['gap']:.1f}%" if info.get("status") == "feasible" else ""
        lines.append(f"  schedule: {info['method']} ({info['status']}{gap}), solved in {info['solve_seconds']:.2f} s, "
                     f"{info['tasks']} tasks")
        if info.get("tiles"):
            lines.append("  tiled: " + ", ".join(f"{k}×{v}" for k, v in info["tiles"].items()))
        t = info["traffic"]
        lines.append(f"  DRAM traffic (scheduled buffers): {t['load'] + t['store']} B = compulsory {t['compulsory']} B"
                     f" + non-compulsory {t['noncompulsory']} B (loads {t['load']} B, stores {t['store']} B)")
        if info.get("tile_traffic"):
            lines.append(f"  DRAM traffic of tiled operators' DRAM-resident tensors: {info['tile_traffic']} B")
        s = info["sim"]
        lines.append(f"  scratchpad peak: {s['spm_peak']} B of {info['capacity']} B "
                     f"({100 * s['spm_peak'] / max(info['capacity'], 1):.1f}%)")
        if "weights_bytes" in info:
            saved = info.get("packed_saved", 0)
            lines.append(f"  weights image: {info['weights_bytes']} B"
                         + (f" (4-bit weights packed two per byte: {saved} B less DRAM and DMA)" if saved else ""))
        cyc = s["cycles"]
        lines.append(f"  simulated: {s['dram_read']} B read, {s['dram_write']} B written, {cyc} cycles "
                     f"(DMA {s['dma_cycles']}, compute {s['compute_cycles']}) = "
                     f"{cyc / p.timing.clock_mhz:.1f} µs at {p.timing.clock_mhz:g} MHz")
        top = sorted(s.get("by_op", {}).items(), key=lambda kv: -kv[1])[:6]
        if top:
            lines.append("  cycles by instruction: " + ", ".join(f"{k} {v}" for k, v in top))
    return "\n".join(lines)


def plot_schedule(lib: Any, path: str | os.PathLike[str], top: int = 12) -> None:
    """Draw scratchpad occupancy over time, one rectangle per buffer residency (address x task step); the `top`
    largest buffers are labelled. `lib` is a compiled accelerator library (or its executable)."""
    exe = getattr(lib, "_exe", lib)
    info = getattr(exe, "info", None)
    if not info or "occupancy" not in info:
        from qcc.errors import OptionError

        raise OptionError("plot_schedule needs a library compiled for an accel-* target")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    occ = info["occupancy"]
    cap = info["capacity"]
    steps = max((r[4] for r in occ), default=1)
    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab20")
    big = {r[0] for r in sorted(occ, key=lambda r: -r[2] * (r[4] - r[3]))[:top]}
    for i, (name, addr, size, t0, t1) in enumerate(occ):
        ax.add_patch(Rectangle((t0, addr / 1024), t1 - t0, size / 1024, facecolor=cmap(i % 20), edgecolor="k",
                               linewidth=0.3, alpha=0.85))
        if name in big:
            ax.text(t0 + 0.05, (addr + size / 2) / 1024, name, fontsize=6, va="center", clip_on=True)
    ax.axhline(cap / 1024, color="r", linestyle="--", label="capacity")
    ax.set_xlim(0, steps)
    ax.set_ylim(0, cap / 1024 * 1.05)
    ax.set_xlabel("task step")
    ax.set_ylabel("scratchpad address (KiB)")
    ax.set_title(f"scratchpad occupancy ({info['method']}, {info['status']})")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
