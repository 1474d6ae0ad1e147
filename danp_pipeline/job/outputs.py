"""Writing protected photos (CPU tasks): format, metadata, content credentials, measurements, and the row.

:func:`write_outputs` is the job's write stage: for each protected row from the editor actors
(job/worker.py) it writes the output and returns the photo's manifest row (``ok``, or ``error`` with
the reason); the driver commits the rows (job/committer.py). :class:`PhotoWriter` is configured once
per batch and called per photo. It encodes the protected
pixels in the run's output format with the source's metadata (minus what ``strip_gps`` /
``strip_metadata`` remove), signs the file when C2PA credentials are configured, decodes the file
it is about to write and measures L∞ and PSNR on it against the source, and only then writes it
atomically. A lossless output whose measured L∞ exceeds ⌈255·eps⌉ is refused; a lossy one records
its measured L∞ with ``linf_bounded = False``.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from .. import storage
from ..config import PipelineConfig
from ..imaging import deep, formats
from ..imaging import metadata as md
from ..imaging.codec import DecodedImage, decode_image, eps_levels, linf_levels, psnr_db
from ..manifest.credentials import Signer
from ..manifest.output import Output
from ..manifest.provenance import make_row, package_version, sha256_hex, to_table, utcnow
from .identity import Run

logger = logging.getLogger(__name__)


@dataclass
class Written:
    """What the manifest row records about one written output."""

    output_uri: str
    output_key: str          # relative to OUTPUT: the row still finds its file when OUTPUT moves
    output_sha256: str
    output_format: str
    output_bytes: int
    bit_depth: int
    linf_levels: int
    psnr_db: float
    linf_bounded: bool
    metadata: str
    c2pa_bytes: int | None

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PhotoWriter:
    def __init__(self, config: PipelineConfig, output: Output, config_sha256: str) -> None:
        self.config, self.output, self.config_sha256 = config, output, config_sha256
        self.bound = eps_levels(config.attack.eps)
        self.signer = (Signer.load(config.c2pa_cert, config.c2pa_key, config.storage_options)
                       if config.c2pa_cert and config.c2pa_key else None)
        self._warned: set[str] = set()

    def write(self, image: DecodedImage, pixels: np.ndarray, alpha: np.ndarray | None,
              record: dict[str, Any]) -> Written:
        """Encode, sign, measure and write one protected photo; ValueError when it must not be written."""
        fmt = formats.resolve(self.config.output_format, image.source_format, record.get("data"))
        self._warn_lossy(fmt)
        meta = md.strip(image.metadata, gps=self.config.strip_gps, everything=self.config.strip_metadata)
        meta, unfit = md.fit_profile(meta, image.grayscale)
        pixels, alpha = self._depth(image, pixels, alpha, fmt)
        data, dropped = formats.encode(pixels, alpha, fmt, meta, self.config.quality)
        dropped = unfit + dropped
        c2pa_bytes = None
        if self.signer is not None:
            unsigned = len(data)
            data = self.signer.sign(data, fmt, record.get("data") or b"", image.source_format,
                                    source_sha256=record.get("source_sha256") or "", config_sha256=self.config_sha256,
                                    title=record["source_key"].rsplit("/", 1)[-1], version=package_version())
            c2pa_bytes = len(data) - unsigned
        linf, psnr, depth = self._measure(image, data)
        lossless = formats.is_lossless(fmt)
        if lossless and linf > self.bound:
            raise ValueError(f"L-inf guarantee violated: {linf} > {self.bound} levels measured on the "
                             f"{fmt} file; output not written")
        path = self.output.image_path(record["source_key"], fmt)
        storage.atomic_write(self.output.fs, path, data)
        return Written(output_uri=self.output.to_uri(path), output_key=self.output.relative(path),
                       output_sha256=sha256_hex(data), output_format=fmt,
                       output_bytes=len(data), bit_depth=depth, linf_levels=linf, psnr_db=psnr,
                       linf_bounded=lossless, metadata=md.summary(meta, dropped), c2pa_bytes=c2pa_bytes)

    def _depth(self, image: DecodedImage, pixels: np.ndarray, alpha: np.ndarray | None,
               fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
        """16-bit results stay 16-bit where the format can hold them; elsewhere they become 8-bit
        within the bound of the 8-bit source rendition (plain rounding could add one level)."""
        if pixels.dtype != np.uint16:
            return pixels, alpha
        if fmt in formats.SIXTEEN_BIT_FORMATS:
            return pixels, image.alpha16 if image.alpha16 is not None else alpha
        base = image.rgb[..., 0] if image.grayscale else image.rgb
        eight = deep.to_8bit(pixels).astype(np.int16)
        eight = np.clip(eight, base.astype(np.int16) - self.bound, base.astype(np.int16) + self.bound)
        return np.clip(eight, 0, 255).astype(np.uint8), image.alpha

    def _measure(self, image: DecodedImage, data: bytes) -> tuple[int, float, int]:
        """(L∞ in 8-bit levels, PSNR, bit depth) of the encoded file against the source."""
        written = decode_image(data, max_pixels=max(self.config.max_pixels, image.width * image.height))
        if written.pixels16 is not None and image.pixels16 is not None:
            out = written.pixels16
        else:
            out = written.rgb
        if image.grayscale:
            out = out[..., 0]
        if out.shape[:2] != (image.height, image.width):
            raise ValueError(f"the encoded file decodes to {out.shape[1]}x{out.shape[0]}, "
                             f"not {image.width}x{image.height}")
        return linf_levels(image, out), psnr_db(image, out), written.bit_depth

    def _warn_lossy(self, fmt: str) -> None:
        if not formats.is_lossless(fmt) and fmt not in self._warned:
            self._warned.add(fmt)
            logger.warning("output format %s is lossy: each output's L-inf is measured on the file and "
                           "recorded (linf_bounded=false), not bounded by eps", fmt)


#: One PhotoWriter per run in each task worker process: a write task holds one photo, and building the
#: writer loads the C2PA signing chain and key from storage, which must not happen once per photo.
_WRITERS: dict[str, PhotoWriter] = {}


def write_outputs(batch: pa.Table, *, run: Run) -> pa.Table:
    """Ray task: write each protected photo of the batch; one manifest row per input row."""
    writer = _WRITERS.get(run.run_id)
    if writer is None:
        _WRITERS.clear()          # a worker process serves one run at a time; drop the last run's
        writer = _WRITERS[run.run_id] = PhotoWriter(run.config, run.output, run.config_sha256)
    return to_table([_write_one(writer, row, run) for row in batch.to_pylist()])


def _write_one(writer: PhotoWriter, row: dict[str, Any], run: Run) -> dict[str, Any]:
    image = pickle.loads(row["decoded"]) if row.get("decoded") else None
    fields: dict[str, Any] = {"status": "error", "error": row.get("error") or "not processed"}
    if row.get("protected") and not row.get("error"):
        pixels, alpha = pickle.loads(row["protected"])
        try:
            fields = {"status": "ok", **writer.write(image, pixels, alpha, row).fields(),
                      "loss_first": row["loss_first"], "loss_last": row["loss_last"],
                      "steps_skipped": row["steps_skipped"]}
        except ValueError as exc:
            fields = {"status": "error", "error": storage.reason(exc, run.config.storage_options)}
        except Exception as exc:
            reason = storage.reason(exc, run.config.storage_options)
            fields = {"status": "error", "error": f"cannot write output: {reason}"}
    cfg, started = run.config, row.get("read_at") or utcnow()
    finished = utcnow()
    return make_row(
        source_uri=row["source_uri"], source_key=row.get("source_key"), source_sha256=row.get("source_sha256"),
        source_bytes=row.get("source_bytes"), width=image.width if image is not None else None,
        height=image.height if image is not None else None, method=cfg.attack.method, model_id="+".join(cfg.editors),
        model_revision=row.get("model_revision"), prompts=list(row.get("prompts") or []) or list(run.prompts),
        config_json=run.config_json, config_sha256=run.config_sha256, seed=cfg.attack.seed,
        duration_s=max(timedelta(0), finished - started).total_seconds(), device=row.get("device"),
        started_at=started, finished_at=finished, notes="; ".join(image.notes) if image and image.notes else None,
        run_id=run.run_id, source_etag=row.get("source_etag"), reason=row.get("reason"), **fields)

