"""``danp-protect report OUTPUT``: one HTML page that shows what a run protected, how well, what failed
and how fast, from the manifest and the status file alone (no model, no torch).

summary.py reduces the manifest to numbers, charts.py draws them (matplotlib), gallery.py writes
thumbnails of a fixed sample of photos, page.py renders ``OUTPUT/report/index.html`` (Jinja2). The
report is written under OUTPUT with the same storage options, local folder or object store alike;
``run`` and ``ingest`` write it when they end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .. import storage
from ..config import REPORT_SAMPLE
from ..manifest.output import Output
from ..manifest.provenance import list_parts, package_version

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"


def write_report(output_uri: str, storage_options: Mapping[str, Any] | None = None, *,
                 sample: int = REPORT_SAMPLE) -> str:
    """Write ``OUTPUT/report/index.html`` and its thumbnails; returns the page's URI. ValueError when
    OUTPUT has no manifest."""
    from . import charts, gallery, page
    from .summary import summarize

    options = dict(storage_options or {})
    output = Output.open(output_uri, options)
    if not list_parts(output.fs, output.manifest_dir):
        raise ValueError(f"no manifest under {output.to_uri(output.manifest_dir)}: nothing to report")
    summary = summarize(output)
    chosen = gallery.sample(summary.table, sample)
    summary = dataclasses.replace(summary, table=None)     # the rows are no longer needed: free them, and hand
    pa.default_memory_pool().release_unused()                # Arrow's cached memory back before photos decode
    bounds = {c.sha256: c.bound_levels for c in summary.configurations}
    tiles = gallery.thumbnails(output, chosen, bounds, options)
    drawn = {"fidelity": charts.fidelity(summary.fidelity), "throughput": charts.throughput(summary.throughput),
             "seconds": charts.seconds_per_photo(summary.seconds_per_photo)}
    html = page.render(summary, drawn, tiles, package_version())
    path = storage.join(output.report_dir, INDEX_NAME)
    storage.atomic_write(output.fs, path, html.encode())
    return output.to_uri(path)
