"""Storage: where photos and outputs live. ``uris`` turns URIs and options into fsspec filesystems
(and keeps credentials out of every message); ``objects`` lists, reads, hashes and atomically writes
objects, retrying transient errors. The names below are the package's public surface."""

from .objects import (
                      CHUNK_BYTES,
                      RETRY_ATTEMPTS,
                      atomic_write,
                      is_transient,
                      list_files,
                      list_objects,
                      object_version,
                      read_hashed,
                      retrying,
                      sha256_file,
                      write_local,
)
from .uris import (
                      UnsafeKeyError,
                      escape_name,
                      filesystem,
                      join,
                      json_object,
                      parse_options,
                      reason,
                      resolve_options,
                      safe_key,
                      scrub,
                      secrets,
                      to_uri,
                      unescape_name,
)

__all__ = ["CHUNK_BYTES", "RETRY_ATTEMPTS", "UnsafeKeyError", "atomic_write", "escape_name", "filesystem",
           "is_transient", "join", "json_object", "list_files", "list_objects", "object_version", "parse_options",
           "read_hashed", "reason", "resolve_options", "retrying", "safe_key", "scrub", "secrets", "sha256_file",
           "to_uri", "unescape_name", "write_local"]
