"""Objects in a store: listing, reading and hashing, atomic writes, and retries of transient errors.

Object stores fail transiently (connections drop, requests are throttled); every call here that
touches the store goes through :func:`retrying`, on top of botocore's/s3fs's own retries. Missing
objects and refused access are permanent and raised at once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .uris import UnsafeKeyError

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Transient object-store errors (connection lost, timeouts, 5xx, throttling) are retried this many
#: times in all, with exponential backoff and jitter, on top of botocore's/s3fs's own retries.
RETRY_ATTEMPTS = 5
RETRY_BASE_S = 0.2
RETRY_MAX_S = 5.0
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                    "RequestTimeout", "InternalError", "ServiceUnavailable", "BadGateway", "GatewayTimeout",
                    "500", "502", "503", "504"}
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                    "IncompleteReadError", "ResponseStreamingError", "ClientPayloadError", "ServerDisconnectedError",
                    "ClientConnectionError", "ClientOSError", "ServerTimeoutError", "FSTimeoutError"}
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EAGAIN}



def list_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, str, int]]:
    """Yield (key relative to ``root``, path, size in bytes) of every file under ``root``, sorted.

    A root that is a single file yields that file under its base name.
    """
    fs.invalidate_cache(root)  # object-store listings are cached per filesystem instance
    for key, path, info in list_objects(fs, root):
        yield key, path, int(info.get("size") or 0)


def list_objects(fs: fsspec.AbstractFileSystem, root: str, *,
                 others: bool = False) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Like :func:`list_files`, with the listing's whole info dict (size, ETag, mtime, …). With
    ``others``, also the entries that are neither files nor directories (type ``other``: a local
    symlink, FIFO, socket or device), for the caller to judge (job/listing.py)."""
    if retrying(fs.isfile, root, what=f"listing {root}"):
        yield posixpath.basename(root), root, retrying(fs.info, root, what=f"listing {root}")
        return
    found = retrying(fs.find, root, withdirs=False, detail=True, what=f"listing {root}")
    prefix = root.rstrip("/") + "/"
    kinds = ("file", "other") if others else ("file",)
    for path in sorted(found):
        info = found[path]
        if info.get("type", "file") not in kinds or not path.startswith(prefix):
            continue
        if path.endswith("/") and not info.get("size"):
            continue  # an empty "dir/" marker object, not a photo
        yield path[len(prefix):], path, info


def object_version(info: Mapping[str, Any]) -> str | None:
    """A cheap change detector from a listing entry: the ETag where the store gives one (S3, GCS),
    else the modification time (local files); None when the listing has neither."""
    for name in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(name):
            return f"etag:{str(info[name]).strip(chr(34))}"
    for name in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(name)
        if value:
            return f"mtime:{value.isoformat() if hasattr(value, 'isoformat') else value}"
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether an object-store error is worth retrying: connection trouble, timeouts, HTTP 5xx/429 and
    throttling codes, anywhere in the exception's cause chain. Missing objects and refused access
    are permanent."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, UnsafeKeyError)):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(exc, "response", None)
        if isinstance(response, Mapping):
            code = str((response.get("Error") or {}).get("Code", ""))
            status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(fn: Callable[..., T], *args: Any, what: str = "storage call", attempts: int = RETRY_ATTEMPTS,
             **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while it fails transiently; the last
    error (or the first permanent one) is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            logger.warning("%s: transient %s (attempt %d of %d), retrying in %.1f s", what, type(exc).__name__,
                           attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")



CHUNK_BYTES = 8 * 2**20


def _chunks(fs: fsspec.AbstractFileSystem, path: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
    with fs.open(path, "rb", block_size=chunk_size) as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def read_hashed(fs: fsspec.AbstractFileSystem, path: str, hasher: Any, chunk_size: int = CHUNK_BYTES) -> bytes:
    """Read a whole object (retrying transient errors from the start), then feed ``hasher``."""
    chunks = retrying(lambda: list(_chunks(fs, path, chunk_size)), what=f"reading {path}")
    for chunk in chunks:
        hasher.update(chunk)
    return b"".join(chunks)


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """SHA-256 of an object, streamed in chunks (never the whole object in memory)."""
    def digest() -> str:
        hasher = hashlib.sha256()
        for chunk in _chunks(fs, path):
            hasher.update(chunk)
        return hasher.hexdigest()

    return retrying(digest, what=f"hashing {path}")


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so that no partial object is ever visible under ``path``.

    Local files: a hidden temp file in the same directory, fsync, then ``os.replace``. Object
    stores: one PUT (S3 makes a single PUT or a completed multipart upload visible atomically),
    retried while it fails transiently (a PUT of the same bytes is idempotent).
    """
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    retrying(fs.pipe_file, path, data, what=f"writing {path}")


def write_local(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` for a local path (reports, benchmark JSON)."""
    atomic_write(LocalFileSystem(), os.fspath(path), data)
