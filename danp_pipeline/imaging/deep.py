"""16-bit sources: PNG and TIFF photos with 16-bit samples, decoded at full depth.

Pillow reads a 16-bit RGB(A) PNG or TIFF as 8-bit, so these are decoded with imagecodecs (PNG) and
tifffile (TIFF) instead; the optimization still sees an 8-bit rendition, and δ is applied to the
16-bit samples (codec.apply_delta) under the same bound: |out16 − in16| ≤ ⌈255·eps⌉·257.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

LEVEL16 = 257   # one 8-bit level in 16-bit units (65535 / 255)


def sixteen_bit(data: bytes, img: Image.Image) -> np.ndarray | None:
    """HxWxC uint16 samples (C = 1..4) when ``data`` is a 16-bit PNG or TIFF, else None."""
    if img.format == "PNG" and len(data) > 25 and data[24] == 16:
        import imagecodecs

        arr = np.asarray(imagecodecs.png_decode(data))
    elif img.format == "TIFF" and _tiff_is_16bit(img):
        import tifffile

        arr = np.asarray(tifffile.imread(io.BytesIO(data), key=0))
    else:
        return None
    if arr.dtype != np.uint16:
        return None
    return arr[..., None] if arr.ndim == 2 else arr


def _tiff_is_16bit(img: Image.Image) -> bool:
    bits = img.tag_v2.get(258)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return bool(bits) and all(b == 16 for b in bits) and img.tag_v2.get(262) in (0, 1, 2) \
        and img.tag_v2.get(284, 1) == 1


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an HxW(xC) array the way ImageOps.exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def split(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(rgb16 HxWx3, alpha16 or None, grayscale) from HxWxC uint16 samples."""
    channels = arr.shape[2]
    grayscale = channels in (1, 2)
    color = arr[..., :1] if grayscale else arr[..., :3]
    alpha = np.ascontiguousarray(arr[..., channels - 1]) if channels in (2, 4) else None
    rgb = np.repeat(color, 3, axis=2) if grayscale else np.ascontiguousarray(color)
    return rgb, alpha, grayscale


def to_8bit(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.uint32) + LEVEL16 // 2) // LEVEL16).astype(np.uint8)


def decode(data: bytes, img: Image.Image, notes: list[str]) -> np.ndarray | None:
    """The oriented 16-bit samples of a 16-bit PNG/TIFF, else None (a failure falls back to 8 bits)."""
    try:
        samples = sixteen_bit(data, img)
    except Exception as exc:
        notes.append(f"16-bit decoder failed, read at 8 bits ({type(exc).__name__}: {exc})")
        return None
    if samples is None:
        return None
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:
        orientation = 1
    if orientation in range(2, 9):
        samples = orient(samples, orientation)
        notes.append(f"exif orientation {orientation} applied")
    notes.append("16-bit samples kept")
    return samples


def apply_delta(base16: np.ndarray, d: np.ndarray, levels: int, grayscale: bool) -> np.ndarray:
    """δ (HxWxC on the [0,1] scale, already clipped to ±eps) on 16-bit samples, quantized to 16 bits:
    |out16 − in16| ≤ levels·257, the 8-bit bound in 16-bit units."""
    base = base16[..., :1] if grayscale else base16
    x = base.astype(np.float32) * np.float32(1.0 / 65535.0)
    x += d
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(65535.0)
    np.rint(x, out=x)
    diff = x.astype(np.int32) - base
    bound = levels * LEVEL16
    np.clip(diff, -bound, bound, out=diff)
    result = (diff + base).astype(np.uint16)
    return result[..., 0] if grayscale else result
