"""An exclusive, expiring lease on one OUTPUT, so that two runs never protect the same photos twice
nor write the manifest at the same time (``danp-protect run`` and ``ingest`` both hold it).

By storage:

- local paths: an ``flock`` on the lock file; the kernel frees it when the holder dies.
- S3 (and S3-compatible stores with conditional writes): created with ``PUT If-None-Match: *``;
  it holds owner, host and expiry as JSON and is renewed every ``ttl/3`` with ``PUT If-Match``
  on its own ETag. A lease past its expiry (its holder died) is taken over with ``PUT If-Match``
  on the stale ETag, so two runs cannot both take it over. Released with ``DELETE If-Match``.
- any other fsspec store: best effort (check, write, read back).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Another run holds the lease on OUTPUT."""


class Lease:
    """An exclusive, expiring lease on one OUTPUT; a context manager."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, ttl_s: float,
                 wait_s: float = 0.0, poll_s: float = 5.0) -> None:
        if ttl_s <= 0 or wait_s < 0:
            raise ValueError(f"lock ttl must be > 0 and wait >= 0 seconds, got {ttl_s!r} and {wait_s!r}")
        self.fs, self.path, self.ttl_s, self.wait_s, self.poll_s = fs, path, ttl_s, wait_s, poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._fh: Any = None
        self._since = datetime.now(timezone.utc)
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- public --------------------------------------------------------------------------------

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self._try_acquire()
                logger.info("lease %s taken by %s", self.path, self.owner)
                return
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        if self._fh is not None:  # local: empty the file, then let the kernel lock go
            self._fh.truncate(0)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        elif self._is_s3():
            try:
                self._s3("delete_object", IfMatch=self._etag)
            except OSError:
                logger.warning("lease %s was no longer ours at release", self.path)
        else:
            self.fs.rm(self.path)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- backends ------------------------------------------------------------------------------

    def _payload(self) -> bytes:
        now = datetime.now(timezone.utc)
        return json.dumps({"owner": self.owner, "since": self._since.isoformat(),
                           "expires": (now + timedelta(seconds=self.ttl_s)).isoformat()}).encode()

    def _try_acquire(self) -> None:
        self._since = datetime.now(timezone.utc)
        if isinstance(self.fs, LocalFileSystem):
            return self._acquire_local()
        if self._is_s3():
            return self._acquire_s3()
        return self._acquire_best_effort()

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fh = open(self.path, "a+b")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read()
            fh.close()
            raise LockHeld(_held_message(self.path, holder)) from None
        fh.truncate(0)
        fh.write(self._payload())
        fh.flush()
        self._fh = fh

    def _is_s3(self) -> bool:
        return "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _s3(self, method: str, **kwargs: Any) -> dict[str, Any]:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return sync(self.fs.loop, self.fs._call_s3, method, Bucket=bucket, Key=key, **kwargs)

    def _acquire_s3(self) -> None:
        try:
            self._etag = self._s3("put_object", Body=self._payload(), IfNoneMatch="*")["ETag"]
        except FileExistsError:  # 412: someone holds it; take it over only if it expired
            self.fs.invalidate_cache(self.path)
            try:
                etag = self.fs.info(self.path)["ETag"]
                holder = self.fs.cat_file(self.path)
            except FileNotFoundError:  # released meanwhile: try again on the next poll
                raise LockHeld(f"lease {self.path} changed hands while being read") from None
            if not _expired(holder):
                raise LockHeld(_held_message(self.path, holder)) from None
            try:  # s3fs reports a failed If-Match (412) as an OSError
                self._etag = self._s3("put_object", Body=self._payload(), IfMatch=etag)["ETag"]
            except OSError:
                raise LockHeld(f"lease {self.path}: another run took over the expired lease first") from None
            logger.warning("lease %s: took over an expired lease (%s)", self.path, _describe(holder))
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_s3, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _renew_s3(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._etag = self._s3("put_object", Body=self._payload(), IfMatch=self._etag)["ETag"]
            except Exception as exc:  # lost the lease: say so loudly; the ledger itself stays consistent
                logger.error("lease %s: cannot renew the lease (%s); another run may start",
                             self.path, type(exc).__name__)
                return

    def _acquire_best_effort(self) -> None:
        if self.fs.exists(self.path):
            holder = self.fs.cat_file(self.path)
            if not _expired(holder):
                raise LockHeld(_held_message(self.path, holder))
        payload = self._payload()
        self.fs.pipe_file(self.path, payload)
        if self.fs.cat_file(self.path) != payload:
            raise LockHeld(f"lease {self.path}: another run wrote it at the same time")


def _parse(holder: bytes) -> dict[str, Any]:
    try:
        info = json.loads(holder.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _expired(holder: bytes) -> bool:
    expires = _parse(holder).get("expires")
    try:
        return datetime.fromisoformat(expires) < datetime.now(timezone.utc)
    except (TypeError, ValueError):
        return True  # unreadable lease: treat as abandoned


def _describe(holder: bytes) -> str:
    info = _parse(holder)
    return f"owner {info.get('owner', '?')}, since {info.get('since', '?')}, expires {info.get('expires', '?')}"


def _held_message(path: str, holder: bytes) -> str:
    info = _parse(holder)
    return (f"another run holds the lease on OUTPUT since {info.get('since', '?')} "
            f"({path}; owner {info.get('owner', '?')}, lease expires {info.get('expires', '?')})")
