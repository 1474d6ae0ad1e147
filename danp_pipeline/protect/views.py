"""The attacker's view of a protected photo, differentiable: resize (antialiased, aspect kept), and
optionally JPEG re-encoding, blur and crop, as an attacker's tools do before the editor sees it.

The perturbation δ lives at the photo's full resolution; the objective is computed on
``view(x0 + δ)`` at the editor's size, and its gradient flows back through the view to δ. The
resize is separable and matches Pillow's antialiased filters (box, bilinear, bicubic, lanczos):
for each output pixel the weights of the input pixels under the filter stretched by the
downscale factor, normalized, as ``Image.resize`` computes them; each pass is one matrix product
(its backward another), so its memory is the intermediate image, whatever the photo's size.

A :class:`View` is one concrete transform (one filter, one size, one JPEG quality …);
:func:`attacker_views` lists the set the config asks for, and the PGD loop draws one per iteration
(expectation over transformations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..config import AttackConfig
from .pgd import Objective

#: Pillow's filters: support radius at scale 1 and kernel.
FILTERS = ("box", "bilinear", "bicubic", "lanczos")


def _kernel(name: str, x: torch.Tensor) -> torch.Tensor:
    ax = x.abs()
    if name == "box":
        return ((x > -0.5) & (x <= 0.5)).to(x.dtype)
    if name == "bilinear":
        return (1 - ax).clamp(min=0)
    if name == "bicubic":   # a = -0.5, as Pillow
        a = -0.5
        return torch.where(ax < 1, ((a + 2) * ax - (a + 3)) * ax * ax + 1,
                           torch.where(ax < 2, (((ax - 5) * ax + 8) * ax - 4) * a, torch.zeros_like(ax)))
    if name == "lanczos":   # a = 3
        return torch.where(ax < 3, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(ax))
    raise ValueError(f"resize filter must be one of {list(FILTERS)}, got {name!r}")


_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}


@lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [out, K], weights [out, K]) of an antialiased 1-D resize from ``in_size`` to ``out_size``
    samples, computed as Pillow does (the filter widened by the downscale factor; weights normalized)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = _SUPPORT[name] * stretch
    taps = int(math.ceil(support)) * 2 + 1
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = torch.floor(centre - support + 0.5).long().clamp(0, in_size - 1)
    index = first[:, None] + torch.arange(taps)[None, :]
    valid = index < in_size
    distance = (index.double() + 0.5 - centre[:, None]) / stretch
    weight = _kernel(name, distance) * valid
    weight = weight / weight.sum(dim=1, keepdim=True)
    return index.clamp(max=in_size - 1), weight.float()


def resize(x: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """Antialiased, differentiable resize of ``x`` [B,C,H,W] to ``size`` = (h, w) with a Pillow filter."""
    h, w = size
    if (h, w) == tuple(x.shape[-2:]):
        return x
    # As Pillow: the horizontal pass first, its result clipped to the pixel range (an 8-bit image
    # cannot hold a filter's overshoot), then the vertical pass, clipped again.
    return _resize_axis(_resize_axis(x, -1, w, name).clamp(0, 1), -2, h, name).clamp(0, 1)


@lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int, name: str) -> torch.Tensor:
    """The 1-D resize as a dense [out, in] matrix (rows: :func:`resize_taps`' weights)."""
    index, weight = resize_taps(in_size, out_size, name)
    matrix = torch.zeros(out_size, in_size)
    return matrix.scatter_add_(1, index, weight)


def _resize_axis(x: torch.Tensor, dim: int, out: int, name: str) -> torch.Tensor:
    """One pass as a matrix product: on a CPU or GPU a dense product beats gathering the taps one by one
    (a 6000-pixel side reduced to 512 has 2·3·11.7 ≈ 71 Lanczos taps), and its backward is one product too."""
    if x.shape[dim] == out:
        return x
    matrix = resize_matrix(x.shape[dim], out, name).to(x.device, x.dtype)
    if dim in (-1, x.ndim - 1):
        return x @ matrix.T
    return matrix @ x


def editor_size(height: int, width: int, long_side: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The attacker's resize of an (h, w) photo to ``long_side`` with its aspect ratio kept, and the crop
    of that to multiples of ``multiple`` (centred); returns ((h', w'), (crop_h, crop_w))."""
    scale = long_side / max(height, width)
    rh, rw = max(multiple, round(height * scale)), max(multiple, round(width * scale))
    return (rh, rw), (rh - rh % multiple, rw - rw % multiple)


@dataclass(frozen=True)
class View:
    """One attacker's path from the full-size photo to what the editor sees."""

    filter: str = "lanczos"
    long_side: int = 512
    multiple: int = 8
    jpeg_quality: int = 0          # 0 = no JPEG re-encoding before the resize
    blur_sigma: float = 0.0        # Gaussian blur (pixels at the editor's size) after the resize
    crop: float = 0.0              # fraction cut from each side (centred) before the resize

    def for_size(self, height: int, width: int) -> "View":
        """The same view, with the filter that does not matter dropped: when the photo already has the
        editor's size (nothing is resampled), every filter gives the same view."""
        source = (height, width)
        if self.crop:
            source = (height - 2 * int(height * self.crop), width - 2 * int(width * self.crop))
        resized, _ = editor_size(*source, self.long_side, self.multiple)
        return replace(self, filter="none") if resized == source else self

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the editor sees of an (height, width) photo through this view."""
        if self.crop:
            height, width = height - 2 * int(height * self.crop), width - 2 * int(width * self.crop)
        return editor_size(height, width, self.long_side, self.multiple)[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.jpeg_quality:
            from .jpeg import jpeg_round_trip

            x = jpeg_round_trip(x, self.jpeg_quality)
        if self.crop:
            dh, dw = int(x.shape[-2] * self.crop), int(x.shape[-1] * self.crop)
            x = x[..., dh:x.shape[-2] - dh, dw:x.shape[-1] - dw]
        (rh, rw), (ch, cw) = editor_size(x.shape[-2], x.shape[-1], self.long_side, self.multiple)
        y = x if self.filter == "none" else resize(x, (rh, rw), self.filter)
        top, left = (rh - ch) // 2, (rw - cw) // 2
        y = y[..., top:top + ch, left:left + cw]
        if self.blur_sigma:
            y = gaussian_blur(y, self.blur_sigma)
        return y


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def attacker_views(cfg: AttackConfig, multiple: int) -> list[View]:
    """Every combination the config asks for: filters × sizes × JPEG qualities × blurs × crops."""
    sizes = sorted({max(multiple, round(cfg.resolution * s)) for s in cfg.view_scales})
    qualities = (0, *cfg.view_jpeg) if cfg.view_jpeg else (0,)
    blurs = (0.0, *cfg.view_blur) if cfg.view_blur else (0.0,)
    crops = (0.0, cfg.view_crop) if cfg.view_crop else (0.0,)
    return [View(f, s, multiple, q, b, c) for f in cfg.view_filters for s in sizes for q in qualities
            for b in blurs for c in crops]


class ViewedObjective:
    """An objective on what the attacker's editor sees of full-size photos x [B,3,H,W]: each call draws
    one view (seeded: expectation over transformations across iterations), evaluates the inner
    objective on view(x), and pulls each term's gradient back through the view to x.

    Photos of different sizes share it when every view gives them the same size (Immunizer.batch_key):
    they are padded into x, ``sizes`` gives each photo's (h, w) in its top-left corner, and each is
    viewed from its own region (the padding gets no gradient, so its δ stays 0)."""

    def __init__(self, build: Callable[[torch.Tensor], Objective], x0: torch.Tensor, views: list[View],
                 seed: int, sizes: list[tuple[int, int]] | None = None) -> None:
        if not views:
            raise ValueError("at least one attacker view is needed")
        # Views that coincide on photos of this size (no resampling: the filter does not matter) are one.
        self.build, self.x0, self.sizes = build, x0, sizes
        self.views = list(dict.fromkeys(v.for_size(*(sizes[0] if sizes else x0.shape[-2:])) for v in views))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.inner: dict[View, Objective] = {}
        self.weights = dict(self._objective(self.views[0]).weights)

    def _objective(self, view: View) -> Objective:
        """The inner objective of one view, built on that view of the clean photos (clean branch, masks)."""
        if view not in self.inner:
            with torch.no_grad():
                self.inner[view] = self.build(self._see(view, self.x0))
        return self.inner[view]

    def _see(self, view: View, x: torch.Tensor) -> torch.Tensor:
        if self.sizes is None:
            return view(x)
        return torch.cat([view(x[i:i + 1, :, :h, :w]) for i, (h, w) in enumerate(self.sizes)])

    def draw(self) -> View:
        return self.views[int(torch.randint(len(self.views), (1,), generator=self.generator))]

    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        view = self.draw()
        x = x.detach().requires_grad_(True)
        seen = self._see(view, x)
        grads_seen, values = self._objective(view).gradients(seen.detach())
        names = list(grads_seen)
        grads = {}
        for j, name in enumerate(names):
            (g,) = torch.autograd.grad(seen, x, grads_seen[name].to(seen.dtype), retain_graph=j < len(names) - 1,
                                       allow_unused=True)
            grads[name] = torch.zeros_like(x) if g is None else g
        return grads, values
