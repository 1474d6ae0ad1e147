"""The evaluation harness: inputs, transforms, memory, the report files, the CLI and the Ray job."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import photo
from PIL import Image
from safetensors.torch import save_file

from danp_pipeline import cli
from danp_pipeline.config import EVAL_METHODS, EvalConfig
from danp_pipeline.evaluation.evaluate import TRANSFORMS, load_pairs
from danp_pipeline.evaluation.memory import peak_memory
from danp_pipeline.evaluation.metrics import LPIPS, LPIPS_ENV_VAR, psnr
from danp_pipeline.evaluation.report import COLUMNS, PANELS, amplify, summary_markdown

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def photo_dir(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photo("astronaut", (96, 96))).save(folder / "astronaut.png")
    Image.fromarray(photo("chelsea", (96, 80))).save(folder / "sub" / "chelsea.jpg", quality=95)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def eval_args(argv: list[str]) -> argparse.Namespace:
    return cli.command_parser("eval").parse_args(argv)


FAST = ["--steps", "2", "--timesteps", "1", "--resolution", "64", "--editor-steps", "2", "--eps", "0.06",
        "--step-size", "0.03"]


# -- inputs --------------------------------------------------------------------------------------

def test_folder_pairs_every_photo_with_every_prompt_at_working_resolution(photo_dir, monkeypatch):
    monkeypatch.chdir(photo_dir.parent)
    pairs = load_pairs("photos", ("add fire", "make it snow"), resolution=64)
    assert [(p.name, p.prompt) for p in pairs] == [
        ("astronaut", "add fire"), ("astronaut-1", "make it snow"),
        ("sub_chelsea", "add fire"), ("sub_chelsea-1", "make it snow")]
    assert pairs[0].rgb.shape == (64, 64, 3) and pairs[2].rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="give the edit instruction"):
        load_pairs(photo_dir)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "dict"])
def test_pairs_files_resolve_photos_relative_to_the_file(photo_dir, fmt, monkeypatch):
    monkeypatch.chdir(photo_dir.parent)
    rows = [{"photo": "astronaut.png", "instruction": "add fire"},
            {"photo": "sub/chelsea.jpg", "prompt": "make it snow"}]
    if fmt == "csv":
        text, suffix = "photo,instruction\nastronaut.png,add fire\nsub/chelsea.jpg,make it snow\n", "csv"
    elif fmt == "jsonl":
        text, suffix = "\n".join(json.dumps(r) for r in rows), "jsonl"
    elif fmt == "dict":
        text, suffix = json.dumps({"astronaut.png": "add fire", "sub/chelsea.jpg": ["make it snow"]}), "json"
    else:
        text, suffix = json.dumps(rows), "json"
    path = photo_dir / f"pairs.{suffix}"
    path.write_text(text)
    pairs = load_pairs(path.relative_to(photo_dir.parent), resolution=64)
    assert [(p.name, p.prompt) for p in pairs] == [("astronaut", "add fire"), ("sub_chelsea", "make it snow")]


def test_bad_pairs_and_configs_are_refused_with_the_reason(photo_dir):
    bad = photo_dir / "bad.json"
    bad.write_text(json.dumps([{"photo": "astronaut.png"}]))
    with pytest.raises(ValueError, match="needs 'photo' and 'instruction'"):
        load_pairs(bad)
    with pytest.raises(ValueError, match="unknown method 'photoguard'"):
        EvalConfig(methods=("danp", "photoguard"))
    with pytest.raises(ValueError, match="transforms must include 'none'"):
        EvalConfig(transforms=("jpeg75",))
    with pytest.raises(ValueError, match="seeds must be"):
        EvalConfig(seeds=())


# -- transforms, memory, report pieces -----------------------------------------------------------

def test_robustness_transforms_keep_the_size_and_change_the_pixels_by_known_amounts():
    img = photo("astronaut")
    assert TRANSFORMS["none"](img) is img
    errors = {}
    for name in ("jpeg95", "jpeg75", "jpeg50", "resize", "blur"):
        out = TRANSFORMS[name](img)
        assert out.shape == img.shape and out.dtype == np.uint8
        errors[name] = psnr(img, out)
    assert errors["jpeg95"] > errors["jpeg75"] > errors["jpeg50"] > 20   # lower quality, larger error
    assert 15 < errors["resize"] < 40 and 15 < errors["blur"] < 40


def test_peak_memory_is_per_block_not_per_process():
    with peak_memory(torch.device("cpu")) as big:
        block = np.ones(64 * 2**20 // 8)   # 64 MiB touched
        block += 1
    del block
    with peak_memory(torch.device("cpu")) as small:
        pass
    assert big.mib > small.mib + 40
    assert big.kind == "rss_peak"


def test_amplified_delta_maps_the_budget_to_the_full_grey_range():
    original = np.full((2, 2, 3), 100, np.uint8)
    protected = original.copy()
    protected[0, 0] = 108
    protected[1, 1] = 92
    out = amplify(original, protected, levels=8)
    assert out[0, 0, 0] == 255 and out[1, 1, 0] == 0 and out[0, 1, 0] == 128


def test_summary_reports_mean_and_std_per_method_and_robustness():
    rows = []
    for i, (p, t) in enumerate([(10.0, "none"), (20.0, "none"), (30.0, "jpeg75"), (math.inf, "none")]):
        rows.append({c: None for c in COLUMNS} | {
            "photo": f"p{i % 2}", "method": "danp" if i < 3 else "random", "seed": 0, "transform": t,
            "psnr": p, "ssim": 0.5, "fsim": 0.5, "vifp": 0.5, "fidelity_psnr": 35.0, "fidelity_ssim": 0.9,
            "linf_levels": 8, "seconds": 1.0, "peak_mem_mb": 100.0})
    text = summary_markdown(pd.DataFrame(rows), ["danp", "random"], notes=["LPIPS was not computed"])
    danp = next(line for line in text.splitlines() if line.startswith("| danp |"))
    assert "15.00 ± 5.00" in danp and "n/a" in danp          # PSNR over 2 rows; LPIPS missing
    assert "| random | inf |" in text
    assert "30.00 ± 0.00" in text                             # the jpeg75 robustness column
    assert "- LPIPS was not computed" in text


# -- the commands' options ---------------------------------------------------------------------------

def options(name: str) -> dict[str, str]:
    """A command's options (long form) and their help texts."""
    parser = cli.command_parser(name)
    return {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}


def test_eval_and_micro_bench_offer_only_their_own_options():
    evaluation, micro, job = options("eval"), options("micro-bench"), options("eval-job")
    for absent in ("--suite", "--method", "--scenes", "--editors", "--split", "--protect-set", "--workers"):
        assert absent not in evaluation, absent
    for absent in ("--method", "--resolution", "--model", "--prompt", "--protect-prompt", "--attacker-filters",
                   "--lpips-weights", "--editor-steps"):
        assert absent not in micro, absent
    shared = ("--methods", "--seeds", "--transforms", "--view", "--size-variants", "--device", "--eps", "--profile")
    assert all(name in evaluation and name in micro for name in shared)
    assert micro["--workers"] == job["--workers"]                  # one meaning: parallel Ray workers
    assert set(job) == set(evaluation) | {"--workers", "--address", "--cpus-per-worker", "--gpus-per-worker"}
    with pytest.raises(SystemExit):                                # one meaning per positional argument
        cli.command_parser("eval").parse_args(["--suite", "micro", "out"])
    args = cli.command_parser("micro-bench").parse_args(["out", "--workers", "2", "--transforms", "none,jpeg75"])
    config = cli.micro_suite_config(args)
    assert config.workers == 2 and config.transforms == ("none", "jpeg75") and config.attack.resolution == 64


def test_eval_refuses_the_attack_settings_it_decides_itself(photo_dir, tmp_path):
    args = eval_args([str(photo_dir), str(tmp_path / "out"), "--prompt", "add fire", "--attack-option", "method=pge"])
    assert cli.run_command("eval", args) == 2            # --methods decides the method
    assert "method" not in options("eval")["--attack-option"].split("one of:")[1]


# -- the whole command -----------------------------------------------------------------------------

def test_eval_writes_a_complete_readable_report(photo_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    out = tmp_path / "report"
    methods = ["danp", "danp-no-nba", "pge", "random"]
    args = eval_args([str(photo_dir), str(out), "--prompt", "put her in a prison cell", "--methods", ",".join(methods),
                      "--seeds", "0,1", "--transforms", "none,jpeg75,blur", *FAST])
    assert cli.run_command("eval", args) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2 * len(methods) * 2 * 3                 # photos × methods × seeds × transforms
    assert not df.duplicated(["photo", "method", "seed", "transform"]).any()
    assert df["lpips"].isna().all() and df[["psnr", "ssim", "fsim", "vifp"]].notna().all().all()
    assert (df["linf_levels"] <= 16).all() and (df.loc[df.method != "random", "linf_levels"] >= 15).all()
    assert (df["peak_mem_mb"] > 50).all() and (df["seconds"] > 0).all()
    summary = (out / "summary.md").read_text()
    for m in methods:
        assert f"| {m} |" in summary
    assert "LPIPS was not computed" in summary and LPIPS_ENV_VAR in summary
    assert "| method | none | jpeg75 | blur |" in summary                 # robustness in the order asked
    for name in ("astronaut", "sub_chelsea"):
        grid = Image.open(out / "grids" / f"{name}.png")
        assert grid.size == (PANELS * 64, len(methods) * 64) and grid.mode == "RGB"
    original = np.asarray(Image.open(out / "grids" / "astronaut.png"))[:64, :64]
    assert np.array_equal(original, load_pairs(photo_dir, ("x",), 64)[0].rgb)


def test_lpips_is_reported_when_weights_are_given(photo_dir, tmp_path):
    weights = tmp_path / "lpips.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.rand(s, generator=gen) * 0.1 for k, s in LPIPS.expected_tensor_shapes().items()}, str(weights))
    out = tmp_path / "report"
    args = eval_args([str(photo_dir), str(out), "--prompt", "add fire", "--methods", "random", "--seeds", "0",
                      "--transforms", "none", "--lpips-weights", str(weights), *FAST])
    assert cli.run_command("eval", args) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert df["lpips"].notna().all() and (df["lpips"] > 0).all()
    assert "LPIPS was not computed" not in (out / "summary.md").read_text()


@pytest.mark.integration
def test_ray_job_writes_the_same_report(photo_dir, tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    spec = importlib.util.spec_from_file_location("jobs_evaluate", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    common = [str(photo_dir), "--prompt", "add fire", "--methods", "pge,random", "--seeds", "0",
              "--transforms", "none,jpeg50", *FAST]
    assert job.main([common[0], str(tmp_path / "ray"), *common[1:], "--workers", "2", "--cpus-per-worker", "0.5"]) == 0
    assert cli.run_command("eval", eval_args([common[0], str(tmp_path / "local"), *common[1:]])) == 0
    keys = ["photo", "method", "seed", "transform"]
    remote, local = (pd.read_parquet(tmp_path / d / "results.parquet") for d in ("ray", "local"))
    assert remote[keys].equals(local[keys]) and len(remote) == 2 * 2 * 2
    rand = remote["method"] == "random"                        # uniform noise from the seed: identical
    assert np.allclose(remote.loc[rand, "psnr"], local.loc[rand, "psnr"])
    assert sorted(p.name for p in (tmp_path / "ray" / "grids").iterdir()) == ["astronaut.png", "sub_chelsea.png"]
    assert "| pge |" in (tmp_path / "ray" / "summary.md").read_text()


def test_every_eval_method_has_a_documented_source():
    from danp_pipeline.protect import baselines

    for name in EVAL_METHODS:
        assert f"``{name}``" in baselines.__doc__ or name.startswith("danp")


def test_attackers_copy_is_resized_with_the_filter_after_a_full_size_jpeg():
    from danp_pipeline.evaluation.attacker import (
        attackers_copy,
        resize_for_editor,
        size_variants,
    )

    variants = size_variants(photo("astronaut", (300, 300)), 64)
    assert {k: v.shape[:2] for k, v in variants.items()} == {
        "4x-3:2": (171, 256), "4x-16:9": (144, 256), "4x-4:5": (256, 205), "small-3:2": (32, 48)}
    assert size_variants(photo("astronaut", (300, 300)), 64, ("4x-1:1",))["4x-1:1"].shape[:2] == (256, 256)
    full = variants["4x-3:2"]
    lanczos = resize_for_editor(full, 64, 8, "lanczos")
    assert lanczos.shape == (40, 64, 3)                                    # 64x43 cropped to multiples of 8
    assert not np.array_equal(lanczos, resize_for_editor(full, 64, 8, "bilinear"))
    jpeg_then_resize = attackers_copy(full, 64, 8, "lanczos", "jpeg50")
    resize_then_jpeg = TRANSFORMS["jpeg50"](lanczos)
    assert jpeg_then_resize.shape == lanczos.shape and psnr(jpeg_then_resize, lanczos) > psnr(resize_then_jpeg, lanczos)
    assert resize_for_editor(variants["small-3:2"], 64, 8, "bicubic").shape == (40, 64, 3)   # upsized by the attacker


def test_eval_in_the_attackers_view_reports_full_size_variants_and_what_survives(photo_dir, tmp_path):
    out = tmp_path / "attacker"
    pairs = photo_dir / "pairs.json"
    pairs.write_text(json.dumps([{"photo": "astronaut.png", "instruction": "add fire"}]))
    args = eval_args([str(pairs), str(out), "--methods", "danp,random",
                      "--seeds", "0", "--transforms", "none,jpeg75", "--view", "attacker",
                      "--attacker-filters", "lanczos,bicubic", "--size-variants", "4x-16:9,small-3:2", *FAST])
    assert cli.run_command("eval", args) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["view"]) == {"own-size", "lanczos", "bicubic"} and set(df["variant"]) == {"4x-16:9", "small-3:2"}
    assert len(df) == 2 * 2 * 3 * 2                     # variants × methods × views × transforms (1 seed)
    wide = df[df["variant"] == "4x-16:9"]
    assert set(zip(wide["width"], wide["height"])) == {(256, 144)}        # protected at full size
    assert (df["edit_mse"] >= 0).all() and df["nba"].notna().all()
    assert (df.loc[(df.method == "danp") & (df.transform == "none"), "linf_levels"] <= 16).all()
    summary = (out / "summary.md").read_text()
    assert "## Attacker's view" in summary and "| danp | 4x-16:9 |" in summary
    assert Image.open(out / "grids" / "astronaut@4x-16:9.png").size == (PANELS * 64, 2 * 32)
