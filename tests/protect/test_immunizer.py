import numpy as np
import pytest
from helpers import encode, photo
from PIL import Image

from danp_pipeline import AttackConfig, Immunizer, load_editor
from danp_pipeline.imaging.codec import decode_image

FAST = AttackConfig(steps=2, num_timesteps=2, resolution=64)


def test_three_line_api_on_real_photos_of_several_sizes(tiny_ip2p):
    photos = [photo("astronaut", (97, 61)), photo("coffee", (64, 64)), photo("chelsea", (40, 150))]
    results = Immunizer(tiny_ip2p, FAST).protect(photos, prompts=["put her in a prison cell", "make it snow"])
    bound = FAST.linf_levels_bound
    for original, result in zip(photos, results):
        assert result.pixels.shape == original.shape and result.pixels.dtype == np.uint8
        diff = np.abs(result.pixels.astype(int) - original.astype(int)).max()
        assert diff == result.linf_levels and 0 < diff <= bound
        assert 30 < result.psnr_db < 60
        assert np.isfinite(result.loss_first) and np.isfinite(result.loss_last)
        assert set(result.terms) >= {"daa", "nba"}
    assert results[0].editor_size == (64, 40)     # 97x61: the attacker's resize to 64, aspect kept, sides % 8
    assert results[2].editor_size == (16, 64)     # 40x150 -> 17x64, cropped to 16x64


def test_mode_classes_are_kept(tiny_sd):
    gray = photo("camera", (48, 40))
    rgba = np.dstack([photo("astronaut", (48, 40)), np.full((40, 48), 200, np.uint8)])
    decoded = [decode_image(encode(gray)), decode_image(encode(rgba))]
    out = Immunizer(tiny_sd, FAST).protect(decoded, prompts="add fire")
    assert out[0].pixels.shape == (40, 48)                                  # grayscale stays grayscale
    assert np.abs(out[0].pixels.astype(int) - gray.astype(int)).max() <= FAST.linf_levels_bound
    assert out[1].alpha is not None and (out[1].alpha == 200).all()         # alpha untouched
    assert out[1].image.mode == "RGBA" and out[0].image.mode == "L"


def test_per_photo_prompts_and_input_types(tiny_ip2p, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photo("coffee")).save(path)
    immunizer = Immunizer(tiny_ip2p, FAST)
    out = immunizer.protect([str(path), Image.fromarray(photo("astronaut"))],
                            prompts=[["add fire"], ["make it snow", "turn it into a painting"]])
    assert len(out) == 2
    with pytest.raises(ValueError, match="2 prompt lists for 1 photos"):
        immunizer.protect([str(path)], prompts=[["a"], ["b"]])
    with pytest.raises(TypeError, match="int"):
        immunizer.protect([3], prompts="x")


def test_random_method_uses_the_budget_without_optimizing(tiny_ip2p):
    out = Immunizer(tiny_ip2p, FAST.replace(method="random")).protect([photo("coffee")], prompts="x")[0]
    assert out.linf_levels == FAST.linf_levels_bound and np.isnan(out.loss_first)


def test_public_api_is_importable_in_three_lines():
    editor = load_editor("tiny-sd", device="cpu")
    immunizer = Immunizer(editor, AttackConfig(steps=1, num_timesteps=1, resolution=64))
    (result,) = immunizer.protect([photo("astronaut", (32, 32))], prompts=["add fire"])
    assert result.image.size == (32, 32)


def test_photos_of_different_sizes_share_unet_calls_when_the_editor_sees_them_alike(tiny_ip2p, monkeypatch):
    """Full sizes differ but the attacker's views are the same size (3:2, areas within √2): one PGD run,
    every UNet call serves both; another aspect ratio gets its own. Each result keeps its own size and bound."""
    from danp_pipeline.protect import immunizer

    runs, real = [], immunizer.pgd

    def counted(x0, objective, cfg, seeds=None, gray=None):
        runs.append(tuple(x0.shape))
        return real(x0, objective, cfg, seeds, gray)

    monkeypatch.setattr(immunizer, "pgd", counted)
    photos = [photo("astronaut", (96, 64)), photo("coffee", (105, 70)), photo("chelsea", (64, 64))]
    results = Immunizer(tiny_ip2p, FAST).protect(photos, prompts=["put her in a prison cell"])
    assert sorted(runs) == [(1, 3, 64, 64), (2, 3, 70, 105)]      # padded to the larger photo's size
    for original, result in zip(photos, results):
        assert result.pixels.shape == original.shape
        diff = np.abs(result.pixels.astype(int) - original.astype(int)).max()
        assert diff == result.linf_levels and 0 < diff <= FAST.linf_levels_bound
    assert results[0].editor_size == results[1].editor_size == (64, 40)
