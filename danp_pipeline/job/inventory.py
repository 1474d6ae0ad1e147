"""Input lists: which files a ``--input-list`` names, in which format, read by Ray Data.

A list is a Parquet, CSV (with a header) or JSON-lines file, or a folder of them, or an S3
Inventory report given by its ``manifest.json``: the manifest names the report's data files in its
``destinationBucket`` (``files[].key``), their ``fileFormat`` (CSV or Parquet here; ORC is refused)
and, for CSV, the columns (``fileSchema``: ``Bucket, Key, Size, ETag…``, read as the Parquet
reports name them). CSV reports have no header and URL-encode their keys. job/listing.py turns
the rows into listing rows.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray

from .. import storage

logger = logging.getLogger(__name__)

LIST_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "json", ".jsonl.gz": "json",
                 ".json": "json", ".ndjson": "json"}
INVENTORY_MANIFEST = "manifest.json"


#: Rows per table a list-reading task yields: its memory is bounded by one batch, not by one file.
LIST_READ_ROWS = 131_072
#: Bytes per block the CSV and JSON-lines readers parse at a time (about LIST_READ_ROWS short rows).
LIST_READ_BYTES = 16 << 20


def read_list(uri: str, options: Mapping[str, Any], num_cpus: float) -> tuple[ray.data.Dataset, bool]:
    """The list's files as a Ray Dataset (read in parallel by Ray tasks, never on the driver), and
    whether its keys are URL-encoded (S3 Inventory CSV).

    The driver learns only which files make up the list (a folder's listing or the manifest's
    ``files``); one Ray task per file streams it in tables of :data:`LIST_READ_ROWS` rows. (Ray Data's
    own ``read_parquet`` put all of a small list's files in one read task and costs seconds of
    start-up on a fresh cluster: benchmarks/listing_scale.py.)"""
    fs, path = storage.filesystem(uri, options)
    if posixpath.basename(path) == INVENTORY_MANIFEST:
        fmt, files, names = _inventory_files(fs, path)
    else:
        found = [path] if storage.retrying(fs.isfile, path, what=f"reading {uri}") else \
            sorted(p for p in storage.retrying(fs.find, path, what=f"listing {uri}") if _format(p))
        if not found:
            raise ValueError(f"input list {uri!r}: no .parquet, .csv or .jsonl files found")
        formats = {_format(p) for p in found}
        if len(formats) != 1 or None in formats:
            raise ValueError(f"input list {uri!r}: expected files of one format (.parquet, .csv, .jsonl), "
                             f"got {sorted(map(str, formats))}")
        fmt, files, names = formats.pop(), found, None
    logger.info("input list %s: %d %s file(s)", uri, len(files), fmt)
    reader = _ListReader(uri, dict(options), fmt, names)
    ds = ray.data.from_items([{"list_file": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(reader, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus), names is not None


class _ListReader:
    """Ray task body: the rows of each list file named in the batch, as Arrow tables. A file with no
    rows yields one empty table with its columns (listing turns it into a placeholder row)."""

    def __init__(self, uri: str, options: dict[str, Any], fmt: str, names: list[str] | None) -> None:
        self.uri, self.options, self.fmt, self.names = uri, options, fmt, names

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        fs = storage.filesystem(self.uri, self.options)[0]
        for path in batch["list_file"].to_pylist():
            with storage.retrying(fs.open, path, "rb", compression="infer" if self.fmt != "parquet" else None,
                                  what=f"reading input list file {path}") as f:
                yield from self._tables(f, path)

    def _tables(self, f: Any, path: str) -> Iterator[pa.Table]:
        if self.fmt == "parquet":
            parquet = pq.ParquetFile(f)
            batches, schema = parquet.iter_batches(batch_size=LIST_READ_ROWS), parquet.schema_arrow
        elif self.fmt == "json":   # JSON lines
            try:
                stream = pajson.open_json(f, read_options=pajson.ReadOptions(block_size=LIST_READ_BYTES))
                batches, schema = stream, stream.schema
            except pa.ArrowInvalid as exc:   # Arrow refuses a JSON-lines file without a line
                if "Empty JSON" not in str(exc):
                    raise
                batches, schema = [], pa.schema([])
        else:
            text = {n: pa.string() for n in self.names or ("uri", "key", "etag", "prompts")}
            stream = pacsv.open_csv(
                f, read_options=pacsv.ReadOptions(column_names=self.names, block_size=LIST_READ_BYTES),
                convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=True))
            batches, schema = stream, stream.schema
        empty = True
        for record_batch in batches:
            if record_batch.num_rows:
                empty = False
                yield pa.Table.from_batches([record_batch])
        if empty:
            logger.info("input list file %s has no rows", path)
            yield schema.empty_table()


def _format(path: str) -> str | None:
    name = path.lower()
    return next((fmt for suffix, fmt in LIST_SUFFIXES.items() if name.endswith(suffix)), None)


def _inventory_files(fs: Any, path: str) -> tuple[str, list[str], list[str] | None]:
    """(format, data file paths, CSV column names) of an S3 Inventory manifest.json."""
    manifest = storage.json_object(storage.retrying(fs.cat_file, path, what=f"reading {path}").decode(),
                                   f"S3 Inventory manifest {path!r}")
    fmt = str(manifest.get("fileFormat", "")).lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"S3 Inventory {path!r}: fileFormat {manifest.get('fileFormat')!r} is not supported "
                         "(CSV or Parquet)")
    bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1]
    files = [f"{bucket}/{f['key']}" for f in manifest.get("files") or []]
    if not bucket or not files:
        raise ValueError(f"S3 Inventory {path!r} names no destinationBucket or no files")
    names = [_snake(n) for n in str(manifest.get("fileSchema", "")).split(",")] if fmt == "csv" else None
    if names is not None and "key" not in names:
        raise ValueError(f"S3 Inventory {path!r}: fileSchema has no Key column: {manifest.get('fileSchema')!r}")
    return fmt, files, names


#: S3 Inventory CSV ``fileSchema`` names -> the column names of its Parquet files.
INVENTORY_COLUMNS = {"Bucket": "bucket", "Key": "key", "VersionId": "version_id", "IsLatest": "is_latest",
                     "IsDeleteMarker": "is_delete_marker", "Size": "size", "LastModifiedDate": "last_modified_date",
                     "ETag": "e_tag"}


def _snake(name: str) -> str:
    name = name.strip()
    return INVENTORY_COLUMNS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
