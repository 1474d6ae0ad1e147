"""The Protector: one frozen editor per actor, called on batches of read objects.

``Protector(config)(batch)`` decodes each photo, immunizes the batch, encodes lossless PNGs, writes
each one atomically under ``OUTPUT/images/<key>.png``, commits the batch's manifest rows as one
Parquet part, and returns those rows. Every input row yields exactly one output row: a bad photo
becomes an ``error`` row with a readable reason, never an exception. It works the same without
Ray (unit tests call it directly) and as a Ray Data actor (pipeline.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from . import storage, writer
from .config import DEFAULT_PROMPTS, PipelineConfig, config_json, config_sha256
from .imageio import DecodedImage, decode_image, encode_png, eps_levels
from .immunizer import Immunizer, ProtectedImage
from .models import load_editor
from .provenance import MANIFEST_DIR, make_row, sha256_hex, to_table, utcnow

logger = logging.getLogger(__name__)

#: Fault injection for the crash-resume test: after committing this many parts, the actor stops
#: making progress (it sleeps), so a test can kill the job at a known point. Unset in production.
HANG_AFTER_PARTS_ENV = "DANP_FAULT_HANG_AFTER_PARTS"
#: Fault injection for the multi-node test: while the file this names does not exist, the actor
#: holds each batch before protecting it, so a test decides when work may proceed (and can kill a
#: node whose actor is certainly busy). ``{node_id}`` in the path becomes the Ray node's id, so a
#: test can release one node at a time. Unset in production.
HOLD_UNTIL_FILE_ENV = "DANP_FAULT_HOLD_UNTIL_FILE"


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


class Protector:
    """Callable class for ``map_batches``: loads the editor once, protects many batches."""

    def __init__(self, config: PipelineConfig, run_id: str | None = None) -> None:
        self.config = config.validate()
        self.run_id = run_id
        device = _device(self.config.gpus_per_actor)
        self.editor = load_editor(self.config.model, self.config.revision, device=device,
                                  precision=self.config.attack.precision)
        self.immunizer = Immunizer(self.editor, self.config.attack)
        self.config_json = config_json(self.config.attack, self.config.model, self.config.revision)
        self.config_sha256 = config_sha256(self.config_json)
        self.device_name = _device_name(self.editor.device)
        self.out_fs, self.out_root = storage.filesystem(self.config.output_uri, self.config.storage_options)
        self.manifest_dir = storage.join(self.out_root, MANIFEST_DIR)
        self.default_prompts = list(self.config.prompts or DEFAULT_PROMPTS)
        self.parts_committed = 0

    def __call__(self, batch: pa.Table | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> pa.Table:
        _maybe_hold()
        photos = [_Photo(record, utcnow(), time.perf_counter()) for record in _records(batch)]
        for photo in photos:
            self._decode(photo)
        self._protect([p for p in photos if p.error is None])
        rows = [photo.row or self._row(photo, status="error", error=photo.error or "not processed")
                for photo in photos]
        writer.write_part(self.out_fs, self.manifest_dir, rows)
        self.parts_committed += 1
        _maybe_hang(self.parts_committed)
        return to_table(rows)

    # -- steps ---------------------------------------------------------------------------------

    def _decode(self, photo: _Photo) -> None:
        record = photo.record
        if record.get("read_error"):
            photo.error = record["read_error"]
            return
        try:
            storage.output_key(record["source_key"])
            photo.prompts = list(record.get("prompts") or []) or self.default_prompts
            photo.image = decode_image(record["data"], max_pixels=self.config.max_pixels)
        except Exception as exc:  # every failure becomes this photo's error row
            photo.error = self._reason(exc)

    def _protect(self, photos: list[_Photo]) -> None:
        if not photos:
            return
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
        bound = eps_levels(self.config.attack.eps)
        if result.linf_levels > bound:  # defensive: imageio guarantees this
            photo.error = f"L-inf guarantee violated: {result.linf_levels} > {bound} levels; output not written"
            return
        try:
            data = encode_png(result.pixels, result.alpha)
            path = storage.join(self.out_root, storage.output_key(photo.record["source_key"]))
            storage.atomic_write(self.out_fs, path, data)
        except Exception as exc:
            photo.error = f"cannot write output: {self._reason(exc)}"
            return
        photo.row = self._row(
            photo, status="ok", output_uri=storage.to_uri(self.out_fs, path), output_sha256=sha256_hex(data),
            linf_levels=result.linf_levels, psnr_db=result.psnr_db, loss_first=result.loss_first,
            loss_last=result.loss_last)

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


def _device(gpus_per_actor: float) -> str:
    import torch

    return "cuda" if gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"


def _device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def _maybe_hang(parts_committed: int) -> None:
    limit = os.environ.get(HANG_AFTER_PARTS_ENV)
    if limit and parts_committed >= int(limit):
        logger.warning("%s=%s reached: this worker stops here (fault injection)", HANG_AFTER_PARTS_ENV, limit)
        while True:
            time.sleep(3600)


def _maybe_hold() -> None:
    path = os.environ.get(HOLD_UNTIL_FILE_ENV)
    if path and "{node_id}" in path:
        import ray

        path = path.replace("{node_id}", ray.get_runtime_context().get_node_id())
    if path and not os.path.exists(path):
        logger.warning("%s: holding this batch until %s exists (fault injection)", HOLD_UNTIL_FILE_ENV, path)
        while not os.path.exists(path):
            time.sleep(0.2)
