"""What the report says about an OUTPUT, computed from its manifest and status file alone.

:func:`summarize` reads the current row of every (photo, configuration) through
:class:`~danp_pipeline.manifest.output.Output` (the one reader of the manifest, shared with ``verify``
and ``compact``) and reduces it to plain numbers: the configurations, counts by status, the error rows
grouped by reason, fidelity against the promised bound, metadata and content-credential counts,
throughput over time and seconds per photo. Charts (charts.py) and the page (page.py) only show them.
No model and no torch: this runs wherever the manifest can be read.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import REPORT_TOP_REASONS
from ..imaging.codec import eps_levels
from ..manifest.output import Output
from ..manifest.provenance import error_reason, winners

#: Manifest columns the report reads (config_json is read once per configuration: Output.configs).
COLUMNS = ("source_uri", "source_key", "source_sha256", "status", "error", "output_uri", "output_key",
           "config_sha256", "method", "model_id", "model_revision", "prompts", "linf_levels", "psnr_db",
           "duration_s", "device", "finished_at", "package_version", "run_id", "output_format", "output_bytes",
           "linf_bounded", "metadata", "c2pa_bytes", "steps_skipped", "width", "height")
#: Example keys shown per error reason.
EXAMPLES = 3


@dataclass(frozen=True)
class Configuration:
    """One configuration of the OUTPUT's rows, as a person reads it."""

    sha256: str
    model: str
    revision: str | None
    method: str
    profile: str
    eps: float | None
    bound_levels: int | None       # ⌈255·eps⌉: the L∞ a lossless output is guaranteed to keep
    output_format: str
    prompts: tuple[str, ...]
    package_versions: tuple[str, ...]
    runs: tuple[str, ...]
    counts: dict[str, int]


@dataclass(frozen=True)
class ErrorGroup:
    reason: str
    count: int
    examples: tuple[str, ...]      # source keys
    message: str                   # one full message of the group


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of the ok rows of one output format."""

    output_format: str
    bounded: bool                  # lossless: L∞ guaranteed ≤ the bound; lossy: measured only
    n: int
    psnr: np.ndarray = field(repr=False)
    linf: np.ndarray = field(repr=False)
    bound_levels: int | None = None
    over_bound: int = 0            # bounded rows whose L∞ exceeds the bound (must be 0)


@dataclass(frozen=True)
class Throughput:
    """Finished photos over time: bin edges (seconds since the first) and photos per hour in each bin."""

    start: Any                     # datetime of the first finished row
    edges_s: np.ndarray = field(repr=False)
    per_hour: np.ndarray = field(repr=False)
    overall_per_hour: float = 0.0


@dataclass(frozen=True)
class Summary:
    output_uri: str
    rows: int
    counts: dict[str, int]
    configurations: tuple[Configuration, ...]
    errors: tuple[ErrorGroup, ...]
    error_reasons: int             # distinct reasons (the table shows the top ones)
    fidelity: tuple[Fidelity, ...]
    metadata: dict[str, Counter]   # "kept" / "stripped" / "dropped" -> {kind: photos}
    signed: int
    throughput: Throughput | None
    seconds_per_photo: np.ndarray = field(repr=False)
    devices: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    table: pa.Table | None = field(default=None, repr=False)   # the current rows, for the gallery

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)


def summarize(output: Output, top_reasons: int = REPORT_TOP_REASONS) -> Summary:
    configs: dict[str, str] = {}
    table = winners(output.read(COLUMNS, configs=configs))   # one pass over the parts for both
    statuses = _tally(table["status"])
    ok = table.select(["config_sha256", "output_format", "linf_bounded", "linf_levels", "psnr_db", "metadata",
                       "c2pa_bytes", "duration_s", "device"]).filter(pc.equal(table["status"], "ok"))
    configurations = tuple(_configurations(table, configs))
    bounds = {c.sha256: c.bound_levels for c in configurations}
    errors, distinct = _errors(table, top_reasons)
    return Summary(
        output_uri=output.uri, rows=table.num_rows, counts=dict(statuses), configurations=configurations,
        errors=errors, error_reasons=distinct, fidelity=tuple(_fidelity(ok, bounds)), metadata=_metadata(ok),
        signed=int(pc.sum(pc.is_valid(ok["c2pa_bytes"])).as_py() or 0), throughput=_throughput(table),
        seconds_per_photo=_floats(ok["duration_s"]), devices=_tally(ok["device"]),
        status=output.status(), table=table)


def _tally(column: pa.ChunkedArray) -> dict[Any, int]:
    """{value: rows}, most frequent first, counted in Arrow (no Python object per row)."""
    counts = pc.value_counts(column).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False).astype(float)
    return values[np.isfinite(values)]


def _configurations(table: pa.Table, configs: dict[str, str]) -> list[Configuration]:
    out = []
    shown = table.select(["config_sha256", "status", "model_id", "method", "prompts", "package_version", "run_id"])
    for sha in _tally(table["config_sha256"]):
        mine = shown.filter(pc.equal(shown["config_sha256"], sha))
        config = json.loads(configs.get(sha) or "{}")
        attack = config.get("attack", {})
        eps = attack.get("eps")
        first = mine.slice(0, 1).to_pylist()[0]
        out.append(Configuration(
            sha256=sha, model=config.get("model_id") or first["model_id"] or "?",
            revision=config.get("model_revision"), method=attack.get("method") or first["method"] or "?",
            profile=_profile(attack), eps=eps, bound_levels=eps_levels(eps) if eps is not None else None,
            output_format=(config.get("output") or {}).get("output_format", "png"),
            prompts=tuple(first["prompts"] or ()),
            package_versions=tuple(sorted(v for v in _tally(mine["package_version"]) if v)),
            runs=tuple(sorted(v for v in _tally(mine["run_id"]) if v)),
            counts=_tally(mine["status"])))
    return out


def _profile(attack: dict[str, Any]) -> str:
    """The attack settings a reader compares runs by, in one short line."""
    parts = [f"{attack[k]} {label}" for k, label in (("steps", "steps"), ("num_timesteps", "timesteps"),
                                                     ("resolution", "px")) if k in attack]
    return ", ".join(parts) or "?"


def _errors(table: pa.Table, top: int) -> tuple[tuple[ErrorGroup, ...], int]:
    errors = table.filter(pc.equal(table["status"], "error"))
    groups: dict[str, list] = {}
    for key, message in zip(errors["source_key"].to_pylist(), errors["error"].to_pylist()):
        reason = error_reason(message)
        group = groups.setdefault(reason, [0, [], message or ""])
        group[0] += 1
        if len(group[1]) < EXAMPLES:
            group[1].append(key)
    ranked = sorted(groups.items(), key=lambda item: (-item[1][0], item[0]))
    return tuple(ErrorGroup(reason, n, tuple(keys), message) for reason, (n, keys, message) in ranked[:top]), \
        len(groups)


def _fidelity(ok: pa.Table, bounds: dict[str, int | None]) -> list[Fidelity]:
    out = []
    formats = pc.fill_null(ok["output_format"], "png")
    for fmt in sorted(_tally(formats)):
        mine = ok.filter(pc.equal(formats, fmt))
        bounded = pc.fill_null(mine["linf_bounded"], True)
        linf = mine["linf_levels"].to_numpy(zero_copy_only=False).astype(float)
        over, known = 0, []
        for sha, bound in bounds.items():     # a handful of configurations, each with its own bound
            if bound is None:
                continue
            mask = pc.and_(pc.equal(mine["config_sha256"], sha), bounded)
            if pc.any(mask).as_py():
                known.append(bound)
                over += int(pc.sum(pc.greater(pc.filter(mine["linf_levels"], mask), bound)).as_py() or 0)
        out.append(Fidelity(output_format=fmt, bounded=bool(pc.all(bounded).as_py()), n=mine.num_rows,
                            psnr=_floats(mine["psnr_db"]), linf=linf[np.isfinite(linf)],
                            bound_levels=max(known) if known else None, over_bound=over))
    return out


def _metadata(ok: pa.Table) -> dict[str, Counter]:
    """Photos whose output kept, stripped or dropped each kind of metadata (the rows' ``metadata`` JSON)."""
    tally: dict[str, Counter] = {"kept": Counter(), "stripped": Counter(), "dropped": Counter()}
    for text, n in _tally(ok["metadata"]).items():     # archives repeat a few records: each parsed once
        if not text:
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        for what in tally:
            for kind in set(record.get(what) or ()):
                tally[what][kind] += n
    return tally


def _throughput(table: pa.Table, bins: int = 40) -> Throughput | None:
    """Photos per hour over time, from when each row was finished (ok and error rows alike)."""
    finished = table["finished_at"].drop_null()
    if len(finished) == 0:
        return None
    stamps = pc.cast(finished, pa.int64()).to_numpy().astype(np.float64) / 1e6   # µs since the epoch → s
    first, last = float(stamps.min()), float(stamps.max())
    span = max(last - first, 1.0)
    width = _nice_width(span / bins)
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, _ = np.histogram(stamps - first, bins=edges)
    start = finished[int(np.argmin(stamps))].as_py()
    return Throughput(start=start, edges_s=edges, per_hour=counts * 3600.0 / width,
                      overall_per_hour=len(stamps) * 3600.0 / span)


def _nice_width(seconds: float) -> float:
    """The smallest of 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1, 2, 6, 12 h, 1 day ≥ ``seconds``."""
    for width in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if width >= seconds:
            return float(width)
    return float(math.ceil(seconds / 86400) * 86400)
