"""Unit tests for the micro edit world and its tokenizer (fast, CPU only)."""

from __future__ import annotations

import numpy as np
import pytest

from danp_pipeline.micro import world


def test_render_is_deterministic_and_named_uniquely() -> None:
    a, b = world.render_scene(123), world.render_scene(123)
    assert np.array_equal(a.image, b.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    for seed in range(200):
        scene = world.render_scene(seed)
        names = [o.name for o in scene.objects]
        assert 2 <= len(names) <= 3 and len(set(names)) == len(names)


def test_splits_are_disjoint() -> None:
    tr = {s.scene_seed for s in world.make_split("train", 100)}
    he = {s.scene_seed for s in world.make_split("heldout", 100)}
    assert not tr & he
    lo, hi = world.SCENE_SEED_RANGES["heldout"]
    assert all(lo <= s < hi for s in he)


def test_wordings_are_disjoint() -> None:
    for kind in world.EDIT_KINDS:
        assert not set(world.TEMPLATES["train"][kind]) & set(world.TEMPLATES["heldout"][kind])


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_success_rule_on_ground_truth(split: str) -> None:
    for s in world.make_split(split, 150, seed=3):
        assert world.edit_success(s.target, s)[0], s.instruction
        assert not world.edit_success(s.source, s)[0], s.instruction


def test_success_rule_rejects_global_damage() -> None:
    s = world.make_split("train", 3)[0]
    noisy = np.clip(s.target.astype(int) + 40, 0, 255).astype(np.uint8)
    ok, d = world.edit_success(noisy, s)
    assert not ok and not d["preserve_ok"]


def test_tokenizer_one_token_per_word(tmp_path) -> None:
    from danp_pipeline.micro.tokenizer import build_tokenizer, check_single_tokens

    tok = build_tokenizer(world.vocabulary(), tmp_path, model_max_length=16)
    assert check_single_tokens(tok, world.vocabulary()) == []
    ids = tok("make the red circle blue").input_ids
    assert len(ids) == 5 + 2
    for s in world.make_split("heldout", 30, wordings="heldout"):
        assert len(tok(s.instruction).input_ids) == len(s.instruction.split()) + 2


@pytest.fixture(scope="module")
def quick_editor(tmp_path_factory):
    """A micro-editor from `danp-protect train-editor --quick` (about a minute; it does not edit well)."""
    from danp_pipeline import cli

    out = tmp_path_factory.mktemp("micro")
    assert cli.entrypoint(["train-editor", str(out), "--quick"]) == 0
    return out / "editor"


def test_quick_training_saves_a_real_editor_that_the_pipeline_loads(quick_editor):
    import json

    from danp_pipeline.config import EditConfig
    from danp_pipeline.evaluation.editing import Editor
    from danp_pipeline.protect.models import load_editor

    info = json.loads((quick_editor / "training.json").read_text())
    assert info["unet_steps_done"] > 0 and info["weights_total_bytes"] < 10 * 2**20
    for name, entry in info["weights"].items():
        assert entry["sha256"] == __import__("hashlib").sha256((quick_editor / name).read_bytes()).hexdigest()
    assert not list(quick_editor.rglob("*.bin"))                         # safetensors only
    bundle = load_editor(str(quick_editor), device="cpu")
    assert bundle.kind == "ip2p" and bundle.vae_scale_factor == 4
    sample = world.make_split("heldout", 1, 0)[0]
    edit = Editor(bundle, EditConfig(steps=2))(sample.source, sample.instruction, 0)
    assert edit.shape == sample.source.shape
    assert isinstance(world.edit_success(edit, sample)[0], bool)


def test_micro_suite_reports_edit_success_per_method_setting_and_editor(quick_editor, tmp_path):
    import pandas as pd

    from danp_pipeline import cli

    out = tmp_path / "suite"
    argv = ["eval", "--suite", "micro", str(out), "--editors", f"{quick_editor},{quick_editor}", "--scenes", "2",
            "--methods", "danp,random", "--seeds", "0", "--steps", "2", "--timesteps", "2", "--transforms",
            "none,jpeg75", "--workers", "2"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    for column in ("method", "editor", "attack_editor", "prompt_set", "edit_success_clean", "edit_success_protected"):
        assert column in df.columns
    assert len(df) == 2 * 2 * 2 * 3                 # scenes × methods × transforms × (own, unseen, transfer)
    assert df["case"].tolist() == sorted(df["case"])  # the two workers' rows come back in case order
    assert set(df["case"]) == {0, 1}
    assert set(df["prompt_set"]) == {"own", "unseen"} and df["edit_success_clean"].dtype == bool
    assert (df["linf_levels"] <= 8).all()
    unseen = df[df.prompt_set == "unseen"]["instruction"].tolist()
    own = df[df.prompt_set == "own"]["instruction"].tolist()
    assert not set(unseen) & set(own)                # held-out wordings are never the protected ones
    summary = (out / "summary.md").read_text()
    assert "proxy for Stable Diffusion" in summary and "| danp |" in summary
    assert (out / "grids" / "case-0.png").is_file()
