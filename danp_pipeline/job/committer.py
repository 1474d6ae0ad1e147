"""The commit stage: the driver commits the rows streaming back from the write tasks as manifest parts
of at least ``commit_rows`` rows, or whatever arrived in the last ``commit_seconds``, whichever comes
first (config.py: COMMIT_ROWS, COMMIT_SECONDS). A thread commits on time even while no new row
arrives (a job waiting on its last slow photos does not hold finished rows back).

A row reaches the driver only after its output is written, and the driver commits each row once, so
the manifest never holds a row twice. What a driver killed outright had not committed yet (at most
``commit_rows`` rows, or ``commit_seconds`` of work) is redone by the next run, which overwrites those
outputs atomically with the same bytes. A run that stops or fails commits what it holds first.
"""

from __future__ import annotations

import logging
import threading
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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._on_time, name="danp-committer", daemon=True)
        self.error: BaseException | None = None

    def add(self, batch: pa.Table) -> None:
        """Take a batch of finished rows; commit a part once enough rows arrived."""
        self._raise_timer_error()
        with self._lock:
            if batch.num_rows:
                self.pending.append(batch)
                self.pending_rows += batch.num_rows
            if self.pending_rows >= self.rows:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            rows = pa.concat_tables(self.pending).to_pylist()
            self.output.commit(rows)
            self.parts += 1
            logger.debug("committed a manifest part of %d row(s)", len(rows))
            self.pending, self.pending_rows = [], 0
            faults.maybe_hang(self.parts)
        self.since = time.monotonic()

    def _on_time(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds)):
            try:
                with self._lock:
                    if self.pending and time.monotonic() - self.since >= self.seconds:
                        self._flush()
            except Exception as exc:  # raised in the driver's thread at the next batch or at the end
                self.error = exc
                return

    def _raise_timer_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def __enter__(self) -> "Committer":
        self._timer.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self._stop.set()
        self._timer.join(timeout=60)
        try:
            self._raise_timer_error()
            self.flush()
        except Exception as error:
            if exc_type is None:
                raise
            logger.error("could not commit %d finished row(s) while ending the run (%s); the next run redoes "
                         "them", self.pending_rows, type(error).__name__)
