"""The attacker's edit: the real diffusers pipeline built from an editor bundle's frozen parts.

``ip2p`` editors run :class:`~diffusers.StableDiffusionInstructPix2PixPipeline` with its defaults
(100 steps, guidance 7.5, image guidance 1.5, Euler ancestral scheduler as InstructPix2Pix ships);
``sd`` editors run :class:`~diffusers.StableDiffusionImg2ImgPipeline` (strength 0.8, 50 steps,
guidance 7.5, PNDM without PRK steps as SD v1 ships). Every edit takes a seed, so the clean and the
protected photo are edited with the same noise.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInstructPix2PixPipeline,
)
from PIL import Image

from ..config import EDIT_SCHEDULERS, EditConfig
from ..protect.models import EditorBundle

logger = logging.getLogger(__name__)

def build_scheduler(bundle: EditorBundle, name: str = "auto"):
    """The pipeline's usual scheduler, built from the bundle's scheduler config."""
    if name == "auto":
        name = "euler-ancestral" if bundle.kind == "ip2p" else "pndm"
    config = bundle.scheduler.config
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False)
    raise ValueError(f"scheduler must be one of {list(EDIT_SCHEDULERS)}, got {name!r}")


def build_pipeline(bundle: EditorBundle, scheduler: str = "auto"):
    """A diffusers editing pipeline sharing the bundle's (frozen) modules; no safety checker."""
    parts = dict(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
                 scheduler=build_scheduler(bundle, scheduler), safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    cls = StableDiffusionInstructPix2PixPipeline if bundle.kind == "ip2p" else StableDiffusionImg2ImgPipeline
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Editor:
    """Edits photos as the attacker would: ``editor(photo, prompt, seed)`` -> uint8 HxWx3."""

    def __init__(self, bundle: EditorBundle, config: EditConfig | None = None) -> None:
        self.bundle = bundle
        self.config = (config or EditConfig())
        self.pipe = build_pipeline(bundle, self.config.scheduler)

    def options(self) -> dict[str, Any]:
        """The keyword arguments passed to the pipeline (its defaults where not set)."""
        cfg = self.config
        kwargs: dict[str, Any] = {"guidance_scale": cfg.guidance_scale}
        if cfg.steps is not None:
            kwargs["num_inference_steps"] = cfg.steps
        if self.bundle.kind == "ip2p":
            kwargs["image_guidance_scale"] = cfg.image_guidance_scale
        else:
            kwargs["strength"] = cfg.strength
        return kwargs

    def __call__(self, photo: np.ndarray | Image.Image, prompt: str, seed: int) -> np.ndarray:
        image = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo, dtype=np.uint8))
        image = image.convert("RGB")
        factor = self.bundle.vae_scale_factor
        if image.width % factor or image.height % factor:
            raise ValueError(f"photo size {image.size} must be a multiple of {factor} on both sides for this editor")
        generator = torch.Generator().manual_seed(int(seed))
        out = self.pipe(prompt, image=image, generator=generator, output_type="np", **self.options())
        pixels = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
        if pixels.shape[:2] != (image.height, image.width):  # the pipeline kept a multiple of its factor
            pixels = np.asarray(Image.fromarray(pixels).resize(image.size, Image.Resampling.BICUBIC))
        return pixels
