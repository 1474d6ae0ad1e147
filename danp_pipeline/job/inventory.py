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
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from .. import storage

logger = logging.getLogger(__name__)

LIST_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "json", ".jsonl.gz": "json",
                 ".json": "json", ".ndjson": "json"}
INVENTORY_MANIFEST = "manifest.json"


def read_list(uri: str, options: Mapping[str, Any], num_cpus: float) -> tuple[ray.data.Dataset, bool]:
    """The list's files as a Ray Dataset (read in parallel by Ray tasks, never on the driver), and
    whether its keys are URL-encoded (S3 Inventory CSV)."""
    fs, path = storage.filesystem(uri, options)
    arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
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
    common = {"filesystem": arrow_fs, "num_cpus": num_cpus}
    if fmt == "parquet":
        return ray.data.read_parquet(files, **common), False
    if fmt == "json":
        return ray.data.read_json(files, file_extensions=None, **common), False   # Arrow reads JSON lines
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(column_names=names) if names else pacsv.ReadOptions()
    text = {n: pa.string() for n in names or ("uri", "key", "etag", "prompts")}
    return ray.data.read_csv(files, read_options=read, convert_options=pacsv.ConvertOptions(
        column_types=text, strings_can_be_null=True), **common), names is not None


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
