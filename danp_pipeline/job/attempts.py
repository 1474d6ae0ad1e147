"""Attempt records: how a photo that kills the process protecting it is bounded.

A photo can kill its worker process (a native crash in a decoder, the OOM killer, a lost node); Ray
then restarts the actor or task and retries it, without limit. To bound that, each photo's attempt is
recorded before it is decoded and protected, as ``OUTPUT/_attempts/<hash>.json`` holding the number
of attempts that died if this one dies too, and the record is removed when the attempt ends,
however it ends. A record found at the start of an attempt therefore means the last attempt's
process died. A photo whose attempts died ``max_photo_attempts`` times becomes an ``error`` row.

A run that is *stopped* (SIGTERM, SIGINT) kills its actors too, but no photo is to blame:
:func:`forgive_stopped` takes the stopped run's in-flight attempts back out of their records, so a
stop never counts as a death.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .. import storage
from ..manifest.output import Output

logger = logging.getLogger(__name__)


class AttemptRecords:
    """The attempt records of one configuration and stage (``decode`` in the CPU tasks, ``protect`` in
    the editor actors: the two steps that can kill a process) under one OUTPUT."""

    def __init__(self, output: Output, config_sha: str, run_id: str | None, options: dict[str, Any],
                 stage: str = "protect") -> None:
        self.output, self.config_sha, self.run_id, self.options = output, config_sha, run_id, options
        self.stage = stage

    def path(self, source_uri: str) -> str:
        return self.output.attempt_path(f"{self.config_sha}:{self.stage}", source_uri)

    def died(self, source_uri: str) -> int:
        """How many earlier attempts at this photo died (0 without a record)."""
        path = self.path(source_uri)
        try:
            data = storage.retrying(self.output.fs.cat_file, path, what=f"reading {path}")
        except FileNotFoundError:
            return 0
        except Exception as exc:  # a record we cannot read bounds nothing, but must not cost the photo
            logger.warning("cannot read attempt record %s: %s", path, self._reason(exc))
            return 0
        try:
            return int(json.loads(data)["died"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed attempt record %s", path)
            return 0

    def give_up(self, source_uri: str, limit: int, doing: str, causes: str) -> tuple[int, str | None]:
        """(deaths so far, and once they reach ``limit`` the error row's reason: the photo is given up and
        its record goes, so that ``--retry-errors`` starts it from zero). ``doing``: what the process was
        doing to the photo; ``causes``: what usually kills it there."""
        died = self.died(source_uri)
        if died < limit:
            return died, None
        self.forget(source_uri)
        return died, (f"the worker process died {died} times while {doing} this photo ({causes}); given up after "
                      f"max_photo_attempts={limit}; --retry-errors tries again")

    def record(self, source_uri: str, source_key: str, died_before: int, started_at: str) -> None:
        """Before an attempt: if this process dies now, the photo counts ``died_before + 1`` deaths."""
        record = {"source_uri": source_uri, "died": died_before + 1, "run_id": self.run_id, "started_at": started_at}
        try:
            storage.atomic_write(self.output.fs, self.path(source_uri), json.dumps(record).encode())
        except Exception as exc:
            logger.warning("cannot write attempt record for %s: %s", source_key, self._reason(exc))

    def forget(self, source_uri: str) -> None:
        """After an attempt, however it ended (never in a ``finally``: a dying process leaves it)."""
        path = self.path(source_uri)
        try:
            storage.retrying(self.output.fs.rm, path, what=f"removing {path}")
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("cannot remove attempt record %s: %s", path, self._reason(exc))

    def _reason(self, exc: BaseException) -> str:
        return storage.scrub(f"{type(exc).__name__}: {exc}", self.options)


def forgive_stopped(output: Output, run_id: str) -> int:
    """After a run was stopped and its actors are gone: each record its in-flight attempts left
    goes back to the deaths counted before (removed at 0). Returns how many were taken back."""
    fs, directory = output.fs, output.attempts_dir
    try:
        fs.invalidate_cache(directory)
        paths = fs.find(directory, withdirs=False) if fs.exists(directory) else []
    except Exception as exc:
        logger.warning("cannot list attempt records under %s: %s", directory, type(exc).__name__)
        return 0
    forgiven = 0
    for path in paths:
        try:
            record = json.loads(fs.cat_file(path))
            if record.get("run_id") != run_id:
                continue
            died = int(record["died"]) - 1
            if died > 0:
                storage.atomic_write(fs, path, json.dumps({**record, "died": died}).encode())
            else:
                fs.rm(path)
            forgiven += 1
        except FileNotFoundError:   # its attempt ended meanwhile
            continue
        except Exception as exc:
            logger.warning("cannot take back the stopped attempt in %s: %s", path, type(exc).__name__)
    return forgiven
