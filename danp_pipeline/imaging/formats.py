"""Output encoders: the protected pixels in the chosen format, with the source's metadata embedded.

Lossless formats (``png``, ``webp-lossless``, ``tiff``) keep every pixel exactly, so the L∞
guarantee holds on the file; PNG and TIFF keep 16-bit samples. Lossy formats (``jpeg``, ``webp``,
``heic``, ``avif``) are 8-bit and their L∞ is measured on the decoded file, not bounded. ``source``
(config.OUTPUT_FORMATS) resolves per photo to the source's own format (:func:`resolve`).

PNG metadata goes in standard chunks spliced after IHDR (iCCP, eXIf, iTXt ``XML:com.adobe.xmp``,
and IPTC as ImageMagick's zTXt ``Raw profile type iptc``), so the bytes are the source's.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
from PIL import Image

from ..config import FORMAT_EXTENSIONS, LOSSLESS_FORMATS
from . import metadata as md

logger = logging.getLogger(__name__)

#: Source format (Pillow's name) -> output format for ``--output-format source``.
SOURCE_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "TIFF": "tiff", "WEBP": "webp", "HEIF": "heic",
                  "AVIF": "avif"}
SIXTEEN_BIT_FORMATS = ("png", "tiff")


def resolve(requested: str, source_format: str | None, data: bytes | None = None) -> str:
    """The concrete output format: ``requested`` itself, or for ``source`` the source's format
    (lossless WebP stays lossless; formats we do not write, such as GIF or BMP, become PNG)."""
    if requested != "source":
        return requested
    fmt = SOURCE_FORMATS.get(source_format or "", "png")
    if fmt == "webp" and data is not None and webp_is_lossless(data):
        return "webp-lossless"
    return fmt


def webp_is_lossless(data: bytes) -> bool:
    head = data[30:4096]
    return data[12:16] == b"VP8L" or (data[12:16] == b"VP8X" and b"VP8L" in head and b"VP8 " not in head)


def extension(fmt: str) -> str:
    return FORMAT_EXTENSIONS[fmt][0]


def is_lossless(fmt: str) -> bool:
    return fmt in LOSSLESS_FORMATS


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.dtype == np.uint8 else ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)


def encode(pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, meta: md.Metadata | None = None,
           quality: int = 90) -> tuple[bytes, tuple[str, ...]]:
    """Encode HxW or HxWx3 uint8/uint16 pixels (+ HxW alpha of the same depth) as ``fmt`` with ``meta``.
    Returns (bytes, metadata kinds the format cannot carry and were therefore dropped)."""
    meta = meta or md.Metadata()
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if fmt not in SIXTEEN_BIT_FORMATS:
        pixels = to_8bit(pixels)
        alpha = None if alpha is None else to_8bit(alpha)
    if alpha is not None:
        alpha = np.asarray(alpha).astype(pixels.dtype)
    if fmt == "png":
        return _png(pixels, alpha, meta), ()
    if fmt == "tiff":
        return _tiff(pixels, alpha, meta)
    img = Image.fromarray(pixels if alpha is None else np.dstack([_rgb_or_l(pixels), alpha]))
    dropped = ["iptc"] if meta.iptc else []
    exif = md.exif_for_output(meta)
    kw: dict = {k: v for k, v in (("icc_profile", meta.icc), ("exif", exif), ("xmp", meta.xmp)) if v}
    buf = io.BytesIO()
    if fmt in ("webp", "webp-lossless"):
        lossless = fmt == "webp-lossless"
        img.save(buf, format="WEBP", lossless=lossless, quality=100 if lossless else quality, exact=True, method=4,
                 **kw)
    elif fmt == "jpeg":
        if img.mode in ("RGBA", "LA"):
            img, dropped = img.convert(img.mode[:-1]), dropped + ["alpha"]
        if meta.iptc:
            kw["extra"] = _jpeg_app13(meta.iptc)
            dropped.remove("iptc")
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **kw)
    elif fmt == "heic":
        _register_heif()
        img.save(buf, format="HEIF", quality=quality, **kw)
    elif fmt == "avif":
        img.save(buf, format="AVIF", quality=quality, **kw)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue(), tuple(dropped)


def _rgb_or_l(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


# -- PNG -----------------------------------------------------------------------------------------------

#: zlib level of PNG outputs: on a 12 MP photo libpng (imagecodecs) at level 1 encodes in 0.86 s of CPU
#: against 2.28 s for Pillow's default (level 6), for files 8 % larger (23.5 vs 21.8 MB); encoding was the
#: largest CPU cost per photo of the job (benchmarks/accelerator_share.py).
PNG_LEVEL = 1


def _png(pixels: np.ndarray, alpha: np.ndarray | None, meta: md.Metadata) -> bytes:
    import imagecodecs

    stacked = _rgb_or_l(pixels) if alpha is None else np.dstack([_rgb_or_l(pixels), alpha])
    samples = stacked[..., 0] if stacked.shape[2] == 1 else stacked
    data = bytes(imagecodecs.png_encode(np.ascontiguousarray(samples), level=PNG_LEVEL))
    chunks = []
    if meta.icc:
        chunks.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(meta.icc)))
    exif = meta.exif if meta.exif is not None else (md.exif_for_output(meta) or b"")[len(md.EXIF_PREFIX):]
    if exif:
        chunks.append(_chunk(b"eXIf", exif))
    if meta.xmp:
        chunks.append(_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + meta.xmp))
    if meta.iptc:
        hexed = meta.iptc.hex()
        text = f"\niptc\n{len(meta.iptc):8d}\n" + "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n"
        chunks.append(_chunk(b"zTXt", md.PNG_IPTC_KEY.encode() + b"\x00\x00" + zlib.compress(text.encode())))
    ihdr_end = 8 + 8 + 13 + 4
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


# -- JPEG IPTC -----------------------------------------------------------------------------------------

def _jpeg_app13(iptc: bytes) -> bytes:
    pad = b"\x00" if len(iptc) % 2 else b""
    resource = (b"8BIM" + struct.pack(">H", md.IPTC_PHOTOSHOP_ID) + b"\x00\x00"   # empty Pascal-string name
                + struct.pack(">I", len(iptc)) + iptc + pad)
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


# -- TIFF ----------------------------------------------------------------------------------------------

def _tiff(pixels: np.ndarray, alpha: np.ndarray | None, meta: md.Metadata) -> tuple[bytes, tuple[str, ...]]:
    import tifffile

    gray = pixels.ndim == 2
    data = pixels if alpha is None else np.dstack([_rgb_or_l(pixels), alpha])
    tags: list[tuple] = []
    if meta.xmp:
        tags.append((md.TIFF_XMP_TAG, 1, len(meta.xmp), meta.xmp, True))
    if meta.iptc:
        tags.append((md.TIFF_IPTC_TAG, 7, len(meta.iptc), meta.iptc, True))
    text_tags = dict(meta.tiff_tags)
    dropped: list[str] = []
    if meta.exif is not None:   # TIFF has no EXIF block: its descriptive IFD0 tags carry over
        parsed = Image.Exif()
        parsed.load(md.EXIF_PREFIX + meta.exif)
        text_tags.update({t: parsed[t] for t in md.TIFF_TEXT_TAGS if isinstance(parsed.get(t), str)})
        dropped.append("exif")
    software = text_tags.pop(305, False)   # tifffile writes Software itself: the source's, or none
    tags += [(tag, 2, None, value, True) for tag, value in sorted(text_tags.items())]
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack" if gray else "rgb", compression="zlib", predictor=True,
                     extrasamples=["unassalpha"] if alpha is not None else None, iccprofile=meta.icc,
                     extratags=tags, metadata=None, software=software)
    return buf.getvalue(), tuple(dropped)
