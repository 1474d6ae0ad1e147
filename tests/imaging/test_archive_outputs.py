"""Issue 13: archive-grade outputs. Real files (JPEG with EXIF+ICC+XMP+IPTC, Display-P3 PNG, 16-bit
TIFF, HEIC, AVIF) go through the decode, protect and write stages and come out at their size and bit depth,
with metadata
and profile byte-identical to the source's (EXIF orientation aside), in the chosen format."""

from __future__ import annotations

import itertools
import json

import numpy as np
from helpers import (
    FAST_ATTACK,
    IPTC,
    XMP,
    archive_files,
    check_linf,
    display_p3_icc,
    exif_block,
    fast_config,
    protect_files,
    read_back,
)

from danp_pipeline import storage
from danp_pipeline.config import FORMAT_EXTENSIONS
from danp_pipeline.imaging import metadata as md
from danp_pipeline.imaging.codec import decode_image, eps_levels
from danp_pipeline.manifest.output import output_name

BOUND = eps_levels(FAST_ATTACK.eps)


def protect(tmp_path, files, **changes):
    cfg = fast_config(str(tmp_path / "in"), str(tmp_path / f"out-{changes.get('output_format', 'png')}"), **changes)
    rows = {r["source_key"]: r for r in protect_files(cfg, files)}
    fs, _ = storage.filesystem(cfg.output_uri)
    return rows, {k: fs.cat_file(r["output_uri"]) for k, r in rows.items()}


def exif_of(img) -> bytes:
    raw = img.info.get("exif") or b""
    return raw[6:] if raw.startswith(md.EXIF_PREFIX) else raw


def test_lossless_outputs_keep_metadata_profile_size_and_depth(tmp_path):
    files = archive_files()
    icc, exif1 = display_p3_icc(), exif_block(orientation=1)[6:]
    for fmt in ("png", "source"):
        rows, outputs = protect(tmp_path, files, output_format=fmt)
        for key, data in outputs.items():
            row, src, out = rows[key], decode_image(files[key]), read_back(data)
            assert out.size == (src.width, src.height), key
            assert out.info.get("icc_profile") == icc, key               # byte-identical profile
            assert (out.info.get("xmp") or out.info.get("XML:com.adobe.xmp", "").encode()) == XMP, key
            assert json.loads(row["metadata"])["stripped"] == []
            if key.endswith(".tiff"):                                    # a TIFF's EXIF is its IFD0 tags
                assert row["bit_depth"] == 16 and decode_image(data).bit_depth == 16, key
                if row["output_format"] == "tiff":
                    assert out.tag_v2[315] == "Ada Archivist" and out.tag_v2[33432] == "(c) 2026 Archive"
            elif key.endswith(".jpg"):
                assert exif_of(out) == exif1 and decode_image(data).metadata.iptc == IPTC, key   # orientation 6 → 1
            else:   # as the source file carries it (Pillow's AVIF encoder moved orientation to irot/imir)
                assert exif_of(out) == exif_of(read_back(files[key])) and b"DANP Camera" in exif_of(out), key
            if row["linf_bounded"]:
                assert row["linf_levels"] <= BOUND and check_linf(files[key], data, FAST_ATTACK.eps) <= BOUND
            else:   # source of a HEIC/AVIF/JPEG is lossy: measured and recorded, not bounded
                assert row["output_format"] in ("jpeg", "heic", "avif") and 0 <= row["linf_levels"] < 255
            assert row["output_bytes"] == len(data)
        if fmt == "png":
            assert rows["arch/p3.png"]["output_uri"].endswith("/images/arch/p3.png")          # name kept
            assert rows["arch/camera.jpg"]["output_uri"].endswith("/images/arch/camera.jpg.png")
            assert all(r["output_format"] == "png" and r["linf_bounded"] for r in rows.values())
        else:
            formats = {k: r["output_format"] for k, r in rows.items()}
            assert formats == {"arch/camera.jpg": "jpeg", "arch/p3.png": "png", "arch/scan16.tiff": "tiff",
                               "arch/iphone.heic": "heic", "arch/phone.avif": "avif"}
            assert all(r["output_uri"].endswith("/images/" + k) for k, r in rows.items())   # same names as the input


def test_sixteen_bit_bound_holds_in_16bit_units(tmp_path):
    key = "arch/scan16.tiff"
    files = {key: archive_files()[key]}
    rows, outputs = protect(tmp_path, files, output_format="tiff")
    src, out = decode_image(files[key]), decode_image(outputs[key])
    diff = np.abs(out.pixels16.astype(np.int32) - src.pixels16.astype(np.int32))
    assert out.pixels16.dtype == np.uint16 and diff.max() <= BOUND * 257
    assert diff.max() > 257            # δ is applied at 16 bits, not in 8-bit steps: values between levels occur
    assert (diff % 257 != 0).any()
    assert rows[key]["linf_levels"] == -(-int(diff.max()) // 257)


def test_lossy_formats_record_measured_linf_and_psnr(tmp_path):
    files = {k: v for k, v in archive_files().items() if k.endswith((".jpg", ".png"))}
    for fmt in ("jpeg", "webp", "webp-lossless"):
        rows, outputs = protect(tmp_path, files, output_format=fmt, quality=90)
        for key, data in outputs.items():
            row = rows[key]
            assert row["linf_bounded"] is (fmt == "webp-lossless")
            src, out = decode_image(files[key]), decode_image(data)
            measured = int(np.abs(out.rgb.astype(int) - src.rgb.astype(int)).max())
            assert row["linf_levels"] == measured and row["psnr_db"] > 20
            assert read_back(data).info.get("icc_profile") == display_p3_icc()
            if fmt == "webp-lossless":
                assert measured <= BOUND
            if fmt == "webp":
                assert "iptc" in json.loads(row["metadata"])["dropped"] or key.endswith(".png")


def test_strip_gps_and_strip_metadata(tmp_path):
    files = {"arch/camera.jpg": archive_files()["arch/camera.jpg"]}
    rows, outputs = protect(tmp_path, files, strip_gps=True)
    meta = decode_image(outputs["arch/camera.jpg"]).metadata
    exif = read_back(outputs["arch/camera.jpg"]).getexif()
    assert md.GPS_IFD_TAG not in exif and exif[0x013B] == "Ada Archivist" and exif.get_ifd(0x8769)[0x9003]
    assert b"GPSLatitude" not in meta.xmp and b"Ada Archivist" in meta.xmp and meta.iptc == IPTC
    assert json.loads(rows["arch/camera.jpg"]["metadata"])["stripped"] == ["exif gps", "xmp gps"]
    rows, outputs = protect(tmp_path / "all", files, strip_metadata=True)
    out = read_back(outputs["arch/camera.jpg"])
    assert out.info.get("icc_profile") == display_p3_icc()               # colour data stays
    assert not out.info.get("exif") and not out.info.get("xmp") and "Raw profile type iptc" not in out.info
    assert json.loads(rows["arch/camera.jpg"]["metadata"])["kept"] == {"icc": len(display_p3_icc())}


KEYS = ["a/b.jpg", "a/b.png", "a/b", "a/b.jpg.png", "a/b.png.png", "a/b.PNG", "a/.png", "a/.png.png",
        "a/b.png.png.png", "a/b.", "a/b..png", "a/b.jpeg", "a/b.JPG", "a/b.jpg.jpg", "a/b.tif", "a/b.tiff",
        "a/b.tiff.tiff", "a/b.webp", "a/b.webp.png", "a/b.heic", "a/b.heic.heic", "a/b.avif", "b.png", "b",
        "b.png.png", "x/.hidden", "x/.hidden.png", "x/.hidden.png.png", "c.tar.gz", "c.tar.gz.png"]


def test_output_names_never_collide():
    """Every key × every format (and keys that are other keys' outputs): distinct names."""
    names = {}
    keys = set(KEYS)
    keys |= {output_name(k, f) for k in KEYS for f in FORMAT_EXTENSIONS}
    keys |= {output_name(k, f) for k in list(keys) for f in FORMAT_EXTENSIONS}
    for key, fmt in itertools.product(sorted(keys), FORMAT_EXTENSIONS):
        if fmt == "webp":
            continue          # webp and webp-lossless name alike (one photo has one of them)
        name = output_name(key, fmt)
        assert name not in names, f"{key!r} as {fmt} and {names.get(name)} both map to {name!r}"
        names[name] = (key, fmt)
    assert output_name("a/b.jpg", "png") == "a/b.jpg.png" and output_name("a/b.png", "png") == "a/b.png"
    assert output_name("a/b.JPG", "jpeg") == "a/b.JPG" and output_name("a/b", "png") == "a/b.png.png"


def test_profile_of_another_colour_space_is_dropped():
    """A CMYK JPEG's pixels become RGB: its CMYK profile would misdescribe them, so it is not kept."""
    rgb_profile = display_p3_icc()
    cmyk_profile = rgb_profile[:16] + b"CMYK" + rgb_profile[20:]
    kept, dropped = md.fit_profile(md.Metadata(icc=rgb_profile, xmp=XMP), grayscale=False)
    assert kept.icc == rgb_profile and dropped == ()
    fitted, dropped = md.fit_profile(md.Metadata(icc=cmyk_profile, xmp=XMP), grayscale=False)
    assert fitted.icc is None and fitted.xmp == XMP and dropped == ("icc",)
    assert json.loads(md.summary(fitted, dropped)) == {"kept": {"xmp": len(XMP)}, "stripped": [], "dropped": ["icc"]}
    assert md.fit_profile(md.Metadata(icc=rgb_profile), grayscale=True)[1] == ("icc",)
