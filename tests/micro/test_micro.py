"""Unit tests for the micro edit world and its tokenizer (fast, CPU only)."""

from __future__ import annotations

import numpy as np
import pytest

from danp_pipeline.micro import textures, world


def test_render_is_deterministic_and_named_uniquely() -> None:
    a, b = world.render_scene(123), world.render_scene(123)
    assert np.array_equal(a.image, b.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    for seed in range(200):
        scene = world.render_scene(seed)
        names = [o.name for o in scene.objects]
        assert 2 <= len(names) <= 3 and len(set(names)) == len(names)


@pytest.mark.parametrize("variant", ["4x-3:2", "4x-16:9", "4x-4:5", "small-3:2"])
def test_a_scene_in_another_frame_is_the_attackers_copy_of_its_full_size_photo(variant: str) -> None:
    """Ground truth in the attacker's frame: the Pillow copy of the full-size photo is the frame's window,
    every object lies whole inside it, and the success rule still separates target from source."""
    from danp_pipeline.evaluation.attacker import attackers_copy
    from danp_pipeline.evaluation.metrics import psnr
    from danp_pipeline.evaluation.micro_suite import variant_frame

    shape, frame = variant_frame(variant)
    _, _, h, w = frame.window
    assert (h, w) != (64, 64) and h % world.LATENT_FACTOR == 0 == w % world.LATENT_FACTOR and max(h, w) == 64
    square = world.make_split("heldout", 6, seed=2)
    for sample, same_scene in zip(world.make_split("heldout", 6, seed=2, frame=frame), square):
        assert sample.scene_seed == same_scene.scene_seed      # the same scenes (objects placed in the window)
        assert sample.source.shape == (h, w, 3) == sample.target.shape and sample.source_mask.shape == (h, w)
        scene = world.render_scene(sample.scene_seed, frame=frame)
        for obj in scene.objects:            # whole inside the window: its mask there is all of it
            whole = world._shape_mask(obj, (frame.height, frame.width), frame) >= 0.5
            assert world.object_mask(obj, frame).sum() == whole.sum() > 100
        seen = attackers_copy(world.render_scene(sample.scene_seed, size=shape, frame=frame).image, 64,
                              world.LATENT_FACTOR, "lanczos", "none")
        assert seen.shape == sample.source.shape and psnr(seen, sample.source) > 30
        assert world.edit_success(sample.target, sample)[0] and not world.edit_success(sample.source, sample)[0]


def test_a_frame_whose_window_cannot_hold_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        world.Frame(36, 64, (0, 0, 20, 64))
    with pytest.raises(ValueError, match="height, width"):
        world.render_scene(1, size=128, frame=world.Frame.centred(36, 64, (36, 64)))


def test_edits_of_an_object_are_one_per_kind_in_training_wordings() -> None:
    def kind(instruction: str) -> str:
        if instruction.startswith(("remove", "erase")):
            return "remove"
        return "recolor" if instruction.split()[-1] in world.PALETTE else "reshape"

    for sample in world.make_split("heldout", 30, seed=4, wordings="train"):
        edits = world.edits_of_object(sample)
        assert edits[0] == sample.instruction and kind(edits[0]) == sample.kind and 2 <= len(edits) <= 3
        assert len({kind(e) for e in edits}) == len(edits)              # one edit per kind
        assert all(f"the {sample.source_object.name} " in e + " " for e in edits)   # all of the same object
        assert "remove" in {kind(e) for e in edits}


def test_splits_are_disjoint() -> None:
    tr = {s.scene_seed for s in world.make_split("train", 100)}
    he = {s.scene_seed for s in world.make_split("heldout", 100)}
    assert not tr & he
    lo, hi = world.SCENE_SEED_RANGES["heldout"]
    assert all(lo <= s < hi for s in he)


def test_wordings_are_disjoint() -> None:
    for kind in world.EDIT_KINDS:
        assert not set(world.TEMPLATES["train"][kind]) & set(world.TEMPLATES["heldout"][kind])


def test_the_development_split_uses_training_scenes_and_the_other_training_wording() -> None:
    """Presets are chosen on split="train": no held-out scene or wording is touched there."""
    from danp_pipeline.config import MicroSuiteConfig
    from danp_pipeline.evaluation.micro_suite import cases

    dev = cases(MicroSuiteConfig(scenes=6, split="train", size_variants=("4x-1:1", "4x-3:2")))
    assert len(dev) == 12
    lo, hi = world.SCENE_SEED_RANGES["train"]
    train_wordings = {k: {t.split(" {")[0] for t in ts} for k, ts in world.TEMPLATES["train"].items()}
    for case in dev:
        assert lo <= case.own.scene_seed < hi
        assert case.unseen.instruction != case.own.instruction
        for sample in (case.own, case.unseen):   # both wordings are training templates of the same edit
            assert any(sample.instruction.startswith(w) for w in train_wordings[sample.kind])
        assert case.unseen.target is case.own.target and case.unseen.kind == case.own.kind
    with pytest.raises(ValueError, match="split"):
        MicroSuiteConfig(split="test")


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("edit_world, n, seed", [(world, 150, 3), (textures, 60, 5)], ids=["flat", "textured"])
def test_success_rule_passes_ground_truth_and_fails_the_source(edit_world, n: int, seed: int, split: str) -> None:
    for s in edit_world.make_split(split, n, seed=seed):
        assert edit_world.edit_success(s.target, s)[0], s.instruction
        assert not edit_world.edit_success(s.source, s)[0], s.instruction


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


def test_object_words_are_located_in_their_instruction() -> None:
    from danp_pipeline.micro import training

    edits = training.training_edits(5, seed=0)
    assert len(edits.texts) == 5 * len(world.EDIT_KINDS) == len(edits.object_tokens) == len(edits.object_masks)
    for text, (i, j), mask in zip(edits.texts, edits.object_tokens, edits.object_masks):
        words = ["<bos>", *text.split()]
        assert words[i] in world.PALETTE and words[j] in world.SHAPES and j == i + 1
        assert 0 < mask.mean() < 0.5
    with pytest.raises(ValueError, match="does not name"):
        training.object_token_positions("remove the blue square", world.WorldObject("red", "circle", 9, 9, 5))


def test_attention_loss_moves_object_word_attention_onto_the_object(tmp_path) -> None:
    """The auxiliary loss (EditorConfig.attention_loss) must raise the share of the object words'
    cross-attention that falls inside the object; without it nothing is measured or added."""
    import torch
    import torch.nn.functional as F

    from danp_pipeline.micro import training
    from danp_pipeline.micro.tokenizer import build_tokenizer

    tok = build_tokenizer(world.vocabulary(), tmp_path, model_max_length=16)
    edits = training.training_edits(24, seed=0)
    # Stand-in latents that show where the objects are: the images pooled to the 16x16 latent grid.
    images = training.to_tensor(edits.scenes)
    src = torch.cat([F.avg_pool2d(images, 4), torch.zeros(len(images), 1, 16, 16)], dim=1)
    tgt = src[torch.from_numpy(edits.index)]
    masks = F.avg_pool2d(torch.from_numpy(edits.object_masks).float()[:, None], 4)[:, 0]
    cfg = training.EditorConfig(steps=40, batch=16, lr=3e-3, warmup=1, attention_loss=1.0, p_drop_text=0.0)
    cfg.unet = training.UNetConfig(block_out_channels=(16, 32), cross_attention_dim=32, norm_num_groups=8)
    cfg.text = training.TextConfig(hidden_size=32, intermediate_size=64)
    ids = training.tokenize(tok, edits.texts)
    tokens = torch.from_numpy(edits.object_tokens).long()
    _, _, losses, shares, _ = training.train_denoiser(cfg, tok, src, tgt, torch.from_numpy(edits.index), ids,
                                                   object_masks=masks, object_tokens=tokens)
    area = float(masks.mean())
    assert abs(np.mean(shares[:3]) - area) < 0.5 * area          # starts spread out (about the area share)
    assert np.mean(shares[-5:]) > 2 * np.mean(shares[:3])         # and moves onto the object
    cfg.attention_loss, cfg.steps = 0.0, 2
    assert training.train_denoiser(cfg, tok, src, tgt, torch.from_numpy(edits.index), ids)[3] == []


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
    argv = ["micro-bench", str(out), "--editors", f"{quick_editor},{quick_editor}", "--scenes", "2",
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
    # DANP's terms on the protected editor's copy: one value per (case, method, transform), never positive
    assert df["nba"].notna().all() and (df["nba"] <= 0).all()
    assert (df.groupby(["case", "method", "transform"])["nba"].nunique() == 1).all()
    unseen = df[df.prompt_set == "unseen"]["instruction"].tolist()
    own = df[df.prompt_set == "own"]["instruction"].tolist()
    assert not set(unseen) & set(own)                # held-out wordings are never the protected ones
    summary = (out / "summary.md").read_text()
    assert "proxy for Stable Diffusion" in summary and "| danp |" in summary and "NBA on the copy" in summary
    assert (out / "grids" / "case-0.png").is_file()


def test_micro_suite_attacker_view_feeds_full_size_photos_of_every_aspect(quick_editor, tmp_path):
    import pandas as pd

    from danp_pipeline import cli

    out = tmp_path / "suite"
    argv = ["micro-bench", str(out), "--editors", str(quick_editor), "--scenes", "1", "--methods",
            "danp", "--seeds", "0", "--steps", "2", "--timesteps", "2", "--view", "attacker", "--size-variants",
            "4x-16:9,4x-4:5,small-3:2", "--protect-set", "kinds"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    sizes = dict(zip(df["variant"], df["photo_size"]))
    assert sizes == {"4x-16:9": "256x144", "4x-4:5": "205x256", "small-3:2": "48x32"}
    assert len(df) == 3 * 2 and set(df["case"]) == {0, 1, 2}   # variants × (own, unseen); one case per variant
    assert (df["linf_levels"] <= 8).all() and set(df["protected_against"]) <= {2, 3}
    summary = (out / "summary.md").read_text()
    assert "| danp | 7.65/255 | 4x-4:5 |" in summary and "| danp | 7.65/255 | small-3:2 |" in summary


def test_a_suite_worker_exits_when_its_driver_is_killed(tmp_path) -> None:
    """Killing `micro-bench` (no clean shutdown) must not leave its Ray workers running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(
        "import time\n"
        "import ray\n"
        "from danp_pipeline.evaluation import workers\n"
        "class Idle:\n"
        "    def __call__(self, item):\n"
        "        time.sleep(600)\n"
        "with workers.ray_session():\n"
        "    [actor] = workers.start(Idle, (), 1, num_cpus=0.5, threads=1)\n"
        "    print(ray.get(actor.pid.remote()), flush=True)\n"
        "    actor.__call__.remote(0, None)\n"
        "    time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_ADDRESS": ""})
    worker_pid = int(driver.stdout.readline())
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    status = f"/proc/{worker_pid}/status"
    for _ in range(600):                        # up to 60 s; an exited worker nobody reaped yet is a zombie:
        try:                                    # gone as well
            state = next(line for line in open(status) if line.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):
            return
        if "Z" in state.split()[1]:
            return
        time.sleep(0.1)
    os.kill(worker_pid, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed driver")
