"""Image I/O: decode any photo safely, size it for the optimization, apply δ at full size, encode.

Follows DANP_SPEC.md "Images of any size": the attack runs at a working resolution, δ is upsampled
bilinearly to the original size, clipped to ±eps, added and quantized to 8 bits, with the guarantee
|out − in| ≤ ceil(255·eps) levels per channel and pixel on every output.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import deep
from .metadata import Metadata
from .metadata import read as read_metadata

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

try:  # HEIC/HEIF (every iPhone photo); AVIF is Pillow's own
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - a declared dependency
    logger.debug("pillow-heif not installed: HEIC/HEIF photos will not decode")

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageDecodeError(ValueError):
    """A photo could not be decoded; the message is a short human-readable reason."""


@dataclass(frozen=True)
class DecodedImage:
    """A photo ready for protection, EXIF orientation already applied: 8-bit pixels for the
    optimization, plus the 16-bit samples of a 16-bit source, and what the file carried."""

    rgb: np.ndarray  # uint8 HxWx3 (channels identical when grayscale)
    alpha: np.ndarray | None  # uint8 HxW when the source had transparency
    grayscale: bool  # source was single-channel: the output stays single-channel
    source_mode: str  # PIL mode of the file as read
    source_format: str | None  # "JPEG", "PNG", ...
    notes: tuple[str, ...] = ()
    pixels16: np.ndarray | None = None  # uint16 HxWx3 of a 16-bit source (δ is applied to these)
    alpha16: np.ndarray | None = None
    metadata: Metadata = field(default_factory=Metadata)

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels16 is not None else 8

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _open(data: bytes, max_pixels: int, min_side: int) -> Image.Image:
    """Open and size-check from the header only; no pixel data is decoded here."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large (decompression bomb check): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (cannot identify image file)") from exc
    except Exception as exc:  # Pillow raises many types on a bad header
        raise ImageDecodeError(f"corrupt image header: {type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height} pixels > max_pixels {max_pixels}"
        )
    if min(width, height) < min_side:
        raise ImageDecodeError(
            f"image too small: {width}x{height}, smaller side {min(width, height)} < min_side {min_side}"
        )
    return img


def _load_first_frame(img: Image.Image, notes: list[str]) -> None:
    try:
        n_frames = int(getattr(img, "n_frames", 1))
        if n_frames > 1:
            img.seek(0)
            notes.append(f"animated: first of {n_frames} frames used")
        img.load()
    except Image.DecompressionBombError as exc:  # some plugins re-check sizes while seeking
        raise ImageDecodeError(f"image too large (decompression bomb check): {exc}") from exc
    except MemoryError as exc:
        raise ImageDecodeError("out of memory while decoding image data") from exc
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from exc


def _orient(img: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation not in (2, 3, 4, 5, 6, 7, 8):
            return img
        rotated = ImageOps.exif_transpose(img)
    except Exception as exc:  # broken EXIF must not lose the photo
        notes.append(f"exif orientation ignored (unreadable EXIF: {type(exc).__name__})")
        return img
    notes.append(f"exif orientation {orientation} applied")
    return rotated if rotated is not None else img


def _gray_to_uint8(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        notes.append("16-bit converted to 8-bit")
        return (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        # Pillow opens 16-bit samples from several formats as 32-bit "I": treat as 16-bit range.
        notes.append("32-bit integer (mode I) converted to 8-bit, 16-bit range assumed")
        values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return (values >> 8).astype(np.uint8)
    if mode == "F":
        notes.append("float converted to 8-bit (clipped to 0..255)")
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _to_arrays(img: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Convert a loaded PIL image of any mode to (rgb uint8 HxWx3, alpha or None, grayscale)."""
    mode = img.mode
    has_trns = "transparency" in img.info
    if mode in ("LA", "La") or (mode == "L" and has_trns):
        la = np.asarray(img.convert("LA"), dtype=np.uint8)
        gray, alpha = la[..., 0], np.ascontiguousarray(la[..., 1])
        return np.repeat(gray[..., None], 3, axis=2), alpha, True
    if mode in _GRAY_MODES:
        gray = _gray_to_uint8(img, notes)
        return np.repeat(gray[..., None], 3, axis=2), None, True
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and has_trns):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), False
    if mode not in ("RGB", "P"):
        notes.append(f"{mode} converted to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), None, False


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, min_side: int = 8) -> DecodedImage:
    """Decode bytes of any common format into an 8-bit image; raise ImageDecodeError if unusable.

    The header size is checked against ``max_pixels`` before any pixel is decoded. Pillow's own
    decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS, global state left untouched) still
    applies, and its error becomes ImageDecodeError; its warning is silenced for this call because
    ``max_pixels`` is the limit enforced here. Truncated data raises: LOAD_TRUNCATED_IMAGES is
    never set.
    """
    max_pixels = _positive_int("max_pixels", max_pixels)
    min_side = _positive_int("min_side", min_side)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open(bytes(data), max_pixels, min_side)
        try:
            source_mode, source_format = img.mode, img.format
            _load_first_frame(img, notes)
            meta = _metadata(img, notes)
            rgb16, alpha16 = None, None
            samples = deep.decode(bytes(data), img, notes)
            oriented = img if samples is not None else _orient(img, notes)
            try:
                if samples is not None:
                    rgb16, alpha16, grayscale = deep.split(samples)
                    rgb, alpha = deep.to_8bit(rgb16), None if alpha16 is None else deep.to_8bit(alpha16)
                else:
                    rgb, alpha, grayscale = _to_arrays(oriented, notes)
            except ImageDecodeError:
                raise
            except MemoryError as exc:
                raise ImageDecodeError("out of memory while converting image") from exc
            except Exception as exc:
                raise ImageDecodeError(
                    f"cannot convert image mode {oriented.mode}: {type(exc).__name__}: {exc}"
                ) from exc
        finally:
            img.close()
    if min(rgb.shape[:2]) < min_side:  # defensive: a frame smaller than the header's canvas
        raise ImageDecodeError(f"image too small: {rgb.shape[1]}x{rgb.shape[0]} < min_side {min_side}")
    if notes:
        logger.debug("decoded %s %s %dx%d: %s", source_format, source_mode, rgb.shape[1], rgb.shape[0],
                     "; ".join(notes))
    return DecodedImage(rgb=np.ascontiguousarray(rgb), alpha=alpha, grayscale=grayscale,
                        source_mode=source_mode, source_format=source_format, notes=tuple(notes),
                        pixels16=rgb16, alpha16=alpha16, metadata=meta)


def _metadata(img: Image.Image, notes: list[str]) -> Metadata:
    try:
        return read_metadata(img)
    except Exception as exc:  # unreadable metadata must not lose the photo
        notes.append(f"metadata unreadable, not kept ({type(exc).__name__})")
        return Metadata()


def working_size(width: int, height: int, resolution: int = 512, multiple: int = 64) -> tuple[int, int]:
    """(w, h) for the optimization: longer side ≈ resolution, aspect kept, multiples of ``multiple``."""
    width = _positive_int("width", width)
    height = _positive_int("height", height)
    resolution = _positive_int("resolution", resolution)
    multiple = _positive_int("multiple", multiple)
    scale = resolution / max(width, height)

    def snap(side: int) -> int:
        return max(multiple, int(math.floor(side * scale / multiple + 0.5)) * multiple)

    return snap(width), snap(height)


def to_tensor(img: DecodedImage, size: tuple[int, int]) -> "torch.Tensor":
    """float32 3xhxw tensor in [0, 1], resized (antialiased Lanczos) from ``img.rgb``; size is (w, h)."""
    if len(size) != 2:
        raise ValueError(f"size must be (width, height), got {size!r}")
    w = _positive_int("size[0] (width)", size[0])
    h = _positive_int("size[1] (height)", size[1])
    pixels = img.rgb
    if (w, h) != (img.width, img.height):
        pixels = np.asarray(Image.fromarray(img.rgb).resize((w, h), Image.Resampling.LANCZOS))
    scaled = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)  # fresh, writable array
    import torch  # here, not at the top: the CPU stages decode and write without ever loading torch

    return torch.from_numpy(scaled).permute(2, 0, 1).clamp_(0.0, 1.0).contiguous()


def eps_levels(eps: float) -> int:
    """ceil(255·eps) in 8-bit levels, ignoring float noise (2/255 gives 2, not 3)."""
    if not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return max(0, math.ceil(255.0 * float(eps) - 1e-6))


def apply_delta(img: DecodedImage, delta: "torch.Tensor | np.ndarray", eps: float) -> np.ndarray:
    """Upsample δ (3xhxw, [0,1] scale) to full size, clip to ±eps, add, quantize to uint8.

    Guarantees |out − rgb| ≤ ceil(255·eps) levels per channel and pixel. Returns HxWx3 uint8,
    or HxW uint8 for grayscale sources (δ averaged over channels first).
    """
    levels = eps_levels(eps)
    import torch
    import torch.nn.functional as F

    d = torch.as_tensor(delta).detach().to(device="cpu", dtype=torch.float32)
    if d.ndim == 4 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 3 or d.shape[0] != 3 or d.shape[1] < 1 or d.shape[2] < 1:
        raise ValueError(f"delta must have shape (3, h, w), got {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ValueError("delta contains NaN or infinite values")
    if img.grayscale:
        d = d.mean(dim=0, keepdim=True)
    if tuple(d.shape[1:]) != (img.height, img.width):
        d = F.interpolate(d[None], size=(img.height, img.width), mode="bilinear", align_corners=False)[0]
    d = d.clamp_(-float(eps), float(eps)).permute(1, 2, 0).contiguous().numpy()  # HxWxC
    if img.pixels16 is not None:
        return deep.apply_delta(img.pixels16, d, levels, img.grayscale)
    base = img.rgb[..., :1] if img.grayscale else img.rgb
    x = base.astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    x += d
    np.clip(x, 0.0, 1.0, out=x)
    x *= np.float32(255.0)
    np.rint(x, out=x)
    diff = x.astype(np.int16)
    diff -= base
    np.clip(diff, -levels, levels, out=diff)  # exact bound, enforced as the final step
    diff += base
    result = diff.astype(np.uint8)
    return result[..., 0] if img.grayscale else result


def encode_png(pixels: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """Lossless PNG from uint8 HxW (L), HxWx3 (RGB) or HxWx4 (RGBA), plus optional HxW alpha."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise ValueError(f"pixels must be HxW, HxWx3 or HxWx4, got shape {pixels.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha must be uint8 {pixels.shape[:2]}, got {alpha.dtype} {alpha.shape}")
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            raise ValueError("alpha given for pixels that already have 4 channels")
        pixels = np.dstack([pixels, alpha])
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def _diff(original: DecodedImage, protected: np.ndarray) -> np.ndarray:
    """protected − original (int32 for 16-bit outputs of a 16-bit source, else int16), shapes checked."""
    protected = np.asarray(protected)
    source = original.pixels16 if protected.dtype == np.uint16 and original.pixels16 is not None else original.rgb
    if protected.ndim == 2:
        if not original.grayscale:
            raise ValueError(f"single-channel output {protected.shape} for an RGB source")
        reference = source[..., 0]
    else:
        reference = source
    if protected.shape != reference.shape:
        raise ValueError(f"protected shape {protected.shape} does not match original {reference.shape}")
    diff = protected.astype(np.int32 if protected.dtype == np.uint16 else np.int16)
    diff -= reference
    return diff


def linf_levels(original: DecodedImage, protected: np.ndarray) -> int:
    """max |out − in| in 8-bit levels (16-bit outputs: rounded up from 16-bit units)."""
    diff = _diff(original, protected)
    if not diff.size:
        return 0
    worst = int(max(diff.max(), -diff.min()))
    return -(-worst // deep.LEVEL16) if diff.dtype == np.int32 else worst


def psnr_db(original: DecodedImage, protected: np.ndarray) -> float:
    """PSNR in dB (peak 255, or 65535 for 16-bit outputs); inf when identical."""
    diff = _diff(original, protected)
    peak = 65535.0 if diff.dtype == np.int32 else 255.0
    mse = float(np.square(diff, dtype=np.int64).sum(dtype=np.int64)) / max(diff.size, 1)
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)
