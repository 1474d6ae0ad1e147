"""The output of a run: its layout under OUTPUT, its manifest read and committed.

Every name under OUTPUT is spelled here and nowhere else::

    OUTPUT/
      images/<name>             protected photos, named after their input key (output_name())
      manifest/part-*.parquet   provenance rows, in parts the driver commits (writer.py, job/committer.py)
      _attempts/<hash>.json     a photo's attempt in progress (job/attempts.py bounds poison photos)
      _run.lock                 the lease that keeps runs on one OUTPUT apart (storage/lease.py)
      _status.json              the progress of the current or last run (job/progress.py)
      report/index.html         the run report, thumbnails beside it (report/)

A run plans against the manifest in Ray tasks (job/planning.py, since archives outgrow the driver's
memory): the listing joined with the current rows (manifest.ledger decides each object), then the
superseded rows dropped and small parts merged. This object reads and commits rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from .. import storage
from ..config import FORMAT_EXTENSIONS
from . import writer
from .provenance import read_manifest, winners

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST_DIR = "manifest"
ATTEMPTS_DIR = "_attempts"
LOCK_NAME = "_run.lock"
STATUS_NAME = "_status.json"
REPORT_DIR = "report"


class Output:
    """One OUTPUT location: where each file goes; its manifest read and committed."""

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

    @property
    def status_path(self) -> str:
        return storage.join(self.root, STATUS_NAME)

    def image_path(self, key: str, fmt: str = "png") -> str:
        """Where the protected photo of input ``key`` (escaped, as listed) goes in format ``fmt``;
        UnsafeKeyError for a key that could escape OUTPUT. On a local OUTPUT the name is the key's
        exact bytes (storage.unescape_name); an object store, whose keys are UTF-8, gets the escaped key."""
        exact = storage.safe_key(storage.unescape_name(key))
        return storage.join(self.images_dir, output_name(exact if isinstance(self.fs, LocalFileSystem) else key, fmt))

    def relative(self, path: str) -> str:
        """``path`` (under OUTPUT) relative to OUTPUT, escaped: what a row records as ``output_key``."""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{self.to_uri(path)} is not under OUTPUT {self.uri}")
        return storage.escape_name(path[len(prefix):])

    def located(self, output_key: str | None, output_uri: str | None) -> str | None:
        """The URI of a row's output under *this* OUTPUT: from ``output_key`` (relative, so that an
        OUTPUT copied or moved elsewhere checks its own files), else the recorded ``output_uri``
        (rows written before ``output_key`` existed)."""
        return f"{self.uri.rstrip('/')}/{output_key}" if output_key else output_uri

    def path_of(self, uri: str) -> str:
        """The filesystem path of an (escaped) URI a row or :meth:`located` gives."""
        return self.fs._strip_protocol(storage.unescape_name(uri))

    @property
    def report_dir(self) -> str:
        return storage.join(self.root, REPORT_DIR)

    @property
    def attempts_dir(self) -> str:
        return storage.join(self.root, ATTEMPTS_DIR)

    def attempt_path(self, config_sha: str, source_uri: str) -> str:
        name = hashlib.sha256(f"{config_sha}\0{source_uri}".encode()).hexdigest()[:32]
        return storage.join(self.attempts_dir, f"{name}.json")

    def to_uri(self, path: str) -> str:
        return storage.to_uri(self.fs, path)

    # -- manifest --------------------------------------------------------------------------------

    def read(self, columns: Iterable[str] | None = None, *, with_part: bool = False,
             configs: dict[str, str] | None = None) -> pa.Table:
        """Every committed row (duplicates included); ``configs``: a dict to fill in the same pass with
        {config_sha256: config_json} of every configuration with a committed row."""
        return read_manifest(self.fs, self.manifest_dir, columns, with_part=with_part, configs=configs)

    def status(self) -> dict[str, Any] | None:
        """The status file of the current or last run (job/progress.py), None when there is none."""
        try:
            return json.loads(storage.retrying(self.fs.cat_file, self.status_path, what="reading the status file"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            logger.warning("the status file %s is not JSON (%s): ignored", self.to_uri(self.status_path), exc)
            return None

    def current_rows(self) -> list[dict[str, Any]]:
        """The current row of every (source, configuration)."""
        return winners(self.read()).to_pylist()

    def commit(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """Commit a batch's rows as one Parquet part (the commit point of those photos)."""
        return writer.write_part(self.fs, self.manifest_dir, rows)

    def compact(self, *, rows_per_part: int | None = None, min_parts: int | None = None) -> tuple[int, int]:
        return writer.compact(self.fs, self.manifest_dir, rows_per_part=rows_per_part, min_parts=min_parts)


def output_name(key: str, fmt: str) -> str:
    """The output name of input ``key`` in format ``fmt``, injective over all keys and formats:

    - ``a/b.jpg`` as jpeg, ``a/b.png`` as png — the name's last part is ``stem + ext`` with a
      dot-free stem and an extension of the format: the key itself;
    - ``a/b`` (no extension): ``a/b.png.png``;
    - anything else, e.g. ``a/b.jpg`` as png or ``a/b.x.png``: the key plus the format's extension,
      ``a/b.jpg.png``, as before there were output formats.

    Why no two keys meet: names of the first kind have exactly one dot in their last part, the
    others at least two; a name of the second kind strips to a key of the first kind (so no key of
    the third kind has it), and within each kind the key is recovered from the name. Formats'
    extension sets are disjoint, so names of different formats differ too.
    """
    exts = FORMAT_EXTENSIONS[fmt]
    last = key.rsplit("/", 1)[-1]
    stem, dot, ext = last.rpartition(".")
    if dot and stem and "." not in stem and f".{ext}".lower() in exts:
        return key
    if "." not in last:
        return key + exts[0] + exts[0]
    return key + exts[0]
