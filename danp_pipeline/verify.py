"""``danp-protect verify OUTPUT``: re-hash protected outputs against the manifest.

Checks, for every output named by an ``ok`` row (the newest one when a later configuration
rewrote the same output), that the file exists and that its SHA-256 matches ``output_sha256``;
that every file under ``OUTPUT/images/`` is listed by an ``ok`` row; and that no (source, config)
has more than one row. Exit status 1 when anything is missing, modified, unlisted or duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from . import storage
from .provenance import IMAGES_DIR, MANIFEST_DIR, list_parts, read_manifest

logger = logging.getLogger(__name__)

_COLUMNS = ("source_uri", "config_sha256", "status", "finished_at", "output_uri", "output_sha256")
_SHOWN = 20


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.modified or self.unlisted or self.duplicates)


def verify(output_uri: str, storage_options: dict[str, Any] | None = None, threads: int = 8) -> VerifyReport:
    fs, root = storage.filesystem(output_uri, storage_options)
    manifest_dir = storage.join(root, MANIFEST_DIR)
    if not list_parts(fs, manifest_dir):
        raise ValueError(f"no manifest under {storage.to_uri(fs, manifest_dir)}")
    table = read_manifest(fs, manifest_dir, _COLUMNS)
    report = VerifyReport()
    identities = Counter(zip(table["source_uri"].to_pylist(), table["config_sha256"].to_pylist()))
    report.duplicates = sorted(source for (source, _), n in identities.items() if n > 1)

    ok = table.filter(pc.equal(table["status"], "ok")).sort_by([("finished_at", "descending")])
    expected: dict[str, str] = {}
    for uri, digest in zip(ok["output_uri"].to_pylist(), ok["output_sha256"].to_pylist()):
        expected.setdefault(uri, digest)  # newest ok row per output wins
    report.checked = len(expected)

    def check(item: tuple[str, str]) -> tuple[str, str | None]:
        uri, digest = item
        try:
            actual = _sha256(fs, uri)
        except FileNotFoundError:
            return uri, "missing"
        return uri, None if actual == digest else "modified"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for uri, problem in pool.map(check, sorted(expected.items())):
            if problem:
                getattr(report, problem).append(uri)

    images = storage.join(root, IMAGES_DIR)
    if fs.exists(images):
        for _, path, _ in storage.list_files(fs, images):
            uri = storage.to_uri(fs, path)
            if uri not in expected and not path.rsplit("/", 1)[-1].startswith(".tmp-"):
                report.unlisted.append(uri)
    return report


def _sha256(fs: Any, uri: str) -> str:
    digest = hashlib.sha256()
    with fs.open(uri, "rb") as fh:
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    parser.add_argument("--storage-options", default="{}", help="JSON passed to fsspec (endpoint_url, key, …)")
    parser.add_argument("--threads", type=int, default=8, help="parallel hashing threads")


def main(args: argparse.Namespace) -> int:
    report = verify(args.output, storage.parse_options(args.storage_options), threads=args.threads)
    for kind in ("missing", "modified", "unlisted", "duplicates"):
        items = getattr(report, kind)
        for uri in items[:_SHOWN]:
            logger.error("%s: %s", kind, uri)
        if len(items) > _SHOWN:
            logger.error("%s: … and %d more", kind, len(items) - _SHOWN)
    logger.info("verify %s: %d outputs checked, %d missing, %d modified, %d unlisted, %d duplicated rows",
                args.output, report.checked, len(report.missing), len(report.modified), len(report.unlisted),
                len(report.duplicates))
    return 0 if report.ok else 1
