"""The report's gallery: a deterministic sample of protected photos, shown as thumbnails.

:func:`sample` picks the ok row with the worst PSNR and fills up with the rows first in the order of
SHA-256(source URI): the same manifest always gives the same gallery, and a larger sample contains the
smaller one. For each, :func:`thumbnails` reads the original (its ``source_uri``) and the protected file
(under this OUTPUT), decodes both as the pipeline does (EXIF orientation applied), and writes three
thumbnails beside the report: the original, the protected photo, and δ = protected − original as a map
of its local magnitude (RMS over 8×8 pixels, 0 to the promised bound, then the thumbnail's size), which
shows where the perturbation went. Full-size copies are never written.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from .. import storage
from ..config import REPORT_THUMB_PX
from ..imaging.codec import decode_image
from ..manifest.output import Output

logger = logging.getLogger(__name__)

#: Pixels per side of the blocks over which δ's magnitude is averaged (RMS) for its map.
DELTA_BLOCK = 8
THUMBS_DIR = "thumbs"


@dataclass(frozen=True)
class Tile:
    """One photo of the gallery: its row's facts and its thumbnails' names (relative to the report)."""

    key: str
    psnr_db: float | None
    linf_levels: int | None
    bound_levels: int | None
    output_format: str
    width: int | None
    height: int | None
    worst: bool
    original: str | None = None
    protected: str | None = None
    delta: str | None = None
    problem: str | None = None        # why a thumbnail is missing (an original moved away, …)


def sample(table: pa.Table, n: int) -> list[dict[str, Any]]:
    """``n`` ok rows: the worst PSNR first, then the first by SHA-256 of the source URI. Only the chosen rows
    become Python objects (a manifest of millions stays in Arrow)."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    if ok.num_rows == 0 or n <= 0:
        return []
    psnr = pc.fill_null(ok["psnr_db"], float("inf")).to_numpy()
    uris = ok["source_uri"].to_pylist()
    worst = min(range(len(uris)), key=lambda i: (psnr[i], uris[i]))
    digests = [hashlib.sha256(u.encode("utf-8", "surrogateescape")).digest() for u in uris]
    rest = heapq.nsmallest(n - 1, (i for i in range(len(uris)) if i != worst), key=digests.__getitem__)
    return ok.take(pa.array([worst, *rest], pa.int64())).to_pylist()


def thumbnails(output: Output, rows: list[dict[str, Any]], bounds: dict[str, int | None],
               storage_options: dict[str, Any] | None) -> list[Tile]:
    tiles = []
    for i, row in enumerate(rows):
        tile = Tile(key=row["source_key"] or row["source_uri"], psnr_db=row["psnr_db"], linf_levels=row["linf_levels"],
                    bound_levels=bounds.get(row["config_sha256"]), output_format=row["output_format"] or "png",
                    width=row["width"], height=row["height"], worst=i == 0)
        try:
            tiles.append(_draw(output, row, tile, f"{i:03d}", storage_options))
        except Exception as exc:   # one unreadable photo must not cost the report
            reason = storage.reason(exc, storage_options)
            logger.warning("report gallery: %s: %s", tile.key, reason)
            tiles.append(replace(tile, problem=reason))
    return tiles


def _read(uri: str, storage_options: dict[str, Any] | None) -> bytes:
    fs, path = storage.filesystem(storage.unescape_name(uri), storage_options)
    return storage.retrying(fs.cat_file, path, what=f"reading {uri}")


def _draw(output: Output, row: dict[str, Any], tile: Tile, stem: str, storage_options: dict[str, Any] | None) -> Tile:
    protected_uri = output.located(row["output_key"], row["output_uri"])
    protected = decode_image(storage.retrying(output.fs.cat_file, output.path_of(protected_uri),
                                              what=f"reading {protected_uri}")).rgb
    names = {"protected": _write(output, f"{stem}-protected.jpg", _thumb(protected))}
    try:
        original = decode_image(_read(row["source_uri"], storage_options)).rgb
    except FileNotFoundError:
        return replace(tile, **names, problem="the original is no longer at its source URI")
    names["original"] = _write(output, f"{stem}-original.jpg", _thumb(original))
    if original.shape != protected.shape:
        return replace(tile, **names, problem=f"sizes differ ({original.shape[1]}x{original.shape[0]} original, "
                                               f"{protected.shape[1]}x{protected.shape[0]} protected)")
    names["delta"] = _write(output, f"{stem}-delta.png", _delta_map(original, protected, tile.bound_levels))
    return replace(tile, **names)


def _thumb(pixels: np.ndarray) -> Image.Image:
    img = Image.fromarray(pixels)
    img.thumbnail((REPORT_THUMB_PX, REPORT_THUMB_PX), Image.Resampling.LANCZOS)
    return img


def delta_magnitude(original: np.ndarray, protected: np.ndarray, block: int = DELTA_BLOCK,
                    strip_blocks: int = 64) -> np.ndarray:
    """RMS of δ (levels, over channels) in ``block``×``block`` tiles: an (⌈H/block⌉, ⌈W/block⌉) array.
    Computed in strips of ``strip_blocks`` block rows, so that a 12 MP photo costs tens of MB, not hundreds."""
    h, w = original.shape[:2]
    pw = -w % block
    rows = []
    for top in range(0, h, block * strip_blocks):
        a = original[top: top + block * strip_blocks].astype(np.int16)
        d = protected[top: top + block * strip_blocks].astype(np.int16) - a
        sq = (d.astype(np.float32) ** 2).mean(axis=2)
        padded = np.pad(sq, ((0, -sq.shape[0] % block), (0, pw)), mode="edge")
        rows.append(padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block).mean(axis=(1, 3)))
    return np.sqrt(np.concatenate(rows))


def _delta_map(original: np.ndarray, protected: np.ndarray, bound: int | None) -> Image.Image:
    from matplotlib import colormaps

    magnitude = delta_magnitude(original, protected)
    scale = float(bound) if bound else max(float(magnitude.max()), 1.0)
    rgb = (colormaps["magma"](np.clip(magnitude / scale, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    w, h = original.shape[1], original.shape[0]
    k = min(1.0, REPORT_THUMB_PX / max(w, h))
    return img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.NEAREST)


def _write(output: Output, name: str, img: Image.Image) -> str:
    buf = io.BytesIO()
    if name.endswith(".jpg"):
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    storage.atomic_write(output.fs, storage.join(output.report_dir, f"{THUMBS_DIR}/{name}"), buf.getvalue())
    return f"{THUMBS_DIR}/{name}"
