"""Listing: what is under INPUT, as a Ray Dataset that no single process ever holds whole.

Two sources, one row schema (:data:`LISTING_SCHEMA`):

- ``--input-list URI``: Parquet, CSV (with a header) or JSON-lines files of object URIs — a file,
  or a folder of them — read by Ray Data in parallel. Columns: ``uri`` (absolute, under INPUT)
  or ``key`` (relative to INPUT); optional ``size``, ``etag`` and ``prompts`` (a list, a JSON list
  or one prompt). An **S3 Inventory** report is given by its ``manifest.json``: its CSV (gzip, no
  header, keys URL-encoded) or Parquet data files are read the same way (ORC is refused), keeping
  the latest, non-deleted version of each key. Which files, in which format: job/inventory.py.
- otherwise, delimiter fan-out: the driver walks only *directories* down to
  ``list_fanout_depth`` levels; one Ray task lists the files directly in each walked directory and
  one task lists each directory of the last level recursively, streaming its rows in batches.
  (An archive whose keys all sit in one directory gets no fan-out: give it an inventory.)

Every block has at least one row: a listing task that finds nothing yields one placeholder row
whose ``source_uri`` is null (see :func:`_placeholder`); consumers drop those. Rows keep today's
listing semantics: keys relative to INPUT, the prompts sidecar and anything under
OUTPUT left out, ``source_etag`` from the listing (``etag:…`` / ``mtime:…``). A listed URI that is
not under INPUT cannot be named under OUTPUT: it becomes a row with ``read_error`` set, so it ends
as an ``error`` manifest row like any unreadable object.

Local entries that are not regular files get a row each too (:func:`entry`): a symlink whose target
is a regular file inside INPUT (its real path under INPUT's real path) is followed — its row is named
after the link, ``path`` is the target's real path, size and mtime are the target's — and any other
symlink (to a file outside INPUT, to a directory, dangling) or FIFO, socket or device becomes a row
with ``read_error`` saying why: it is never opened.

File names that are not UTF-8 (bytes that os.listdir hands over as surrogates) are kept byte-exact
by an escape: in ``source_key``, ``source_uri`` and ``path`` such a byte is written ``\\xHH`` (two
lower-case hex digits) and a backslash ``\\\\`` (storage.escape_name; UTF-8 names and object-store keys
without backslashes are unchanged). The reader unescapes ``path`` to read the exact file and
Output.image_path unescapes the key to name its output (byte-exact on a local OUTPUT); a rerun lists
the same escaped URI and skips it. Input lists and sidecar keys name such objects in the escaped form.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import stat
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import ray
from fsspec.implementations.local import LocalFileSystem

from .. import storage
from ..config import PipelineConfig
from . import inventory

logger = logging.getLogger(__name__)

LISTING_SCHEMA = pa.schema([
    ("source_key", pa.string()),
    ("source_uri", pa.string()),
    ("path", pa.string()),
    ("size", pa.int64()),
    ("prompts", pa.list_(pa.string())),
    ("source_etag", pa.string()),
    ("read_error", pa.string()),
])
#: Fan-out listing tasks are I/O-bound (LIST calls): a quarter CPU each (as the job's CPU tasks,
#: PipelineConfig.cpus_per_task).
LIST_CPUS = 0.25
#: Reading a list file is decoding Parquet/CSV/JSON: one CPU per file. (At a quarter CPU, a fresh
#: 2-CPU cluster started up to 8 worker processes for 8 list files, and 1 M keys took 2-11 s instead
#: of 2.5-4: benchmarks/listing_scale.py.)
LIST_FILE_CPUS = 1.0
#: Rows per batch a fan-out listing task yields (its memory is bounded by one directory's listing).
LIST_BATCH_ROWS = 10_000


def dataset(cfg: PipelineConfig, prompts: Mapping[str, tuple[str, ...]], counter: Any = None) -> ray.data.Dataset:
    """Every object under INPUT (from ``cfg.input_list`` or by fan-out) as LISTING_SCHEMA rows."""
    scope = _Scope.of(cfg, prompts, counter)
    if cfg.input_list:
        ds, url_encoded = inventory.read_list(cfg.input_list, cfg.storage_options, LIST_FILE_CPUS)
        return ds.map_batches(_normalize, batch_format="pyarrow", num_cpus=LIST_FILE_CPUS,
                              fn_kwargs={"scope": scope, "url_encoded": url_encoded})
    units = fan_out_units(cfg.input_uri, cfg.storage_options, cfg.list_fanout_depth, scope.excluded)
    logger.info("listing %s in %d task(s) (fan-out depth %d)", cfg.input_uri, len(units), cfg.list_fanout_depth)
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    return ds.map_batches(_list_units, batch_size=1, batch_format="pyarrow", num_cpus=LIST_CPUS,
                          fn_kwargs={"scope": scope})


class _Scope:
    """What every listing task needs: INPUT, what to leave out, the sidecar, the progress counter."""

    def __init__(self, input_uri: str, root: str, excluded: list[str], options: dict[str, Any],
                 prompts: Mapping[str, tuple[str, ...]], counter: Any) -> None:
        self.input_uri, self.root, self.excluded, self.options = input_uri, root, excluded, options
        self.prompts, self.counter = dict(prompts), counter

    @classmethod
    def of(cls, cfg: PipelineConfig, prompts: Mapping[str, tuple[str, ...]], counter: Any) -> "_Scope":
        root = storage.filesystem(cfg.input_uri, cfg.storage_options)[1]
        excluded = [storage.to_uri(*storage.filesystem(cfg.output_uri, cfg.storage_options))]
        if cfg.prompts_file:
            excluded.append(storage.to_uri(*storage.filesystem(cfg.prompts_file, cfg.storage_options)))
        return cls(cfg.input_uri, root, excluded, cfg.storage_options, prompts, counter)

    def fs(self) -> Any:
        return storage.filesystem(self.input_uri, self.options)[0]

    def root_uri(self, fs: Any) -> str:
        return storage.to_uri(fs, self.root).rstrip("/")

    def real_root(self, fs: Any) -> str | None:
        """INPUT's real path on a local filesystem (where symlinks may point), else None."""
        return os.path.realpath(self.root) if isinstance(fs, LocalFileSystem) else None

    def finish(self, table: pa.Table) -> pa.Table:
        """Drop excluded URIs and directory markers, attach sidecar prompts, count what is listed."""
        uri = table["source_uri"]
        keep = pc.invert(pc.fill_null(pc.ends_with(table["source_key"], "/"), False))
        for ex in self.excluded:
            keep = pc.and_(keep, pc.invert(pc.or_(pc.equal(uri, ex), pc.starts_with(uri, ex.rstrip("/") + "/"))))
        table = table.filter(keep)
        if self.prompts and table.num_rows:
            own = table["prompts"].to_pylist()
            keys = table["source_key"].to_pylist()
            merged = [p if p else list(self.prompts.get(k, ())) for p, k in zip(own, keys)]
            table = table.set_column(table.schema.get_field_index("prompts"), "prompts",
                                     pa.array(merged, pa.list_(pa.string())))
            matched = sorted({k for k in keys if k in self.prompts})
            if matched and self.counter is not None:
                self.counter.matched.remote(matched)
        if self.counter is not None and table.num_rows:
            self.counter.add.remote(listed=table.num_rows)
        return table.select(LISTING_SCHEMA.names).cast(LISTING_SCHEMA)


# -- fan-out listing ---------------------------------------------------------------------------------

def fan_out_units(input_uri: str, options: Mapping[str, Any], depth: int, excluded: list[str]) -> list[dict]:
    """The listing tasks: ``{"kind": "file"|"files"|"tree", "dir": path}``. Walks directories only."""
    fs, root = storage.filesystem(input_uri, options)
    fs.invalidate_cache(root)
    if storage.retrying(fs.isfile, root, what=f"listing {root}"):
        return [{"kind": "file", "dir": root}]
    units, level = [], [root]
    for _ in range(depth):
        below = []
        for directory in level:
            units.append({"kind": "files", "dir": directory})
            entries = storage.retrying(fs.ls, directory, detail=True, what=f"listing {directory}")
            below += sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory"
                            and storage.to_uri(fs, e["name"].rstrip("/")) not in excluded)
        level = below
    # A unit travels through Arrow: a directory name that is not UTF-8 goes escaped.
    return [{**u, "dir": storage.escape_name(u["dir"])}
            for u in units + [{"kind": "tree", "dir": d} for d in level]]


def entry(fs: Any, key: str, path: str, info: Mapping[str, Any], real_root: str | None) -> dict[str, Any]:
    """The LISTING_SCHEMA row (without prompts) of one listed entry at ``path`` (``key`` relative to
    INPUT, both as the filesystem gives them): escaped, and judged when it is not a regular file."""
    read_path, error = path, None
    if info.get("type", "file") not in ("file", "directory"):
        read_path, info, error = _judge(path, info, real_root)
    return {"source_key": storage.escape_name(key), "source_uri": storage.to_uri(fs, path),
            "path": storage.escape_name(read_path) if error is None else None,
            "size": int(info.get("size") or 0), "prompts": [],
            "source_etag": storage.object_version(info), "read_error": error}


def _judge(path: str, info: Mapping[str, Any], real_root: str | None) -> tuple[str, Mapping[str, Any], str | None]:
    """(path to read, info, None) for a symlink to a regular file inside INPUT (``real_root``);
    (path, info, why it is not read) for anything else that is not a file or a directory."""
    if not info.get("islink") or real_root is None:
        return path, info, "not a regular file (a FIFO, socket or device): not read"
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except OSError as exc:
        where = storage.escape_name(str(info.get("destination") or "?"))
        return path, info, f"dangling symlink (to {where}): {exc.strerror or type(exc).__name__}: not read"
    if stat.S_ISDIR(st.st_mode):
        return path, info, "symlink to a directory: not followed (files inside INPUT are listed where they are)"
    if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
        return path, info, "symlink to a file outside INPUT: not read"
    if not stat.S_ISREG(st.st_mode):
        return path, info, "symlink to something that is not a regular file: not read"
    return target, {**info, "type": "file", "size": st.st_size, "mtime": st.st_mtime}, None


def _list_units(batch: pa.Table, *, scope: _Scope) -> Iterator[pa.Table]:
    """Ray task: list each unit of the batch, yielding LISTING_SCHEMA tables of ≤ LIST_BATCH_ROWS rows."""
    fs = scope.fs()
    prefix = scope.root.rstrip("/") + "/"
    real_root = scope.real_root(fs)
    listed = False
    for unit in batch.to_pylist():
        rows = []
        unit = {**unit, "dir": storage.unescape_name(unit["dir"])}
        for path, info in _unit_entries(fs, unit):
            key = posixpath.basename(path) if unit["kind"] == "file" else path[len(prefix):]
            rows.append(entry(fs, key, path, info, real_root))
            if len(rows) >= LIST_BATCH_ROWS:
                table, rows = scope.finish(pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)), []
                if table.num_rows:
                    listed = True
                    yield table
        table = scope.finish(pa.Table.from_pylist(rows, schema=LISTING_SCHEMA))
        if table.num_rows:
            listed = True
            yield table
    if not listed:
        yield _placeholder()


def _unit_entries(fs: Any, unit: dict) -> Iterator[tuple[str, dict]]:
    directory = unit["dir"]
    fs.invalidate_cache(directory)  # workers keep filesystem instances (and their listing caches) across runs
    if unit["kind"] == "file":
        yield directory, storage.retrying(fs.info, directory, what=f"listing {directory}")
    elif unit["kind"] == "files":
        entries = storage.retrying(fs.ls, directory, detail=True, what=f"listing {directory}")
        for info in sorted((e for e in entries if e.get("type", "file") != "directory"), key=lambda e: e["name"]):
            if not (info["name"].endswith("/") and not info.get("size")):
                yield info["name"], info
    else:
        for _, path, info in storage.list_objects(fs, directory, others=True):
            yield path, info


# -- input lists and S3 Inventory ------------------------------------------------------------------

def _normalize(batch: pa.Table, *, scope: _Scope, url_encoded: bool) -> pa.Table:
    """Ray task: a batch of list rows (user list or inventory) as LISTING_SCHEMA rows (vectorized,
    but for URL-decoding, sidecar prompts and URIs not already in canonical form)."""
    if not batch.num_rows:          # an empty list file
        return _placeholder()
    names = set(batch.column_names)
    if "is_latest" in names:        # a versioned inventory: current versions only, no delete markers
        batch = batch.filter(pc.equal(_boolean(batch["is_latest"]), True))
    if "is_delete_marker" in names:
        batch = batch.filter(pc.invert(pc.fill_null(_boolean(batch["is_delete_marker"]), False)))
    fs = scope.fs()
    root_uri = scope.root_uri(fs)
    prefix, root = root_uri + "/", storage.escape_name(scope.root.rstrip("/"))
    if "bucket" in names and "key" in names:   # inventory rows: bucket + key (URL-encoded in CSV)
        keys = _text(batch["key"])
        if url_encoded:
            keys = pa.array([unquote_plus(k) if k else k for k in keys.to_pylist()], pa.string())
        keys = pc.replace_substring(keys, "\\", "\\\\")    # escaped as the fan-out lists them
        uris = pc.binary_join_element_wise("s3://", _text(batch["bucket"]), "/", keys, "")
    elif "uri" in names:
        uris = _text(batch["uri"])
        odd = pc.invert(pc.fill_null(pc.starts_with(uris, prefix), True))   # not already canonical
        if pc.any(odd).as_py():
            uris = pa.array([_canonical(fs, u) if o else u for u, o in zip(uris.to_pylist(), odd.to_pylist())],
                            pa.string())
    elif "key" in names:
        uris = pc.binary_join_element_wise(prefix, pc.utf8_ltrim(_text(batch["key"]), "/"), "")
    else:
        raise ValueError(f"input list rows need a 'uri' or a 'key' column, got {sorted(names)}")
    named = pc.fill_null(pc.greater(pc.utf8_length(uris), 0), False)   # an empty line names no object
    batch, uris = batch.filter(named), pc.filter(uris, named)
    inside = pc.and_(pc.starts_with(uris, prefix), pc.greater(pc.utf8_length(uris), len(prefix)))
    keys = pc.if_else(inside, pc.utf8_slice_codeunits(uris, len(prefix)), uris)
    error = f"listed object is not under INPUT ({root_uri}): cannot name its output"
    table = pa.table({
        "source_key": keys, "source_uri": uris,
        "path": pc.if_else(inside, pc.binary_join_element_wise(root, keys, "/"), pa.scalar(None, pa.string())),
        "size": _sizes(batch), "prompts": _prompt_lists(batch), "source_etag": _etags(batch),
        "read_error": pc.if_else(inside, pa.scalar(None, pa.string()), pa.scalar(error, pa.string())),
    })
    table = scope.finish(table)
    return table if table.num_rows else _placeholder()


def _placeholder() -> pa.Table:
    """One row with ``source_uri`` null, standing for "nothing here": no listing block is ever empty.
    (Ray 2.60 hands a map's empty output on with another schema, and its hash shuffle then fails;
    planning drops these rows.)"""
    return pa.Table.from_pylist([{"prompts": []}], schema=LISTING_SCHEMA)


def _text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.cast(column, pa.string())


def _sizes(batch: pa.Table) -> pa.Array:
    for name in ("size", "Size"):
        if name in batch.column_names:
            column = _text(batch[name]) if not pa.types.is_integer(batch.schema.field(name).type) else \
                batch[name].combine_chunks()
            if pa.types.is_string(column.type):
                column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
            return pc.cast(column, pa.int64())
    return pa.nulls(batch.num_rows, pa.int64())


def _etags(batch: pa.Table) -> pa.Array:
    """``etag:<value>`` (quotes stripped), or the value as is when it already says etag:/mtime:."""
    for name in ("etag", "e_tag", "source_etag"):
        if name in batch.column_names:
            raw = pc.utf8_trim(pc.utf8_trim_whitespace(_text(batch[name])), '"')
            raw = pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
            tagged = pc.or_(pc.starts_with(raw, "etag:"), pc.starts_with(raw, "mtime:"))
            return pc.if_else(tagged, raw, pc.binary_join_element_wise("etag:", raw, ""))
    return pa.nulls(batch.num_rows, pa.string())


def _prompt_lists(batch: pa.Table) -> pa.Array:
    if "prompts" not in batch.column_names:
        return pa.array([[]] * batch.num_rows, pa.list_(pa.string()))
    return pa.array([_prompts(p) for p in batch["prompts"].to_pylist()], pa.list_(pa.string()))


def _boolean(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_boolean(column.type):
        return column
    return pc.equal(pc.utf8_lower(pc.cast(column, pa.string())), "true")


def _canonical(fs: Any, uri: str | None) -> str | None:
    """A listed URI or local path as the canonical URI of the listing (``file:///…``, ``s3://…``)."""
    if not uri:
        return None
    if "://" in uri and not uri.startswith("file://"):
        return uri
    try:  # a trailing "/" (a directory marker) is kept, so that the marker is left out
        return storage.to_uri(fs, fs._strip_protocol(uri)) + ("/" if uri.endswith("/") else "")
    except Exception:  # a malformed entry becomes an error row, not a failed task
        return uri


def _prompts(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return [str(p) for p in json.loads(value)]
            except json.JSONDecodeError:
                pass
        return [value]
    return [str(p) for p in value]
