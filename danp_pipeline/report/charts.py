"""The report's charts, drawn with matplotlib (Agg, no display) from a :class:`~.summary.Summary`.

Each function returns one PNG (bytes) or None when there is nothing to draw; page.py inlines them, so
index.html stays one self-contained file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .summary import Fidelity, Throughput

DPI = 100
COLOURS = ("#2f6690", "#d1495b", "#3a7d44", "#edae49", "#6d597a", "#00798c")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def fidelity(groups: Sequence[Fidelity]) -> bytes | None:
    """PSNR and L∞ distributions per output format; the promised bound drawn on the L∞ panel."""
    groups = [g for g in groups if g.n]
    if not groups:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for colour, g in zip(COLOURS, groups):
        label = f"{g.output_format} ({'bounded' if g.bounded else 'lossy, measured'}, n={g.n})"
        if len(g.psnr):
            left.hist(g.psnr, bins=40, color=colour, alpha=0.6, label=label)
        if len(g.linf):
            top = int(max(g.linf.max(), g.bound_levels or 0))
            right.hist(g.linf, bins=np.arange(-0.5, top + 1.5, 1.0), color=colour, alpha=0.6, label=label)
    bounds = sorted({g.bound_levels for g in groups if g.bounded and g.bound_levels is not None})
    for bound in bounds:
        right.axvline(bound + 0.5, color="black", linestyle="--", linewidth=1)
        right.annotate(f"bound {bound}", (bound + 0.5, 0.95), xycoords=("data", "axes fraction"),
                       ha="right", va="top", fontsize=8)
    left.set(xlabel="PSNR (dB) of the protected photo vs the original", ylabel="photos")
    right.set(xlabel="L∞ distance (8-bit levels)", ylabel="photos")
    left.legend(fontsize=8)
    return _png(fig)


def throughput(series: Throughput | None) -> bytes | None:
    """Photos per hour over the run's time, from the rows' finish times."""
    if series is None or not len(series.per_hour):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.6))
    edges = series.edges_s
    scale, unit = (3600.0, "h") if edges[-1] > 3 * 3600 else (60.0, "min") if edges[-1] > 180 else (1.0, "s")
    ax.stairs(series.per_hour, edges / scale, fill=True, color=COLOURS[0], alpha=0.7)
    ax.axhline(series.overall_per_hour, color="black", linestyle="--", linewidth=1)
    ax.set(xlabel=f"time since the first finished photo ({unit}; first at {series.start:%Y-%m-%d %H:%M} UTC)",
           ylabel="photos / hour")
    return _png(fig)


def seconds_per_photo(seconds: np.ndarray) -> bytes | None:
    """Distribution of each photo's seconds from read to written (the rows' duration_s)."""
    if not len(seconds):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(seconds, bins=40, color=COLOURS[2], alpha=0.8)
    ax.set(xlabel="seconds per photo, read to written (queueing included)", ylabel="photos")
    return _png(fig)
