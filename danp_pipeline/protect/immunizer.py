"""The Python API: protect photos in three lines.

    editor = load_editor("timbrooks/instruct-pix2pix")
    immunizer = Immunizer(editor, AttackConfig())
    results = immunizer.protect(photos, prompts=["put her in a prison cell"])

Photos of any size and mode: δ lives at each photo's full resolution, and the objective is computed
on the attacker's views of the protected photo (protect/views.py: resized to the editor's size with
the attacker's filters, aspect kept; optionally JPEG, blur, crop). Photos of one size are batched;
every output meets the L∞ guarantee. ``Immunizer([editor_a, editor_b], config)`` protects against
both editors at once (protect/ensemble.py).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..config import AttackConfig, validate_prompts
from ..imaging.codec import (
    DecodedImage,
    apply_delta,
    decode_image,
    linf_levels,
    psnr_db,
    to_tensor,
)
from . import ensemble
from .baselines import build_objective
from .models import EditorBundle
from .pgd import Objective, PGDResult, pgd, tie_channels, uniform_delta
from .views import View, ViewedObjective, attacker_views

logger = logging.getLogger(__name__)

PhotoLike = DecodedImage | Image.Image | np.ndarray | bytes | str | os.PathLike


@dataclass
class ProtectedImage:
    """One protected photo and what was measured on it."""

    pixels: np.ndarray                    # uint8 HxWx3, or HxW for grayscale sources
    alpha: np.ndarray | None
    linf_levels: int                      # measured max |out − in| in 8-bit levels
    psnr_db: float                        # protected vs original
    loss_first: float
    loss_last: float
    terms: dict[str, tuple[float, float]] = field(default_factory=dict)  # term -> (first, last)
    editor_size: tuple[int, int] = (0, 0)   # (w, h) the editor sees (the first attacker view)
    seconds: float = 0.0                  # share of the batch's optimization time
    steps: int = 0                        # PGD iterations run (0: no optimization, the ``random`` method)
    steps_skipped: int = 0                # of those, iterations whose step was skipped (non-finite gradient)

    def failure(self) -> str | None:
        """Why this is not a protection, or None. A protection took at least one finite step and
        changed the photo: a run whose every step was skipped, or whose photo came out unchanged,
        must not be recorded ``ok`` (a short run of a few finite steps is a protection)."""
        if self.steps and self.steps_skipped >= self.steps:
            return (f"no finite gradient in {self.steps} iteration(s): every step was skipped and the photo "
                    "was not protected (a half-precision overflow? try --attack-option precision=fp32)")
        if self.linf_levels == 0:
            return "protection left the photo unchanged (L∞ 0 levels): not protected"
        return None

    @property
    def image(self) -> Image.Image:
        """An 8-bit Pillow image (16-bit results are rounded; write them with imaging.formats.encode)."""
        pixels = self.pixels
        if pixels.dtype != np.uint8:
            pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
        img = Image.fromarray(pixels)
        if self.alpha is not None:
            img.putalpha(Image.fromarray(self.alpha))
        return img


def as_decoded(photo: PhotoLike, max_pixels: int = 40_000_000) -> DecodedImage:
    """Accept a decoded image, a PIL image, an HxW(x3) uint8 array, encoded bytes or a file path."""
    if isinstance(photo, DecodedImage):
        return photo
    if isinstance(photo, (str, os.PathLike)):
        with open(photo, "rb") as fh:
            return decode_image(fh.read(), max_pixels=max_pixels)
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim not in (2, 3):
            raise ValueError(f"array photos must be uint8 HxW or HxWx3, got {photo.dtype} {photo.shape}")
        photo = Image.fromarray(photo)
    if isinstance(photo, Image.Image):
        buf = io.BytesIO()
        photo.save(buf, format="PNG")
        photo = buf.getvalue()
    if isinstance(photo, bytes):
        return decode_image(photo, max_pixels=max_pixels)
    raise TypeError(f"cannot protect an object of type {type(photo).__name__}")


class Immunizer:
    """Computes protections against one frozen editor, or several at once (protect/ensemble.py: one δ,
    the weighted mean of their objectives; ``editor_weights`` default equal), with one attack
    configuration. Every editor must be on the same device."""

    def __init__(self, editor: EditorBundle | Sequence[EditorBundle], config: AttackConfig | None = None,
                 editor_weights: Sequence[float] | None = None) -> None:
        self.editors = [editor] if isinstance(editor, EditorBundle) else list(editor)
        if not self.editors:
            raise ValueError("an Immunizer needs at least one editor")
        devices = {str(e.device) for e in self.editors}
        if len(devices) > 1:
            raise ValueError(f"the editors of an ensemble must share one device, got {sorted(devices)}")
        self.editor = self.editors[0]
        self.editor_weights = ensemble.editor_weights(editor_weights, len(self.editors))
        self.config = (config or AttackConfig())

    def views(self, editor: EditorBundle | None = None) -> list[View]:
        """The attacker's views of ``editor`` (default the first) the optimization averages over (the
        config's filters × sizes × …)."""
        return attacker_views(self.config, (editor or self.editor).vae_scale_factor)

    def objective(self, x0: torch.Tensor, prompts: list[list[str]], seeds: list[int],
                  sizes: list[tuple[int, int]] | None = None) -> Objective:
        """The method's objective on the attacker's views of full-size photos x0 [B,3,H,W] (``sizes``:
        each photo's (h, w) when photos of different sizes are padded into x0); with several editors,
        their ensemble."""
        seed = self.config.seed * 1_000_003 + sum(seeds)

        def viewed(editor: EditorBundle) -> Objective:
            def build(seen: torch.Tensor) -> Objective:
                return build_objective(self.config.method, editor, self.config, prompts, seeds, seen)

            return ViewedObjective(build, x0, self.views(editor), seed=seed, sizes=sizes)

        if len(self.editors) == 1:
            return viewed(self.editor)
        return ensemble.EnsembleObjective([viewed(e) for e in self.editors], self.editor_weights, self.config.balance)

    def batch_key(self, height: int, width: int) -> tuple:
        """Photos with equal keys share UNet calls: every attacker view of every editor gives them the same
        size (one view drawn per iteration serves them all), and their areas are within a factor of √2 of
        each other, so padding them to the largest costs little memory. Equal full sizes always share."""
        views = tuple((v.for_size(height, width), v.size_for(height, width))
                      for editor in self.editors for v in self.views(editor))
        return views, int(2 * math.log2(height * width))

    def perturb(self, x0: torch.Tensor, prompts: list[list[str]], seeds: list[int],
                gray: list[bool] | None = None, sizes: list[tuple[int, int]] | None = None) -> PGDResult:
        """Run PGD on a batch of full-size photos x0 [B,3,H,W] in [0,1]; ``gray`` marks grayscale ones;
        ``sizes``: each photo's (h, w) in the top-left corner of x0 when they differ (padded)."""
        x0 = x0.to(self.editor.device, torch.float32)
        tied = None if gray is None else torch.tensor(gray, dtype=torch.bool)
        if self.config.method == "random":
            delta = uniform_delta(x0, self.config.eps, seeds)
            return PGDResult(delta if tied is None else tie_channels(delta, tied), {})
        return pgd(x0, self.objective(x0, prompts, seeds, sizes), self.config, seeds, tied)

    def protect(
        self,
        photos: list[PhotoLike] | PhotoLike,
        prompts: str | list[str] | list[list[str]],
        seeds: list[int] | None = None,
    ) -> list[ProtectedImage]:
        """Protect photos against edits by ``prompts`` (one list for all photos, or one list per photo)."""
        photos = photos if isinstance(photos, list) else [photos]
        per_photo = self._prompts_per_photo(prompts, len(photos))
        seeds = [self.config.seed] * len(photos) if seeds is None else list(seeds)
        if len(seeds) != len(photos):
            raise ValueError(f"got {len(seeds)} seeds for {len(photos)} photos")
        decoded = [as_decoded(p) for p in photos]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, img in enumerate(decoded):
            groups[self.batch_key(img.height, img.width)].append(i)
        results: list[ProtectedImage | None] = [None] * len(photos)
        for members in groups.values():
            start = time.perf_counter()
            x0, sizes = _padded([to_tensor(decoded[i], (decoded[i].width, decoded[i].height)) for i in members])
            out = self.perturb(x0, [per_photo[i] for i in members], [seeds[i] for i in members],
                               [decoded[i].grayscale for i in members], sizes)
            seen = self.views()[0].size_for(decoded[members[0]].height, decoded[members[0]].width)
            elapsed = (time.perf_counter() - start) / len(members)
            for j, i in enumerate(members):
                results[i] = self._finish(decoded[i], out, j, (seen[1], seen[0]), elapsed)
        return results  # type: ignore[return-value]

    def _finish(self, img: DecodedImage, out: PGDResult, j: int, size: tuple[int, int],
                seconds: float) -> ProtectedImage:
        pixels = apply_delta(img, out.delta[j, :, :img.height, :img.width].cpu(), self.config.eps)
        terms = {name: (float(h[0][j]), float(h[-1][j])) for name, h in out.history.items()}
        total = out.total()
        total_first, total_last = (float("nan"),) * 2 if total is None else (float(total[0, j]), float(total[-1, j]))
        steps = 0 if total is None else int(total.shape[0])
        skipped = 0 if out.skipped is None else int(out.skipped[j])
        return ProtectedImage(pixels, img.alpha, linf_levels(img, pixels), psnr_db(img, pixels),
                              total_first, total_last, terms, size, seconds, steps, skipped)

    @staticmethod
    def _prompts_per_photo(prompts: str | list[str] | list[list[str]], n: int) -> list[list[str]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts and all(isinstance(p, (list, tuple)) for p in prompts):
            if len(prompts) != n:
                raise ValueError(f"got {len(prompts)} prompt lists for {n} photos")
            return [list(validate_prompts(p)) for p in prompts]
        shared = list(validate_prompts(prompts))
        return [shared] * n


def _padded(photos: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]] | None]:
    """Photos [3,h,w] as one batch: stacked when their sizes are equal (sizes None), else each in the
    top-left corner of a zero batch of the largest height and width, with their sizes."""
    sizes = [tuple(p.shape[-2:]) for p in photos]
    if len(set(sizes)) == 1:
        return torch.stack(photos), None
    batch = torch.zeros(len(photos), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for i, (p, (h, w)) in enumerate(zip(photos, sizes)):
        batch[i, :, :h, :w] = p
    return batch, sizes

