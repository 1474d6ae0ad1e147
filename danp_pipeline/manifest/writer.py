"""Manifest writing: one Parquet part per committed batch, written atomically.

A part is the commit point of its photos: a photo whose row is in a part is done, a photo whose
row is not will be (re)computed by the next run. Parts are named after what they contain,
``part-<sha256(config_sha256, sorted (source URI, source SHA-256)))[:32]>.parquet``, so a batch that
Ray retries after an actor died overwrites its own part instead of adding a second copy, while the
re-protection of changed bytes gets a new part and its old row is superseded (remove_superseded).

One part per batch means a million small files for a million photos, and every run reads them all
to plan; :func:`compact` merges small parts into parts of up to ``COMPACT_ROWS`` rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import COMPACT_MIN_PARTS, COMPACT_ROWS
from ..storage import atomic_write, join, unescape_name
from .provenance import (
    INDEX_COLUMNS,
    list_parts,
    read_manifest,
    read_part,
    to_table,
    winners,
)

logger = logging.getLogger(__name__)



def part_name(rows: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for key in sorted((str(r["config_sha256"]), str(r["source_uri"]), str(r.get("source_sha256") or ""))
                      for r in rows):
        digest.update(("\0".join(key) + "\n").encode())
    return f"part-{digest.hexdigest()[:32]}.parquet"


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_part(fs: fsspec.AbstractFileSystem, manifest_dir: str, rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Commit ``rows`` as one part; returns its path (None when there is nothing to write)."""
    if not rows:
        return None
    path = join(manifest_dir, part_name(rows))
    atomic_write(fs, path, table_bytes(to_table(rows)))
    return path


def remove_superseded(fs: fsspec.AbstractFileSystem, manifest_dir: str) -> int:
    """Drop rows that lost to another row of the same (source_uri, config_sha256).

    Happens after ``--retry-errors`` (the old error row loses to the new row), after ingestion
    re-processed changed bytes, or after a crash that let a straggling worker commit a photo twice.
    Each affected part is rewritten atomically without the losing rows (deleted when nothing is
    left). A losing row's protected image that no current row lists is deleted too: when the new
    bytes of a changed photo fail, the old photo's protection must not stay behind as an unlisted
    file. Returns the number of rows removed.
    """
    index = read_manifest(fs, manifest_dir, (*INDEX_COLUMNS, "output_uri"), with_part=True)
    if index.num_rows == 0:
        return 0
    index = index.append_column("_row", pa.array(_row_numbers(index["part"].to_pylist()), pa.int64()))
    kept = winners(index)
    if kept.num_rows == index.num_rows:
        return 0
    keep_ids = set(zip(kept["part"].to_pylist(), kept["_row"].to_pylist()))
    listed = set(kept["output_uri"].to_pylist())
    losers: dict[str, dict[int, tuple[str, str]]] = {}
    orphans: set[str] = set()
    for part, row, uri, config, output in zip(index["part"].to_pylist(), index["_row"].to_pylist(),
                                              index["source_uri"].to_pylist(), index["config_sha256"].to_pylist(),
                                              index["output_uri"].to_pylist()):
        if (part, row) not in keep_ids:
            losers.setdefault(part, {})[row] = (uri, config)
            if output and output not in listed:
                orphans.add(output)
    removed = sum(drop_rows(fs, part, rows) for part, rows in losers.items())
    for uri in sorted(orphans):
        try:
            fs.rm(unescape_name(uri))
        except FileNotFoundError:
            continue
        logger.info("removed %s: its row was superseded and no current row lists it", uri)
    logger.info("manifest: removed %d superseded row(s) from %d part(s)", removed, len(losers))
    return removed


def drop_rows(fs: fsspec.AbstractFileSystem, part: str, rows: Mapping[int, tuple[str, str]]) -> int:
    """Rewrite one part atomically without the rows at these positions (deleted when nothing is
    left), used by the distributed clean-up (job/planning.py). A position whose (source_uri,
    config_sha256) no longer matches the row there (the part was rewritten since) is left alone, so
    a retried rewrite removes nothing twice. Returns the number of rows removed."""
    try:
        table = read_part(fs, part)
    except FileNotFoundError:
        return 0
    uris, configs = table["source_uri"].to_pylist(), table["config_sha256"].to_pylist()
    drop = [i for i, ident in rows.items() if i < table.num_rows and (uris[i], configs[i]) == tuple(ident)]
    if not drop:
        return 0
    mask = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), pa.array(drop, pa.int64())))
    remaining = table.filter(mask)
    if remaining.num_rows:
        atomic_write(fs, part, table_bytes(remaining))
    else:
        fs.rm(part)
    return len(drop)


def _row_numbers(parts: list[str]) -> list[int]:
    """Position of each row inside its part (rows of one part are contiguous in read order)."""
    numbers, last, n = [], None, 0
    for part in parts:
        n = n + 1 if part == last else 0
        numbers.append(n)
        last = part
    return numbers


def compact(fs: fsspec.AbstractFileSystem, manifest_dir: str, *, rows_per_part: int | None = None,
            min_parts: int | None = None) -> tuple[int, int]:
    """Merge the manifest's small parts (< ``rows_per_part`` rows) into parts of ``rows_per_part`` rows
    when there are at least ``min_parts`` of them; returns (small parts read, parts written).
    Defaults: COMPACT_ROWS and COMPACT_MIN_PARTS. Below ``min_parts`` parts in all it only lists.

    Safe beside a running job: merged parts are committed before their sources are deleted, so a
    reader sees every row at least once, and rows seen twice (a crash in between, or a batch that
    Ray retries after compaction and commits its old part again) have the same identity and are
    resolved by winners() / remove_superseded. Parts committed while compacting are left alone.
    """
    rows_per_part = COMPACT_ROWS if rows_per_part is None else rows_per_part
    min_parts = COMPACT_MIN_PARTS if min_parts is None else min_parts
    if rows_per_part < 1 or min_parts < 2:
        raise ValueError(f"rows_per_part must be >= 1 and min_parts >= 2, got {rows_per_part}, {min_parts}")
    if len(list_parts(fs, manifest_dir)) < min_parts:   # the usual case after a run: nothing to read
        return 0, 0
    counts = read_manifest(fs, manifest_dir, ["source_uri"], with_part=True)["part"].value_counts()
    small = sorted(str(c["values"]) for c in counts.to_pylist() if c["counts"] < rows_per_part)
    if len(small) < min_parts:
        return 0, 0
    table = pa.concat_tables([read_part(fs, path) for path in small])
    table = table.sort_by([("source_uri", "ascending"), ("finished_at", "ascending")])
    written = []
    for start in range(0, table.num_rows, rows_per_part):
        chunk = table.slice(start, rows_per_part)
        path = join(manifest_dir, part_name(chunk.select(["config_sha256", "source_uri", "source_sha256"]).to_pylist()))
        atomic_write(fs, path, table_bytes(chunk))
        written.append(path)
    for path in set(small) - set(written):
        fs.rm(path)
    logger.info("manifest: compacted %d small part(s), %d row(s), into %d part(s)", len(small), table.num_rows,
                len(written))
    return len(small), len(written)
