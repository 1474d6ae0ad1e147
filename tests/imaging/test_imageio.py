"""Tests for danp_pipeline.imaging.codec: decoding real and hostile files, sizing, δ application, PNG output."""

from __future__ import annotations

import io
import math
import resource
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage
import skimage.data
import torch
from helpers import encode, png_header_only
from PIL import Image, ImageFile

from danp_pipeline.imaging.codec import (
    DecodedImage,
    ImageDecodeError,
    apply_delta,
    decode_image,
    encode_png,
    eps_levels,
    linf_levels,
    psnr_db,
    to_tensor,
    working_size,
)

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
EPS_VALUES = [0.03, 0.01, 2 / 255]
SIZES = [(37, 53), (300, 200), (513, 1023)]  # (w, h)


# ---------------------------------------------------------------- helpers


def _resized(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))


def _as_decoded(rgb: np.ndarray, grayscale: bool = False) -> DecodedImage:
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return DecodedImage(rgb=rgb, alpha=None, grayscale=grayscale, source_mode="RGB",
                        source_format=None, notes=())


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
            "coffee": skimage.data.coffee(), "camera": skimage.data.camera()}


# ---------------------------------------------------------------- real photos


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "camera"])
@pytest.mark.parametrize("size", SIZES)
def test_decode_real_photos_png_exact_jpeg_close(photos, name, size):
    arr = _resized(photos[name], size)
    gray = arr.ndim == 2
    png = decode_image(encode(arr, "PNG"))
    assert (png.width, png.height) == size and png.rgb.dtype == np.uint8
    assert png.grayscale is gray and png.alpha is None and png.source_format == "PNG"
    expected = np.repeat(arr[..., None], 3, axis=2) if gray else arr
    np.testing.assert_array_equal(png.rgb, expected)
    jpg = decode_image(encode(arr, "JPEG", quality=95))
    assert (jpg.width, jpg.height) == size and jpg.grayscale is gray
    assert jpg.source_format == "JPEG" and jpg.source_mode == ("L" if gray else "RGB")
    assert psnr_db(_as_decoded(expected), jpg.rgb) > 30.0


@pytest.mark.parametrize("filename", ["rocket.jpg", "retina.jpg", "hubble_deep_field.jpg"])
def test_decode_bundled_jpeg_files(filename):
    data = (SKIMAGE_DATA / filename).read_bytes()
    with Image.open(io.BytesIO(data)) as ref:
        ref_rgb = np.asarray(ref.convert("RGB"))
    out = decode_image(data)
    assert out.source_format == "JPEG" and out.rgb.shape == ref_rgb.shape
    np.testing.assert_array_equal(out.rgb, ref_rgb)


# ---------------------------------------------------------------- hostile / broken input


def test_empty_file_rejected():
    with pytest.raises(ImageDecodeError, match=r"^empty file \(0 bytes\)$"):
        decode_image(b"")


def test_random_bytes_rejected():
    data = np.random.default_rng(0).bytes(5000)
    with pytest.raises(ImageDecodeError, match=r"^not an image \(cannot identify image file\)$"):
        decode_image(data)


def test_jpeg_magic_followed_by_garbage_rejected_readably():
    data = b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(3000)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    msg = str(info.value)
    assert 0 < len(msg) < 300 and "Traceback" not in msg


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_rejected(photos, fmt):
    data = encode(photos["chelsea"], fmt)
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data: "):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_refused_without_allocating():
    before_limit, before_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 200
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for max_pixels in (40_000_000, 10**10):  # Pillow's own bomb error must also become ours
        with pytest.raises(ImageDecodeError, match=r"^image too large"):
            decode_image(bomb, max_pixels=max_pixels)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert rss_after - rss_before < 100 * 1024  # KiB on Linux; a decode would need >= 300 MB
    assert Image.MAX_IMAGE_PIXELS == before_limit
    assert ImageFile.LOAD_TRUNCATED_IMAGES == before_trunc


def test_max_pixels_checked_from_header_before_decoding():
    # The IDAT is empty: a decode attempt would say "truncated", so "too large" proves no decode.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png_header_only(2000, 3000), max_pixels=1_000_000)
    assert str(info.value) == "image too large: 2000x3000 = 6000000 pixels > max_pixels 1000000"
    with warnings.catch_warnings(record=True) as caught:  # Pillow's bomb warning range
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError, match=r"10000x10000 = 100000000 pixels > max_pixels"):
            decode_image(png_header_only(10_000, 10_000))
    assert not caught
    with pytest.raises(ImageDecodeError, match=r"^truncated or corrupt image data"):
        decode_image(png_header_only(100, 100))


def test_tiny_image_rejected_by_min_side():
    data = encode(np.zeros((4, 4, 3), np.uint8), "PNG")
    with pytest.raises(ImageDecodeError, match=r"^image too small: 4x4"):
        decode_image(data)
    assert decode_image(data, min_side=4).rgb.shape == (4, 4, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(b"x", max_pixels=0)
    with pytest.raises(ValueError, match="min_side"):
        decode_image(b"x", min_side=-1)


# ---------------------------------------------------------------- modes


def test_cmyk_jpeg_converted(photos):
    arr = _resized(photos["coffee"], (300, 200))
    out = decode_image(encode(Image.fromarray(arr).convert("CMYK"), "JPEG", quality=95))
    assert out.source_mode == "CMYK" and "CMYK converted to RGB" in out.notes
    assert not out.grayscale and out.rgb.shape == (200, 300, 3)
    assert np.abs(out.rgb.astype(int) - arr).mean() < 3.0


def test_16bit_png_scaled_by_shift_not_clipped():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # spans 0..65535
    out = decode_image(encode(values, "PNG"))
    assert out.source_mode.startswith("I") and out.grayscale
    assert "16-bit samples kept" in out.notes and out.bit_depth == 16   # protected at 16 bits
    assert np.array_equal(out.pixels16[..., 0], values)
    diff = out.rgb[..., 0].astype(int) - (values >> 8)
    assert np.abs(diff).max() <= 1
    assert out.rgb.min() == 0 and out.rgb.max() == 255  # clipping would saturate almost all


def test_16bit_big_endian_and_32bit_int_tiff():
    values = (np.arange(64 * 64, dtype=np.uint32) * 16).reshape(64, 64)  # 0..65520
    big = Image.frombytes("I;16B", (64, 64), values.astype(">u2").tobytes())
    out = decode_image(encode(big, "TIFF"))
    np.testing.assert_array_equal(out.pixels16[..., 0], values)   # 16-bit samples kept
    assert np.abs(out.rgb[..., 0].astype(int) - (values >> 8)).max() <= 1   # 8-bit view rounds
    out = decode_image(encode(Image.fromarray(values.astype(np.int32)), "TIFF"))
    assert out.source_mode == "I" and out.grayscale
    np.testing.assert_array_equal(out.rgb[..., 0], values >> 8)


def test_float_tiff_clipped():
    values = np.linspace(-100.0, 400.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert out.source_mode == "F" and out.grayscale
    np.testing.assert_array_equal(out.rgb[..., 0], np.rint(np.clip(values, 0, 255)).astype(np.uint8))


def test_one_bit_image():
    checker = (np.indices((16, 24)).sum(axis=0) % 2).astype(bool)
    out = decode_image(encode(Image.fromarray(checker), "PNG"))
    assert out.source_mode == "1" and out.grayscale
    np.testing.assert_array_equal(out.rgb[..., 0], checker.astype(np.uint8) * 255)


def test_palette_with_and_without_transparency():
    idx = (np.arange(20 * 16) % 4).astype(np.uint8).reshape(20, 16)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    pal = Image.frombytes("P", (16, 20), idx.tobytes())
    pal.putpalette(colors.flatten().tolist())
    out = decode_image(encode(pal, "PNG", transparency=2))
    assert out.source_mode == "P" and not out.grayscale and out.alpha is not None
    np.testing.assert_array_equal(out.alpha, np.where(idx == 2, 0, 255))
    np.testing.assert_array_equal(out.rgb[idx != 2], colors[idx[idx != 2]])
    plain = decode_image(encode(pal, "PNG"))
    assert plain.alpha is None
    np.testing.assert_array_equal(plain.rgb, colors[idx])


def test_rgba_and_la_keep_alpha():
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    out = decode_image(encode(rgba, "PNG"))
    assert out.source_mode == "RGBA" and not out.grayscale
    np.testing.assert_array_equal(out.rgb, rgba[..., :3])
    np.testing.assert_array_equal(out.alpha, rgba[..., 3])
    la = rng.integers(0, 256, (30, 40, 2), dtype=np.uint8)
    out = decode_image(encode(la, "PNG"))
    assert out.source_mode == "LA" and out.grayscale
    np.testing.assert_array_equal(out.rgb, np.repeat(la[..., :1], 3, axis=2))
    np.testing.assert_array_equal(out.alpha, la[..., 1])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_rotates_clockwise(photos, fmt):
    arr = _resized(photos["chelsea"], (60, 40))  # w=60, h=40
    exif = Image.Exif()
    exif[0x0112] = 6
    kwargs = {"quality": 100} if fmt == "JPEG" else {}
    out = decode_image(encode(arr, fmt, exif=exif, **kwargs))
    assert (out.width, out.height) == (40, 60)
    assert "exif orientation 6 applied" in out.notes
    expected = np.rot90(arr, k=-1)  # 90° clockwise
    if fmt == "PNG":
        np.testing.assert_array_equal(out.rgb, expected)
    else:
        assert psnr_db(_as_decoded(expected), out.rgb) > 35.0
        assert psnr_db(_as_decoded(np.rot90(arr, k=1).copy()), out.rgb) < 25.0


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_first_frame_used(fmt):
    frames = [Image.new("RGB", (32, 24), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **extra)
    out = decode_image(buf.getvalue())
    assert "animated: first of 3 frames used" in out.notes
    assert out.source_format == fmt and (out.width, out.height) == (32, 24)
    assert np.all(out.rgb == np.array([255, 0, 0], np.uint8))


# ---------------------------------------------------------------- sizing and tensors


def test_working_size_examples():
    assert working_size(512, 512) == (512, 512)
    assert working_size(1024, 768) == (512, 384)
    assert working_size(100, 3000) == (64, 512)
    assert working_size(3000, 100) == (512, 64)
    assert working_size(37, 53) == (384, 512)
    assert working_size(1000, 500, resolution=256, multiple=32) == (256, 128)


@pytest.mark.parametrize("w,h", [(1, 1), (8, 9999), (333, 777), (4000, 3000), (513, 1023), (641, 479)])
def test_working_size_properties(w, h):
    ww, hh = working_size(w, h)
    assert ww % 64 == 0 and hh % 64 == 0 and min(ww, hh) >= 64 and max(ww, hh) == 512
    if min(w, h) * 512 / max(w, h) >= 64:
        assert abs(ww / hh - w / h) / (w / h) < 0.2


@pytest.mark.parametrize("kwargs,bad", [({"width": 0, "height": 5}, "0"), ({"width": 5, "height": -3}, "-3"),
                                        ({"width": 5, "height": 5, "resolution": 0}, "resolution"),
                                        ({"width": 5, "height": 5, "multiple": 2.5}, "2.5"),
                                        ({"width": True, "height": 5}, "True")])
def test_working_size_rejects_bad_values(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        working_size(**kwargs)


def test_to_tensor(photos):
    img = decode_image(encode(_resized(photos["astronaut"], (513, 1023)), "PNG"))
    t = to_tensor(img, working_size(img.width, img.height))
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, 512, 256)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_allclose(t.mean(dim=(1, 2)).numpy(), img.rgb.mean(axis=(0, 1)) / 255, atol=0.01)
    same = to_tensor(img, (img.width, img.height))
    np.testing.assert_array_equal((same * 255).round().byte().permute(1, 2, 0).numpy(), img.rgb)


# ---------------------------------------------------------------- δ application


def test_eps_levels_ignores_float_noise():
    assert [eps_levels(k / 255) for k in range(256)] == list(range(256))
    assert eps_levels(0.03) == 8 == math.ceil(255 * 0.03)
    assert eps_levels(0.01) == 3
    with pytest.raises(ValueError, match="eps"):
        eps_levels(-0.1)


@pytest.mark.parametrize("eps", EPS_VALUES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("grayscale", [False, True])
def test_apply_delta_bound_is_exact(eps, size, grayscale):
    rng = np.random.default_rng(hash((eps, size, grayscale)) % 2**32)
    w, h = size
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:3], rgb[-3:] = 0, 255  # saturated rows exercise the clamp
    if grayscale:
        rgb[:] = rgb[..., :1]
    img = _as_decoded(rgb, grayscale)
    ww, hh = working_size(w, h)
    bound = math.ceil(255 * eps)
    for trial in range(3):
        scale = [10 * eps, 1.0, 100.0][trial]
        delta = torch.from_numpy(rng.normal(0, scale, (3, hh, ww)).astype(np.float32))
        out = apply_delta(img, delta if trial != 1 else delta.numpy(), eps)
        assert out.dtype == np.uint8
        assert out.shape == ((h, w) if grayscale else (h, w, 3))
        ref = rgb[..., 0] if grayscale else rgb
        levels = np.abs(out.astype(int) - ref.astype(int)).max()
        assert levels <= bound and linf_levels(img, out) == levels
        assert levels >= eps_levels(eps)  # saturated δ reaches the bound


def test_apply_delta_values_and_clamp():
    img = _as_decoded(np.full((50, 70, 3), 128, np.uint8))
    np.testing.assert_array_equal(apply_delta(img, torch.zeros(3, 64, 64), 0.03), img.rgb)
    out = apply_delta(img, torch.full((1, 3, 64, 64), 3 / 255), 0.03)
    assert np.all(out == 131)
    out = apply_delta(img, torch.full((3, 64, 64), 1.0), 0.03)  # clipped to +eps: 128 + 7.65
    assert np.all(out == 136)
    black = _as_decoded(np.zeros((20, 20, 3), np.uint8))
    assert np.all(apply_delta(black, -torch.ones(3, 8, 8), 0.03) == 0)
    ramp = torch.linspace(-0.03, 0.03, 64).expand(3, 64, 64)  # smooth left-to-right δ
    row = apply_delta(img, ramp, 0.03)[25, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and row[0] == 120 and row[-1] == 136


def test_apply_delta_rejects_bad_delta():
    img = _as_decoded(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        apply_delta(img, torch.zeros(4, 8, 8), 0.03)
    with pytest.raises(ValueError, match="NaN"):
        apply_delta(img, torch.full((3, 8, 8), float("nan")), 0.03)
    with pytest.raises(ValueError, match="eps"):
        apply_delta(img, torch.zeros(3, 8, 8), float("nan"))


# ---------------------------------------------------------------- encode, metrics, end to end


@pytest.mark.parametrize("channels,with_alpha", [(0, False), (0, True), (3, False), (3, True), (4, False)])
def test_encode_png_round_trip_lossless(channels, with_alpha):
    rng = np.random.default_rng(3)
    shape = (33, 47) if channels == 0 else (33, 47, channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    alpha = rng.integers(0, 256, (33, 47), dtype=np.uint8) if with_alpha else None
    data = encode_png(pixels, alpha)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert im.mode == {(0, False): "L", (0, True): "LA", (3, False): "RGB", (3, True): "RGBA",
                           (4, False): "RGBA"}[(channels, with_alpha)]
        back = np.asarray(im)
    expected = pixels if alpha is None else np.dstack([pixels, alpha])
    np.testing.assert_array_equal(back, expected)


def test_encode_png_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="alpha"):
        encode_png(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8))


def test_linf_and_psnr_numbers():
    rgb = np.random.default_rng(4).integers(10, 240, (40, 30, 3), dtype=np.uint8)
    img = _as_decoded(rgb)
    assert linf_levels(img, rgb) == 0 and psnr_db(img, rgb) == math.inf
    out = rgb + 3
    out[0, 0, 0] -= 8  # one pixel at -5
    assert linf_levels(img, out) == 5
    mse = (9 * (rgb.size - 1) + 25) / rgb.size
    assert psnr_db(img, out) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-9)
    gray = _as_decoded(rgb[..., 0], grayscale=True)
    assert linf_levels(gray, rgb[..., 0] + 2) == 2
    with pytest.raises(ValueError, match="shape"):
        linf_levels(img, rgb[:-1])


@pytest.mark.parametrize("name,mode", [("coffee", "RGB"), ("camera", "L"), ("chelsea", "RGBA")])
def test_end_to_end_decode_protect_encode(photos, name, mode):
    arr = _resized(photos[name], (300, 200))
    if mode == "RGBA":
        arr = np.dstack([arr, np.linspace(0, 255, 300, dtype=np.uint8)[None].repeat(200, 0)])
    img = decode_image(encode(arr, "PNG"))
    w, h = working_size(img.width, img.height)
    x = to_tensor(img, (w, h))
    gen = torch.Generator().manual_seed(5)
    delta = (torch.rand(x.shape, generator=gen) - 0.5) * 0.2
    out = apply_delta(img, delta, 0.03)
    back = decode_image(encode_png(out, img.alpha))
    expected = np.repeat(out[..., None], 3, axis=2) if img.grayscale else out
    np.testing.assert_array_equal(back.rgb, expected)
    assert back.grayscale is img.grayscale
    if img.alpha is not None:
        np.testing.assert_array_equal(back.alpha, img.alpha)
    assert linf_levels(img, out) <= 8 and 30.0 < psnr_db(img, out) < 60.0
