"""The inpainting masks the protection averages over: the attacker draws the mask, the owner cannot know it.

An inpainting editor repaints the pixels under a mask and keeps the rest. The protection of a photo against
such an editor averages its objective over masks drawn from this distribution (``AttackConfig.inpaint_masks``
of them per photo per PGD iteration, from the photo's own seeded generator; protect/diffusion.py), and the
evaluation's attacker draws its mask from it too (evaluation/editing.py). Each mask is drawn as follows:

1. a **region** around where a photo's subject usually is: its centre uniform in the middle half of the frame
   on both axes, its area a share of the frame uniform in ``AttackConfig.inpaint_mask_area`` (default 10–50 %),
   its aspect ratio (width / height) log-uniform in [1/2, 2];
2. its **shape**, box or blob with equal probability: the axis-aligned box of that area and aspect, or a
   blob — the ellipse of that area and aspect with its radius modulated by the first three angular
   harmonics, each of a random phase and an amplitude uniform in ±0.15 of the radius;
3. what is **repainted**, with equal probability: the region (the subject: "replace the person"), or
   everything but the region (the background: "put her somewhere else").

The region is cut to the frame and always holds the pixel under its centre, so that neither a mask nor its
complement is empty. Masks are binary, 1 = repainted and 0 = kept, as diffusers' inpainting pipelines read
them (they binarize at 0.5). The pipeline hands its VAE the photo with the repainted pixels set to 0 on its
[−1, 1] scale: mid-grey, :data:`MASKED_VALUE` on the [0, 1] scale of :func:`mask_out`.
"""

from __future__ import annotations

import math

import torch

#: What the pipeline puts under the mask before encoding the photo, on the [0, 1] pixel scale.
MASKED_VALUE = 0.5
#: Random numbers one mask takes from the generator (its draws do not depend on its shape).
DRAWS_PER_MASK = 12
HARMONICS = 3
HARMONIC_AMPLITUDE = 0.15
MAX_ASPECT = 2.0


def draw_masks(generator: torch.Generator, count: int, height: int, width: int,
               area: tuple[float, float]) -> torch.Tensor:
    """``count`` masks [count, 1, height, width] (float32, 1 = repainted) drawn from ``generator`` as the
    module docstring says; ``area`` is the region's share of the frame, (low, high)."""
    if count < 1 or height < 1 or width < 1:
        raise ValueError(f"need count, height and width >= 1, got {count}, {height}, {width}")
    if not 0 < area[0] <= area[1] < 1:
        raise ValueError(f"mask area must satisfy 0 < low <= high < 1, got {area!r}")
    u = torch.rand(count, DRAWS_PER_MASK, generator=generator, dtype=torch.float64)
    ys = (torch.arange(height, dtype=torch.float64) + 0.5)[:, None]
    xs = (torch.arange(width, dtype=torch.float64) + 0.5)[None, :]
    masks = []
    for background, blob, cx, cy, share, aspect, *harmonics in u.tolist():
        cx, cy = width * (0.25 + 0.5 * cx), height * (0.25 + 0.5 * cy)
        pixels = (area[0] + (area[1] - area[0]) * share) * height * width
        ratio = MAX_ASPECT ** (2 * aspect - 1)
        half_w, half_h = math.sqrt(pixels * ratio) / 2, math.sqrt(pixels / ratio) / 2
        if blob < 0.5:
            region = ((xs - cx).abs() <= half_w) & ((ys - cy).abs() <= half_h)
        else:
            region = _blob(xs - cx, ys - cy, pixels, ratio, harmonics)
        centre = torch.zeros(height, width, dtype=torch.bool)
        centre[min(int(cy), height - 1), min(int(cx), width - 1)] = True
        region = region | centre
        masks.append(~region if background < 0.5 else region)
    return torch.stack(masks)[:, None].float()


def _blob(dx: torch.Tensor, dy: torch.Tensor, pixels: float, ratio: float, harmonics: list[float]) -> torch.Tensor:
    """The ellipse of ``pixels`` area and aspect ``ratio`` around (0, 0), its radius modulated by low harmonics
    (amplitudes and phases from the six uniform numbers ``harmonics``)."""
    a, b = math.sqrt(pixels * ratio / math.pi), math.sqrt(pixels / (ratio * math.pi))
    u, v = dx / a, dy / b
    theta = torch.atan2(v, u)
    radius = torch.ones_like(theta)
    for k in range(HARMONICS):
        amplitude = HARMONIC_AMPLITUDE * (2 * harmonics[2 * k] - 1)
        radius = radius + amplitude * torch.cos((k + 1) * theta + 2 * math.pi * harmonics[2 * k + 1])
    return (u * u + v * v).sqrt() <= radius


def mask_out(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The photos x [B,3,H,W] in [0,1] with each of their masks [B,K,1,H,W] applied as the inpainting pipeline
    does before its VAE (repainted pixels mid-grey): [B·K,3,H,W], image by image."""
    masks = masks.to(x.dtype)
    return (x[:, None] * (1 - masks) + MASKED_VALUE * masks).flatten(0, 1)
