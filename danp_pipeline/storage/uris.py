"""URIs and credentials: fsspec filesystems from URIs, storage options, safe relative keys, scrubbing.

Any URI fsspec knows works: local paths, ``file://``, ``s3://`` (s3fs), ``gs://``, ``memory://``…
Options come from ``--storage-options`` (passed to fsspec as keyword arguments) and, for S3, from
the standard AWS environment variables of the process that launches the job (:func:`resolve_options`),
so that Ray workers on other nodes reach the same storage. Credentials never go into URIs, logs or
error messages: :func:`scrub` removes them from any text that leaves this package.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import fsspec

_SECRET_OPTION = re.compile(r"secret|password|passwd|token|credential|key", re.IGNORECASE)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
               "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


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


def reason(exc: BaseException, storage_options: Mapping[str, Any] | None = None) -> str:
    """A failure as one readable reason for a manifest row or a log line: a ValueError's own message
    (it names the bad value), else ``Type: message``; credentials scrubbed."""
    text = str(exc) if isinstance(exc, ValueError) and str(exc) else f"{type(exc).__name__}: {exc}"
    return scrub(text, storage_options)
