"""Progress of a run at any scale: counts, photos per hour and ETA, in the log and in a status file.

Ray tasks report what they listed and planned to a :class:`Counter` actor (zero CPUs; fire and
forget, so a task never waits on it); the driver adds what it sees protected. Every
``progress_interval_s`` a :class:`Reporter` thread logs one line and rewrites ``OUTPUT/_status.json``
(Output.status_path) atomically, for a scheduler or a dashboard::

    {"run_id": "…", "state": "listing|planning|protecting|done|failed|stopped", "listed": …, "planned": …,
     "skipped": …, "protected": …, "errors": …, "remaining": …, "photos_per_hour": …, "eta_s": …,
     "reasons": {"new": …}, "started_at": "…", "updated_at": "…", "elapsed_s": …, "output": "…"}

On a terminal Ray Data draws its own progress bars too; in a log file or a scheduler's log
(:func:`ray_console`) its per-operator progress goes to Ray's session log only, so the run's log
reads as its story: this module's one line per interval, the plan, the summary.

Live counts from tasks are for watching (a retried task may report twice); the run summary and the
final status use the plan's exact counts (job/planning.py) and the rows the driver received. The
status file never claims a state this run did not reach: when it cannot be rewritten (a full disk),
the previous run's file is removed rather than left standing.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter as _Tally
from typing import Any

import ray

from .. import storage
from ..manifest.output import Output
from ..manifest.provenance import utcnow

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class Counter:
    """Counts reported by listing tasks (live), each plan partition's counts (exact: a retried
    partition replaces its own entry), and the sidecar keys that matched an object."""

    def __init__(self) -> None:
        self.counts: _Tally[str] = _Tally()
        self.partitions: dict[int, dict[str, Any]] = {}
        self.matched_keys: set[str] = set()

    def add(self, **counts: int) -> None:
        self.counts.update(counts)

    def partition(self, key: int, stats: dict[str, Any]) -> None:
        self.partitions[key] = stats

    def matched(self, keys: list[str]) -> None:
        self.matched_keys.update(keys)

    def plan_stats(self) -> dict[str, Any]:
        """The plan's counts, summed over the partitions that reported."""
        total: dict[str, Any] = {"listed": 0, "duplicates": 0, "losers": 0, "reasons": _Tally()}
        for stats in self.partitions.values():
            for name in ("listed", "duplicates", "losers"):
                total[name] += stats[name]
            total["reasons"].update(stats["reasons"])
        total["reasons"] = dict(total["reasons"])
        return total

    def snapshot(self) -> dict[str, int]:
        plan = self.plan_stats()
        planned = sum(plan["reasons"].values())
        return {**self.counts, "planned": planned, "skipped": plan["listed"] - planned}

    def matched_prompt_keys(self) -> list[str]:
        return sorted(self.matched_keys)


class Reporter:
    """The driver's side: phase, exact counts once known, a thread that logs and writes the status."""

    def __init__(self, output: Output, run_id: str, interval_s: float) -> None:
        self.output, self.run_id, self.interval_s = output, run_id, interval_s
        self.counter = Counter.remote()
        self.state, self.started_at, self.clock = "listing", utcnow(), time.perf_counter()
        self.exact: dict[str, Any] = {}
        self.ok = self.errors = 0
        self.protect_clock: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="danp-progress", daemon=True)

    def __enter__(self) -> "Reporter":
        self.write()
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if exc_type is None:
            self.state = "done"
        else:   # a stop by signal is not a failure (pipeline.RunStopped; KeyboardInterrupt outside the CLI)
            stopped = exc_type.__name__ == "RunStopped" or issubclass(exc_type, KeyboardInterrupt)
            self.state = "stopped" if stopped else "failed"
        self.write(log=True)

    # -- what the driver tells it ----------------------------------------------------------------

    def planning(self) -> None:
        self.state = "planning"

    def planned(self, listed: int, planned: int, skipped: int, reasons: dict[str, int]) -> None:
        with self._lock:
            self.exact = {"listed": listed, "planned": planned, "skipped": skipped, "reasons": dict(reasons)}
            self.state, self.protect_clock = "protecting", time.perf_counter()
        self.write(log=True)

    def protected(self, ok: int, errors: int) -> None:
        with self._lock:
            self.ok += ok
            self.errors += errors

    def matched_prompt_keys(self) -> set[str]:
        return set(ray.get(self.counter.matched_prompt_keys.remote(), timeout=60))

    # -- the status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        live = {}
        if not self.exact:
            try:
                live = ray.get(self.counter.snapshot.remote(), timeout=10)
            except Exception as exc:  # progress must never fail a run
                logger.debug("progress counter unavailable: %s", type(exc).__name__)
        with self._lock:
            counts = {"listed": live.get("listed", 0), "planned": live.get("planned", 0),
                      "skipped": live.get("skipped", 0), "reasons": {}, **self.exact}
            done = self.ok + self.errors
            now = time.perf_counter()
            rate = done * 3600 / (now - self.protect_clock) if self.protect_clock and now > self.protect_clock else 0.0
            remaining = max(0, counts["planned"] - done) if self.exact else None
        eta = remaining * 3600 / rate if remaining is not None and rate > 0 else None
        return {"run_id": self.run_id, "state": self.state, **counts, "protected": self.ok, "errors": self.errors,
                "remaining": remaining, "photos_per_hour": round(rate, 1),
                "eta_s": round(eta, 1) if eta is not None else None,
                "started_at": self.started_at.isoformat(), "updated_at": utcnow().isoformat(),
                "elapsed_s": round(now - self.clock, 1), "output": self.output.uri}

    def write(self, log: bool = False) -> dict[str, Any]:
        status = self.status()
        try:
            storage.atomic_write(self.output.fs, self.output.status_path, json.dumps(status, indent=1).encode())
        except Exception as exc:
            logger.warning("cannot write the status file %s: %s", self.output.status_path, type(exc).__name__)
            self._remove_stale()
        if log:
            logger.info("%s", line(status))
        return status

    def _remove_stale(self) -> None:
        """Remove a status file this run could not rewrite: it would claim another run's state."""
        try:
            self.output.fs.rm(self.output.status_path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("cannot remove the stale status file %s either: %s", self.output.status_path,
                           type(exc).__name__)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write(log=True)


def line(status: dict[str, Any]) -> str:
    """One log line of a status."""
    eta = status.get("eta_s")
    text = (f"progress [{status['state']}]: {status['listed']} listed, {status['planned']} to protect, "
            f"{status['skipped']} already done, {status['protected']} protected, {status['errors']} error(s)")
    if status["state"] == "protecting":
        text += f", {status['photos_per_hour']:.0f} photos/hour"
        text += f", ETA {eta / 3600:.1f} h" if eta else ""
    return text


def ray_console(interactive: bool | None = None) -> None:
    """Ray Data's progress on the console only when it is a terminal (``interactive``: default, whether
    stderr is one). Otherwise its console handler shows warnings and errors only; everything it logs
    still reaches Ray's session log (``ray-data.log``)."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    if interactive:
        return
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers)

    for handler in logging.getLogger("ray.data").handlers:   # Ray's own console handler, never one of ours
        if type(handler).__module__.startswith("ray.") and isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
