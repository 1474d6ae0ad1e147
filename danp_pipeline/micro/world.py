"""Micro edit world: procedural 64x64 scenes, templated edit instructions and ground truth.

A scene holds 2-3 flat-coloured shapes (circle, square, triangle) on a light background
(solid, gradient or soft stripes). An edit names one object unambiguously by colour and shape
("the red circle") and asks to recolour it, change its shape, or remove it. Every sample carries
the source image, the instruction, the ground-truth target image, the background alone and the
edited object's source/target masks, so an edit's success can be judged exactly
(:func:`edit_success`).

Everything is deterministic from integer seeds and uses numpy + PIL only.

A scene lives in a :class:`Frame`: by default the 64x64 square the editors were trained on; other
frames (the attacker's resized copy of a 3:2, 16:9 or 4:5 photo, cropped to the editor's multiple) place
the same scene's objects inside the window the editor gets, and :func:`render_scene` draws the scene
at any pixel size (a full-size photo of it) in the frame's coordinates.

Splits: scenes for ``"train"`` use seeds ``[0, 10**6)``, ``"heldout"`` scenes use seeds
``[10**6, 2*10**6)``; instruction wordings are split into ``"train"`` and ``"heldout"`` templates.
"""

from __future__ import annotations

import colorsys
import logging
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SIZE = 64
SUPERSAMPLE = 4
#: The micro-editors' VAE factor: what an editor gets has sides that are multiples of it.
LATENT_FACTOR = 4
#: A frame's window must hold the largest object (radius 11) with its 2-pixel margin, and a bit more.
MIN_WINDOW = 30

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "remove")

EditKind = Literal["recolor", "reshape", "remove"]
Wordings = Literal["train", "heldout"]
Split = Literal["train", "heldout"]

# {c}: object colour, {s}: object shape, {c2}: new colour, {s2}: new shape.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "recolor": ("make the {c} {s} {c2}", "colour the {c} {s} {c2}"),
        "reshape": ("turn the {c} {s} into a {s2}", "make the {c} {s} a {s2}"),
        "remove": ("remove the {c} {s}", "erase the {c} {s}"),
    },
    "heldout": {
        "recolor": ("paint the {c} {s} {c2}", "turn the {c} {s} {c2}"),
        "reshape": ("change the {c} {s} to a {s2}", "make the {c} {s} into a {s2}"),
        "remove": ("delete the {c} {s}", "take away the {c} {s}"),
    },
}

SCENE_SEED_RANGES: dict[str, tuple[int, int]] = {"train": (0, 10**6), "heldout": (10**6, 2 * 10**6)}


def vocabulary() -> list[str]:
    """All words that can occur in an instruction (every template, colour and shape)."""
    words: set[str] = set(PALETTE) | set(SHAPES)
    for per_kind in TEMPLATES.values():
        for templates in per_kind.values():
            for t in templates:
                words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)


@dataclass(frozen=True)
class WorldObject:
    """One shape: colour name, shape name, centre (x, y) and half-extent in pixels."""

    color: str
    shape: str
    cx: float
    cy: float
    r: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Frame:
    """Where a scene lives, in editor pixels: the attacker's resized copy of the photo (``height`` x
    ``width``) and the ``window`` (top, left, height, width) of it the editor gets after the crop to its
    multiple. Objects keep inside the window; ground truth (:class:`EditSample`) is the window."""

    height: int = SIZE
    width: int = SIZE
    window: tuple[int, int, int, int] = (0, 0, SIZE, SIZE)

    def __post_init__(self) -> None:
        top, left, h, w = self.window
        if self.height < 1 or self.width < 1 or top < 0 or left < 0 or top + h > self.height \
                or left + w > self.width or min(h, w) < MIN_WINDOW:
            raise ValueError(f"frame {self.height}x{self.width} with window {self.window}: the window must lie "
                             f"inside the frame and be at least {MIN_WINDOW} pixels on each side (the objects' size)")

    @classmethod
    def centred(cls, height: int, width: int, crop: tuple[int, int]) -> Frame:
        """A ``height`` x ``width`` frame whose window is its centred ``crop`` = (h, w)."""
        ch, cw = crop
        return cls(height, width, ((height - ch) // 2, (width - cw) // 2, ch, cw))

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """The window of an image rendered at the frame's size."""
        top, left, h, w = self.window
        return pixels[top:top + h, left:left + w]


SQUARE = Frame()


@dataclass
class Scene:
    """A rendered scene: its seed, objects, background image and composite image (uint8 HxWx3), and the
    frame its object coordinates are in."""

    seed: int
    objects: list[WorldObject]
    background: np.ndarray
    image: np.ndarray
    frame: Frame = SQUARE


@dataclass
class EditSample:
    """A source scene, an instruction, and the ground truth of the requested edit."""

    scene_seed: int
    kind: EditKind
    instruction: str
    wording: Wordings
    source: np.ndarray  # uint8 (h, w, 3): the frame's window, (64, 64, 3) in the square frame
    target: np.ndarray  # uint8 (h, w, 3)
    background: np.ndarray  # uint8 (h, w, 3), the scene without any object
    source_mask: np.ndarray  # bool (h, w): edited object in the source
    target_mask: np.ndarray  # bool (h, w): edited object in the target (empty for remove)
    source_object: WorldObject
    target_object: WorldObject | None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def expected_color(self) -> str | None:
        """Palette colour the edited object must have after the edit (None for remove)."""
        return None if self.target_object is None else self.target_object.color


# ----------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, shape: tuple[int, int] = (SIZE, SIZE), frame: Frame = SQUARE
                ) -> np.ndarray:
    """Light, low-saturation background: solid, linear gradient or soft stripes (float HxWx3), drawn at
    ``shape`` = (h, w) pixels of ``frame`` (the same picture at every size; coordinates in units of the
    square frame's side)."""

    def pale() -> np.ndarray:
        hue = rng.uniform(0, 1)
        sat = rng.uniform(0.0, 0.25)
        val = rng.uniform(0.6, 0.95)
        return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float64) * 255.0

    h, w = shape
    yy = (np.arange(h, dtype=np.float64) / max(h - 1, 1) * ((frame.height - 1) / (SIZE - 1)))[:, None]
    xx = (np.arange(w, dtype=np.float64) / max(w - 1, 1) * ((frame.width - 1) / (SIZE - 1)))[None, :]
    kind = rng.choice(["solid", "gradient", "stripes"], p=[0.35, 0.4, 0.25])
    a = pale()
    if kind == "solid":
        bg = np.broadcast_to(a, (h, w, 3)).copy()
    elif kind == "gradient":
        b = pale()
        ang = rng.uniform(0, 2 * np.pi)
        t = np.cos(ang) * xx + np.sin(ang) * yy
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        bg = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    else:
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(12, 24)
        amp = rng.uniform(6, 14)
        phase = rng.uniform(0, 2 * np.pi)
        s = np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) * SIZE / period + phase)
        bg = a[None, None] + amp * s[..., None]
    return np.clip(bg, 0, 255)


def _shape_mask(obj: WorldObject, shape: tuple[int, int] = (SIZE, SIZE), frame: Frame = SQUARE) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (float HxW, ``shape`` pixels of ``frame``) of one object, by 4x
    supersampling."""
    h, w = shape
    img = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    d = ImageDraw.Draw(img)
    cx, rx = (v * SUPERSAMPLE * w / frame.width for v in (obj.cx, obj.r))
    cy, ry = (v * SUPERSAMPLE * h / frame.height for v in (obj.cy, obj.r))
    if obj.shape == "circle":
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif obj.shape == "square":
        qx, qy = rx * 0.88, ry * 0.88  # equal-area-ish to the circle, so shape is not confounded with size
        d.rectangle([cx - qx, cy - qy, cx + qx, cy + qy], fill=255)
    elif obj.shape == "triangle":
        d.polygon([(cx, cy - ry * 1.05), (cx - rx * 1.1, cy + ry * 0.85), (cx + rx * 1.1, cy + ry * 0.85)], fill=255)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {obj.shape!r}")
    small = img.resize((w, h), Image.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def compose(background: np.ndarray, objects: list[WorldObject], frame: Frame = SQUARE) -> np.ndarray:
    """Paint ``objects`` (coordinates in ``frame``) in order over a float background of any size; returns
    uint8 HxWx3."""
    out = background.astype(np.float64).copy()
    for obj in objects:
        cov = _shape_mask(obj, out.shape[:2], frame)[..., None]
        out = out * (1 - cov) + np.array(PALETTE[obj.color], dtype=np.float64) * cov
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def object_mask(obj: WorldObject, frame: Frame = SQUARE) -> np.ndarray:
    """Boolean mask (coverage >= 0.5) of one object in the frame's window."""
    return frame.crop(_shape_mask(obj, (frame.height, frame.width), frame) >= 0.5)


def _place_objects(rng: np.random.Generator, n: int, frame: Frame = SQUARE) -> list[WorldObject]:
    top, left, height, width = frame.window
    combos = [(c, s) for c in PALETTE for s in SHAPES]
    picks = rng.choice(len(combos), size=n, replace=False)
    objs: list[WorldObject] = []
    for idx in picks:
        color, shape = combos[int(idx)]
        for _ in range(200):
            r = float(rng.uniform(8.0, 11.0))
            cx = float(rng.uniform(left + r + 2, left + width - r - 2))
            cy = float(rng.uniform(top + r + 2, top + height - r - 2))
            # Clearance accounts for the largest footprint of any shape (triangle ~1.1 r).
            if all(np.hypot(cx - o.cx, cy - o.cy) > 1.25 * (r + o.r) + 2 for o in objs):
                objs.append(WorldObject(color, shape, cx, cy, r))
                break
    return objs


def render_scene(seed: int, size: int | tuple[int, int] | None = None, frame: Frame = SQUARE) -> Scene:
    """Render the scene for ``seed`` (2-3 non-overlapping objects, unique colour+shape names) in ``frame``,
    at the frame's size or at ``size`` pixels ((h, w), or a side for the square frame): a full-size photo
    of the same scene."""
    if size is None:
        shape = (frame.height, frame.width)
    elif isinstance(size, int):
        if frame.height != frame.width:
            raise ValueError(f"size must be (height, width) for a {frame.height}x{frame.width} frame, got {size}")
        shape = (size, size)
    else:
        shape = (int(size[0]), int(size[1]))
    rng = np.random.default_rng([seed, 7])
    bg = _background(rng, shape, frame)
    n = int(rng.integers(2, 4))
    objs = _place_objects(rng, n, frame)
    while len(objs) < 2:  # unlikely (a narrow window can fail a third object's clearance); re-place deterministically
        objs = _place_objects(rng, n, frame)
    return Scene(seed=seed, objects=objs, background=np.round(bg).astype(np.uint8), image=compose(bg, objs, frame),
                 frame=frame)


# ----------------------------------------------------------------------------- edits


def sample_edit(
    scene: Scene,
    rng: np.random.Generator,
    wordings: Wordings = "train",
    kind: EditKind | None = None,
) -> EditSample:
    """Draw one edit of ``scene`` (rendered at its frame's size): object, edit kind (unless given),
    parameters and wording; images and masks are the frame's window."""
    if wordings not in TEMPLATES:
        raise ValueError(f"wordings must be 'train' or 'heldout', got {wordings!r}")
    kind = kind or EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
    i = int(rng.integers(len(scene.objects)))
    src = scene.objects[i]
    names = {o.name for o in scene.objects}
    tgt: WorldObject | None
    if kind == "recolor":
        options = [c for c in PALETTE if c != src.color and f"{c} {src.shape}" not in names]
        tgt = WorldObject(options[int(rng.integers(len(options)))], src.shape, src.cx, src.cy, src.r)
    elif kind == "reshape":
        options = [s for s in SHAPES if s != src.shape and f"{src.color} {s}" not in names]
        if not options:  # every other shape of this colour exists: fall back to recolour
            return sample_edit(scene, rng, wordings, "recolor")
        tgt = WorldObject(src.color, options[int(rng.integers(len(options)))], src.cx, src.cy, src.r)
    elif kind == "remove":
        tgt = None
    else:
        raise ValueError(f"kind must be one of {EDIT_KINDS}, got {kind!r}")
    templates = TEMPLATES[wordings][kind]
    instruction = _instruction(templates[int(rng.integers(len(templates)))], src, tgt)
    # Painting order is kept: the edited object stays at its index (or is dropped on remove).
    new_objs = [tgt if j == i else o for j, o in enumerate(scene.objects)]
    new_objs = [o for o in new_objs if o is not None]
    frame = scene.frame
    if scene.image.shape[:2] != (frame.height, frame.width):
        raise ValueError(f"edits are drawn on a scene rendered at its frame's size {frame.height}x{frame.width}, "
                         f"got an image of {scene.image.shape[0]}x{scene.image.shape[1]}")
    target = compose(scene.background.astype(np.float64), new_objs, frame)
    source_mask = object_mask(src, frame)
    return EditSample(
        scene_seed=scene.seed,
        kind=kind,
        instruction=instruction,
        wording=wordings,
        source=frame.crop(scene.image),
        target=frame.crop(target),
        background=frame.crop(scene.background),
        source_mask=source_mask,
        target_mask=object_mask(tgt, frame) if tgt else np.zeros_like(source_mask),
        source_object=src,
        target_object=tgt,
    )


def edits_of_object(sample: EditSample, frame: Frame = SQUARE) -> list[str]:
    """The sample's instruction, then one instruction of every other edit kind on the same object (the
    training wordings' first template; the first colour or shape in palette order that names no other object
    of the scene; no reshape when every other shape of that colour exists): the set of edits an owner might
    protect one photo against. ``frame`` is the frame the sample was drawn in."""
    scene = render_scene(sample.scene_seed, frame=frame)
    src = sample.source_object
    names = {o.name for o in scene.objects}
    if src.name not in names:
        raise ValueError(f"the {src.name} is not in scene {sample.scene_seed} drawn in {frame}")
    out = [sample.instruction]
    for kind in EDIT_KINDS:
        if kind == sample.kind:
            continue
        c2 = next(c for c in PALETTE if c != src.color and f"{c} {src.shape}" not in names)
        s2 = next((s for s in SHAPES if s != src.shape and f"{src.color} {s}" not in names), None)
        if kind == "reshape" and s2 is None:
            continue
        out.append(TEMPLATES["train"][kind][0].format(c=src.color, s=src.shape, c2=c2, s2=s2 or ""))
    return out


def _instruction(template: str, src: WorldObject, tgt: WorldObject | None) -> str:
    return template.format(c=src.color, s=src.shape, c2=tgt.color if tgt else "", s2=tgt.shape if tgt else "")


def reworded(sample: EditSample) -> EditSample:
    """The same edit in the other template of its own wording set (the development split's stand-in for an
    unseen wording: the training wordings that the protection was not given)."""
    options = [_instruction(t, sample.source_object, sample.target_object)
               for t in TEMPLATES[sample.wording][sample.kind]]
    others = [o for o in options if o != sample.instruction]
    if len(others) != len(options) - 1:
        raise ValueError(f"{sample.instruction!r} is not one of the {sample.wording} wordings {options}")
    return replace(sample, instruction=others[0])


def make_split(split: Split, n: int, seed: int = 0, wordings: Wordings | None = None,
               frame: Frame = SQUARE) -> list[EditSample]:
    """``n`` edit samples on scenes of ``split`` (disjoint seed ranges), one edit per scene.

    ``seed`` selects which scenes of the split are used and the edits drawn; ``wordings``
    defaults to the split's own wording set; ``frame`` places the scenes in another frame (the same
    seeds and edit kinds, objects placed inside its window).
    """
    return edits_of_split(split, n, seed, wordings, lambda s: sample_edit, lambda s: render_scene(s, frame=frame))


def edits_of_split(split: Split, n: int, seed: int, wordings: Wordings | None, sampler, render) -> list[EditSample]:
    """The split's scene seeds and balanced edit kinds, each scene drawn by ``render(seed)`` and edited by
    ``sampler(seed)(scene, rng, wordings, kind)``: one draw of scenes and edits for every world."""
    if split not in SCENE_SEED_RANGES:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    lo, hi = SCENE_SEED_RANGES[split]
    rng = np.random.default_rng([seed, 11])
    scene_seeds = rng.choice(hi - lo, size=n, replace=False) + lo
    w: Wordings = wordings or split
    out = []
    for k, s in enumerate(scene_seeds):
        edit_rng = np.random.default_rng([int(s), seed, 13])
        kind = EDIT_KINDS[k % len(EDIT_KINDS)]  # balanced edit kinds
        out.append(sampler(int(s))(render(int(s)), edit_rng, w, kind))
    return out


def edit_region(sample: EditSample) -> np.ndarray:
    """The box an attacker draws for an inpainting editor (bool, the sample's shape): around the edited object
    before and after the edit, with a margin of 1/16 of the image's side (at least 2 pixels)."""
    both = sample.source_mask | sample.target_mask
    h, w = both.shape
    pad = max(2, min(h, w) // 16)
    rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
    box = np.zeros_like(both)
    box[max(rows[0] - pad, 0): rows[-1] + pad + 1, max(cols[0] - pad, 0): cols[-1] + pad + 1] = True
    return box


# ----------------------------------------------------------------------------- success rule


@dataclass(frozen=True)
class SuccessThresholds:
    """Thresholds of :func:`edit_success` (0-255 colour units)."""

    min_iou: float = 0.6  # recolour/reshape: IoU of the recovered object with the target mask
    shape_margin: float = 0.05  # reshape: IoU(target) must beat IoU(source shape) by this
    max_remaining: float = 0.25  # remove: fraction of the source mask still object-coloured
    max_outside_mae: float = 14.0  # mean abs error vs source outside the dilated edit region
    dilate: int = 2  # pixels of dilation around source/target masks for the "outside" region
    erode: int = 1  # pixels of erosion for the colour-probe region


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        out = m
    return out


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    return ~_dilate(~mask, k)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _nearest_color(rgb: np.ndarray, background_rgb: np.ndarray) -> str:
    names = list(PALETTE) + ["background"]
    refs = np.array([PALETTE[c] for c in PALETTE] + [background_rgb], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(refs - rgb[None], axis=1)))]


def edit_success(
    edit_uint8: np.ndarray, sample: EditSample, th: SuccessThresholds = SuccessThresholds()
) -> tuple[bool, dict[str, float | bool | str]]:
    """Judge an edited image against the sample's ground truth.

    Checks (all must pass):

    * ``color``: mean colour of the edit inside the (eroded) target mask -- the source mask for
      remove -- is nearest, among the palette and the local background mean, to the asked colour
      (the background for remove).
    * ``shape`` (recolour/reshape): the recovered object -- pixels of the dilated source/target
      region closer to the asked colour than to the true background -- has IoU >= ``min_iou`` with
      the target mask; for reshape it must also match the target shape better than the source
      shape by ``shape_margin``. For remove: at most ``max_remaining`` of the source mask is still
      closer to the old colour than to the background.
    * ``preserve``: outside the dilated union of source and target masks the edit's mean absolute
      error to the source is at most ``max_outside_mae``.

    Returns ``(success, details)``.
    """
    if edit_uint8.shape != sample.source.shape:
        raise ValueError(f"edit_uint8 must have shape {sample.source.shape}, got {edit_uint8.shape}")
    edit = edit_uint8.astype(np.float64)
    bg = sample.background.astype(np.float64)
    d: dict[str, float | bool | str] = {}

    probe = sample.target_mask if sample.kind != "remove" else sample.source_mask
    probe_e = _erode(probe, th.erode)
    if probe_e.sum() < 4:
        probe_e = probe
    mean_rgb = edit[probe_e].mean(axis=0)
    expected = sample.expected_color or "background"
    got = _nearest_color(mean_rgb, bg[probe_e].mean(axis=0))
    d["color_got"] = got
    d["color_expected"] = expected
    d["color_ok"] = got == expected

    region = _dilate(sample.source_mask | sample.target_mask, th.dilate)
    if sample.kind == "remove":
        old = np.array(PALETTE[sample.source_object.color], dtype=np.float64)
        closer_old = np.linalg.norm(edit - old, axis=-1) < np.linalg.norm(edit - bg, axis=-1)
        remaining = float((closer_old & sample.source_mask).sum() / max(sample.source_mask.sum(), 1))
        d["remaining"] = remaining
        d["shape_ok"] = remaining <= th.max_remaining
    else:
        assert sample.target_object is not None
        col = np.array(PALETTE[sample.target_object.color], dtype=np.float64)
        obj = region & (np.linalg.norm(edit - col, axis=-1) < np.linalg.norm(edit - bg, axis=-1))
        iou_t = _iou(obj, sample.target_mask)
        d["iou_target"] = iou_t
        ok = iou_t >= th.min_iou
        if sample.kind == "reshape":
            iou_s = _iou(obj, sample.source_mask)
            d["iou_source"] = iou_s
            ok = ok and iou_t >= iou_s + th.shape_margin
        d["shape_ok"] = ok

    outside = ~region
    mae = float(np.abs(edit[outside] - sample.source.astype(np.float64)[outside]).mean())
    d["outside_mae"] = mae
    d["preserve_ok"] = mae <= th.max_outside_mae
    success = bool(d["color_ok"] and d["shape_ok"] and d["preserve_ok"])
    d["success"] = success
    return success, d


def psnr(a_uint8: np.ndarray, b_uint8: np.ndarray) -> float:
    """PSNR in dB between two uint8 images."""
    mse = float(np.mean((a_uint8.astype(np.float64) - b_uint8.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
