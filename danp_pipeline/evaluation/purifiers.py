"""Purifiers: what an attacker may run on a protected file after downloading it and before the edit.

Registered by name (``config.PURIFIERS``; parameters and their defaults in ``config.PurifyConfig``):

- ``none``: the file as downloaded, the unpurified reference.
- ``jpeg75``: JPEG re-encoding at quality 75 of the attacker's copy (at the editor's scale, where the
  perturbation acts; a platform's JPEG of the full-size file is the robustness transform ``jpeg75``).
- ``noise-jpeg``: Gaussian noise of σ = ``noise_sigma`` (4/255 on the [0,1] scale), then JPEG quality 75.
- ``noisy-upscale``: down by ``upscale_factor`` (2), Gaussian noise of σ = ``noise_sigma``, up by the same
  factor, with Pillow's ``upscale_filter`` (bicubic) both ways.
- ``diffpure``: diffusion purification (DiffPure, Nie et al. 2022) in an editor's latent space: encode with its
  VAE (posterior mean), noise to t* = ``strength``·T (0.3·T) with the editor's scheduler ``add_noise``, denoise
  back to 0 in ``steps`` (20) deterministic DDIM steps with the empty instruction, decode. An InstructPix2Pix
  UNet gets a zero image conditioning: its unconditional branch, which it is trained on by dropping the image,
  as DiffPure's prior sees nothing but the noised sample. Conditioning on the photo's own latents would hand the
  perturbation to the UNet through the very path the protection targets. Editor: ``editor``, by default the
  attacker's own.
- ``gridpure``: ``diffpure`` on tiles of the editor's size (``tile``) over the full-size file, neighbours
  overlapping by ``tile_overlap`` (a quarter) and blended with tapered weights, so that a photo larger than the
  editor is purified at the editor's scale (GrIDPure, Zhao et al. 2024); a file smaller than a tile is one
  edge-padded tile.
- ``reconstruct``: "purify once" with an editor *other* than the attacker's (``reconstruct_editor``): its own
  edit with the identity instruction ``reconstruct_instruction`` (""): img2img at ``reconstruct_strength``
  (0.3) for an sd editor, the InstructPix2Pix edit (which has no strength) for an ip2p one.

``gridpure`` acts on the full-size file, which the attacker then resizes; the others act on the attacker's copy
(:func:`attackers_input`). Every purifier is seeded and deterministic: ``purifier(pixels, seed)`` returns uint8
pixels of the input's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch
from PIL import Image

from ..config import MICRO_MODELS, PROXY_MODELS, PURIFIERS, EditConfig, PurifyConfig, micro_edit_config
from ..protect.diffusion import (
    blind_condition,
    encode_mean,
    encode_prompts,
    latents_and_condition,
    predict_noise,
)
from ..protect.models import EditorBundle, load_editor
from .attacker import FULL_SIZE_TRANSFORMS, PIL_FILTERS, TRANSFORMS
from .editing import Editor

logger = logging.getLogger(__name__)


class Purifier:
    """The identity (``none``); subclasses change the pixels. ``stage``: "copy" (the attacker's resized copy)
    or "file" (the full-size file, before the resize)."""

    name = "none"
    stage = "copy"

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        return pixels


class PixelPurifier(Purifier):
    """A Pillow/numpy purifier: ``fn(pixels, seed)``."""

    def __init__(self, name: str, fn: Callable[[np.ndarray, int], np.ndarray]) -> None:
        self.name, self.fn = name, fn

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        return self.fn(pixels, seed)


def gaussian_noise(pixels: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``pixels`` + N(0, σ²) (σ on the [0,1] scale), rounded and clipped to uint8."""
    noise = np.random.default_rng(seed).normal(0.0, sigma * 255.0, pixels.shape)
    return np.clip(np.rint(pixels.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def noisy_upscale(pixels: np.ndarray, factor: int, sigma: float, filter: str, seed: int) -> np.ndarray:
    """Down by ``factor``, Gaussian noise, up to the original size (Pillow ``filter`` both ways)."""
    img = Image.fromarray(pixels)
    small = img.resize((max(1, img.width // factor), max(1, img.height // factor)), PIL_FILTERS[filter])
    noisy = gaussian_noise(np.asarray(small), sigma, seed)
    return np.asarray(Image.fromarray(noisy).resize(img.size, PIL_FILTERS[filter]))


def pad_to(pixels: np.ndarray, multiple: int, minimum: int = 0) -> np.ndarray:
    """Edge-pad bottom and right to sides that are multiples of ``multiple`` and at least ``minimum``."""
    h, w = pixels.shape[:2]
    ph, pw = (max(minimum, -(-side // multiple) * multiple) - side for side in (h, w))
    return np.pad(pixels, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else pixels


class DiffPure(Purifier):
    """Noise the latents to t* and denoise back to 0 with the editor's UNet (module docstring)."""

    name = "diffpure"

    def __init__(self, bundle: EditorBundle, strength: float, steps: int) -> None:
        self.bundle = bundle
        total = bundle.num_train_timesteps
        self.t_star = max(1, min(total - 1, round(strength * total)))
        self.timesteps = torch.linspace(self.t_star, 0, steps + 1).round().long().unique_consecutive()
        with torch.no_grad():
            self.embeds = encode_prompts(bundle, [[""]]).embeds

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        bundle, (h, w) = self.bundle, pixels.shape[:2]
        padded = pad_to(pixels, bundle.vae_scale_factor)
        x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None].float().div(255)
        z, _ = latents_and_condition(bundle, encode_mean(bundle, x.to(bundle.device)))
        condition = blind_condition(bundle, z)   # the unconditional branch: the UNet sees the photo only in z_t
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(int(seed))).to(z.device)
        z = bundle.scheduler.add_noise(z, noise, torch.tensor([self.t_star]))
        abar = bundle.scheduler.alphas_cumprod.to(z.device, torch.float32)
        for t, t_prev in zip(self.timesteps[:-1].tolist(), self.timesteps[1:].tolist()):
            eps = predict_noise(bundle, z, torch.tensor([t], device=z.device), self.embeds, condition)
            a, a_prev = abar[t], (abar[t_prev] if t_prev > 0 else torch.ones((), device=z.device))
            x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
            z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps            # DDIM, η = 0
        decoded = bundle.vae.decode((z / bundle.vae.config.scaling_factor).to(bundle.dtype)).sample.float()
        out = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return out[:h, :w]


class GridPure(Purifier):
    """:class:`DiffPure` on overlapping tiles of ``tile`` pixels over the full-size file, blended back."""

    name = "gridpure"
    stage = "file"

    def __init__(self, diffpure: DiffPure, tile: int, overlap: float) -> None:
        factor = diffpure.bundle.vae_scale_factor
        if tile % factor:
            raise ValueError(f"gridpure tile must be a multiple of the editor's VAE factor {factor}, got {tile!r}")
        self.diffpure, self.tile = diffpure, tile
        self.stride = max(1, round(tile * (1 - overlap)))

    def tiles(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of every tile over a (padded) photo of at least one tile per side; the last tile of each
        row and column ends at the border."""
        def starts(side: int) -> list[int]:
            last = max(side - self.tile, 0)
            return sorted({*range(0, last + 1, self.stride), last})
        return [(top, left) for top in starts(height) for left in starts(width)]

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        h, w = pixels.shape[:2]
        padded = pad_to(pixels, 1, self.tile)
        ramp = max(1, self.tile - self.stride)
        edge = np.minimum(np.arange(self.tile) + 1, np.arange(self.tile)[::-1] + 1)
        taper = np.minimum(1.0, edge / ramp)
        window = (taper[:, None] * taper[None, :])[..., None]
        total = np.zeros(padded.shape, dtype=np.float64)
        weight = np.zeros(padded.shape[:2] + (1,), dtype=np.float64)
        for k, (top, left) in enumerate(self.tiles(*padded.shape[:2])):
            box = np.s_[top:top + self.tile, left:left + self.tile]
            total[box] += self.diffpure(padded[box], seed + k) * window
            weight[box] += window
        return np.clip(np.rint(total / weight), 0, 255).astype(np.uint8)[:h, :w]


class Reconstruct(Purifier):
    """The identity edit of another editor (module docstring); refuses the attacker's own editor."""

    name = "reconstruct"

    def __init__(self, bundle: EditorBundle, attacker: str, config: EditConfig, instruction: str = "") -> None:
        if bundle.model_id == attacker:
            raise ValueError(f"reconstruct must use an editor other than the attacker's, got the attacker's own "
                             f"{attacker!r}")
        self.editor, self.instruction = Editor(bundle, config), instruction

    def __call__(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        h, w = pixels.shape[:2]
        padded = pad_to(pixels, self.editor.bundle.vae_scale_factor)
        return self.editor(padded, self.instruction, seed)[:h, :w]


def default_edit_config(name: str) -> EditConfig:
    """An editor's own edit settings: a shipped micro-editor's (MICRO_MODELS), else the pipeline's."""
    return micro_edit_config(name) if name in MICRO_MODELS or name in PROXY_MODELS else EditConfig()


def build_suite(names: tuple[str, ...], config: PurifyConfig, attacker: str, editors: Mapping[str, EditorBundle],
                resolution: int, *, device: str | None = None, precision: str = "auto",
                edit_config: Callable[[str], EditConfig] = default_edit_config) -> dict[str, Purifier]:
    """The purifiers ``names`` against ``attacker``'s editor. ``editors``: those already loaded (the attacker's
    among them); others are loaded on ``device``. ``resolution``: the editor's size (gridpure's tile)."""
    loaded = dict(editors)

    def editor(name: str) -> EditorBundle:
        if name not in loaded:
            loaded[name] = load_editor(name, device=device, precision=precision)
        return loaded[name]

    def diffpure() -> DiffPure:
        return DiffPure(editor(config.editor or attacker), config.strength, config.steps)

    def reconstruct() -> Reconstruct:
        other = config.reconstruct_for(attacker)
        settings = edit_config(other).replace(strength=config.reconstruct_strength)
        if config.reconstruct_steps is not None:
            settings = settings.replace(steps=config.reconstruct_steps)
        return Reconstruct(editor(other), attacker, settings, config.reconstruct_instruction)

    jpeg = TRANSFORMS["jpeg75"]
    builders: dict[str, Callable[[], Purifier]] = {
        "none": Purifier,
        "jpeg75": lambda: PixelPurifier("jpeg75", lambda pixels, seed: jpeg(pixels)),
        "noise-jpeg": lambda: PixelPurifier(
            "noise-jpeg", lambda pixels, seed: jpeg(gaussian_noise(pixels, config.noise_sigma, seed))),
        "noisy-upscale": lambda: PixelPurifier("noisy-upscale", lambda pixels, seed: noisy_upscale(
            pixels, config.upscale_factor, config.noise_sigma, config.upscale_filter, seed)),
        "diffpure": diffpure,
        "gridpure": lambda: GridPure(diffpure(), config.tile or resolution, config.tile_overlap),
        "reconstruct": reconstruct,
    }
    assert tuple(builders) == PURIFIERS, "config.PURIFIERS names these purifiers"
    unknown = [name for name in names if name not in builders]
    if unknown:
        raise ValueError(f"purifiers must come from {list(PURIFIERS)}, got {unknown}")
    return {name: builders[name]() for name in names}


def attackers_input(file: np.ndarray, transform: str, purifier: Purifier,
                    copy: Callable[[np.ndarray, str], np.ndarray], seed: int) -> np.ndarray:
    """What the editor gets from a protected ``file``: a platform's full-size re-encoding (``transform`` when it
    is one), the download, then ``purifier`` on the full-size file (``stage="file"``) or on the attacker's copy;
    ``copy(pixels, transform)`` makes that copy (the attacker's resize and the other transforms)."""
    if purifier.stage == "copy":
        return purifier(copy(file, transform), seed)
    if transform in FULL_SIZE_TRANSFORMS:
        file, transform = TRANSFORMS[transform](file), "none"
    return copy(purifier(file, seed), transform)
