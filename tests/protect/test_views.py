"""The attacker's view: differentiable resize and JPEG that match what Pillow does, δ at full size,
and the method fixes that came with it (layout, non-finite gradients, grayscale, SD strength, fp16)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import as_batch, photo
from PIL import Image

from danp_pipeline.config import AttackConfig
from danp_pipeline.evaluation.metrics import psnr
from danp_pipeline.protect import danp as danp_module
from danp_pipeline.protect.danp import DanpObjective
from danp_pipeline.protect.diffusion import attack_strength, attack_timesteps
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.jpeg import jpeg_round_trip
from danp_pipeline.protect.pgd import pgd
from danp_pipeline.protect.views import (
    View,
    ViewedObjective,
    attacker_views,
    editor_size,
    resize,
)

PIL_FILTERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
PROMPT = [["put her in a prison cell"]]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return np.clip(np.rint(t[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(PIL_FILTERS))
@pytest.mark.parametrize("src,dst", [((300, 200), (64, 43)), ((64, 43), (300, 200)), ((97, 61), (40, 25))])
def test_resize_is_pillows_antialiased_filter(name, src, dst):
    img = photo("astronaut", src)
    ours = to_uint8(resize(as_batch(img), (dst[1], dst[0]), name))
    pillow = np.asarray(Image.fromarray(img).resize(dst, PIL_FILTERS[name]))
    diff = np.abs(ours.astype(int) - pillow.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.3, (diff.max(), diff.mean())     # Pillow rounds between passes
    nearest = np.asarray(Image.fromarray(img).resize(dst, Image.Resampling.NEAREST))
    if src[0] > dst[0]:   # a nearest-neighbour resize is far from it: the view would not be the attacker's
        assert np.abs(nearest.astype(int) - pillow.astype(int)).mean() > 5 * max(diff.mean(), 0.2)


def test_editor_size_keeps_the_aspect_and_crops_to_the_multiple():
    assert editor_size(4000, 6000, 512, 8) == ((341, 512), (336, 512))      # 3:2
    assert editor_size(2160, 3840, 512, 8) == ((288, 512), (288, 512))     # 16:9
    assert editor_size(5000, 4000, 512, 8) == ((512, 410), (512, 408))     # 4:5
    assert editor_size(200, 300, 512, 8) == ((341, 512), (336, 512))       # small: the attacker upsizes it
    view = View("bicubic", 64, 8)
    assert view(torch.rand(1, 3, 400, 600)).shape[-2:] == (40, 64)


def test_jpeg_round_trip_is_pillows_codec_and_passes_gradients():
    img = photo("chelsea", (96, 80))
    for quality in (95, 75, 50):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        pillow = np.asarray(Image.open(buf).convert("RGB"))
        ours = to_uint8(jpeg_round_trip(as_batch(img), quality))
        assert psnr(ours, pillow) > 33, quality                  # the same codec, up to DCT/upsampling details
        assert psnr(ours, img) < psnr(np.asarray(Image.fromarray(img)), img)   # and it does lose information
    x = as_batch(img).requires_grad_(True)
    jpeg_round_trip(x, 75).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().mean() > 0.5     # straight-through: ~identity


def test_views_of_one_size_photo_collapse_and_every_view_is_listed(tiny_ip2p):
    cfg = AttackConfig(resolution=64, view_scales=(0.75, 1.0), view_jpeg=(75,), view_blur=(0.5,))
    views = attacker_views(cfg, 8)
    assert len(views) == 3 * 2 * 2 * 2                     # filters × sizes × (none, q75) × (none, blur)
    x0 = as_batch(photo("astronaut"))
    objective = ViewedObjective(lambda seen: DanpObjective(tiny_ip2p, cfg, PROMPT, [0], seen), x0,
                                attacker_views(AttackConfig(resolution=64), 8), seed=0)
    assert len(objective.views) == 1                      # 64x64 at 64: no resampling, filters coincide


def test_full_size_delta_survives_the_attackers_resize(tiny_ip2p):
    """The objective in the attacker's view (the protected full-size file resized by Pillow) keeps what was
    optimized; a δ computed at the editor's size and upsampled loses most of it."""
    cfg = AttackConfig(eps=0.03, steps=6, num_timesteps=2, resolution=64, step_size=0.01,
                       view_filters=("lanczos",), use_daa=False, init="uniform")
    big = photo("astronaut", (256, 256))
    protected = Immunizer(tiny_ip2p, cfg).protect([big], PROMPT[0])[0].pixels

    def nba(pixels_full: np.ndarray) -> float:
        small = np.asarray(Image.fromarray(pixels_full).resize((64, 64), Image.Resampling.LANCZOS))
        clean = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.LANCZOS))
        objective = DanpObjective(tiny_ip2p, cfg.replace(timesteps="centres"), PROMPT, [7], as_batch(clean))
        return objective.gradients(as_batch(small))[1]["nba"].item()

    at_full = nba(protected)
    noise = np.clip(big.astype(int) + np.random.default_rng(0).integers(-8, 9, big.shape), 0, 255).astype(np.uint8)
    assert at_full < 2 * nba(noise) and at_full < 0          # NBA is minimized: more negative is stronger
    # the old path: δ optimized on the 64x64 copy, upsampled bilinearly to the full size
    clean_small = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.LANCZOS))
    small = Immunizer(tiny_ip2p, cfg).protect([clean_small], PROMPT[0])[0].pixels
    delta = torch.nn.functional.interpolate(as_batch(small) - as_batch(clean_small), size=(256, 256),
                                            mode="bilinear", align_corners=False)
    upsampled = to_uint8((as_batch(big) + delta).clamp(0, 1))
    assert at_full < 1.2 * nba(upsampled)               # measured -10.4 vs -7.0


def test_channels_last_keeps_nba_exactly_zero_at_delta_zero(tiny_ip2p):
    x0 = as_batch(photo("coffee"))
    cfg = AttackConfig(num_timesteps=2, resolution=64, channels_last=True)
    try:
        _, values = DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0).gradients(x0)
    finally:
        DanpObjective(tiny_ip2p, cfg.replace(channels_last=False), PROMPT, [0], x0).gradients(x0)  # layout back
    assert values["nba"].item() == 0.0


class _Flaky:
    weights = {"a": 1.0}

    def __init__(self) -> None:
        self.calls = 0

    def gradients(self, x):
        self.calls += 1
        g = torch.ones_like(x)
        if self.calls == 2:
            g[0, 0, 0, 0] = float("nan")
        return {"a": g}, {"a": torch.zeros(len(x))}


def test_a_non_finite_gradient_skips_the_step_instead_of_poisoning_delta():
    x0 = torch.full((2, 3, 8, 8), 0.5)
    result = pgd(x0, _Flaky(), AttackConfig(steps=3, step_size=0.01, eps=0.05))
    assert torch.isfinite(result.delta).all()
    assert torch.allclose(result.delta[0], torch.full_like(result.delta[0], -0.02))   # 2 steps, one skipped
    assert torch.allclose(result.delta[1], torch.full_like(result.delta[1], -0.03))


def test_grayscale_delta_stays_equal_across_channels_and_uses_the_budget(tiny_ip2p):
    gray = photo("camera", (64, 64))
    cfg = AttackConfig(steps=1, num_timesteps=2, resolution=64, eps=0.03, step_size=0.03)   # one full step
    out = Immunizer(tiny_ip2p, cfg).protect([gray], "add fire")[0]
    moved = np.abs(out.pixels.astype(int) - gray.astype(int))
    interior = (gray > 10) & (gray < 245)
    assert out.pixels.shape == gray.shape
    assert moved[interior].mean() > 0.9 * cfg.linf_levels_bound     # averaging channels afterwards shrank δ


def test_sd_attack_timesteps_follow_the_attackers_edit_strength(tiny_sd, tiny_ip2p):
    cfg = AttackConfig()
    assert attack_strength(tiny_sd, cfg) == 0.8 and attack_strength(tiny_ip2p, cfg) == 1.0
    ts = attack_timesteps(1000, 10, attack_strength(tiny_sd, cfg), "centres")
    assert ts.max().item() < 800 and ts.min().item() >= 0


def test_fp16_loss_scale_is_taken_out_of_the_gradients(tiny_ip2p, monkeypatch):
    x0 = as_batch(photo("coffee"))
    x = (x0 + 0.02).clamp(0, 1)
    cfg = AttackConfig(num_timesteps=2, resolution=64)
    plain, _ = DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0).gradients(x)
    monkeypatch.setattr(danp_module, "loss_scale", lambda bundle, cfg: 1024.0)
    scaled_objective = DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0)
    assert scaled_objective.scale == 1024.0
    scaled, _ = scaled_objective.gradients(x)
    for name in plain:
        assert torch.allclose(plain[name], scaled[name], rtol=1e-4, atol=1e-12 + 1e-6 * plain[name].abs().max())


def test_resize_gradient_is_the_transpose_of_the_resize():
    x = (0.25 + 0.5 * torch.rand(1, 2, 11, 13, dtype=torch.float64)).requires_grad_(True)
    for name in ("box", "bilinear", "bicubic", "lanczos"):
        assert torch.autograd.gradcheck(lambda t: resize(t, (5, 6), name), (x,), atol=1e-6)
