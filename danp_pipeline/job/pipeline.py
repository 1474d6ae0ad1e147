"""The Ray Data job, and nothing else: list → plan (drop done) → read and decode → protect → write →
commit → summary.

Listing (job/listing.py) and planning (job/planning.py: the listing joined with the manifest) run
as Ray tasks too, so the driver never holds the archive's keys: it sees counts, block references
and the rows as they stream back (job/progress.py logs them and keeps OUTPUT/_status.json). Each
stage asks Ray for its own resources: reading and decoding (job/reader.py) and encoding, measuring,
signing and writing (job/outputs.py) are CPU tasks; only the editor actors (job/worker.py) hold an
accelerator, and they do nothing but protect.

Every photo ends as exactly one manifest row per configuration. The driver commits the rows of
written photos as parts of many rows (job/committer.py), so a job killed at any point loses at most
one part's worth of finished work, and a rerun skips every photo whose row was committed (``ok``
rows always; ``error`` rows too unless ``retry_errors``). Runs on the cluster at ``RAY_ADDRESS``
when set, else on a local Ray instance it starts and stops itself.

A run holds the lease on OUTPUT (storage/lease.py) from start to end: a second run on the same
OUTPUT waits up to ``lease_wait_s`` seconds, then raises :class:`LockHeld` without doing anything.
SIGTERM and SIGINT stop a run cleanly: the status file says ``stopped``, no photo in flight is
counted as a death (job/attempts.py), and :class:`RunStopped` carries the exit status 128 + signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import ray

from .. import config as C
from .. import storage
from ..config import PipelineConfig
from ..manifest.provenance import error_reason
from ..storage.lease import Lease, LockHeld
from . import attempts, listing, outputs, planning, preflight, progress, reader, resources
from .committer import Committer
from .identity import Run
from .worker import Protector

__all__ = ["LockHeld", "Run", "RunStopped", "RunSummary", "dataset", "execute", "run"]

logger = logging.getLogger(__name__)

#: Objects per read block: small blocks keep the bytes in flight bounded whatever the archive size.
OBJECTS_PER_BLOCK = 4
#: A Protector whose process or node dies is restarted and its batch resubmitted, without limit:
#: a lost node costs retries, not photos (rows are committed by the driver, once), and a photo that
#: kills its actor every time is given up after ``max_photo_attempts`` (job/attempts.py).
#: These are Ray Data's defaults for actor pools. They are not passed to ``map_batches``: actor
#: options other than its named parameters go through ``**ray_remote_args``, deprecated since Ray
#: 2.60 (removed in 2.64); tests/integration/test_pipeline.py checks that Ray Data still applies them.
ACTOR_FAULT_TOLERANCE = {"max_restarts": -1, "max_task_retries": -1}


#: Error reasons a run's summary lists (the most frequent first).
TOP_REASONS = 5


@dataclass(frozen=True)
class RunSummary:
    ok: int
    errors: int
    skipped: int
    total: int
    seconds: float
    photos_per_hour: float
    output_uri: str
    manifest_uri: str
    run_id: str
    #: The most frequent error reasons of this run (rows grouped by manifest.provenance.error_reason):
    #: (the example's message, count, an example key).
    error_reasons: tuple[tuple[str, int, str], ...] = field(default=())
    #: The range of this run's ok photos: L∞ in 8-bit levels and PSNR in dB, (min, max); None without one.
    linf_levels: tuple[int, int] | None = None
    psnr_db: tuple[float, float] | None = None
    #: Where the run's report was written (None when it was not: turned off, or it failed).
    report_uri: str | None = None

    def __str__(self) -> str:
        fidelity = (f"; L∞ {self.linf_levels[0]}–{self.linf_levels[1]} levels, PSNR {self.psnr_db[0]:.1f}–"
                    f"{self.psnr_db[1]:.1f} dB" if self.linf_levels and self.psnr_db else "")
        return (f"{self.total} objects: {self.ok} ok, {self.errors} error, {self.skipped} skipped (already done) "
                f"in {self.seconds:.1f} s ({self.photos_per_hour:.0f} photos/hour){fidelity}; "
                f"outputs under {self.output_uri}, manifest under {self.manifest_uri}")


class RunStopped(BaseException):
    """The run was stopped by a signal (SIGTERM, SIGINT) and shut down cleanly; the next run resumes.
    A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the way (Ray's included) takes
    a stop for a failure."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def run(cfg: PipelineConfig) -> RunSummary:
    """Protect every object under ``cfg.input_uri`` into ``cfg.output_uri``; log and return a summary.
    Bad settings are refused before any work, each in one ValueError line (job/preflight.py)."""
    preflight.check(cfg)
    return execute(Run.start(cfg))


def execute(run: Run) -> RunSummary:
    """The job itself, for settings already checked."""
    cfg, output, start = run.config, run.output, time.perf_counter()
    logger.info("run %s: config %s, model %s, %d actor(s) × %.2g CPU, batch %d", run.run_id, run.config_sha256[:12],
                " + ".join(cfg.editors), cfg.actors, cfg.cpus_per_actor, cfg.batch_size)
    for model in cfg.editors:
        if model in C.TINY_MODELS or model in C.MICRO_MODELS:
            logger.warning("protecting against %s, a test editor: it does not stand for a real editor", model)
    prompts = reader.load_prompts_file(cfg.prompts_file, cfg.storage_options) if cfg.prompts_file else {}

    counts: Counter[str] = Counter()
    errors: dict[str, list] = {}
    fidelity = _Fidelity()
    with (Lease(output.fs, output.lock_path, ttl_s=cfg.lease_ttl_s, wait_s=cfg.lease_wait_s),   # one run per OUTPUT
          _stopped_cleanly(run), _ray_session(), _stop_on_signals(),
          progress.Reporter(output, run.run_id, cfg.progress_interval_s) as report):
        listed = listing.dataset(cfg, prompts, report.counter)                     # 1. list INPUT (Ray tasks)
        report.planning()
        plan = planning.plan(listed, run, prompts=run.prompts, counter=report.counter)  # 2. join with the manifest
        planning.remove_superseded(plan, cfg)                                      # 3. drop rows a crash left
        report.planned(plan.listed, plan.todo_count, plan.skipped, plan.reasons)
        _warn_unused_prompts(prompts, report)
        if plan.todo_count:                                                        # 4. read … write, commit
            with Committer(output, cfg.commit_rows, cfg.commit_seconds) as committer:
                counts = _consume(dataset(plan.todo(), _with_gpus(run)), committer, report, errors, fidelity)
        planning.finish(run, plan)                                                 # 5. drop replaced rows, compact

    seconds = time.perf_counter() - start
    top = sorted(errors.items(), key=lambda item: -item[1][0])[:TOP_REASONS]
    summary = RunSummary(ok=counts["ok"], errors=counts["error"], skipped=plan.skipped, total=plan.listed,
                         seconds=seconds, photos_per_hour=counts["ok"] * 3600 / seconds if seconds > 0 else 0.0,
                         output_uri=output.uri, manifest_uri=output.to_uri(output.manifest_dir), run_id=run.run_id,
                         error_reasons=tuple((message, n, key) for _, (n, key, message) in top),
                         linf_levels=fidelity.linf, psnr_db=fidelity.psnr)
    logger.info("done: %s", summary)
    for reason, n, key in summary.error_reasons:
        logger.warning("%d error row(s): %s (e.g. %s)", n, reason, key)
    return dataclasses.replace(summary, report_uri=_report(run))


def _report(run: Run) -> str | None:
    """Write the run's report (report/); the last line of the run's log says where. A report that cannot be
    written costs a warning, never the run."""
    cfg = run.config
    if not cfg.report:
        return None
    from ..report import write_report

    try:
        uri = write_report(cfg.output_uri, cfg.storage_options, sample=cfg.report_sample)
    except Exception as exc:
        logger.warning("the report could not be written: %s", storage.reason(exc, cfg.storage_options))
        return None
    logger.info("report: %s", uri)
    return uri


@dataclass
class _Fidelity:
    """The range of L∞ and PSNR over the rows of ok photos seen so far."""

    linf: tuple[int, int] | None = None
    psnr: tuple[float, float] | None = None

    def add(self, batch: pa.Table) -> None:
        for status, linf, psnr in zip(batch["status"].to_pylist(), batch["linf_levels"].to_pylist(),
                                      batch["psnr_db"].to_pylist()):
            if status != "ok" or linf is None or psnr is None:
                continue
            self.linf = (min(self.linf[0], linf), max(self.linf[1], linf)) if self.linf else (linf, linf)
            self.psnr = (min(self.psnr[0], psnr), max(self.psnr[1], psnr)) if self.psnr else (psnr, psnr)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`RunStopped` in the main thread (where Python runs handlers).
    Entered after Ray has started: Ray's own handler would otherwise abort the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        for sig in previous:                        # a second signal while shutting down changes nothing
            signal.signal(sig, lambda *_: logger.warning("already stopping"))
        raise RunStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _stopped_cleanly(run: Run) -> Iterator[None]:
    """Once a stopped run has shut down (its actors gone), its in-flight attempts are taken back: a
    stop is no photo's death (job/attempts.py)."""
    try:
        yield
    except RunStopped:
        forgiven = attempts.forgive_stopped(run.output, run.run_id)
        logger.info("stopped: %d photo(s) in flight will be redone by the next run", forgiven)
        raise


def default_gpus_per_actor() -> float:
    """One GPU per actor when the Ray cluster (initialized) has GPUs, else none."""
    available = ray.cluster_resources().get("GPU", 0)
    gpus = 1.0 if available >= 1 else 0.0
    logger.info("%g GPU per actor (the cluster has %g)", gpus, available)
    return gpus


def _with_gpus(run: Run) -> Run:
    """``gpus_per_actor=None`` (the default) becomes :func:`default_gpus_per_actor` (not part of the
    configuration's hash: the same photo comes out of a GPU or a CPU run)."""
    if run.config.gpus_per_actor is not None:
        return run
    return dataclasses.replace(run, config=run.config.replace(gpus_per_actor=default_gpus_per_actor()))


def dataset(todo: ray.data.Dataset | list[dict], run: Run) -> ray.data.Dataset:
    """The job graph (lazy): planned items → read, hash and decode (CPU tasks) → protect (editor actors)
    → encode, measure, sign and write (CPU tasks): one manifest row per item, for the driver to commit."""
    cfg = run.config
    if isinstance(todo, list):
        todo = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / OBJECTS_PER_BLOCK)))
    # No repartition step: it runs as a 1-CPU task, which never fits beside actors holding most of a small
    # node's CPUs (the job then waits forever). The read tasks' outputs are blocks bounded in bytes.
    cpu_stage = {"batch_format": "pyarrow", "batch_size": 1, "num_cpus": cfg.cpus_per_task,
                 "compute": ray.data.TaskPoolStrategy(size=cfg.tasks_per_actor * cfg.actors)}
    decode = {**cpu_stage, "memory": _memory_request(resources.task_memory(cfg, "decode"), "a decode task (one photo)")}
    write = {**cpu_stage, "memory": _memory_request(resources.task_memory(cfg, "write"), "a write task (one photo)")}
    return (todo
            .map_batches(reader.read_objects, **decode, fn_kwargs={
                "input_uri": cfg.input_uri, "storage_options": cfg.storage_options, "max_pixels": cfg.max_pixels})
            .map_batches(reader.decode_objects, **decode, fn_kwargs={"run": run})
            .map_batches(Protector, fn_constructor_kwargs={"run": run}, batch_format="pyarrow",
                         batch_size=cfg.batch_size, compute=ray.data.ActorPoolStrategy(
                             size=cfg.actors, max_concurrent_calls_per_actor=C.ACTOR_CALLS,
                             enable_true_multi_threading=True),   # the Protector's own lock guards the editor
                         num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
                         memory=_memory_request(resources.actor_memory(cfg), "an editor actor (editors and batches)"))
            .map_batches(outputs.write_outputs, **write, fn_kwargs={"run": run}))


def _memory_request(wanted: int, what: str) -> int:
    """A memory request (job/resources.py) of at most the largest node's memory: a request no node can
    grant would leave the job waiting forever."""
    nodes = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() \
        else []
    largest = int(max(nodes, default=0))
    if largest and wanted > largest:
        logger.warning("%s needs about %.1f GB of memory but the largest node offers %.1f GB: asking for that; "
                       "lower --max-pixels (or --batch-size) if it runs out of memory",
                       what, wanted / 1e9, largest / 1e9)
        return largest
    return wanted


def _consume(ds: ray.data.Dataset, committer: Committer, report: progress.Reporter,
             errors: dict[str, list], fidelity: _Fidelity) -> Counter[str]:
    """Drain the dataset, committing its rows and counting them into the progress, ``errors``
    (reason, as manifest.provenance.error_reason groups them -> [count, first key, its message]) and
    ``fidelity``."""
    counts: Counter[str] = Counter()
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    try:
        for batch in batches:
            committer.add(batch)
            statuses = Counter(batch["status"].to_pylist())
            counts.update(statuses)
            report.protected(statuses["ok"], statuses["error"])
            fidelity.add(batch)
            for source, error in zip(batch["source_key"].to_pylist(), batch["error"].to_pylist()):
                if error:
                    logger.debug("error %s: %s", source, error)
                    errors.setdefault(error_reason(error), [0, source, error])[0] += 1
    finally:
        close = getattr(batches, "close", None)
        if close is not None:   # a stopped run shuts the executor (and its actors) down now
            close()
    return counts


#: Ray's raylet dies if its agents or workers take longer than 30 s / 60 s to start, which happens
#: on a small, busy machine; a local instance started here waits longer (unless the user set these).
SLOW_START_ENV = {"RAY_agent_register_timeout_ms": "300000", "RAY_worker_register_timeout_seconds": "300"}


class _ray_session:
    """Use the Ray already initialized in this process, else connect to ``RAY_ADDRESS``, else start
    a local instance (token auth on, as Ray starts it) and stop it on exit."""

    def __enter__(self) -> None:
        progress.ray_console()
        self.owned = not ray.is_initialized()
        if not self.owned:
            return
        address = os.environ.get("RAY_ADDRESS")
        if address:
            logger.info("connecting to the Ray cluster at RAY_ADDRESS")
            ray.init(address=address, logging_level=logging.WARNING)
            return
        logger.info("starting a local Ray instance")
        for name, value in SLOW_START_ENV.items():
            os.environ.setdefault(name, value)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            ray.shutdown()


def _warn_unused_prompts(prompts: dict[str, tuple[str, ...]], report: progress.Reporter) -> None:
    if prompts:
        unused = set(prompts) - report.matched_prompt_keys()
        if unused:
            logger.warning("prompts file: %d key(s) match no input object, e.g. %r", len(unused), sorted(unused)[0])
