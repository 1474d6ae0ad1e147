"""``danp-protect ingest INPUT OUTPUT``: scheduled ingestion of new and changed photos.

An ingest is ``danp-protect run`` with change detection: objects that are new, or whose listing
and then SHA-256 changed since their manifest row, are protected (manifest/ledger.py decides). Like
every run it holds the lease on OUTPUT (storage/lease.py), so overlapping runs (a slow run and the
next scheduled one) never protect the same photo twice. An ingest that finds the lease held waits
up to ``lease_wait_s`` seconds, then does nothing and says who holds it since when: the scheduler
simply tries again next time (exit status 0).
"""

from __future__ import annotations

import logging

from ..config import PipelineConfig
from ..storage.lease import LockHeld
from . import pipeline

logger = logging.getLogger(__name__)


def ingest(cfg: PipelineConfig) -> pipeline.RunSummary | None:
    """Protect what is new or changed under INPUT; None when another run holds the lease."""
    try:
        return pipeline.run(cfg.replace(detect_changes=True))
    except LockHeld as exc:
        logger.warning("%s; this ingest does nothing (the next one will try again)", exc)
        return None
