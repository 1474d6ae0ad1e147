"""The attacker's edit: the real diffusers pipeline built from an editor bundle's frozen parts.

``ip2p`` editors run :class:`~diffusers.StableDiffusionInstructPix2PixPipeline` with its defaults
(100 steps, guidance 7.5, image guidance 1.5, Euler ancestral scheduler as InstructPix2Pix ships);
``sd`` editors run :class:`~diffusers.StableDiffusionImg2ImgPipeline` (strength 0.8, 50 steps,
guidance 7.5, PNDM without PRK steps as SD v1 ships); ``sdxl`` and ``sdxl-ip2p`` their SDXL pipelines
(:class:`~diffusers.StableDiffusionXLImg2ImgPipeline`, :class:`~diffusers.StableDiffusionXLInstructPix2PixPipeline`,
Euler as SDXL ships, no watermark); ``sd-inpaint`` :class:`~diffusers.StableDiffusionInpaintPipeline` at its
default strength 1.0 with a mask (the caller's, or one drawn from protect/inpaint_masks.py with the edit's seed).
The guidance settings come from :class:`~danp_pipeline.config.EditConfig` for every kind. Every edit takes a
seed, so the clean and the protected photo are edited with the same noise (and mask).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from PIL import Image

from ..config import EDIT_SCHEDULERS, INPAINT_MASK_AREA, EditConfig
from ..protect.inpaint_masks import draw_masks
from ..protect.models import EditorBundle

logger = logging.getLogger(__name__)


def build_scheduler(bundle: EditorBundle, name: str = "auto"):
    """The pipeline's usual scheduler, built from the bundle's scheduler config."""
    if name == "auto":
        name = bundle.spec.scheduler
    config = bundle.scheduler.config
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False)
    raise ValueError(f"scheduler must be one of {list(EDIT_SCHEDULERS)}, got {name!r}")


def build_pipeline(bundle: EditorBundle, scheduler: str = "auto"):
    """A diffusers editing pipeline of the bundle's kind sharing the bundle's (frozen) modules; no safety
    checker, no watermark."""
    parts: dict[str, Any] = dict(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                                 unet=bundle.unet, scheduler=build_scheduler(bundle, scheduler))
    if bundle.spec.xl:
        parts.update(text_encoder_2=bundle.text_encoder_2, tokenizer_2=bundle.tokenizer_2, add_watermarker=False,
                     force_zeros_for_empty_prompt=bundle.force_zeros_for_empty_prompt)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = getattr(diffusers, bundle.spec.pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Editor:
    """Edits photos as the attacker would: ``editor(photo, prompt, seed)`` -> uint8 HxWx3."""

    def __init__(self, bundle: EditorBundle, config: EditConfig | None = None) -> None:
        self.bundle = bundle
        self.config = (config or EditConfig())
        self.pipe = build_pipeline(bundle, self.config.scheduler)

    def options(self) -> dict[str, Any]:
        """The keyword arguments passed to the pipeline (its defaults where not set): image guidance for
        InstructPix2Pix kinds, strength for img2img kinds, the inpainting pipeline's own strength (1.0)."""
        cfg = self.config
        kwargs: dict[str, Any] = {"guidance_scale": cfg.guidance_scale}
        if cfg.steps is not None:
            kwargs["num_inference_steps"] = cfg.steps
        if self.bundle.spec.condition == "latent":
            kwargs["image_guidance_scale"] = cfg.image_guidance_scale
        elif self.bundle.spec.condition == "none":
            kwargs["strength"] = cfg.strength
        return kwargs

    def __call__(self, photo: np.ndarray | Image.Image, prompt: str, seed: int,
                 mask: np.ndarray | None = None) -> np.ndarray:
        """The edit of ``photo`` by ``prompt`` with noise ``seed``. Inpainting editors repaint ``mask`` (HxW, nonzero
        = repainted), by default one drawn from protect/inpaint_masks.py's distribution with ``seed``."""
        image = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo, dtype=np.uint8))
        image = image.convert("RGB")
        factor = self.bundle.vae_scale_factor
        if image.width % factor or image.height % factor:
            raise ValueError(f"photo size {image.size} must be a multiple of {factor} on both sides for this editor")
        generator = torch.Generator().manual_seed(int(seed))
        kwargs = self.options()
        if "height" in inspect.signature(self.pipe.__call__).parameters:   # else the UNet's size, not the photo's
            kwargs.update(height=image.height, width=image.width)
        if self.bundle.spec.condition == "masked":
            kwargs["mask_image"] = Image.fromarray(self.mask(image.height, image.width, seed, mask))
        elif mask is not None:
            raise ValueError(f"a mask was given for a {self.bundle.kind} editor, which takes none")
        out = self.pipe(prompt, image=image, generator=generator, output_type="np", **kwargs)
        pixels = np.clip(np.rint(out.images[0] * 255.0), 0, 255).astype(np.uint8)
        if pixels.shape[:2] != (image.height, image.width):  # the pipeline kept a multiple of its factor
            pixels = np.asarray(Image.fromarray(pixels).resize(image.size, Image.Resampling.BICUBIC))
        return pixels

    @staticmethod
    def mask(height: int, width: int, seed: int, mask: np.ndarray | None = None) -> np.ndarray:
        """The inpainting mask as the pipeline takes it (uint8 HxW, 255 = repainted): ``mask``, or one drawn
        from protect/inpaint_masks.py's distribution with ``seed``."""
        if mask is None:
            drawn = draw_masks(torch.Generator().manual_seed(int(seed)), 1, height, width, INPAINT_MASK_AREA)
            return (drawn[0, 0].numpy() * 255).astype(np.uint8)
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} must be the photo's (height, width) = {(height, width)}")
        return np.where(mask > 0, 255, 0).astype(np.uint8)
