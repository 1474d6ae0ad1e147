"""``danp-protect verify OUTPUT``: re-hash protected outputs against the manifest.

Checks, for every output named by an ``ok`` row (the newest one when a later configuration
rewrote the same output), that the file exists and that its SHA-256 matches ``output_sha256``;
that every file under ``OUTPUT/images/`` is listed by an ``ok`` row; and that no (source, config)
has more than one row. Exit status 1 when anything is missing, modified, unlisted or duplicated.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from .. import storage
from .output import Output
from .provenance import list_parts

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
    output = Output.open(output_uri, storage_options)
    fs = output.fs
    if not list_parts(fs, output.manifest_dir):
        raise ValueError(f"no manifest under {output.to_uri(output.manifest_dir)}")
    table = output.read(_COLUMNS)
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
            actual = storage.sha256_file(fs, uri)
        except FileNotFoundError:
            return uri, "missing"
        return uri, None if actual == digest else "modified"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for uri, problem in pool.map(check, sorted(expected.items())):
            if problem:
                getattr(report, problem).append(uri)

    images = output.images_dir
    if fs.exists(images):
        for _, path, _ in storage.list_files(fs, images):
            uri = storage.to_uri(fs, path)
            if uri not in expected and not path.rsplit("/", 1)[-1].startswith(".tmp-"):
                report.unlisted.append(uri)
    return report


def log_report(output_uri: str, report: VerifyReport) -> None:
    """Name every problem (the first few of each kind) and sum up, in the log."""
    for kind in ("missing", "modified", "unlisted", "duplicates"):
        items = getattr(report, kind)
        for uri in items[:_SHOWN]:
            logger.error("%s: %s", kind, uri)
        if len(items) > _SHOWN:
            logger.error("%s: … and %d more", kind, len(items) - _SHOWN)
    logger.info("verify %s: %d outputs checked, %d missing, %d modified, %d unlisted, %d duplicated rows",
                output_uri, report.checked, len(report.missing), len(report.modified), len(report.unlisted),
                len(report.duplicates))
