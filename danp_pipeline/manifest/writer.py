"""Manifest writing: Parquet parts written atomically, rows dropped from them, parts merged.

A part is the commit point of its photos: a photo whose row is in a part is done, a photo whose
row is not will be (re)computed by the next run. The driver commits parts of many rows
(job/committer.py). Parts are named after what they contain,
``part-<sha256(config_sha256, sorted (source URI, source SHA-256)))[:32]>.parquet``, so committing the
same rows again overwrites their part instead of adding a second copy, while the re-protection of
changed bytes gets a new part and its old row is superseded: job/planning.py finds such rows and
drops them with :func:`drop_rows`. :func:`compact` merges small parts into parts of up to
``COMPACT_ROWS`` rows.
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
from ..storage import atomic_write, join
from .provenance import (
    list_parts,
    read_manifest,
    read_part,
    to_table,
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


def compact(fs: fsspec.AbstractFileSystem, manifest_dir: str, *, rows_per_part: int | None = None,
            min_parts: int | None = None) -> tuple[int, int]:
    """Merge the manifest's small parts (< ``rows_per_part`` rows) into parts of ``rows_per_part`` rows
    when there are at least ``min_parts`` of them; returns (small parts read, parts written).
    Defaults: COMPACT_ROWS and COMPACT_MIN_PARTS. Below ``min_parts`` parts in all it only lists.

    Safe beside a running job: merged parts are committed before their sources are deleted, so a
    reader sees every row at least once, and rows seen twice (a crash in between, or a batch that
    Ray retries after compaction and commits its old part again) have the same identity and are
    resolved by winners() and the planner's clean-up (job/planning.py). Parts committed while compacting are left alone.
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
