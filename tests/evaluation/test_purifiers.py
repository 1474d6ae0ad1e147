"""The attacker's purifiers (evaluation/purifiers.py), their wiring into eval and micro-bench, and the
worst-case-over-the-suite summary (evaluation/report.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers import photo
from PIL import Image

from danp_pipeline import cli
from danp_pipeline.config import EditConfig, EvalConfig, MicroSuiteConfig, PurifyConfig
from danp_pipeline.evaluation import purifiers as P
from danp_pipeline.evaluation.attacker import TRANSFORMS, attackers_copy
from danp_pipeline.evaluation.metrics import psnr
from danp_pipeline.evaluation.report import purification_section, purification_table
from danp_pipeline.micro import world
from danp_pipeline.protect.models import load_editor

FAST = PurifyConfig(steps=2, reconstruct_steps=2)


@pytest.fixture(scope="module")
def micro_ip2p():
    return load_editor("micro-ip2p", device="cpu")


def perturbed() -> tuple[np.ndarray, np.ndarray]:
    """A photo and the photo plus a ±8-level sign pattern (a protection's budget)."""
    clean = photo("astronaut", (96, 64))
    delta = np.where(np.random.default_rng(1).random(clean.shape) < 0.5, -8, 8)
    return clean, np.clip(clean.astype(int) + delta, 0, 255).astype(np.uint8)


# -- the purifiers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, max_mean, min_psnr", [("jpeg75", 12, 25), ("noise-jpeg", 12, 25),
                                                      ("noisy-upscale", 18, 20)])
def test_pixel_purifiers_are_deterministic_and_change_a_perturbed_photo_by_a_bounded_amount(name, max_mean, min_psnr):
    clean, protected = perturbed()
    purifier = P.build_suite((name,), PurifyConfig(), "tiny-ip2p", {}, 64)[name]
    out = purifier(protected, 0)
    assert out.shape == protected.shape and out.dtype == np.uint8
    assert np.array_equal(out, purifier(protected, 0))                     # same seed, same pixels
    assert np.array_equal(out, purifier(protected, 1)) == (name == "jpeg75")  # the noisy ones draw from the seed
    change = np.abs(out.astype(int) - protected).mean()
    assert 5 < change < max_mean and psnr(protected, out) > min_psnr
    assert psnr(clean, out) > psnr(protected, out)                         # it takes out part of δ


def test_gaussian_noise_has_the_documented_sigma():
    grey = np.full((128, 128, 3), 128, np.uint8)
    noise = P.gaussian_noise(grey, PurifyConfig().noise_sigma, 0).astype(float) - 128
    assert abs(noise.std() - 4.0) < 0.1 and abs(noise.mean()) < 0.05     # σ = 4/255 = 4 levels


@pytest.mark.parametrize("editor", ["tiny_ip2p", "tiny_sd"])
def test_diffpure_keeps_shape_and_dtype_and_is_deterministic(editor, request):
    bundle = request.getfixturevalue(editor)
    diffpure = P.DiffPure(bundle, 0.3, 2)
    assert diffpure.t_star == 300 and diffpure.timesteps.tolist() == [300, 150, 0]
    pixels = photo("astronaut", (76, 60))                                  # not a multiple of the VAE factor
    out = diffpure(pixels, 0)
    assert out.shape == (60, 76, 3) and out.dtype == np.uint8
    assert np.array_equal(out, diffpure(pixels, 0)) and not np.array_equal(out, diffpure(pixels, 1))


def test_diffpure_departs_further_from_the_photo_the_higher_it_noises(micro_ip2p):
    """On a trained editor (the shipped micro-editor) a small t* gives back nearly the photo."""
    source = world.make_split("heldout", 1, 0)[0].source
    kept = {s: psnr(source, P.DiffPure(micro_ip2p, s, 4)(source, 0)) for s in (0.05, 0.3, 0.8)}
    assert kept[0.05] > 26 and kept[0.05] > kept[0.3] + 2 > kept[0.8] + 4, kept


def test_gridpure_tiles_cover_a_photo_larger_than_the_editor(tiny_ip2p):
    grid = P.GridPure(P.DiffPure(tiny_ip2p, 0.3, 1), tile=64, overlap=0.25)
    tiles = grid.tiles(150, 200)
    assert len(tiles) == 3 * 4 and grid.stride == 48
    covered = np.zeros((150, 200), int)
    for top, left in tiles:
        assert top + 64 <= 150 and left + 64 <= 200
        covered[top:top + 64, left:left + 64] += 1
    assert covered.min() >= 1 and covered.max() == 4
    big = photo("astronaut", (200, 150))
    out = grid(big, 0)
    assert out.shape == big.shape and out.dtype == np.uint8 and np.array_equal(out, grid(big, 0))
    assert grid.tiles(40, 50) == [(0, 0)] and grid(big[:40, :50], 0).shape == (40, 50, 3)   # one padded tile
    with pytest.raises(ValueError, match="multiple of the editor's VAE factor 8, got 60"):
        P.GridPure(P.DiffPure(tiny_ip2p, 0.3, 1), tile=60, overlap=0.25)


def test_reconstruct_uses_another_editor_and_refuses_the_attackers_own(tiny_ip2p, tiny_sd):
    assert PurifyConfig().reconstruct_for("tiny-ip2p") == "tiny-sd"
    assert PurifyConfig().reconstruct_for("micro-ip2p") == "micro-ip2p-b"
    with pytest.raises(ValueError, match="must differ from the attacker's editor, got 'tiny-ip2p'"):
        PurifyConfig(reconstruct_editor="tiny-ip2p").reconstruct_for("tiny-ip2p")
    with pytest.raises(ValueError, match="other than the attacker's, got the attacker's own 'tiny-ip2p'"):
        P.Reconstruct(tiny_ip2p, "tiny-ip2p", EditConfig(steps=2))
    with pytest.raises(ValueError, match="reconstruct_editor"):                # checked before any work
        EvalConfig(purifiers=("none", "reconstruct"), purify=PurifyConfig(reconstruct_editor="tiny-ip2p"))
    with pytest.raises(ValueError, match="needs reconstruct_editor"):
        EvalConfig(model="owner/editor", purifiers=("none", "reconstruct"))
    suite = P.build_suite(("none", "reconstruct"), FAST, "tiny-ip2p", {"tiny-ip2p": tiny_ip2p, "tiny-sd": tiny_sd}, 64)
    reconstruct = suite["reconstruct"]
    assert reconstruct.editor.bundle is tiny_sd and reconstruct.editor.options()["strength"] == 0.3
    pixels = photo("astronaut", (64, 48))
    out = reconstruct(pixels, 0)
    assert out.shape == pixels.shape and np.array_equal(out, reconstruct(pixels, 0))


def test_purifier_settings_are_validated_naming_the_value():
    with pytest.raises(ValueError, match="purifiers must be a non-empty tuple of names from .* got \\('none', 'shar"):
        MicroSuiteConfig(purifiers=("none", "sharpen"))
    with pytest.raises(ValueError, match="must include 'none'"):
        EvalConfig(purifiers=("jpeg75",))
    with pytest.raises(ValueError, match="strength must be in \\(0, 1\\], got 1.5"):
        PurifyConfig(strength=1.5)
    with pytest.raises(ValueError, match="tile_overlap must be in \\[0, 1\\), got 1"):
        PurifyConfig(tile_overlap=1)


def test_the_attacker_purifies_after_the_platforms_jpeg_and_before_or_after_the_resize():
    class Marker(P.Purifier):
        def __init__(self, stage):
            self.stage, self.seen = stage, []

        def __call__(self, pixels, seed):
            self.seen.append(pixels.shape)
            return 255 - pixels

    file = photo("astronaut", (256, 192))

    def copy(pixels, transform):
        return attackers_copy(pixels, 64, 8, "lanczos", transform)

    on_file, on_copy = Marker("file"), Marker("copy")
    expected_file = copy(255 - TRANSFORMS["jpeg75"](file), "none")         # platform JPEG, purifier, resize
    assert np.array_equal(P.attackers_input(file, "jpeg75", on_file, copy, 0), expected_file)
    assert np.array_equal(P.attackers_input(file, "jpeg75", on_copy, copy, 0), 255 - copy(file, "jpeg75"))
    assert on_file.seen == [(192, 256, 3)] and on_copy.seen == [(48, 64, 3)]


# -- the summary ---------------------------------------------------------------------------------------

def test_worst_case_over_the_suite_on_synthetic_rows():
    """Per photo the attacker keeps the purifier (or none) with the lowest protection; seeds are averaged."""
    values = {  # method -> photo -> purifier -> the two seeds' measures
        "a": {"p1": {"none": (0.3, 0.5), "jpeg75": (0.2, 0.2), "diffpure": (0.3, 0.3)},
              "p2": {"none": (0.6, 0.6), "jpeg75": (0.5, 0.5), "diffpure": (0.0, 0.2)}},
        "b": {"p1": {"none": (0.2, 0.2), "jpeg75": (0.4, 0.4), "diffpure": (0.3, 0.3)},
              "p2": {"none": (0.2, 0.2), "jpeg75": (0.3, 0.3), "diffpure": (0.2, 0.4)}},
        "c": {"p1": {"none": (0.0, 0.0), "jpeg75": (0.1, 0.1), "diffpure": (0.0, 0.0)}},
    }
    rows = [{"method": m, "transform": "none", "photo": p, "purifier": pur, "seed": s, "edit_mse": v}
            for m, photos in values.items() for p, purs in photos.items() for pur, vs in purs.items()
            for s, v in enumerate(vs)]
    df = pd.DataFrame(rows)
    a, b, c = purification_table(df, ["method", "transform"], ["photo"], "edit_mse")
    assert a["purifiers"] == pytest.approx({"none": 0.5, "jpeg75": 0.35, "diffpure": 0.2})
    assert a["suite_mean"] == pytest.approx(0.275) and a["units"] == 2
    assert a["worst_case"] == pytest.approx(0.15)          # p1: jpeg75 0.2, p2: diffpure 0.1
    assert a["surviving"] == pytest.approx(0.3) and a["worst_purifier"] == "jpeg75"   # tie: the suite's order
    assert b["worst_case"] == pytest.approx(0.2) and b["surviving"] == pytest.approx(1.0)
    assert b["worst_purifier"] == "none"                  # purifying only helps the protection here
    assert c["worst_case"] == 0 and math.isnan(c["surviving"])
    text = "\n".join(purification_section(df, ["method", "transform"], ["photo"], "edit_mse", lambda v: f"{v:.3f}",
                                          "Edit MSE"))
    assert "| method | transform | none | jpeg75 | diffpure | suite mean | worst case | attacker's choice | " \
           "surviving |" in text
    assert "| a | none | 0.500 | 0.350 | 0.200 | 0.275 | 0.150 | jpeg75 | 30% |" in text
    assert "| c | none | 0.000 | 0.100 | 0.000 | 0.050 | 0.000 | none | n/a |" in text
    assert purification_section(df[df.purifier == "none"], ["method"], ["photo"], "edit_mse", str, "") == []


# -- the commands --------------------------------------------------------------------------------------

def test_purifiers_and_their_settings_come_from_the_command_line():
    args = cli.command_parser("micro-bench").parse_args(
        ["out", "--purifiers", "jpeg75,diffpure", "--purify-option", "strength=0.1", "--purify-option", "tile=32"])
    config = cli.micro_suite_config(args)
    assert config.purifiers == ("none", "jpeg75", "diffpure") and config.purify.strength == 0.1
    assert config.purify.tile == 32
    assert cli.micro_suite_config(cli.command_parser("micro-bench").parse_args(["out"])).purifiers == ("none",)
    bad = cli.command_parser("eval").parse_args(["in", "out", "--purify-option", "sigma=3"])
    with pytest.raises(ValueError, match="--purify-option expects KEY=VALUE with KEY one of noise_sigma"):
        cli.eval_inputs(bad)


def test_micro_bench_edits_every_purified_file_and_reports_the_worst_case(tmp_path):
    out = tmp_path / "suite"
    argv = ["micro-bench", str(out), "--editors", "micro-ip2p", "--scenes", "1", "--methods", "random", "--seeds", "0",
            "--purifiers", "jpeg75,diffpure", "--purify-option", "steps=4"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 3 * 2                                 # (none, jpeg75, diffpure) × (own, unseen)
    assert df["purifier"].tolist() == ["none"] * 2 + ["jpeg75"] * 2 + ["diffpure"] * 2
    assert (df.groupby("prompt_set")["edits_psnr"].nunique() == 3).all()   # each purified file edited anew
    summary = (out / "summary.md").read_text()
    assert "## Purification" in summary and "| worst case | attacker's choice | surviving |" in summary
    assert summary.count("| random | 7.65/255 | micro-ip2p | 4x-1:1 | micro-ip2p | own | none |") == 1  # purification
    assert summary.count("| random | 7.65/255 | 4x-1:1 | micro-ip2p | own | none | 1 |") == 1  # main: unpurified


def test_eval_edits_every_purified_photo_and_reports_the_worst_case(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo("astronaut", (64, 64))).save(folder / "astronaut.png")
    out = tmp_path / "report"
    args = cli.command_parser("eval").parse_args(
        [str(folder), str(out), "--prompt", "add fire", "--methods", "random", "--seeds", "0", "--transforms", "none",
         "--purifiers", "jpeg75,noisy-upscale,diffpure", "--purify-option", "steps=2", "--steps", "1",
         "--resolution", "64", "--editor-steps", "2", "--eps", "0.06"])
    assert cli.run_command("eval", args) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert df["purifier"].tolist() == ["none", "jpeg75", "noisy-upscale", "diffpure"]
    assert df.loc[df.purifier != "none", "edit_mse"].gt(0).all()
    summary = (out / "summary.md").read_text()
    assert "| method | transform | none | jpeg75 | noisy-upscale | diffpure | suite mean | worst case |" in summary
