"""Provenance: the manifest schema, row construction, hashing, and reading the ledger back.

The manifest is a Parquet dataset under ``OUTPUT/manifest/``: many small part files with one fixed
schema (:data:`SCHEMA`), one row per input object and configuration. A row is identified by
``(source_uri, config_sha256)``. When a reader meets more than one row for an identity (after a
retry, a re-protection of changed bytes, or a crash before the planner's clean-up, job/planning.py)
the newest row by ``finished_at`` wins, except that an ``error`` row never displaces an ``ok`` row
for the same bytes (same ``source_sha256``, or bytes unknown because the read failed).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage import escape_name, retrying

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("source_uri", pa.string()),
    ("source_key", pa.string()),          # key relative to INPUT
    ("source_sha256", pa.string()),
    ("source_bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("status", pa.string()),              # "ok" | "error"
    ("error", pa.string()),
    ("output_uri", pa.string()),
    ("output_sha256", pa.string()),
    ("method", pa.string()),
    ("model_id", pa.string()),
    ("model_revision", pa.string()),
    ("prompts", pa.list_(pa.string())),
    ("config_json", pa.string()),
    ("config_sha256", pa.string()),
    ("linf_levels", pa.int32()),
    ("psnr_db", pa.float64()),
    ("loss_first", pa.float64()),
    ("loss_last", pa.float64()),
    ("seed", pa.int64()),
    ("duration_s", pa.float64()),
    ("device", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("package_version", pa.string()),
    ("notes", pa.string()),               # decode notes: EXIF rotation applied, 16-bit reduced, …
    ("run_id", pa.string()),
    ("source_etag", pa.string()),         # listing fingerprint when read: "etag:…" or "mtime:…" (ingest)
    ("reason", pa.string()),              # why this run processed it: new | changed (sha256 a→b) | retry
    ("output_format", pa.string()),       # png | webp-lossless | tiff | jpeg | webp | heic | avif
    ("output_bytes", pa.int64()),
    ("bit_depth", pa.int32()),            # bits per sample of the output (16: 16-bit PNG/TIFF kept)
    ("linf_bounded", pa.bool_()),         # True: lossless, linf_levels ≤ ⌈255·eps⌉ guaranteed; False: lossy, measured
    ("metadata", pa.string()),            # JSON: {"kept": {kind: bytes}, "stripped": […], "dropped": […]}
    ("c2pa_bytes", pa.int64()),           # bytes the signed C2PA manifest added; null when not signed
    ("steps_skipped", pa.int32()),        # PGD iterations whose step was skipped (non-finite gradient)
    ("output_key", pa.string()),          # the output relative to OUTPUT (images/…); null in older rows
])

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
#: Columns read to decide what a run still has to do.
INDEX_COLUMNS: tuple[str, ...] = ("source_uri", "config_sha256", "status", "finished_at", "source_sha256")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@lru_cache(maxsize=1)
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("danp-pipeline")
    except PackageNotFoundError:
        return "unknown"


def make_row(**fields: Any) -> dict[str, Any]:
    """A full manifest row: every schema column present, unknown names refused."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}")
    if fields.get("status") not in ("ok", "error"):
        raise ValueError(f"status must be 'ok' or 'error', got {fields.get('status')!r}")
    row = dict.fromkeys(COLUMNS)
    row["package_version"] = package_version()
    row.update(fields)
    return row


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([dict(r) for r in rows], schema=SCHEMA)


def empty_table(columns: Iterable[str] = COLUMNS) -> pa.Table:
    return SCHEMA.empty_table().select(list(columns))


def list_parts(fs: fsspec.AbstractFileSystem, manifest_dir: str) -> list[str]:
    """Committed part files (temp files start with '.' and are ignored); never from a stale cache."""
    fs.invalidate_cache(manifest_dir)
    if not retrying(fs.exists, manifest_dir, what=f"listing {manifest_dir}"):
        return []
    paths = retrying(fs.find, manifest_dir, withdirs=False, what=f"listing {manifest_dir}")
    return sorted(p for p in paths if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_")))


class CorruptPartError(ValueError):
    """A manifest part that cannot be read as one (truncated, empty, not Parquet): its message is one
    line naming the part and what to do, for the CLI to print (every command that reads the manifest
    fails closed rather than redo or drop photos on a guess)."""

    @classmethod
    def of(cls, fs: fsspec.AbstractFileSystem, path: str, exc: BaseException) -> "CorruptPartError":
        uri = escape_name(fs.unstrip_protocol(path))
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        return cls(f"manifest part {uri} is unreadable ({reason}): move it aside, out of "
                   f"{uri.rsplit('/', 1)[0]}/; the photos it recorded are redone on the next run")


def read_part(fs: fsspec.AbstractFileSystem, path: str, columns: Iterable[str] | None = None) -> pa.Table:
    """One part as ``columns`` of SCHEMA; columns a part predates (added later) read as nulls.
    CorruptPartError when the part is not a readable manifest part."""
    wanted = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    data = retrying(fs.cat_file, path, what=f"reading {path}")
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        present = [name for name in wanted.names if name in parquet.schema_arrow.names]
        table = parquet.read(columns=present)
        for name in wanted.names:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows, wanted.field(name).type))
        return table.select(wanted.names).cast(wanted)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorruptPartError.of(fs, path, exc) from exc


def read_manifest(
    fs: fsspec.AbstractFileSystem,
    manifest_dir: str,
    columns: Iterable[str] | None = None,
    *,
    with_part: bool = False,
    configs: dict[str, str] | None = None,
    threads: int = 16,
) -> pa.Table:
    """Every row of every part (duplicates included); ``with_part`` adds the part path as ``part``.
    ``configs``: a dict to fill with {config_sha256: config_json} in the same pass, each part's long JSON
    text reduced to its few configurations as the part is read (never held for every row)."""
    columns = list(columns) if columns is not None else list(COLUMNS)
    parts = list_parts(fs, manifest_dir)
    extra = [c for c in ("config_sha256", "config_json") if configs is not None and c not in columns]

    def load(path: str) -> tuple[pa.Table, dict[str, str]]:
        table = read_part(fs, path, columns + extra)
        found = dict(zip(table["config_sha256"].to_pylist(), table["config_json"].to_pylist())) \
            if configs is not None else {}
        table = table.drop_columns(extra)
        if with_part:
            table = table.append_column("part", pa.array([path] * table.num_rows, pa.string()))
        return table, found

    if not parts:
        table = empty_table(columns)
        return table.append_column("part", pa.array([], pa.string())) if with_part else table
    tables = []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(parts)))) as pool:
        for table, found in pool.map(load, parts):
            tables.append(table)
            if configs is not None:
                configs.update(found)
    return pa.concat_tables(tables)


#: What varies between rows that fail for the same reason: numbers and quoted names.
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def error_reason(error: str | None) -> str:
    """An error row's reason: its message's first line with numbers and quoted names blanked, so that
    rows failing the same way group together (the run's summary and the report)."""
    first = (error or "unknown error").strip().splitlines()[0] if (error or "").strip() else "unknown error"
    return _NUMBER.sub("N", _QUOTED.sub("'…'", " ".join(first.split())))


def winners(table: pa.Table) -> pa.Table:
    """The current row per (source_uri, config_sha256): the newest, unless it is an error and an ok
    row exists for the same bytes (or the error's bytes are unknown): then the newest ok row."""
    if table.num_rows == 0:
        return table
    # Sorted on the key columns alone: the other columns are copied once, by take().
    keys = table.select(["source_uri", "config_sha256", "finished_at"]).append_column(
        "_i", pa.array(range(table.num_rows), pa.int64()))
    order = pc.sort_indices(keys, [("source_uri", "ascending"), ("config_sha256", "ascending"),
                                   ("finished_at", "descending"), ("_i", "descending")])
    identities = keys.group_by(["source_uri", "config_sha256"], use_threads=False).aggregate([]).num_rows
    if identities == table.num_rows:            # one row per identity (the usual manifest): all of them win
        return table.take(order)
    ranked = table.append_column("_i", keys["_i"]).take(order)
    src, cfg = ranked["source_uri"].to_pylist(), ranked["config_sha256"].to_pylist()
    status = ranked["status"].to_pylist()
    sha = ranked["source_sha256"].to_pylist() if "source_sha256" in ranked.column_names else [None] * len(src)
    keep, start, n = [], 0, ranked.num_rows
    while start < n:
        end = start + 1
        while end < n and (src[end], cfg[end]) == (src[start], cfg[start]):
            end += 1
        pick = start  # the newest
        ok = next((i for i in range(start, end) if status[i] == "ok"), None)
        if status[start] != "ok" and ok is not None and (sha[start] is None or sha[ok] in (None, sha[start])):
            pick = ok
        keep.append(pick)
        start = end
    return ranked.take(pa.array(keep, pa.int64())).drop_columns(["_i"])
