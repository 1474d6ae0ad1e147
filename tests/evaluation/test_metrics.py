"""Tests for danp_pipeline.evaluation.metrics: known values, reference agreement with skimage, and metric properties."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import save_file
from scipy import ndimage
from skimage.metrics import structural_similarity

from danp_pipeline.evaluation import metrics as M


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return skimage.data.astronaut()[60:188, 170:298].astype(np.float64) / 255.0  # face, 128x128x3


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skimage.data.camera()[80:208, 200:328].astype(np.float64) / 255.0  # 128x128 gray


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0.0, 1.0)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, (sigma, sigma, 0)[: img.ndim])


# ---------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf(astro: np.ndarray) -> None:
    assert M.psnr(astro, astro) == math.inf
    assert M.psnr(astro, astro.copy()) == math.inf


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_psnr_constant_magnitude_noise_float(astro: np.ndarray, k: int) -> None:
    base = np.clip(astro, k / 255.0, 1.0 - k / 255.0)  # so that +-k/255 never clips
    signs = np.random.default_rng(k).choice([-1.0, 1.0], size=base.shape)
    assert M.psnr(base, base + signs * k / 255.0) == pytest.approx(20 * math.log10(255.0 / k), abs=1e-6)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_psnr_constant_magnitude_noise_uint8(camera: np.ndarray, k: int) -> None:
    base = np.clip(np.round(camera * 255), k, 255 - k).astype(np.int16)
    signs = np.random.default_rng(k).choice([-1, 1], size=base.shape)
    a, b = base.astype(np.uint8), (base + signs * k).astype(np.uint8)
    assert M.psnr(a, b) == pytest.approx(20 * math.log10(255.0 / k), abs=1e-6)


def test_psnr_data_range_scales(camera: np.ndarray) -> None:
    b = _noisy(camera, 0.05)
    assert M.psnr(camera, b, data_range=2.0) == pytest.approx(M.psnr(camera, b) + 20 * math.log10(2.0))


# ---------------------------------------------------------------- SSIM
def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       channel_axis=-1 if a.ndim == 3 else None, data_range=1))


def test_ssim_identical_is_one(astro: np.ndarray, camera: np.ndarray) -> None:
    assert M.ssim(astro, astro) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(camera, camera) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("which", ["astro", "camera"])
@pytest.mark.parametrize("distort", ["noise", "strong_noise", "blur", "shift", "contrast"])
def test_ssim_matches_skimage(request: pytest.FixtureRequest, which: str, distort: str) -> None:
    a = request.getfixturevalue(which)
    b = {"noise": lambda: _noisy(a, 0.03), "strong_noise": lambda: _noisy(a, 0.3), "blur": lambda: _blur(a, 1.5),
         "shift": lambda: np.clip(a + 0.1, 0, 1), "contrast": lambda: 0.5 * a + 0.25}[distort]()
    ours, ref = M.ssim(a, b), _sk_ssim(a, b)
    assert ours == pytest.approx(ref, abs=1e-4)
    assert -1.0 <= ours < 1.0


def test_ssim_full_photo_and_uint8_input() -> None:
    a8 = skimage.data.astronaut()
    b8 = np.clip(a8.astype(int) + np.random.default_rng(1).integers(-20, 21, a8.shape), 0, 255).astype(np.uint8)
    assert M.ssim(a8, b8) == pytest.approx(_sk_ssim(a8 / 255.0, b8 / 255.0), abs=1e-4)


# ---------------------------------------------------------------- FSIM and VIFp
@pytest.mark.parametrize("metric, tol", [(M.fsim, 1e-12), (M.vifp, 1e-8)], ids=["fsim", "vifp"])
def test_fsim_and_vifp_of_identical_images_are_one(astro: np.ndarray, camera: np.ndarray, metric, tol) -> None:
    assert metric(astro, astro) == pytest.approx(1.0, abs=tol)
    assert metric(camera, camera) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("which", ["astro", "camera"])
def test_fsim_monotonic_in_noise_and_blur(request: pytest.FixtureRequest, which: str) -> None:
    a = request.getfixturevalue(which)
    noise = [M.fsim(a, _noisy(a, s)) for s in (0.01, 0.03, 0.08, 0.2)]
    blur = [M.fsim(a, _blur(a, s)) for s in (0.5, 1.0, 2.0, 3.5)]
    for scores in (noise, blur):
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert all(x > y for x, y in zip(scores, scores[1:])), scores


def test_fsim_is_symmetric(astro: np.ndarray) -> None:
    for b in (_noisy(astro, 0.05), _blur(astro, 1.5)):
        assert M.fsim(astro, b) == pytest.approx(M.fsim(b, astro), abs=1e-12)


def test_fsim_downsampling_follows_paper() -> None:
    # factor = max(1, round(min(H, W) / 256)) with MATLAB rounding (halves away from zero)
    assert [M._fsim_factor(h, 1000) for h in (100, 128, 383, 384, 512, 640, 1024)] == [1, 1, 1, 2, 2, 3, 4]
    img = np.arange(36, dtype=np.float64).reshape(6, 6)
    expected = img.reshape(3, 2, 3, 2).mean(axis=(1, 3))  # F=2: non-overlapping 2x2 block means
    np.testing.assert_allclose(M._fsim_downsample(img, 2), expected)
    full = skimage.data.camera() / 255.0  # 512x512 -> downsampled by 2 internally
    assert 0.9 < M.fsim(full, _blur(full, 1.0)) < 1.0


# ---------------------------------------------------------------- VIFp
@pytest.mark.parametrize("which", ["astro", "camera"])
def test_vifp_decreases_with_noise(request: pytest.FixtureRequest, which: str) -> None:
    a = request.getfixturevalue(which)
    scores = [M.vifp(a, _noisy(a, s)) for s in (0.01, 0.03, 0.08, 0.2)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(x > y for x, y in zip(scores, scores[1:])), scores


def test_vifp_is_asymmetric_for_blur(astro: np.ndarray) -> None:
    b = _blur(astro, 1.5)
    ab, ba = M.vifp(astro, b), M.vifp(b, astro)
    assert 0.0 < ab < 1.0
    assert abs(ab - ba) > 1e-3


def test_vifp_size_limits(camera: np.ndarray) -> None:
    small = camera[:64, :64]
    assert 0.0 < M.vifp(small, _noisy(small, 0.05)) < 1.0  # 64x64 is enough for 4 scales
    with pytest.raises(ValueError, match="too small"):
        M.vifp(np.zeros((32, 32)), np.zeros((32, 32)))


# ---------------------------------------------------------------- input handling
def test_input_validation(camera: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        M.psnr(camera, camera[:-1])
    with pytest.raises(TypeError):
        M.ssim(camera.astype(np.int32), camera.astype(np.int32))
    with pytest.raises(ValueError):
        M.psnr(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
    # uint8 and float inputs of the same picture give the same answers
    c8 = np.round(camera * 255).astype(np.uint8)
    assert M.fsim(c8, _noisy(c8 / 255.0, 0.05)) == pytest.approx(M.fsim(c8 / 255.0, _noisy(c8 / 255.0, 0.05)))


# ---------------------------------------------------------------- LPIPS
@pytest.fixture()
def clean_lpips_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(M.LPIPS_ENV_VAR, raising=False)
    M._LPIPS_CACHE.clear()
    M._LPIPS_WARNED.clear()
    yield
    M._LPIPS_CACHE.clear()
    M._LPIPS_WARNED.clear()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random weights saved under the documented tensor names (torchvision features + lpips lin layers)."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in M.LPIPS.expected_tensor_shapes().items():
        if name.startswith("lin"):
            tensors[name] = torch.rand(shape, generator=gen)  # official lin weights are non-negative
        elif name.endswith("weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            tensors[name] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        else:
            tensors[name] = torch.randn(shape, generator=gen) * 0.01
    tensors["classifier.1.weight"] = torch.zeros(4, 4)  # extra tensors are ignored
    path = tmp_path_factory.mktemp("lpips") / "alex_random.safetensors"
    save_file(tensors, str(path))
    return str(path)


@pytest.fixture(scope="module")
def face64(astro: np.ndarray) -> np.ndarray:
    return astro[32:96, 32:96]  # AlexNet on CPU is slow-ish; 64x64 keeps the LPIPS tests fast


def test_lpips_properties_with_random_weights(random_weights: str, face64: np.ndarray, clean_lpips_state) -> None:
    astro = face64
    model = M.LPIPS(random_weights, device="cpu")
    small, large = _noisy(astro, 0.03, seed=1), _noisy(astro, 0.25, seed=2)
    assert model(astro, astro) == 0.0
    assert model.distance(astro, small) == model.distance(small, astro)
    d_small, d_large = model(astro, small), model(astro, large)
    assert 0.0 < d_small < d_large
    gray = astro.mean(axis=-1)
    assert model(gray, gray) == 0.0 and model(gray, _noisy(gray, 0.1)) > 0.0
    with pytest.raises(ValueError, match="32x32"):
        model(astro[:16, :16], astro[:16, :16])


def test_lpips_weights_from_env_var(random_weights: str, face64: np.ndarray, monkeypatch, clean_lpips_state) -> None:
    astro = face64
    monkeypatch.setenv(M.LPIPS_ENV_VAR, random_weights)
    b = _noisy(astro, 0.1)
    d = M.lpips_or_none(astro, b)
    assert d is not None and d > 0.0
    assert d == pytest.approx(M.LPIPS(device="cpu")(astro, b), rel=1e-6)
    out = M.compare(astro, b)
    assert out["lpips"] == pytest.approx(d, rel=1e-6)


def test_lpips_unavailable(face64: np.ndarray, tmp_path, caplog, clean_lpips_state) -> None:
    astro = face64
    with pytest.raises(M.MetricUnavailable, match=M.LPIPS_ENV_VAR):
        M.LPIPS()
    with pytest.raises(M.MetricUnavailable, match="not found"):
        M.LPIPS(tmp_path / "nope.safetensors")
    assert issubclass(M.MetricUnavailable, RuntimeError)
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        assert M.lpips_or_none(astro, astro) is None
        assert M.lpips_or_none(astro, _noisy(astro, 0.1)) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "LPIPS" in r.getMessage()]
    assert len(warnings) == 1


def test_lpips_malformed_weights_raise(random_weights: str, tmp_path, clean_lpips_state) -> None:
    bad = {k: torch.zeros(s) for k, s in M.LPIPS.expected_tensor_shapes().items()}
    bad["lin2.model.1.weight"] = torch.zeros(1, 7, 1, 1)
    del bad["features.3.bias"]
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ValueError, match=r"features\.3\.bias.*lin2"):
        M.LPIPS(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        M.LPIPS(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------- compare
def test_compare(astro: np.ndarray, clean_lpips_state) -> None:
    b = _noisy(astro, 0.05)
    out = M.compare(astro, b)
    assert list(out) == ["psnr", "ssim", "fsim", "vifp", "lpips"]
    assert out["lpips"] is None
    assert out["psnr"] == M.psnr(astro, b) and out["ssim"] == M.ssim(astro, b)
    assert out["fsim"] == M.fsim(astro, b) and out["vifp"] == M.vifp(astro, b)
    assert M.compare(astro, astro, metrics=("psnr", "ssim")) == {"psnr": math.inf, "ssim": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="unknown metrics"):
        M.compare(astro, b, metrics=("psnr", "msssim"))
