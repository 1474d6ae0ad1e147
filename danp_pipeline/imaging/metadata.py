"""What a photo carries besides its pixels: ICC profile, EXIF, XMP and IPTC, kept byte for byte.

:func:`read` takes them from an opened Pillow image of any supported format, in one canonical form
(:class:`Metadata`): the ICC profile as embedded, EXIF as a raw TIFF structure (no ``Exif\\0\\0``
prefix) whose orientation is reset to 1 in place (the decoder applied it, so the two stay
consistent), XMP packet bytes and the IPTC-NAA record. Everything else in those blocks is left
exactly as the source had it. :func:`strip` removes GPS (EXIF GPS IFD and XMP ``exif:GPS*``
properties) or everything; :func:`summary` is what the manifest row records.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

EXIF_PREFIX = b"Exif\x00\x00"
ORIENTATION_TAG = 0x0112
GPS_IFD_TAG = 0x8825
EXIF_IFD_TAG = 0x8769
IPTC_PHOTOSHOP_ID = 0x0404      # IPTC-NAA resource in a JPEG's Photoshop (APP13) block
PNG_IPTC_KEY = "Raw profile type iptc"   # ImageMagick's zTXt convention for IPTC in PNG
TIFF_XMP_TAG = 700
TIFF_IPTC_TAG = 33723
#: Descriptive TIFF tags that carry what EXIF carries elsewhere (a TIFF source has no EXIF block).
TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_XMP_GPS = re.compile(rb'\s(?:exif|exifEX):GPS\w+="[^"]*"|<(exif|exifEX):GPS(\w+)[^>]*?(?:/>|>.*?</\1:GPS\2>)',
                      re.DOTALL)


@dataclass(frozen=True)
class Metadata:
    icc: bytes | None = None
    exif: bytes | None = None          # raw TIFF structure, orientation already 1
    xmp: bytes | None = None
    iptc: bytes | None = None
    tiff_tags: tuple[tuple[int, str], ...] = ()   # TIFF sources: descriptive IFD0 tags (Artist, Copyright…)
    stripped: tuple[str, ...] = ()     # what strip() removed
    notes: tuple[str, ...] = ()        # e.g. orientation reset

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in ("icc", "exif", "xmp", "iptc") if getattr(self, k)) + (
            ("tiff_tags",) if self.tiff_tags else ())


def _bytes(value: Any) -> bytes | None:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, tuple):  # Pillow returns some TIFF byte tags as tuples of ints
        value = bytes(value)
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def read(img: Image.Image) -> Metadata:
    """The metadata of an opened (and loaded) Pillow image, in canonical form."""
    info = img.info
    icc = _bytes(info.get("icc_profile"))
    exif = _bytes(info.get("exif"))
    xmp = _bytes(info.get("xmp") or info.get("XML:com.adobe.xmp"))
    iptc = None
    photoshop = info.get("photoshop")
    if isinstance(photoshop, dict):
        iptc = _bytes(photoshop.get(IPTC_PHOTOSHOP_ID))
    iptc = iptc or png_iptc(info.get(PNG_IPTC_KEY))
    tiff_tags: tuple[tuple[int, str], ...] = ()
    tag_v2 = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tag_v2 is not None:
        xmp = xmp or _bytes(tag_v2.get(TIFF_XMP_TAG))
        raw_iptc = img.tag.get(TIFF_IPTC_TAG) if hasattr(img, "tag") else None
        iptc = iptc or (_bytes(raw_iptc[0] if isinstance(raw_iptc, tuple) and raw_iptc
                               and isinstance(raw_iptc[0], bytes) else raw_iptc))
        tiff_tags = tuple((t, str(tag_v2[t])) for t in TIFF_TEXT_TAGS if isinstance(tag_v2.get(t), str))
        exif = None   # a TIFF's "EXIF" is its own IFD0: the descriptive tags above carry it
    notes: list[str] = []
    if exif is not None:
        exif = exif[len(EXIF_PREFIX):] if exif.startswith(EXIF_PREFIX) else exif
        exif, old = reset_orientation(exif)
        if old not in (None, 1):
            notes.append(f"exif orientation {old} reset to 1")
    return Metadata(icc=icc, exif=exif, xmp=xmp, iptc=iptc, tiff_tags=tiff_tags, notes=tuple(notes))


def png_iptc(text: Any) -> bytes | None:
    """The IPTC bytes of a PNG ``Raw profile type iptc`` text: "\\niptc\\n<length>\\n<hex lines>"."""
    if not isinstance(text, str):
        return None
    parts = text.strip().split("\n", 2)
    try:
        return bytes.fromhex("".join(parts[2].split()))[: int(parts[1])] or None
    except (IndexError, ValueError):
        return None


def reset_orientation(exif: bytes) -> tuple[bytes, int | None]:
    """Set IFD0's Orientation to 1 in place (every other byte unchanged); returns (bytes, old value)."""
    try:
        order = {b"II": "<", b"MM": ">"}[exif[:2]]
        (ifd,) = struct.unpack_from(order + "I", exif, 4)
        (count,) = struct.unpack_from(order + "H", exif, ifd)
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, kind, n = struct.unpack_from(order + "HHI", exif, at)
            if tag == ORIENTATION_TAG and kind == 3 and n == 1:
                (old,) = struct.unpack_from(order + "H", exif, at + 8)
                patched = bytearray(exif)
                struct.pack_into(order + "H", patched, at + 8, 1)
                return bytes(patched), old
    except (KeyError, struct.error):
        logger.debug("unparsable EXIF block (%d bytes) kept as is", len(exif))
    return exif, None


def strip(meta: Metadata, *, gps: bool = False, everything: bool = False) -> Metadata:
    """``everything``: drop all metadata but the ICC profile (pixels stay in its colour space, so the
    profile is colour data, not metadata). ``gps``: drop EXIF's GPS IFD and XMP's GPS properties."""
    if everything:
        return Metadata(icc=meta.icc, stripped=meta.kinds()[1 if meta.icc else 0:] or ("none present",))
    if not gps:
        return meta
    exif, xmp, removed = meta.exif, meta.xmp, []
    if exif is not None:
        parsed = Image.Exif()
        parsed.load(EXIF_PREFIX + exif)
        if GPS_IFD_TAG in parsed:
            parsed.get_ifd(EXIF_IFD_TAG)  # loaded so that tobytes() writes it back
            del parsed[GPS_IFD_TAG]
            exif = parsed.tobytes()[len(EXIF_PREFIX):]
            removed.append("exif gps")
    if xmp is not None:
        cleaned = _XMP_GPS.sub(b"", xmp)
        if cleaned != xmp:
            xmp = cleaned
            removed.append("xmp gps")
    return replace(meta, exif=exif, xmp=xmp, stripped=tuple(removed) or ("gps: none present",))


def fit_profile(meta: Metadata, grayscale: bool) -> tuple[Metadata, tuple[str, ...]]:
    """Drop an ICC profile whose colour space is not the output's (a CMYK JPEG's profile once its
    pixels became RGB): it would misdescribe every pixel. Returns (metadata, ("icc",) if dropped)."""
    if not meta.icc or len(meta.icc) < 20:
        return meta, ()
    space = meta.icc[16:20]
    if space == (b"GRAY" if grayscale else b"RGB "):
        return meta, ()
    logger.debug("ICC profile of colour space %r dropped: the output is %s", space, "gray" if grayscale else "RGB")
    return replace(meta, icc=None), ("icc",)


def exif_for_output(meta: Metadata) -> bytes | None:
    """EXIF to embed (with the ``Exif\\0\\0`` prefix Pillow's encoders expect); a TIFF source's
    descriptive tags become an EXIF IFD0 when the output is not TIFF."""
    if meta.exif is not None:
        return EXIF_PREFIX + meta.exif
    if meta.tiff_tags:
        built = Image.Exif()
        for tag, value in meta.tiff_tags:
            built[tag] = value
        return built.tobytes()
    return None


def summary(meta: Metadata, dropped: tuple[str, ...] = ()) -> str:
    """JSON for the manifest: bytes kept per kind, what was stripped, what the format could not carry."""
    kept = {k: len(getattr(meta, k)) for k in ("icc", "exif", "xmp", "iptc") if getattr(meta, k)}
    if meta.tiff_tags:
        kept["tiff_tags"] = len(meta.tiff_tags)
    for kind in dropped:
        kept.pop(kind, None)
    return json.dumps({"kept": kept, "stripped": list(meta.stripped), "dropped": list(dropped)},
                      sort_keys=True, separators=(",", ":"))
