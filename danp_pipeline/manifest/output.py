"""The output of a run: its layout under OUTPUT, and the manifest's lifecycle in one run.

Every name under OUTPUT is spelled here and nowhere else::

    OUTPUT/
      images/<key>.png          protected photos, named after their input key (its extension kept)
      manifest/part-*.parquet   provenance rows, one part per committed batch (writer.py)
      _attempts/<hash>.json     a photo's attempt in progress (job/worker.py bounds poison photos)
      _ingest.lock              the lease that keeps scheduled runs apart (job/ingest.py)

A run works the manifest in three steps, :meth:`Output.prepare` (drop rows a crashed run left
superseded), :meth:`Output.plan` (what this run must process, from the listing and the current
rows) and :meth:`Output.finish` (drop the rows this run replaced; merge small parts).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa

from .. import storage
from . import ledger, writer
from .provenance import read_manifest, winners

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST_DIR = "manifest"
ATTEMPTS_DIR = "_attempts"
LOCK_NAME = "_ingest.lock"


class Output:
    """One OUTPUT location: where each file goes, and the manifest's prepare → plan → finish."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, root

    @classmethod
    def open(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> "Output":
        return cls(*storage.filesystem(uri, storage_options))

    # -- layout ----------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self.to_uri(self.root)

    @property
    def manifest_dir(self) -> str:
        return storage.join(self.root, MANIFEST_DIR)

    @property
    def images_dir(self) -> str:
        return storage.join(self.root, IMAGES_DIR)

    @property
    def lock_path(self) -> str:
        return storage.join(self.root, LOCK_NAME)

    def image_path(self, key: str) -> str:
        """Where the protected photo of input ``key`` goes; UnsafeKeyError for a key that could escape."""
        return storage.join(self.images_dir, f"{storage.safe_key(key)}.png")

    def attempt_path(self, config_sha: str, source_uri: str) -> str:
        name = hashlib.sha256(f"{config_sha}\0{source_uri}".encode()).hexdigest()[:32]
        return storage.join(storage.join(self.root, ATTEMPTS_DIR), f"{name}.json")

    def to_uri(self, path: str) -> str:
        return storage.to_uri(self.fs, path)

    # -- manifest --------------------------------------------------------------------------------

    def read(self, columns: Iterable[str] | None = None, *, with_part: bool = False) -> pa.Table:
        """Every committed row (duplicates included)."""
        return read_manifest(self.fs, self.manifest_dir, columns, with_part=with_part)

    def current_rows(self) -> list[dict[str, Any]]:
        """The current row of every (source, configuration)."""
        return winners(self.read()).to_pylist()

    def commit(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """Commit a batch's rows as one Parquet part (the commit point of those photos)."""
        return writer.write_part(self.fs, self.manifest_dir, rows)

    def compact(self, *, rows_per_part: int | None = None, min_parts: int | None = None) -> tuple[int, int]:
        return writer.compact(self.fs, self.manifest_dir, rows_per_part=rows_per_part, min_parts=min_parts)

    # -- a run's lifecycle -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Before planning: drop rows that lost to newer ones (a run that crashed before finish())."""
        writer.remove_superseded(self.fs, self.manifest_dir)

    def plan(self, listed: Iterable[dict[str, Any]], config_sha: str, *, retry_errors: bool = False,
             detect_changes: bool = False, prompts: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The listed items this run must process, each with its ``reason`` (ledger.plan)."""
        index = self.read(ledger.LEDGER_COLUMNS)
        return ledger.plan(listed, index, config_sha, retry_errors=retry_errors, detect_changes=detect_changes,
                           prompts=prompts)

    def finish(self, todo: Sequence[Mapping[str, Any]]) -> None:
        """After the job: drop the rows that retried or changed photos replaced, then compact if due."""
        if any(item.get("reason") != "new" for item in todo):
            writer.remove_superseded(self.fs, self.manifest_dir)
        writer.compact(self.fs, self.manifest_dir)   # only once COMPACT_MIN_PARTS small parts piled up
