"""The Protector: one frozen editor per actor, called on batches of read objects.

``Protector(run)(batch)`` decodes each photo, immunizes the batch, writes each output in the
run's format with the source's metadata (and C2PA credentials when configured; job/outputs.py)
atomically under ``OUTPUT/images/``, commits the batch's manifest rows as one
Parquet part, and returns those rows. Every input row yields exactly one output row: a bad photo
becomes an ``error`` row with a readable reason, never an exception. It works the same without
Ray (unit tests call it directly) and as a Ray Data actor (pipeline.py).

A photo can also kill the process that protects it (a native crash, the OOM killer): each attempt is
recorded around the step that can kill the process (job/attempts.py). A batch that finds a record
from a dead attempt is protected photo by photo, so a good photo is not held back by the one that
kills the actor; a photo whose attempts died ``max_photo_attempts`` times becomes an ``error`` row
without another attempt. A protection that did not happen (every step skipped, the photo unchanged)
is an ``error`` row too, never ``ok``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from .. import storage
from ..config import PipelineConfig
from ..imaging.codec import DecodedImage, decode_image
from ..manifest.provenance import make_row, to_table, utcnow
from ..protect.devices import device_name, pick_device
from ..protect.immunizer import Immunizer, ProtectedImage
from ..protect.models import load_editor
from .attempts import AttemptRecords
from .identity import Run
from .outputs import PhotoWriter

logger = logging.getLogger(__name__)

#: Fault injection for the crash-resume test: after committing this many parts, the actor stops
#: making progress (it sleeps), so a test can kill the job at a known point. Unset in production.
HANG_AFTER_PARTS_ENV = "DANP_FAULT_HANG_AFTER_PARTS"
#: Fault injection for the multi-node and stop tests: while the file this names does not exist, the
#: actor holds each batch once its attempts are recorded, before protecting it, so a test decides when
#: work may proceed (and can kill a node, or stop the run, while a photo is certainly in flight). ``{node_id}`` in the path becomes the Ray node's id, so a
#: test can release one node at a time. Unset in production.
HOLD_UNTIL_FILE_ENV = "DANP_FAULT_HOLD_UNTIL_FILE"
#: Fault injection for the poison-photo test: the actor process exits at once (``os._exit``, no
#: cleanup, as a native crash would) when it is about to protect the photo with this source key.
CRASH_ON_KEY_ENV = "DANP_FAULT_CRASH_ON_KEY"


@dataclass
class _Photo:
    """One input row on its way through the batch."""

    record: dict[str, Any]
    started: datetime
    clock: float
    image: DecodedImage | None = None
    prompts: list[str] | None = None
    error: str | None = None
    row: dict[str, Any] | None = None
    died: int = 0          # earlier attempts at this photo whose process died (its attempt record)


class Protector:
    """Callable class for ``map_batches``: loads the editor once, protects many batches."""

    def __init__(self, run: Run | PipelineConfig) -> None:
        """``run``: the run's identity (pipeline.run builds it); a bare config starts a run of its own."""
        self.run = run if isinstance(run, Run) else Run.start(run)
        self.config, self.run_id, self.output = self.run.config, self.run.run_id, self.run.output
        self.config_json, self.config_sha256 = self.run.config_json, self.run.config_sha256
        device = pick_device("cpu" if self.config.gpus_per_actor == 0 else None)
        self.editor = load_editor(self.config.model, self.config.revision, device=device,
                                  precision=self.config.attack.precision)
        self.immunizer = Immunizer(self.editor, self.config.attack)
        self.device_name = device_name(self.editor.device)
        self.writer = PhotoWriter(self.config, self.output, self.config_sha256)
        self.default_prompts = list(self.run.prompts)
        self.attempts = AttemptRecords(self.output, self.config_sha256, self.run_id, self.config.storage_options)
        self.parts_committed = 0

    def __call__(self, batch: pa.Table | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> pa.Table:
        photos = [_Photo(record, utcnow(), time.perf_counter()) for record in _records(batch)]
        given_up = self._screen(photos)
        todo = [p for p in photos if p.error is None and not p.record.get("read_error")]
        isolate = len(todo) > 1 and any(p.died for p in todo)
        if isolate:
            logger.warning("an earlier attempt at this batch of %d died; protecting photo by photo", len(todo))
        for group in ([p] for p in todo) if isolate else [todo]:
            self._attempt(group)
        for photo in photos:
            if photo.record.get("read_error"):
                self._decode(photo)
        rows = [photo.row or self._row(photo, status="error", error=photo.error or "not processed")
                for photo in photos]
        self.output.commit(rows)
        self._forget(given_up)  # only now that their error rows are committed
        self.parts_committed += 1
        _maybe_hang(self.parts_committed)
        return to_table(rows)

    # -- steps ---------------------------------------------------------------------------------

    def _screen(self, photos: list[_Photo]) -> list[_Photo]:
        """Read each photo's attempt record; those whose attempts died max_photo_attempts times
        become error rows. Returns them (their records are removed once their rows are committed)."""
        limit, given_up = self.config.max_photo_attempts, []
        for photo in photos:
            if photo.record.get("read_error"):
                continue
            photo.died = self.attempts.died(photo.record["source_uri"])
            if photo.died >= limit:
                photo.error = (f"the worker process died {photo.died} times while protecting this photo (a crash, "
                               f"out of memory or a lost node); given up after max_photo_attempts={limit}; "
                               "--retry-errors tries again")
                logger.error("%s: %s", photo.record["source_key"], photo.error)
                given_up.append(photo)
        return given_up

    def _attempt(self, photos: list[_Photo]) -> None:
        """Decode and protect ``photos`` under attempt records: if this process dies meanwhile, the
        records stay behind and count one more death for each photo."""
        self._record_attempt(photos)
        _maybe_hold()
        for photo in photos:
            self._decode(photo)
        self._protect([p for p in photos if p.error is None])
        self._forget(photos)  # not in a finally: a dying process must leave the records behind

    def _decode(self, photo: _Photo) -> None:
        record = photo.record
        if record.get("read_error"):
            photo.error = record["read_error"]
            return
        try:
            self.output.image_path(record["source_key"])   # refuses a key that could escape OUTPUT
            photo.prompts = list(record.get("prompts") or []) or self.default_prompts
            photo.image = decode_image(record["data"], max_pixels=self.config.max_pixels)
        except Exception as exc:  # every failure becomes this photo's error row
            photo.error = self._reason(exc)

    def _protect(self, photos: list[_Photo]) -> None:
        if not photos:
            return
        _maybe_crash(photos)
        try:
            results = self.immunizer.protect([p.image for p in photos], [p.prompts for p in photos],
                                             seeds=[self.config.attack.seed] * len(photos))
        except Exception as exc:
            if len(photos) == 1:
                photos[0].error = f"protection failed: {self._reason(exc)}"
                return
            logger.warning("batch of %d failed (%s); retrying photo by photo", len(photos), self._reason(exc))
            for photo in photos:
                self._protect([photo])
            return
        for photo, result in zip(photos, results):
            self._finish(photo, result)

    def _finish(self, photo: _Photo, result: ProtectedImage) -> None:
        failure = result.failure()
        if failure:
            photo.error = failure
            logger.error("%s: %s", photo.record["source_key"], failure)
            return
        try:
            written = self.writer.write(photo.image, result.pixels, result.alpha, photo.record)
        except ValueError as exc:
            photo.error = self._reason(exc)
            return
        except Exception as exc:
            photo.error = f"cannot write output: {self._reason(exc)}"
            return
        photo.row = self._row(photo, status="ok", loss_first=result.loss_first, loss_last=result.loss_last,
                              steps_skipped=result.steps_skipped, **written.fields())

    def _row(self, photo: _Photo, **fields: Any) -> dict[str, Any]:
        record, image = photo.record, photo.image
        notes = "; ".join(image.notes) if image is not None and image.notes else None
        return make_row(
            source_uri=record["source_uri"], source_key=record.get("source_key"),
            source_sha256=record.get("source_sha256"), source_bytes=record.get("source_bytes"),
            width=image.width if image is not None else None, height=image.height if image is not None else None,
            method=self.config.attack.method, model_id=self.config.model, model_revision=self.editor.revision,
            prompts=photo.prompts or list(record.get("prompts") or []) or self.default_prompts,
            config_json=self.config_json, config_sha256=self.config_sha256, seed=self.config.attack.seed,
            duration_s=time.perf_counter() - photo.clock, device=self.device_name,
            started_at=photo.started, finished_at=utcnow(), notes=notes, run_id=self.run_id,
            source_etag=record.get("source_etag"), reason=record.get("reason"), **fields)

    # -- attempt records -------------------------------------------------------------------------

    def _record_attempt(self, photos: list[_Photo]) -> None:
        for photo in photos:
            self.attempts.record(photo.record["source_uri"], photo.record["source_key"], photo.died,
                                 photo.started.isoformat())

    def _forget(self, photos: list[_Photo]) -> None:
        for photo in photos:
            self.attempts.forget(photo.record["source_uri"])

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) if isinstance(exc, ValueError) and str(exc) else f"{type(exc).__name__}: {exc}"
        return storage.scrub(text, self.config.storage_options)


def _records(batch: Any) -> list[dict[str, Any]]:
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if isinstance(batch, Mapping):
        columns = {k: list(v) for k, v in batch.items()}
        n = len(next(iter(columns.values()), []))
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    return [dict(r) for r in batch]


def _maybe_hang(parts_committed: int) -> None:
    limit = os.environ.get(HANG_AFTER_PARTS_ENV)
    if limit and parts_committed >= int(limit):
        logger.warning("%s=%s reached: this worker stops here (fault injection)", HANG_AFTER_PARTS_ENV, limit)
        while True:
            time.sleep(3600)


def _maybe_crash(photos: list[_Photo]) -> None:
    key = os.environ.get(CRASH_ON_KEY_ENV)
    if key and any(p.record.get("source_key") == key for p in photos):
        logger.error("%s=%s: this process exits now (fault injection)", CRASH_ON_KEY_ENV, key)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(70)


def _maybe_hold() -> None:
    path = os.environ.get(HOLD_UNTIL_FILE_ENV)
    if path and "{node_id}" in path:
        import ray

        path = path.replace("{node_id}", ray.get_runtime_context().get_node_id())
    if path and not os.path.exists(path):
        logger.warning("%s: holding this batch until %s exists (fault injection)", HOLD_UNTIL_FILE_ENV, path)
        while not os.path.exists(path):
            time.sleep(0.2)
