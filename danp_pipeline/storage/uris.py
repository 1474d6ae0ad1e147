"""URIs and credentials: fsspec filesystems from URIs, storage options, safe relative keys, scrubbing.

Any URI fsspec knows works: local paths, ``file://``, ``s3://`` (s3fs), ``gs://``, ``memory://``…
Options come from ``--storage-options`` (passed to fsspec as keyword arguments) and, for S3, from
the standard AWS environment variables of the process that launches the job (:func:`resolve_options`),
so that Ray workers on other nodes reach the same storage. Credentials never go into URIs, logs or
error messages: :func:`scrub` removes them from any text that leaves this package.

Names that are not UTF-8. A local file name is bytes; Python hands bytes that are not UTF-8 over as
lone surrogates (U+DC80–U+DCFF), which Parquet and Arrow strings cannot hold. Every key, path and URI
this package puts in a row or a message is therefore *escaped* (:func:`escape_name`, applied by
:func:`to_uri`): such a byte becomes ``\\xHH`` (two lower-case hex digits, as ``ls -b`` and Python's
``repr`` of bytes show it) and a backslash becomes ``\\\\``; nothing else changes, so keys of object
stores and UTF-8 names read as before. :func:`unescape_name` gives back the exact name, and every
storage call on a row's key, path or URI unescapes it first: the object is read, and its output named
(on a local OUTPUT), byte for byte.
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
_TO_ESCAPE = re.compile(r"[\\\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|x[89a-f][0-9a-f]|ud[89a-f][0-9a-f]{2})")


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
    """Canonical URI of ``path`` on ``fs`` (``file:///abs/path``, ``s3://bucket/key``), no user info,
    escaped (:func:`escape_name`)."""
    return escape_name(_USERINFO.sub("", fs.unstrip_protocol(path)))


def escape_name(name: str) -> str:
    """``name`` as valid UTF-8, reversibly: an undecodable byte (a surrogate U+DCHH from os/fsspec)
    becomes ``\\xHH``, any other lone surrogate ``\\udHHH``, a backslash ``\\\\``."""
    return _TO_ESCAPE.sub(_escape_char, name)


def unescape_name(name: str) -> str:
    """The exact name :func:`escape_name` escaped; other backslash sequences are left as they are."""
    return _ESCAPED.sub(_unescape_sequence, name) if "\\" in name else name


def _escape_char(match: re.Match) -> str:
    code = ord(match.group())
    if code == 0x5C:
        return "\\\\"
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _unescape_sequence(match: re.Match) -> str:
    body = match.group(1)
    if body == "\\":
        return "\\"
    return chr(0xDC00 + int(body[1:], 16)) if body[0] == "x" else chr(int(body[1:], 16))


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
