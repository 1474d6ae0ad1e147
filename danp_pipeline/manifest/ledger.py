"""The manifest as a ledger: which listed objects a run still has to process, and why.

Every row records the listing fingerprint of the object it was made from (``source_etag``: the
ETag on object stores, the modification time on local disks), its size and its SHA-256. For each
listed object the current row for this configuration (provenance.winners: the newest, an error
never displacing an ok row for the same bytes) decides:

- no row → process, ``reason = "new"``;
- an ``error`` row and ``retry_errors`` → process, ``reason = "retry"``;
- ``detect_changes`` (scheduled ingestion) and the listing's size or fingerprint differ from the
  row's → read it; the reader confirms with the SHA-256: the same bytes (a re-upload, a touched
  file) are dropped without a new row, new bytes are protected again with
  ``reason = "changed (sha256 <old>→<new>)"``;
- an ``ok`` row protected against other prompts than the photo gets now (its sidecar entry, else the
  run's prompts) → process, ``reason = "prompts changed"``: the row is a claim about those prompts;
- otherwise → skip.

A row without a fingerprint (written before ingestion existed, or by a store whose listing has
neither ETag nor mtime) is compared on size alone. The manifest keeps one current row per
(object, configuration): after a run that re-processed objects, the planner's clean-up
(job/planning.py) drops the rows they replaced, and the new row's ``reason`` keeps the old SHA-256.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .provenance import INDEX_COLUMNS, winners

logger = logging.getLogger(__name__)

#: Columns read from the manifest to plan a run.
LEDGER_COLUMNS: tuple[str, ...] = (*INDEX_COLUMNS, "source_bytes", "source_etag", "prompts")


def current_rows(index: pa.Table, config_sha: str) -> dict[str, dict[str, Any]]:
    """{source_uri: current row} for one configuration."""
    if index.num_rows == 0:
        return {}
    mine = winners(index.filter(pc.equal(index["config_sha256"], config_sha)))
    return {row["source_uri"]: row for row in mine.to_pylist()}


def decide(listed: Iterable[dict[str, Any]], index: pa.Table, config_sha: str, *, retry_errors: bool = False,
           detect_changes: bool = False, prompts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The listed items this run must process, each with ``reason`` (and ``previous_sha256`` when its
    bytes may have changed); job/planning.py asks it once per hash partition of the archive.
    ``prompts``: what a photo without its own (``item["prompts"]``) is protected against in this run;
    None skips the prompts check."""
    current = current_rows(index, config_sha)
    todo = []
    for item in listed:
        row = current.get(item["source_uri"])
        if row is None:
            todo.append({**item, "reason": "new"})
        elif detect_changes and _listing_changed(item, row):
            todo.append({**item, "reason": "changed", "previous_sha256": row.get("source_sha256")})
        elif prompts is not None and row["status"] == "ok" and row.get("prompts") is not None \
                and list(row["prompts"]) != list(item.get("prompts") or prompts):
            todo.append({**item, "reason": "prompts changed"})
        elif row["status"] != "ok" and retry_errors:
            todo.append({**item, "reason": "retry"})
    return todo


def _listing_changed(item: dict[str, Any], row: dict[str, Any]) -> bool:
    if row.get("source_bytes") is not None and item.get("size") != row["source_bytes"]:
        return True
    return bool(row.get("source_etag") and item.get("source_etag") and item["source_etag"] != row["source_etag"])
