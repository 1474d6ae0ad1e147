"""The commit stage: the driver commits the rows streaming back from the write tasks as manifest parts
of at least ``commit_rows`` rows, or whatever arrived in the last ``commit_seconds``, whichever comes
first (config.py: COMMIT_ROWS, COMMIT_SECONDS).

A row reaches the driver only after its output is written, and the driver commits each row once, so
the manifest never holds a row twice. What a driver killed outright had not committed yet (at most
``commit_rows`` rows, or ``commit_seconds`` of work) is redone by the next run, which overwrites those
outputs atomically with the same bytes. A run that stops or fails commits what it holds first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from ..manifest.output import Output
from . import faults

logger = logging.getLogger(__name__)


class Committer:
    """Buffers rows and commits them as parts; a context manager that commits the rest on exit."""

    def __init__(self, output: Output, rows: int, seconds: float) -> None:
        self.output, self.rows, self.seconds = output, rows, seconds
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0
        self.since = time.monotonic()

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows:
            self.pending.append(batch)
            self.pending_rows += batch.num_rows
        if self.pending_rows >= self.rows or (self.pending and time.monotonic() - self.since >= self.seconds):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            rows = pa.concat_tables(self.pending).to_pylist()
            self.output.commit(rows)
            self.parts += 1
            logger.debug("committed a manifest part of %d row(s)", len(rows))
            self.pending, self.pending_rows = [], 0
            faults.maybe_hang(self.parts)
        self.since = time.monotonic()

    def __enter__(self) -> "Committer":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            self.flush()
        except Exception as error:
            if exc_type is None:
                raise
            logger.error("could not commit %d finished row(s) while ending the run (%s); the next run redoes "
                         "them", self.pending_rows, type(error).__name__)
