"""Image-quality metrics that compare edits of protected photos with edits of clean ones.

Inputs are numpy arrays of shape HxW, HxWx1 or HxWx3 with the same shape. Float arrays must be
in [0, 1]; uint8 arrays are divided by 255, so ``data_range`` always refers to the [0, 1] scale.
PSNR and SSIM use all channels (SSIM per channel, then averaged). FSIM and VIFp use BT.601 luma
(Y = .299R + .587G + .114B) on a 0..255 scale, as their reference code does. LPIPS loads its
weights from a local file only and raises :class:`MetricUnavailable` when it has none.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from torch import nn

from ..protect.devices import pick_device

logger = logging.getLogger(__name__)

__all__ = ["LPIPS", "LPIPS_ENV_VAR", "MetricUnavailable", "compare", "fsim", "lpips_or_none",
           "psnr", "ssim", "vifp"]

FloatArray = NDArray[np.float64]
LPIPS_ENV_VAR = "DANP_LPIPS_WEIGHTS"
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_float(img: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float64)
    else:
        raise TypeError(f"{name}: expected a float or uint8 image, got dtype {arr.dtype}")
    if out.ndim == 3 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.ndim not in (2, 3) or (out.ndim == 3 and out.shape[-1] != 3):
        raise ValueError(f"{name}: expected an HxW or HxWx3 image, got shape {arr.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: image contains NaN or inf")
    return out


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x, y = _as_float(a, "a"), _as_float(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    return x, y


def _luma255(x: FloatArray) -> FloatArray:
    return 255.0 * (x @ _LUMA if x.ndim == 3 else x)


def _gauss1d(sigma: float, radius: int) -> FloatArray:
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _sep_filter(x: FloatArray, k: FloatArray, mode: str) -> FloatArray:
    """Separable 2-D correlation over the first two axes (channels are filtered independently)."""
    return ndimage.correlate1d(ndimage.correlate1d(x, k, axis=0, mode=mode), k, axis=1, mode=mode)


def psnr(a: ArrayLike, b: ArrayLike, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10*log10(data_range**2 / MSE)``. Returns ``inf`` if a == b."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(a: ArrayLike, b: ArrayLike, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 13(4), 2004).

    This uses an 11x11 Gaussian window with sigma 1.5, K1=0.01, K2=0.03, population (not
    sample) covariances and reflected borders. The map is averaged after cropping a 5-pixel
    border, and RGB inputs are scored per channel and then averaged. That is the same setup as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1)``. The result lies in [-1, 1].
    """
    x, y = _pair(a, b)
    if min(x.shape[:2]) < 11:
        raise ValueError(f"ssim needs images of at least 11x11, got {x.shape[:2]}")
    k, r = _gauss1d(1.5, 5), 5
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _sep_filter(x, k, "reflect"), _sep_filter(y, k, "reflect")
    vx = _sep_filter(x * x, k, "reflect") - mx * mx
    vy = _sep_filter(y * y, k, "reflect") - my * my
    cxy = _sep_filter(x * y, k, "reflect") - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    # mean over crop and channels == mean of the per-channel mean SSIMs (channels have equal size)
    return float(smap[r:-r, r:-r].mean())


def _fsim_factor(h: int, w: int) -> int:
    # The paper's code uses MATLAB round() (halves go away from zero), not Python's banker's round.
    return max(1, int(math.floor(min(h, w) / 256.0 + 0.5)))


def _fsim_downsample(y: FloatArray, f: int) -> FloatArray:
    """F x F box average with zero padding (MATLAB conv2 'same'), then keep every F-th pixel."""
    if f == 1:
        return y
    lo, hi = (f - 1) // 2, f // 2
    padded = np.pad(y, ((lo, hi), (lo, hi)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (f, f))[::f, ::f]
    return windows.mean(axis=(-2, -1))


def _phase_congruency(img: FloatArray, nscale: int = 4, norient: int = 4) -> FloatArray:
    """Phase congruency (Kovesi, "Image features from phase congruency", Videre 1(3), 1999), summed
    over orientations. Log-Gabor settings are the FSIM paper's: minimum wavelength 6, scale factor 2,
    sigma_onf 0.55, dThetaOnSigma 1.2, noise compensation with k=2 and the threshold divided by 1.7."""
    rows, cols = img.shape
    eps, k_noise = 1e-4, 2.0
    spectrum = np.fft.fft2(img)
    fy, fx = np.fft.fftfreq(rows)[:, None], np.fft.fftfreq(cols)[None, :]
    radius = np.hypot(fx, fy)
    theta = np.arctan2(-fy, fx)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)
    radius[0, 0] = 1.0
    log_gabors = []
    for s in range(nscale):
        f0 = 1.0 / (6.0 * 2.0**s)
        g = np.exp(-(np.log(radius / f0) ** 2) / (2 * math.log(0.55) ** 2)) * lowpass
        g[0, 0] = 0.0
        log_gabors.append(g)
    theta_sigma = math.pi / norient / 1.2
    sin_t, cos_t = np.sin(theta), np.cos(theta)
    energy_all, amp_all = np.zeros_like(img), np.zeros_like(img)
    for o in range(norient):
        ang = o * math.pi / norient
        dtheta = np.arctan2(sin_t * math.cos(ang) - cos_t * math.sin(ang),
                            cos_t * math.cos(ang) + sin_t * math.sin(ang))
        spread = np.exp(-(dtheta**2) / (2 * theta_sigma**2))
        filters = [g * spread for g in log_gabors]
        eo = np.stack([np.fft.ifft2(spectrum * f) for f in filters])
        even, odd = eo.real, eo.imag
        sum_e, sum_o = even.sum(0), odd.sum(0)
        norm = np.hypot(sum_e, sum_o) + eps
        mean_e, mean_o = sum_e / norm, sum_o / norm
        energy = (even * mean_e + odd * mean_o - np.abs(even * mean_o - odd * mean_e)).sum(0)
        # Noise energy is estimated from the smallest-scale response (a Rayleigh-distributed amplitude).
        noise_power = -np.median(np.abs(eo[0]) ** 2) / math.log(0.5) / np.sum(filters[0] ** 2)
        spatial = np.stack([np.fft.ifft2(f).real * math.sqrt(rows * cols) for f in filters])
        sum_an2 = float(np.sum(spatial**2))
        sum_aiaj = (float(np.sum(spatial.sum(0) ** 2)) - sum_an2) / 2.0
        tau = math.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj) / 2.0)
        threshold = (tau * math.sqrt(math.pi / 2) + k_noise * tau * math.sqrt(2 - math.pi / 2)) / 1.7
        energy_all += np.maximum(energy - threshold, 0.0)
        amp_all += np.abs(eo).sum(0)
    return energy_all / (amp_all + eps)


def _scharr_magnitude(y: FloatArray) -> FloatArray:
    dx = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0
    gx = ndimage.correlate(y, dx, mode="constant")
    gy = ndimage.correlate(y, dx.T, mode="constant")
    return np.hypot(gx, gy)


def fsim(a: ArrayLike, b: ArrayLike) -> float:
    """Grayscale FSIM (Zhang, Zhang, Mou & Zhang, IEEE TIP 20(8), 2011), computed on 0..255 luma.

    The luma is first box-downsampled by ``max(1, round(min(H, W) / 256))``. From there,
    ``S_PC = (2 PC1 PC2 + T1) / (PC1^2 + PC2^2 + T1)`` with T1 = 0.85, and ``S_G`` has the same
    form on Scharr gradient magnitudes with T2 = 160. The result is
    ``FSIM = sum(S_PC S_G PC_m) / sum(PC_m)`` with ``PC_m = max(PC1, PC2)``.
    The formula is symmetric in a and b, so fsim(a, b) == fsim(b, a). It lies in [0, 1] and is
    1 for identical images. If neither image has any phase congruency (e.g. flat images), the
    unweighted mean of S_PC S_G is returned instead.
    """
    x, y = _pair(a, b)
    y1, y2 = _luma255(x), _luma255(y)
    f = _fsim_factor(*y1.shape[:2])
    y1, y2 = _fsim_downsample(y1, f), _fsim_downsample(y2, f)
    pc1, pc2 = _phase_congruency(y1), _phase_congruency(y2)
    g1, g2 = _scharr_magnitude(y1), _scharr_magnitude(y2)
    t1, t2 = 0.85, 160.0
    s_pc = (2 * pc1 * pc2 + t1) / (pc1 * pc1 + pc2 * pc2 + t1)
    s_g = (2 * g1 * g2 + t2) / (g1 * g1 + g2 * g2 + t2)
    pc_m = np.maximum(pc1, pc2)
    denom = float(pc_m.sum())
    if denom <= 0.0:
        return float(np.mean(s_pc * s_g))
    return float(np.sum(s_pc * s_g * pc_m) / denom)


def _valid(z: FloatArray, k: FloatArray) -> FloatArray:
    """2-D Gaussian filtering keeping only the 'valid' part (no border effects)."""
    r = len(k) // 2
    return _sep_filter(z, k, "nearest")[r:-r, r:-r]


def vifp(a: ArrayLike, b: ArrayLike) -> float:
    """Pixel-domain VIF (Sheikh & Bovik, "Image information and visual quality", IEEE TIP 15(2), 2006).

    ``a`` is the reference and ``b`` the distorted image, and the metric is NOT symmetric. It runs
    on 0..255 luma at 4 scales with Gaussian windows of size N = 17, 9, 5, 3 (sigma N/5), using
    'valid' filtering, 2x subsampling between scales, and HVS noise variance sigma_nsq = 2. The
    result is 1 for identical images, falls toward 0 with noise or blur, and can exceed 1 for
    contrast enhancement. It is NaN when the reference has no variance at any scale.
    """
    x, y = _pair(a, b)
    ref, dist = _luma255(x), _luma255(y)
    sigma_nsq, tiny = 2.0, 1e-10
    num = den = 0.0
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        k = _gauss1d(n / 5.0, n // 2)
        if scale > 0:
            ref, dist = _valid(ref, k)[::2, ::2], _valid(dist, k)[::2, ::2]
        if min(ref.shape) < n:
            raise ValueError(f"vifp: image {x.shape[:2]} is too small for 4 scales (use >= 64x64)")
        mu1, mu2 = _valid(ref, k), _valid(dist, k)
        s1 = np.maximum(_valid(ref * ref, k) - mu1 * mu1, 0.0)
        s2 = np.maximum(_valid(dist * dist, k) - mu2 * mu2, 0.0)
        s12 = _valid(ref * dist, k) - mu1 * mu2
        g = s12 / (s1 + tiny)
        sv = s2 - g * s12
        flat_ref = s1 < tiny
        g[flat_ref], sv[flat_ref], s1[flat_ref] = 0.0, s2[flat_ref], 0.0
        flat_dist = s2 < tiny
        g[flat_dist], sv[flat_dist] = 0.0, 0.0
        neg = g < 0
        sv[neg], g[neg] = s2[neg], 0.0
        sv = np.maximum(sv, tiny)
        num += float(np.sum(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + s1 / sigma_nsq)))
    return num / den if den > 0 else math.nan


class MetricUnavailable(RuntimeError):
    """Raised when a metric cannot run here, e.g. because its pretrained weights are missing."""


# (index in torchvision's alexnet.features, out channels, in channels, kernel size)
_ALEX_CONVS = ((0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3), (10, 256, 256, 3))
_ALEX_TAPS = (1, 4, 7, 9, 11)  # the ReLU outputs that LPIPS compares
_LIN_CHANNELS = (64, 192, 384, 256, 256)


class _AlexLPIPSNet(nn.Module):
    """torchvision alexnet().features up to relu5, plus the LPIPS 1x1 linear heads lin0..lin4."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        # lin{i}.model = Sequential(Dropout, 1x1 conv): the key layout of the official lpips package
        self.lins = [nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)) for c in _LIN_CHANNELS]
        for i, head in enumerate(self.lins):
            self.add_module(f"lin{i}", nn.ModuleDict({"model": head}))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), False)

    def taps(self, img01: torch.Tensor) -> list[torch.Tensor]:
        h = (img01 * 2.0 - 1.0 - self.shift) / self.scale
        feats = []
        for idx, layer in enumerate(self.features):
            h = layer(h)
            if idx in _ALEX_TAPS:
                feats.append(h / (torch.sqrt(torch.sum(h * h, dim=1, keepdim=True)) + 1e-10))
        return feats


class LPIPS:
    """LPIPS v0.1 "lin" distance with an AlexNet backbone (Zhang, Isola, Efros, Shechtman & Wang,
    "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018).

    Weights come only from a local safetensors file (``weights_path`` or env ``DANP_LPIPS_WEIGHTS``);
    none -> :class:`MetricUnavailable`; missing/misshapen tensors -> ``ValueError``; extra tensors are
    ignored. Expected names (see :meth:`expected_tensor_shapes`): ``features.{0,3,6,8,10}.{weight,bias}``
    as in torchvision ``alexnet().features`` and ``lin{0..4}.model.1.weight`` (1xCx1x1) as in the
    official ``lpips`` package. Converting the official files (on a machine that has them)::

        sd = {f"features.{k}": v for k, v in
              torchvision.models.alexnet(weights="IMAGENET1K_V1").features.state_dict().items()}
        sd.update(torch.load("lpips/weights/v0.1/alex.pth"))   # lin0.model.1.weight, ...
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "lpips_alex.safetensors")

    Images are >= 32x32 (grayscale is repeated to 3 channels). Each image runs through the network
    on its own, so d(a, a) == 0 and d(a, b) == d(b, a) hold exactly.
    """

    def __init__(self, weights_path: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = None) -> None:
        self.weights_path = _resolve_lpips_path(weights_path)
        self.device = pick_device(device)
        state = _load_lpips_state(self.weights_path)
        self._net = _AlexLPIPSNet()
        self._net.load_state_dict(state, strict=True)
        self._net.to(self.device).eval()

    @staticmethod
    def expected_tensor_shapes() -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for idx, cout, cin, ks in _ALEX_CONVS:
            shapes[f"features.{idx}.weight"] = (cout, cin, ks, ks)
            shapes[f"features.{idx}.bias"] = (cout,)
        for i, c in enumerate(_LIN_CHANNELS):
            shapes[f"lin{i}.model.1.weight"] = (1, c, 1, 1)
        return shapes

    def _to_tensor(self, img: FloatArray) -> torch.Tensor:
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if min(img.shape[:2]) < 32:
            raise ValueError(f"LPIPS needs images of at least 32x32, got {img.shape[:2]}")
        chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw)[None].to(self.device)

    @torch.no_grad()
    def distance(self, a: ArrayLike, b: ArrayLike) -> float:
        x, y = _pair(a, b)
        fa, fb = self._net.taps(self._to_tensor(x)), self._net.taps(self._to_tensor(y))
        total = torch.zeros((), device=self.device)
        for head, f0, f1 in zip(self._net.lins, fa, fb):
            total = total + head((f0 - f1) ** 2).mean()
        return float(total.item())

    __call__ = distance


def _resolve_lpips_path(weights_path: str | os.PathLike[str] | None) -> str:
    path = os.fspath(weights_path) if weights_path is not None else os.environ.get(LPIPS_ENV_VAR, "")
    if not path:
        raise MetricUnavailable(
            f"LPIPS weights are not available: pass weights_path or set {LPIPS_ENV_VAR} to a local "
            "safetensors file (AlexNet features + LPIPS lin layers; see LPIPS docstring). "
            "They are never downloaded.")
    if not os.path.isfile(path):
        raise MetricUnavailable(f"LPIPS weights file not found: {path!r}")
    return os.path.abspath(path)


def _load_lpips_state(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        raw = load_file(path)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"cannot read LPIPS weights from {path!r}: {exc}") from exc
    expected = LPIPS.expected_tensor_shapes()
    missing = sorted(set(expected) - set(raw))
    bad = [f"{k}: {tuple(raw[k].shape)} != {s}" for k, s in expected.items()
           if k in raw and tuple(raw[k].shape) != s]
    if missing or bad:
        raise ValueError(f"invalid LPIPS weights in {path!r}: missing={missing} wrong_shape={bad}")
    extra = sorted(set(raw) - set(expected))
    if extra:
        logger.debug("ignoring %d extra tensors in %s", len(extra), path)
    state = {k: raw[k].to(torch.float32) for k in expected}
    if any(bool((state[f"lin{i}.model.1.weight"] < 0).any()) for i in range(5)):
        logger.warning("LPIPS lin weights in %s contain negative values (official ones do not)", path)
    return state


_LPIPS_CACHE: dict[str, LPIPS] = {}
_LPIPS_WARNED: set[str] = set()
_LPIPS_LOCK = threading.Lock()


def lpips_or_none(a: ArrayLike, b: ArrayLike, weights_path: str | None = None) -> float | None:
    """LPIPS distance, or None (warning logged once per reason) when no weights are available.

    Models are cached per weights file, so calling this per image pair is cheap."""
    try:
        path = _resolve_lpips_path(weights_path)
        with _LPIPS_LOCK:
            model = _LPIPS_CACHE.get(path)
            if model is None:
                model = _LPIPS_CACHE[path] = LPIPS(path)
    except MetricUnavailable as exc:
        with _LPIPS_LOCK:
            first = str(exc) not in _LPIPS_WARNED
            _LPIPS_WARNED.add(str(exc))
        if first:
            logger.warning("LPIPS skipped: %s", exc)
        return None
    return model.distance(a, b)


_METRICS = {"psnr": psnr, "ssim": ssim, "fsim": fsim, "vifp": vifp}


def compare(a: ArrayLike, b: ArrayLike,
            metrics: Sequence[str] = ("psnr", "ssim", "fsim", "vifp", "lpips"),
            *, lpips_weights_path: str | None = None) -> dict[str, float | None]:
    """Named metrics of test image ``b`` against reference ``a``; "lpips" is None without weights."""
    unknown = [m for m in metrics if m not in _METRICS and m != "lpips"]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {[*_METRICS, 'lpips']}")
    x, y = _pair(a, b)
    return {m: lpips_or_none(x, y, lpips_weights_path) if m == "lpips" else _METRICS[m](x, y)
            for m in metrics}
