"""What the job's actors and CPU tasks ask Ray for, so that Ray never packs more of them on a node than fit.

An actor holds one editor and a batch of decoded photos of up to ``max_pixels`` each; its peak host
memory is the editor's weights plus :data:`config.ACTOR_BYTES_PER_PIXEL` per pixel of the batch being
protected and :data:`config.ACTOR_WAITING_BYTES_PER_PIXEL` per pixel of each other batch it holds.
The editor's size is read from its safetensors files on disk (a local directory or the Hugging Face
cache) without loading them; an editor not on disk yet counts :data:`config.EDITOR_BYTES_UNKNOWN`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import config as C
from ..config import PipelineConfig

logger = logging.getLogger(__name__)

#: The editor's parts whose weights an actor holds.
EDITOR_PARTS: tuple[str, ...] = ("unet", "vae", "text_encoder", "text_encoder_2")   # the last: SDXL only


def actor_memory(cfg: PipelineConfig) -> int:
    """Bytes of host memory one editor actor asks Ray for (``cfg.actor_memory`` when set): every editor it
    holds, and a batch of the largest photos allowed."""
    if cfg.actor_memory is not None:
        return cfg.actor_memory
    editors = editor_bytes(cfg.model, cfg.revision) + sum(editor_bytes(m) for m in cfg.ensemble)
    per_pixel = C.ACTOR_BYTES_PER_PIXEL + (C.ACTOR_CALLS - 1) * C.ACTOR_WAITING_BYTES_PER_PIXEL
    return editors + cfg.batch_size * cfg.max_pixels * per_pixel


def task_memory(cfg: PipelineConfig, stage: str) -> int:
    """Bytes of host memory one CPU task of ``stage`` ("decode": read and decode; "write": encode, measure
    and write) asks Ray for: one photo of the largest size allowed (CPU stages take a photo at a time)."""
    per_pixel = {"decode": C.DECODE_TASK_BYTES_PER_PIXEL, "write": C.WRITE_TASK_BYTES_PER_PIXEL}
    if stage not in per_pixel:
        raise ValueError(f"unknown CPU stage {stage!r}; expected one of {sorted(per_pixel)}")
    return cfg.max_pixels * per_pixel[stage]


def editor_bytes(model: str, revision: str | None = None) -> int:
    """The editor's weights in bytes, from its files on disk; an estimate when they are not there."""
    if model in C.TINY_MODELS:
        return 0
    directory = C.MICRO_EDITORS_DIR / model if model in C.MICRO_MODELS else _local_dir(model, revision)
    if directory is None:
        return C.EDITOR_BYTES_UNKNOWN
    files = [f for part in EDITOR_PARTS for f in (directory / part).glob("*.safetensors")]
    full = [f for f in files if ".fp16." not in f.name] or files   # the float32 files when both are there
    return sum(f.stat().st_size for f in full) or C.EDITOR_BYTES_UNKNOWN


def _local_dir(model: str, revision: str | None) -> Path | None:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except Exception as exc:  # not a repo id: the pre-flight names it; the estimate stands
        logger.debug("no cached copy of %s: %s", model, type(exc).__name__)
        return None
    return Path(cached).parent if isinstance(cached, str) else None
