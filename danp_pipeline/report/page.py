"""The report page: a :class:`~.summary.Summary`, its charts and gallery rendered into one HTML file
(templates/index.html.j2, Jinja2 with autoescaping: keys and error messages are shown, never run)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .gallery import Tile
from .summary import Summary

TEMPLATES = Path(__file__).parent / "templates"


def data_uri(png: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else None


def _range(values: np.ndarray, fmt: str = "{:.2f}") -> str:
    if not len(values):
        return "–"
    lo, mid, hi = np.percentile(values, [0, 50, 100])
    return " / ".join(fmt.format(v) for v in (lo, mid, hi))


def render(summary: Summary, charts: dict[str, bytes | None], tiles: Sequence[Tile], version: str) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    fidelity = [{"format": f.output_format, "n": f.n, "psnr": _range(f.psnr),
                 "linf_max": int(f.linf.max()) if len(f.linf) else "–", "bounded": f.bounded,
                 "bound": f.bound_levels, "over": f.over_bound} for f in summary.fidelity]
    kinds = sorted({k for counter in summary.metadata.values() for k in counter})
    seconds = summary.seconds_per_photo
    median = (f"median {np.median(seconds):.1f} s, 90th percentile {np.percentile(seconds, 90):.1f} s"
              if len(seconds) else "")
    context: dict[str, Any] = {
        "s": summary, "version": version, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "charts": {name: data_uri(png) for name, png in charts.items()}, "tiles": list(tiles),
        "fidelity": fidelity, "metadata_kinds": kinds, "seconds": median,
    }
    return env.get_template("index.html.j2").render(**context)
