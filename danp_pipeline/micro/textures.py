"""Textured edit world: the micro world's scenes at 128x128 with natural-image statistics.

The flat micro world (:mod:`.world`) is a poor proxy for photos: an autoencoder trained on flat colours
learns to snap any perturbation back to them, so it filters out noise and attacks alike. Here the same
scenes (the same seeds give the same objects, positions and instructions) are drawn with texture that a
VAE must carry to reconstruct them:

* backgrounds: the flat world's pale background plus multi-scale 1/f noise in luminance and colour
  (natural images have power spectra close to 1/f^2) under a soft directional light, or a low-contrast
  patch of one of the bundled sample photos (``assets/samples``);
* objects: the palette colour under a soft light gradient, with their own 1/f texture; an edited object
  keeps its texture and light (a recoloured or reshaped object is the same material), so ground truth is
  exact.

Edits are drawn by :func:`.world.sample_edit` on the flat scene (same kinds, wordings and objects) and
re-rendered here; :func:`edit_success` adapts the success rule to texture by judging the picture at the
flat world's scale (2x2 block means) against colour references measured on the ground truth.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from . import world
from .world import EditKind, EditSample, Split, Wordings, WorldObject

SIZE = 128
#: The proxy editors' VAE factor (Stable Diffusion's): 128x128 -> 16x16 latents.
LATENT_FACTOR = 8
#: Object coordinates are in the flat world's 64-pixel frame; the textured world draws them at SIZE.
SCALE = SIZE // world.SIZE
SAMPLES_DIR = Path(__file__).parent.parent / "assets" / "samples"
PHOTO_BACKGROUND_P = 0.35


@dataclass
class TexturedScene:
    """A textured scene: the flat scene it is drawn from (objects, instructions), its background and
    image (uint8 SIZE x SIZE x 3) and the float RGB field of every object (its colour, light and texture,
    over the whole picture, before its shape cuts it out)."""

    flat: world.Scene
    background: np.ndarray
    image: np.ndarray
    fields: list[np.ndarray]

    @property
    def seed(self) -> int:
        return self.flat.seed

    @property
    def objects(self) -> list[WorldObject]:
        return self.flat.objects


# ----------------------------------------------------------------------------- texture


def fractal_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-variance noise (size x size) with amplitude spectrum 1/f^beta: beta = 1 is the
    power spectrum of natural images; larger is smoother."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = np.fft.fft2(white) / radius**beta
    spectrum[0, 0] = 0.0
    noise = np.real(np.fft.ifft2(spectrum))
    return noise / max(float(noise.std()), 1e-8)


def _light(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A soft directional light: 1 + strength * (a ramp in [-1, 1] along a random direction)."""
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    return 1.0 + strength * (np.cos(ang) * xx + np.sin(ang) * yy) / np.sqrt(2)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The bundled sample photos as float RGB arrays (empty when none are installed)."""
    return tuple(np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sorted(SAMPLES_DIR.glob("*.jpg")))


def _photo_patch(rng: np.random.Generator, size: int) -> np.ndarray | None:
    photos = _photos()
    if not photos:
        return None
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(96, h, w), min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(np.uint8(photo[top:top + side, left:left + side]))
    patch = np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.float64)
    return patch[:, ::-1] if rng.random() < 0.5 else patch


def _background(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """The flat world's pale background ``base`` (float HxWx3) made textured: a low-contrast, partly
    desaturated photo patch, or 1/f noise in luminance and colour, under a soft light."""
    size = base.shape[0]
    patch = _photo_patch(rng, size) if rng.random() < PHOTO_BACKGROUND_P else None
    if patch is not None:
        grey = patch.mean(axis=-1, keepdims=True)
        patch = grey + rng.uniform(0.2, 0.7) * (patch - grey)
        detail = rng.uniform(0.4, 0.7) * (patch - patch.mean(axis=(0, 1)))
        return base + detail
    lum = rng.uniform(8.0, 28.0) * fractal_noise(rng, size, rng.uniform(0.8, 1.3))
    chroma = np.stack([fractal_noise(rng, size, rng.uniform(1.0, 1.6)) for _ in range(3)], axis=-1)
    light = _light(rng, size, rng.uniform(0.0, 0.15))
    return base * light[..., None] + lum[..., None] + rng.uniform(2.0, 8.0) * chroma


def _object_field(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An object's material, independent of its colour: (light HxW, texture HxW in colour units)."""
    light = _light(rng, size, rng.uniform(0.05, 0.25))
    texture = rng.uniform(6.0, 20.0) * fractal_noise(rng, size, rng.uniform(0.9, 1.5))
    return light, texture


def _paint(color: str, material: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    light, texture = material
    return np.array(world.PALETTE[color], dtype=np.float64) * light[..., None] + texture[..., None]


# ----------------------------------------------------------------------------- rendering


def _coverage(obj: WorldObject) -> np.ndarray:
    return world._shape_mask(obj, (SIZE, SIZE))


def _compose(background: np.ndarray, objects: list[WorldObject | None], materials: list) -> np.ndarray:
    """Paint the objects (None: removed) with their materials, in order, over a float background."""
    out = background.copy()
    for obj, material in zip(objects, materials):
        if obj is not None:
            cov = _coverage(obj)[..., None]
            out = out * (1 - cov) + _paint(obj.color, material) * cov
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _materials(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_object_field(np.random.default_rng([seed, 7, 128, i]), SIZE) for i in range(n)]


def render_scene(seed: int) -> TexturedScene:
    """The textured scene of ``seed``: the flat scene's objects at SIZE x SIZE with textures."""
    flat = world.render_scene(seed)
    rng = np.random.default_rng([seed, 7])  # the flat world's stream: the same pale background, drawn at SIZE
    base = world._background(rng, (SIZE, SIZE))
    bg = np.clip(_background(np.random.default_rng([seed, 7, 128]), base), 0, 255)
    materials = _materials(seed, len(flat.objects))
    image = _compose(bg, list(flat.objects), materials)
    return TexturedScene(flat, np.round(bg).astype(np.uint8), image, materials)


def object_mask(obj: WorldObject) -> np.ndarray:
    """Boolean mask (coverage >= 0.5) of one object at SIZE x SIZE."""
    return _coverage(obj) >= 0.5


# ----------------------------------------------------------------------------- edits


def sample_edit(scene: TexturedScene, rng: np.random.Generator, wordings: Wordings = "train",
                kind: EditKind | None = None) -> EditSample:
    """One edit of ``scene``: drawn as the flat world draws it (object, kind, wording), rendered textured;
    the edited object keeps its material."""
    flat = world.sample_edit(scene.flat, rng, wordings, kind)
    i = scene.objects.index(flat.source_object)
    objects: list[WorldObject | None] = [flat.target_object if j == i else o for j, o in enumerate(scene.objects)]
    target = _compose(scene.background.astype(np.float64), objects, scene.fields)
    source_mask = object_mask(flat.source_object)
    return replace(flat, source=scene.image, target=target, background=scene.background, source_mask=source_mask,
                   target_mask=object_mask(flat.target_object) if flat.target_object else np.zeros_like(source_mask),
                   extra={**flat.extra, "world": "textured"})


def make_split(split: Split, n: int, seed: int = 0, wordings: Wordings | None = None) -> list[EditSample]:
    """``n`` textured edit samples: the same scenes and edits as :func:`.world.make_split` (same seeds)."""
    return world.edits_of_split(split, n, seed, wordings, lambda s: sample_edit, render_scene)


# ----------------------------------------------------------------------------- success rule


@dataclass(frozen=True)
class SuccessThresholds:
    """Thresholds of :func:`edit_success` (0-255 colour units, at the judged scale of 64x64)."""

    min_iou: float = 0.6
    shape_margin: float = 0.05
    max_remaining: float = 0.25
    # Texture the editor's VAE cannot carry is not the edit's fault: proxy-ip2p's VAE alone reconstructs training
    # sources to an outside error of 11 (median) and up to 18 at this scale (benchmarks/results/proxy_design.md).
    max_outside_mae: float = 20.0
    dilate: int = 2
    erode: int = 1


def _blocks(a: np.ndarray) -> np.ndarray:
    """2x2 block means: the textured picture at the flat world's scale (64x64)."""
    a = a.astype(np.float64)
    h, w = a.shape[:2]
    return a.reshape(h // SCALE, SCALE, w // SCALE, SCALE, *a.shape[2:]).mean(axis=(1, 3))


def _closer(img: np.ndarray, ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    return np.linalg.norm(img - ref, axis=-1) < np.linalg.norm(img - other, axis=-1)


def edit_success(edit_uint8: np.ndarray, sample: EditSample, th: SuccessThresholds = SuccessThresholds()
                 ) -> tuple[bool, dict[str, float | bool | str]]:
    """Judge an edited textured image against the sample's ground truth, at 64x64 (2x2 block means).

    The flat world's checks (:func:`.world.edit_success`), with colour references taken from the ground
    truth, because texture and light move an object's pixels away from its palette colour:

    * ``color``: the edit's mean colour in the (eroded) probe mask is nearest, among the palette and the
      true background's mean there, to the asked colour (the background for remove);
    * ``shape``: pixels of the dilated edit region closer to the asked object's mean colour (measured on
      the target) than to the true background pixel form the recovered object: IoU >= ``min_iou`` with the
      target mask, and for reshape better than with the source shape by ``shape_margin``; for remove, at
      most ``max_remaining`` of the source mask is closer to the old object's mean colour than to the
      background;
    * ``preserve``: outside the region, mean absolute error to the source <= ``max_outside_mae``.
    """
    if edit_uint8.shape != sample.source.shape:
        raise ValueError(f"edit_uint8 must have shape {sample.source.shape}, got {edit_uint8.shape}")
    edit, src, bg, tgt = (_blocks(a) for a in (edit_uint8, sample.source, sample.background, sample.target))
    src_mask, tgt_mask = _blocks(sample.source_mask) >= 0.5, _blocks(sample.target_mask) >= 0.5
    d: dict[str, float | bool | str] = {}

    probe = tgt_mask if sample.kind != "remove" else src_mask
    probe_e = world._erode(probe, th.erode)
    if probe_e.sum() < 4:
        probe_e = probe
    expected = sample.expected_color or "background"
    got = world._nearest_color(edit[probe_e].mean(axis=0), bg[probe_e].mean(axis=0))
    d["color_got"], d["color_expected"] = got, expected
    d["color_ok"] = got == expected

    region = world._dilate(src_mask | tgt_mask, th.dilate)
    if sample.kind == "remove":
        old = src[src_mask].mean(axis=0)
        remaining = float((_closer(edit, old, bg) & src_mask).sum() / max(src_mask.sum(), 1))
        d["remaining"] = remaining
        d["shape_ok"] = remaining <= th.max_remaining
    else:
        obj = region & _closer(edit, tgt[tgt_mask].mean(axis=0), bg)
        iou_t = world._iou(obj, tgt_mask)
        d["iou_target"] = iou_t
        ok = iou_t >= th.min_iou
        if sample.kind == "reshape":
            iou_s = world._iou(obj, src_mask)
            d["iou_source"] = iou_s
            ok = ok and iou_t >= iou_s + th.shape_margin
        d["shape_ok"] = ok

    outside = ~region
    mae = float(np.abs(edit[outside] - src[outside]).mean())
    d["outside_mae"] = mae
    d["preserve_ok"] = mae <= th.max_outside_mae
    d["success"] = success = bool(d["color_ok"] and d["shape_ok"] and d["preserve_ok"])
    return success, d
