"""``danp-protect verify OUTPUT``: re-hash protected outputs against the manifest.

Checks, for every output named by an ``ok`` row (the newest one when a later configuration
rewrote the same output) — found under the OUTPUT given by the row's ``output_key``, so that a copied
or moved OUTPUT checks its own files (rows older than that column name their file by ``output_uri``)
— that the file exists and that its SHA-256 matches ``output_sha256``;
that every file under ``OUTPUT/images/`` is listed by an ``ok`` row; and that no (source, config)
has more than one row; and, for outputs signed with C2PA content credentials (``c2pa_bytes`` set),
that the credentials validate: signature, the hash binding to the file's bytes, and the three
assertions (``c2pa.actions`` with ``c2pa.edited``, ``c2pa.training-mining``, the ingredient) —
with ``c2pa_trust`` anchors, also that the signer chains to one. Exit status 1 when anything is
missing, modified, unlisted, duplicated or has invalid credentials.
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
from .provenance import list_parts, sha256_hex

logger = logging.getLogger(__name__)

_COLUMNS = ("source_uri", "config_sha256", "status", "finished_at", "output_uri", "output_sha256", "c2pa_bytes",
            "output_format", "output_key")
_SHOWN = 20


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)   # "uri: reason" for invalid C2PA credentials
    signed: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.modified or self.unlisted or self.duplicates or self.credentials)


def verify(output_uri: str, storage_options: dict[str, Any] | None = None, threads: int = 8,
           c2pa_trust: str | None = None) -> VerifyReport:
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
    signed: dict[str, str] = {}
    uris = [output.located(key, uri) for key, uri in zip(ok["output_key"].to_pylist(), ok["output_uri"].to_pylist())]
    for uri, digest, c2pa_bytes, fmt in zip(uris, ok["output_sha256"].to_pylist(),
                                            ok["c2pa_bytes"].to_pylist(), ok["output_format"].to_pylist()):
        if uri not in expected and c2pa_bytes is not None:
            signed[uri] = fmt or "png"
        expected.setdefault(uri, digest)  # newest ok row per output wins
    report.checked, report.signed = len(expected), len(signed)
    anchors = _anchors(c2pa_trust, storage_options)

    def check(item: tuple[str, str]) -> tuple[str, str | None, str | None]:
        uri, digest = item
        path = output.path_of(uri)
        try:
            if uri not in signed:
                return uri, None if storage.sha256_file(fs, path) == digest else "modified", None
            data = storage.retrying(fs.cat_file, path, what=f"reading {uri}")
        except FileNotFoundError:
            return uri, "missing", None
        return uri, None if sha256_hex(data) == digest else "modified", _credentials(data, signed[uri], anchors)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for uri, problem, bad in pool.map(check, sorted(expected.items())):
            if problem:
                getattr(report, problem).append(uri)
            if bad:
                report.credentials.append(f"{uri}: {bad}")

    images = output.images_dir
    if fs.exists(images):
        for _, path, _ in storage.list_files(fs, images):
            uri = storage.to_uri(fs, path)
            if uri not in expected and not path.rsplit("/", 1)[-1].startswith(".tmp-"):
                report.unlisted.append(uri)
    return report


def _anchors(uri: str | None, storage_options: dict[str, Any] | None) -> str | None:
    if not uri:
        return None
    try:
        fs, path = storage.filesystem(uri, storage_options)
        return fs.cat_file(path).decode()
    except Exception as exc:
        raise ValueError(f"cannot read the C2PA trust anchors {uri!r}: {type(exc).__name__}") from None


def _credentials(data: bytes, fmt: str, anchors: str | None) -> str | None:
    """Why the C2PA credentials of ``data`` are not valid, or None when they are."""
    from .credentials import MIME_TYPES, TRAINING_MINING, validate

    result = validate(data, MIME_TYPES.get(fmt), anchors)
    if not result.ok:
        return f"{result.state}: {', '.join(result.failures) or 'no valid manifest'}"
    missing = [name for name, present in (("c2pa.edited", "c2pa.edited" in result.actions),
                                          (TRAINING_MINING["label"], TRAINING_MINING["label"] in result.assertions))
               if not present]
    return f"assertions missing: {', '.join(missing)}" if missing else None


def log_report(output_uri: str, report: VerifyReport) -> None:
    """Name every problem (the first few of each kind) and sum up, in the log."""
    for kind in ("missing", "modified", "unlisted", "duplicates", "credentials"):
        items = getattr(report, kind)
        for uri in items[:_SHOWN]:
            logger.error("%s: %s", kind, uri)
        if len(items) > _SHOWN:
            logger.error("%s: … and %d more", kind, len(items) - _SHOWN)
    logger.info("verify %s: %d outputs checked, %d missing, %d modified, %d unlisted, %d duplicated rows, "
                "%d signed with %d invalid credentials", output_uri, report.checked, len(report.missing),
                len(report.modified), len(report.unlisted), len(report.duplicates), report.signed,
                len(report.credentials))
