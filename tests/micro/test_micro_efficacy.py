"""Efficacy checks on the shipped, trained micro-editor (a proxy for Stable Diffusion, not a substitute).

The tiny random-weight editors cannot tell a working objective from a broken one: a PhotoGuard target
with a flipped sign still makes its own loss fall. On a trained editor the question has an answer:
every baseline must move the attacker's edit more than uniform noise of the same budget, and the
target-seeking ones must move toward their target.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from danp_pipeline.config import (
    METHODS,
    MICRO_ATTACK,
    MICRO_EDITORS_DIR,
    MICRO_MODELS,
    MicroSuiteConfig,
    method_config,
    micro_edit_config,
)
from danp_pipeline.evaluation.editing import Editor
from danp_pipeline.micro import world
from danp_pipeline.protect.baselines import GREY
from danp_pipeline.protect.diffusion import encode_mean
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.models import load_editor

EDITOR = MicroSuiteConfig().editors[0]      # the editor the benchmark protects against
ATTACK = MICRO_ATTACK.replace(steps=25)    # γ = 0.03 as the benchmark; fewer iterations keep the test short
SCENES, EDIT_SEEDS = 3, (0, 1)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    bundle = load_editor(EDITOR)
    editor = Editor(bundle, micro_edit_config(EDITOR))
    samples = world.make_split("heldout", SCENES, seed=7)
    clean = {(i, s): editor(smp.source, smp.instruction, s) for i, smp in enumerate(samples) for s in EDIT_SEEDS}
    return bundle, editor, samples, clean


def protect(bundle, samples, method: str) -> list[np.ndarray]:
    imm = Immunizer(bundle, method_config(method, ATTACK))
    return [imm.protect([smp.source], prompts=[smp.instruction], seeds=[i])[0].pixels for i, smp in enumerate(samples)]


def edit_deviation(micro, protected: list[np.ndarray]) -> float:
    """Mean squared difference (0-1 scale) between the edits of the protected and the clean photos."""
    _, editor, samples, clean = micro
    diffs = [np.mean((editor(p, smp.instruction, s).astype(float) - clean[(i, s)].astype(float)) ** 2) / 255**2
             for i, (p, smp) in enumerate(zip(protected, samples)) for s in EDIT_SEEDS]
    return float(np.mean(diffs))


@pytest.fixture(scope="module")
def noise_deviation(micro):
    return edit_deviation(micro, protect(micro[0], micro[2], "random"))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "random"])
def test_every_method_moves_the_edit_more_than_uniform_noise(micro, noise_deviation, method):
    bundle, _, samples, _ = micro
    protected = protect(bundle, samples, method)
    for p, smp in zip(protected, samples):
        assert np.abs(p.astype(int) - smp.source.astype(int)).max() <= 8      # γ = 0.03 → 8 levels
    deviation = edit_deviation(micro, protected)
    assert deviation > 1.5 * noise_deviation, (method, deviation, noise_deviation)


def test_encoder_attack_pulls_the_latent_toward_grey(micro):
    """PGE's target is E(grey): a flipped or wrong target moves the latent away from it."""
    bundle, _, samples, _ = micro
    protected = protect(bundle, samples, "pge")
    to_x = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with torch.no_grad():
        grey = encode_mean(bundle, torch.full((1, 3, world.SIZE, world.SIZE), GREY))
        before = (encode_mean(bundle, to_x([s.source for s in samples])) - grey).pow(2).mean()
        after = (encode_mean(bundle, to_x(protected)) - grey).pow(2).mean()
    assert after < 0.9 * before, (float(before), float(after))


@pytest.mark.parametrize("name", list(MICRO_MODELS))
def test_shipped_editor_matches_its_training_record(name):
    path = MICRO_EDITORS_DIR / name
    info = json.loads((path / "training.json").read_text())
    total = 0
    for rel, entry in info["weights"].items():
        data = (path / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        total += len(data)
    assert total == info["weights_total_bytes"] <= 10 * 2**20
    assert not [p for p in path.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pkl")]   # safetensors only
    assert info["config"]["name"] == name and "data_seed" in info and info["total_train_s"] <= 2 * 3600
    assert load_editor(name).revision.startswith("sha256-")


@pytest.mark.parametrize("name", list(MICRO_MODELS))
def test_shipped_editor_edits_held_out_scenes(name):
    """A smoke check of the shipped weights through the real pipeline (the benchmark measures 80+ scenes)."""
    editor = Editor(load_editor(name), micro_edit_config(name))
    samples = world.make_split("heldout", 12, seed=1, wordings="train")   # the benchmark's first 12
    ok = [world.edit_success(editor(s.source, s.instruction, i), s)[0] for i, s in enumerate(samples)]
    assert np.mean(ok) >= 0.5, ok


def test_focused_daa_mask_sits_on_the_named_object():
    """DAA's Kapur mask from the words that localize ("focused") lies mostly on the edited object;
    from every content word ("content", the default) it spreads over the picture. Training scenes."""
    from danp_pipeline.micro.probe import attention_maps, mask_overlap

    bundle = load_editor(EDITOR)
    precision = {"content": [], "focused": []}
    for sample in world.make_split("train", 8, seed=5):
        for reduction in precision:
            maps = attention_maps(bundle, sample.instruction, sample.source, reduction, [250, 500, 750], seed=0)
            obj = torch.nn.functional.interpolate(torch.from_numpy(sample.source_mask.astype(np.float32))[None, None],
                                                  size=maps.shape[-2:], mode="area")[0, 0]
            precision[reduction].append(mask_overlap(maps, obj)["precision"])
    focused, content = np.mean(precision["focused"]), np.mean(precision["content"])
    assert focused > 0.6 and focused > content + 0.3, (focused, content)
