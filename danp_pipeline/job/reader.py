"""Reading: read and hash each planned object's bytes, then decode them for the editor (CPU tasks).

:func:`read_objects` reads the bytes of each planned object, hashing them as they arrive; an object
that cannot be read becomes a row with ``read_error`` set instead of an exception. :func:`decode_objects`
decodes each photo (EXIF orientation, modes, bit depth, metadata) into a pickled
``imaging.codec.DecodedImage`` that the editor actors protect, resolves its prompts, and turns a
failure into the row's ``error``. A decoder that kills its process (a native crash on a hostile file)
is bounded like the editor: an attempt record around each decode (job/attempts.py).

Prompts sidecar (``--prompts-file``): a JSON object ``{"key": "prompt" | ["prompt", …]}`` or a CSV
file with a header ``key,prompt`` (several rows per key allowed). Keys are relative to INPUT. A
photo whose key is not in the sidecar gets the ``--prompt`` values, or ``DEFAULT_PROMPTS`` when
none were given. A sidecar stored under INPUT is not treated as a photo.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from .. import storage
from ..config import PipelineConfig
from ..imaging.codec import decode_image
from ..manifest.provenance import utcnow
from .attempts import AttemptRecords
from .identity import Run

logger = logging.getLogger(__name__)

READ_SCHEMA = pa.schema([
    ("source_key", pa.string()),
    ("source_uri", pa.string()),
    ("path", pa.string()),
    ("size", pa.int64()),
    ("prompts", pa.list_(pa.string())),
    ("data", pa.large_binary()),
    ("source_sha256", pa.string()),
    ("source_bytes", pa.int64()),
    ("read_error", pa.string()),
    ("read_at", pa.timestamp("us", tz="UTC")),
    ("source_etag", pa.string()),
    ("reason", pa.string()),
    ("previous_sha256", pa.string()),
])
#: What the editor actors receive: the read row, the decoded photo (pickled DecodedImage), its
#: resolved prompts, and the reason it cannot be protected (read or decode), if any.
DECODED_SCHEMA = pa.schema([*READ_SCHEMA, ("decoded", pa.large_binary()), ("error", pa.string())])


def max_source_bytes(max_pixels: int) -> int:
    """Objects larger than this are refused unread: 8 bytes per allowed pixel (16-bit RGBA,
    uncompressed) plus 1 MiB of headers and metadata."""
    return 8 * max_pixels + 2**20


def load_prompts_file(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, tuple[str, ...]]:
    """Parse a JSON or CSV prompts sidecar into {key: prompts}; ValueError names what is wrong."""
    fs, path = storage.filesystem(uri, storage_options)
    try:
        text = fs.cat_file(path).decode("utf-8-sig")
    except Exception as exc:
        raise ValueError(storage.scrub(f"cannot read prompts file {uri!r}: {type(exc).__name__}: {exc}",
                                       storage_options)) from exc
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        mapping = _prompts_from_json(uri, text)
    else:
        mapping = _prompts_from_csv(uri, text)
    result = {}
    for key, prompts in mapping.items():
        key = _normalize_key(key)
        prompts = tuple(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(f"prompts file {uri!r}: key {key!r} needs non-empty prompt strings, got {list(prompts)!r}")
        result[key] = result.get(key, ()) + prompts
    return result


def _prompts_from_json(uri: str, text: str) -> dict[str, list[str]]:
    data = storage.json_object(text, f"prompts file {uri!r}", " {key: prompt or [prompts]}")
    return {str(k): [v] if isinstance(v, str) else list(v) if isinstance(v, list) else [v] for k, v in data.items()}


def _prompts_from_csv(uri: str, text: str) -> dict[str, list[str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"key", "prompt"} <= set(reader.fieldnames):
        raise ValueError(f"prompts file {uri!r}: CSV needs a header with columns key,prompt; got {reader.fieldnames}")
    mapping: dict[str, list[str]] = {}
    for line in reader:
        mapping.setdefault(line["key"] or "", []).append(line["prompt"] or "")
    return mapping


def _normalize_key(key: str) -> str:
    while key.startswith("./"):
        key = key[2:]
    return key


def list_inputs(config: PipelineConfig,
                prompts: Mapping[str, tuple[str, ...]] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one item per file under INPUT, minus the prompts sidecar and anything under OUTPUT."""
    from .listing import entry

    fs, root = storage.filesystem(config.input_uri, config.storage_options)
    excluded = _excluded_roots(config)
    prompts = prompts or {}
    real_root = os.path.realpath(root) if isinstance(fs, LocalFileSystem) else None
    for key, path, info in storage.list_objects(fs, root, others=True):
        row = entry(fs, key, path, info, real_root)
        uri = row["source_uri"]
        if any(uri == ex or uri.startswith(ex.rstrip("/") + "/") for ex in excluded):
            continue
        yield {**row, "prompts": list(prompts.get(row["source_key"], ()))}


def _excluded_roots(config: PipelineConfig) -> list[str]:
    excluded = []
    out_fs, out_root = storage.filesystem(config.output_uri, config.storage_options)
    excluded.append(storage.to_uri(out_fs, out_root))
    if config.prompts_file:
        side_fs, side_path = storage.filesystem(config.prompts_file, config.storage_options)
        excluded.append(storage.to_uri(side_fs, side_path))
    return excluded


def read_objects(batch: pa.Table, *, input_uri: str, storage_options: Mapping[str, Any], max_pixels: int) -> pa.Table:
    """Ray task: read and hash every object of the batch; failures become ``read_error``."""
    fs, root = storage.filesystem(input_uri, storage_options)
    real_root = os.path.realpath(root) if isinstance(fs, LocalFileSystem) else None
    limit = max_source_bytes(max_pixels)
    rows = []
    for item in batch.to_pylist():
        if item.get("read_error"):   # refused by the listing (an object outside INPUT): never read
            rows.append({**item, "read_at": utcnow()})
            continue
        path = storage.unescape_name(item["path"])   # the exact name (listing.py: the escape)
        try:  # never touch an object whose key could escape OUTPUT (or that a client may normalize)
            storage.safe_key(storage.unescape_name(item["source_key"]))
            _inside(real_root, path)
        except storage.UnsafeKeyError as exc:
            rows.append({**item, "read_error": str(exc), "read_at": utcnow()})
            continue
        row = {**item, **_read_one(fs, path, item.get("size") or 0, limit, storage_options)}
        previous = item.get("previous_sha256")
        if previous and row.get("source_sha256") == previous:
            logger.info("%s: listing changed but bytes did not (sha256 %s); nothing to redo", item["source_key"],
                        previous[:12])
            continue
        if previous and row.get("source_sha256"):
            row["reason"] = f"changed (sha256 {previous[:12]}→{row['source_sha256'][:12]})"
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def _inside(real_root: str | None, path: str) -> None:
    """On a local filesystem, refuse a path that resolves outside INPUT (a symlink swapped in since
    the listing, or a listed path through a linked directory): nothing outside INPUT is read."""
    if real_root is None:
        return
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise storage.UnsafeKeyError("resolves to a file outside INPUT (through a symlink): not read")


def _read_one(fs: Any, path: str, listed_size: int, limit: int, storage_options: Mapping[str, Any]) -> dict[str, Any]:
    read_at = utcnow()
    if listed_size > limit:
        return {"read_error": f"object too large: {listed_size} bytes > limit {limit} (from --max-pixels)",
                "source_bytes": listed_size, "read_at": read_at}
    hasher = hashlib.sha256()
    try:
        data = storage.read_hashed(fs, path, hasher)
    except FileNotFoundError:
        return {"read_error": "object vanished between listing and reading", "read_at": read_at}
    except Exception as exc:
        reason = storage.scrub(f"read failed: {type(exc).__name__}: {exc}", storage_options)
        return {"read_error": reason, "read_at": read_at}
    return {"data": data, "source_sha256": hasher.hexdigest(), "source_bytes": len(data), "read_at": read_at}


def decode_objects(batch: pa.Table, *, run: Run) -> pa.Table:
    """Ray task: decode every read object of the batch for the editor; failures become ``error``."""
    cfg = run.config
    attempts = AttemptRecords(run.output, run.config_sha256, run.run_id, cfg.storage_options, stage="decode")
    rows = []
    for item in batch.to_pylist():
        row = {**item, "prompts": list(item.get("prompts") or []) or list(run.prompts), "decoded": None,
               "error": item.get("read_error")}
        if row["error"] is None:
            row["error"] = _decode_one(row, run, attempts)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def _decode_one(row: dict[str, Any], run: Run, attempts: AttemptRecords) -> str | None:
    """Decode ``row["data"]`` into ``row["decoded"]``; the reason it cannot be protected, or None."""
    uri, key = row["source_uri"], row["source_key"]
    try:
        run.output.image_path(key)                 # refuses a key that could escape OUTPUT
    except Exception as exc:
        return storage.reason(exc, run.config.storage_options)
    died, given_up = attempts.give_up(uri, run.config.max_photo_attempts, "decoding",
                                      "a decoder crash or out of memory")
    if given_up:
        return given_up
    attempts.record(uri, key, died, utcnow().isoformat())
    try:
        row["decoded"] = pickle.dumps(decode_image(row["data"], max_pixels=run.config.max_pixels), protocol=5)
        error = None
    except Exception as exc:  # every failure becomes this photo's error row
        error = storage.reason(exc, run.config.storage_options)
    attempts.forget(uri)      # not in a finally: a dying process must leave the record behind
    return error

