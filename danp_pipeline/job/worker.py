"""The Protector: one frozen editor per actor, and the editor's work alone.

``Protector(run)(batch)`` takes decoded photos (job/reader.py: a pickled DecodedImage per row, or the
reason the row cannot be protected), immunizes them, and returns each with its protected pixels
(pickled: pixels and alpha) and what the optimization measured. Encoding, measuring, signing and
writing the outputs happen after it, in CPU tasks (job/outputs.py), and the rows are committed by the
driver (job/committer.py), so that the actor's accelerator is busy with the editor only. Every input
row yields exactly one output row: a failure is the row's ``error``, never an exception. It works the
same without Ray (unit tests call it directly) and as a Ray Data actor (pipeline.py).

A photo can also kill the process that protects it (a native crash, the OOM killer, a lost node): each
attempt is recorded around the protection (job/attempts.py).

An actor runs :data:`config.ACTOR_CALLS` calls at once (pipeline.py), so that one batch's conversion,
screening and output rows overlap another's protection; the protection itself, with its attempt records,
holds the actor's lock: one batch on the accelerator at a time, and a process that dies there leaves
records for that batch only, never for a batch that was merely waiting. A batch that finds a record from a dead
attempt is protected photo by photo, so a good photo is not held back by the one that kills the actor;
a photo whose attempts died ``max_photo_attempts`` times becomes an ``error`` row without another
attempt. A protection that did not happen (every step skipped, the photo unchanged) is an error too.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import storage
from ..config import PipelineConfig
from ..imaging.codec import DecodedImage
from ..manifest.provenance import utcnow
from ..protect.devices import device_name, pick_device
from ..protect.immunizer import Immunizer, ProtectedImage
from ..protect.models import load_editor
from . import faults
from .attempts import AttemptRecords
from .identity import Run
from .reader import DECODED_SCHEMA

logger = logging.getLogger(__name__)

#: What the write stage receives: the decoded row, the protected pixels (pickled ``(pixels, alpha)``),
#: and what protecting it measured.
PROTECTED_SCHEMA = pa.schema([
    *DECODED_SCHEMA,
    ("protected", pa.large_binary()),
    ("loss_first", pa.float64()),
    ("loss_last", pa.float64()),
    ("steps_skipped", pa.int32()),
    ("protect_s", pa.float64()),
    ("device", pa.string()),
    ("model_revision", pa.string()),
])


@dataclass
class _Photo:
    """One input row on its way through the batch."""

    record: dict[str, Any]
    image: DecodedImage | None = None
    result: ProtectedImage | None = None
    died: int = 0          # earlier attempts at this photo whose process died (its attempt record)

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @error.setter
    def error(self, reason: str) -> None:
        self.record["error"] = reason


class Protector:
    """Callable class for ``map_batches``: loads the editor once, protects many batches."""

    def __init__(self, run: Run | PipelineConfig) -> None:
        """``run``: the run's identity (pipeline.run builds it); a bare config starts a run of its own."""
        self.run = run if isinstance(run, Run) else Run.start(run)
        self.config = self.run.config
        device = pick_device("cpu" if self.config.gpus_per_actor == 0 else None)
        self.editors = [load_editor(model, self.config.revision if i == 0 else None, device=device,
                                    precision=self.config.attack.precision)
                        for i, model in enumerate(self.config.editors)]
        self.immunizer = Immunizer(self.editors, self.config.attack, self.config.editor_weights or None)
        self.device_name = device_name(self.editors[0].device)
        self.revision = "+".join(str(e.revision) for e in self.editors)
        self.attempts = AttemptRecords(self.run.output, self.run.config_sha256, self.run.run_id,
                                       self.config.storage_options)
        self.accelerator = threading.Lock()   # one batch in _attempt at a time (see the module's docstring)

    def __call__(self, batch: pa.Table | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> pa.Table:
        photos = [_Photo(record) for record in _records(batch)]
        todo = self._screen([p for p in photos if p.error is None])
        isolate = len(todo) > 1 and any(p.died for p in todo)
        if isolate:
            logger.warning("an earlier attempt at this batch of %d died; protecting photo by photo", len(todo))
        groups = [[p] for p in todo] if isolate else [todo]
        for group in filter(None, groups):   # a batch with nothing left to protect never reaches the editor
            self._attempt(group)
        return pa.Table.from_pylist([self._row(p) for p in photos], schema=PROTECTED_SCHEMA)

    # -- steps ---------------------------------------------------------------------------------

    def _screen(self, photos: list[_Photo]) -> list[_Photo]:
        """Read each photo's attempt record; those whose attempts died max_photo_attempts times become
        errors (their records go: ``--retry-errors`` tries them again). Returns the others."""
        todo = []
        for photo in photos:
            photo.died, photo.error = self.attempts.give_up(photo.record["source_uri"], self.config.max_photo_attempts,
                                                            "protecting", "a crash, out of memory or a lost node")
            if photo.error:
                logger.error("%s: %s", photo.record["source_key"], photo.error)
            else:
                todo.append(photo)
        return todo

    def _attempt(self, photos: list[_Photo]) -> None:
        """Protect ``photos`` under attempt records: if this process dies meanwhile, the records stay
        behind and count one more death for each photo."""
        with self.accelerator:
            started = utcnow().isoformat()
            for photo in photos:
                self.attempts.record(photo.record["source_uri"], photo.record["source_key"], photo.died, started)
            faults.maybe_hold()
            for photo in photos:
                photo.image = pickle.loads(photo.record["decoded"])
            self._protect(photos)
            for photo in photos:   # not in a finally: a dying process must leave the records behind
                self.attempts.forget(photo.record["source_uri"])
                photo.image = None  # the decoded pixels are not needed past the protection

    def _protect(self, photos: list[_Photo]) -> None:
        faults.maybe_crash(p.record.get("source_key") for p in photos)
        try:
            results = self.immunizer.protect([p.image for p in photos], [list(p.record["prompts"]) for p in photos],
                                             seeds=[self.config.attack.seed] * len(photos))
        except Exception as exc:
            if len(photos) == 1:
                photos[0].error = f"protection failed: {storage.reason(exc, self.config.storage_options)}"
                return
            logger.warning("batch of %d failed (%s); retrying photo by photo", len(photos),
                           storage.reason(exc, self.config.storage_options))
            for photo in photos:
                self._protect([photo])
            return
        for photo, result in zip(photos, results):
            failure = result.failure()
            if failure:
                photo.error = failure
                logger.error("%s: %s", photo.record["source_key"], failure)
            else:
                photo.result = result

    def _row(self, photo: _Photo) -> dict[str, Any]:
        row = {**photo.record, "device": self.device_name, "model_revision": self.revision}
        result = photo.result
        if result is not None and photo.error is None:
            row.update(protected=pickle.dumps((result.pixels, result.alpha), protocol=5),
                       loss_first=result.loss_first, loss_last=result.loss_last,
                       steps_skipped=result.steps_skipped, protect_s=result.seconds)
        return row


def _records(batch: Any) -> list[dict[str, Any]]:
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if isinstance(batch, Mapping):
        columns = {k: list(v) for k, v in batch.items()}
        n = len(next(iter(columns.values()), []))
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    return [dict(r) for r in batch]
