"""Storage: fsspec filesystems from URIs, listing, safe relative keys and atomic writes.

Any URI fsspec knows works: local paths, ``file://``, ``s3://`` (s3fs), ``gs://``, ``memory://``…
Options come from ``--storage-options`` (passed to fsspec as keyword arguments) and, for S3, from
the standard AWS environment variables of the process that launches the job (:func:`resolve_options`),
so that Ray workers on other nodes reach the same storage. Credentials never go into URIs, logs or
error messages: :func:`scrub` removes them from any text that leaves this module.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

_SECRET_OPTION = re.compile(r"secret|password|passwd|token|credential|key", re.IGNORECASE)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
               "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


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


class UnsafeKeyError(ValueError):
    """An object key that could escape OUTPUT or cannot name an output unambiguously."""


_S3_ENV = (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN"))


def json_object(text: str, what: str, shape: str = "") -> dict[str, Any]:
    """Parse ``text`` as a JSON object; a ValueError names ``what`` (and the expected ``shape``) otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object{shape}, got {text[:80]!r}")
    return data


def parse_options(text: str) -> dict[str, Any]:
    """The ``--storage-options`` JSON of the command line, as a dict; bad JSON is a ValueError."""
    return json_object(text, "--storage-options")


def resolve_options(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``uri``: the given ones, completed for S3 from the standard AWS variables.

    Given options always win. For ``s3://`` URIs, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
    become ``endpoint_url``, ``AWS_DEFAULT_REGION``/``AWS_REGION`` the client's region, and
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` the credentials (unless the
    options name their own credentials, a profile, or anonymous access). The job resolves these on
    the machine where it is launched, so Ray workers on other nodes use the same storage.
    """
    options = dict(storage_options or {})
    if fsspec.core.split_protocol(uri)[0] not in ("s3", "s3a"):
        return options
    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region and "region_name" not in client_kwargs:
        options["client_kwargs"] = {**client_kwargs, "region_name": region}
    if not any(options.get(name) for name in ("key", "secret", "token", "profile", "anon")):
        for name, variable in _S3_ENV:
            if os.environ.get(variable):
                options[name] = os.environ[variable]
    return options


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path without protocol) for a URI or a local path."""
    try:
        fs, root = fsspec.core.url_to_fs(uri, **resolve_options(uri, storage_options))
    except Exception as exc:
        raise ValueError(scrub(f"cannot open storage {uri!r}: {type(exc).__name__}: {exc}", storage_options)) from exc
    return fs, root.rstrip("/") or root


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Canonical URI of ``path`` on ``fs`` (``file:///abs/path``, ``s3://bucket/key``), no user info."""
    return _USERINFO.sub("", fs.unstrip_protocol(path))


def join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}" if root else key


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, str, int]]:
    """Yield (key relative to ``root``, path, size in bytes) of every file under ``root``, sorted.

    A root that is a single file yields that file under its base name.
    """
    fs.invalidate_cache(root)  # object-store listings are cached per filesystem instance
    for key, path, info in list_objects(fs, root):
        yield key, path, int(info.get("size") or 0)


def list_objects(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Like :func:`list_files`, with the listing's whole info dict (size, ETag, mtime, …)."""
    if retrying(fs.isfile, root, what=f"listing {root}"):
        yield posixpath.basename(root), root, retrying(fs.info, root, what=f"listing {root}")
        return
    found = retrying(fs.find, root, withdirs=False, detail=True, what=f"listing {root}")
    prefix = root.rstrip("/") + "/"
    for path in sorted(found):
        info = found[path]
        if info.get("type", "file") != "file" or not path.startswith(prefix):
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


def safe_key(key: str) -> str:
    """Return ``key`` if it can be used under OUTPUT as is; raise UnsafeKeyError otherwise.

    Refused: empty keys, absolute keys, ``.``/``..``/empty segments (``a//b``), backslashes and
    control characters. Nothing is rewritten, so two different input keys never map to the same
    output key.
    """
    if not key:
        raise UnsafeKeyError("unsafe key: empty")
    if key.startswith("/"):
        raise UnsafeKeyError(f"unsafe key {key!r}: absolute path")
    if "\\" in key:
        raise UnsafeKeyError(f"unsafe key {key!r}: backslash")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise UnsafeKeyError(f"unsafe key {key!r}: control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeKeyError(f"unsafe key {key!r}: {segment or 'empty'!r} path segment")
    return key


def output_key(key: str) -> str:
    """Relative output key of a protected photo: the input key (extension kept) plus ``.png``."""
    return f"images/{safe_key(key)}.png"


def is_within(fs: fsspec.AbstractFileSystem, path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (lexically, after normalization)."""
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def read_hashed(fs: fsspec.AbstractFileSystem, path: str, hasher: Any, chunk_size: int = 8 * 2**20) -> bytes:
    """Read a whole object (retrying transient errors from the start), then feed ``hasher``."""
    def read() -> list[bytes]:
        chunks = []
        with fs.open(path, "rb", block_size=chunk_size) as fh:
            while chunk := fh.read(chunk_size):
                chunks.append(chunk)
        return chunks

    chunks = retrying(read, what=f"reading {path}")
    for chunk in chunks:
        hasher.update(chunk)
    return b"".join(chunks)


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


def secrets(storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every credential-looking string in the options (nested too) and the environment."""
    found: list[str] = []

    def walk(value: Any, name: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, name)
        elif isinstance(value, str) and _SECRET_OPTION.search(name) and len(value) >= 4:
            found.append(value)

    walk(dict(storage_options or {}))
    found += [os.environ[name] for name in _SECRET_ENV if len(os.environ.get(name, "")) >= 4]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``text`` with credentials (from options and environment) and URL user info replaced by ***."""
    for secret in secrets(storage_options):
        text = text.replace(secret, "***")
    return _USERINFO.sub("***@", text)
