"""What the attacker does to a protected file before the editor sees it, with the real tools (Pillow).

The attacker downloads the full-size protected file, perhaps after a platform re-encoded it as
JPEG, and resizes it for the editor (long side = the editor's size, aspect ratio kept, with a filter
of their choice); the diffusers pipelines then need sides that are multiples of the VAE factor (the
centred crop of :func:`danp_pipeline.protect.views.editor_size`). :func:`attackers_copy` does that
with Pillow, so the evaluation judges protection in the attacker's view, not through our own
differentiable view of it. :func:`size_variants` makes the full-size photos the evaluation feeds:
4× the editor size at 3:2, 16:9 and 4:5 (and square), and one smaller than the editor size.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..config import EVAL_SIZE_VARIANTS, ROBUSTNESS_TRANSFORMS
from ..config import SIZE_VARIANTS as SIZE_VARIANT_NAMES
from ..protect.views import editor_size

PIL_FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

#: Full-size variants: name -> (aspect w:h, long side as a multiple of the editor's size).
SIZE_VARIANTS: dict[str, tuple[tuple[int, int], float]] = {
    "4x-1:1": ((1, 1), 4.0), "4x-3:2": ((3, 2), 4.0), "4x-16:9": ((16, 9), 4.0), "4x-4:5": ((4, 5), 4.0),
    "small-3:2": ((3, 2), 0.75),
}


def _jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def transform(pixels: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return transform


def _resize_down_up(pixels: np.ndarray) -> np.ndarray:
    img = Image.fromarray(pixels)
    small = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    return np.asarray(small.resize(img.size, Image.Resampling.BICUBIC))


def _blur(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=1.0)))


#: Robustness transforms of the file before the edit ("none": efficacy itself). JPEG is applied to
#: the full-size file (a platform's re-encoding), blur and down-up resizing to the editor's copy.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda pixels: pixels, "jpeg95": _jpeg(95), "jpeg75": _jpeg(75), "jpeg50": _jpeg(50),
    "resize": _resize_down_up, "blur": _blur,
}
FULL_SIZE_TRANSFORMS = frozenset({"jpeg95", "jpeg75", "jpeg50"})
assert tuple(TRANSFORMS) == ROBUSTNESS_TRANSFORMS, "config.ROBUSTNESS_TRANSFORMS names these transforms"
assert tuple(SIZE_VARIANTS) == SIZE_VARIANT_NAMES, "config.SIZE_VARIANTS names these variants"


def resize_for_editor(pixels: np.ndarray, resolution: int, multiple: int, filter: str) -> np.ndarray:
    """The attacker's resize: long side ``resolution``, aspect kept (Pillow ``filter``), centred crop to
    multiples of ``multiple``. A photo already of that size is returned as is."""
    h, w = pixels.shape[:2]
    (rh, rw), (ch, cw) = editor_size(h, w, resolution, multiple)
    img = Image.fromarray(pixels)
    if (rh, rw) != (h, w):
        img = img.resize((rw, rh), PIL_FILTERS[filter])
    top, left = (rh - ch) // 2, (rw - cw) // 2
    return np.asarray(img)[top:top + ch, left:left + cw]


def attackers_copy(pixels: np.ndarray, resolution: int, multiple: int, filter: str, transform: str) -> np.ndarray:
    """What the editor gets from the file ``pixels``: JPEG at full size, resize, then blur/down-up."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}")
    if transform in FULL_SIZE_TRANSFORMS:
        pixels = TRANSFORMS[transform](pixels)
    seen = resize_for_editor(pixels, resolution, multiple, filter)
    return seen if transform in FULL_SIZE_TRANSFORMS else TRANSFORMS[transform](seen)


def variant_shape(name: str, resolution: int) -> tuple[int, int]:
    """(height, width) of the full-size variant ``name`` for an editor of size ``resolution``."""
    if name not in SIZE_VARIANTS:
        raise ValueError(f"size variant must be one of {list(SIZE_VARIANTS)}, got {name!r}")
    (aw, ah), factor = SIZE_VARIANTS[name]
    long_side = round(resolution * factor)
    return (round(long_side * ah / aw), long_side) if aw >= ah else (long_side, round(long_side * aw / ah))


def size_variants(pixels: np.ndarray, resolution: int, names: tuple[str, ...] = EVAL_SIZE_VARIANTS
                  ) -> dict[str, np.ndarray]:
    """Full-size photos made from ``pixels`` (by default the evaluation's set): a centred crop to each
    aspect, resized (Lanczos) so that its long side is the variant's multiple of the editor's ``resolution``."""
    out = {}
    for name in names:
        height, width = variant_shape(name, resolution)
        (aw, ah), _ = SIZE_VARIANTS[name]
        h, w = pixels.shape[:2]
        cw, ch = (w, round(w * ah / aw)) if w * ah <= h * aw else (round(h * aw / ah), h)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = Image.fromarray(pixels[top:top + ch, left:left + cw])
        out[name] = np.asarray(crop.resize((width, height), Image.Resampling.LANCZOS))
    return out
