"""The SD-like proxy: the textured 128x128 world, the 8x/4-channel editor geometry, resumable training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_proxy_config, tiny_proxy_editor

from danp_pipeline.micro import textures, training, world


def test_textured_scenes_are_the_flat_scenes_drawn_with_texture() -> None:
    a, b = textures.render_scene(1234), textures.render_scene(1234)
    assert np.array_equal(a.image, b.image) and a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8
    assert a.objects == world.render_scene(1234).objects            # same objects, instructions, splits
    def fine_detail(img: np.ndarray) -> float:      # what 2x2 block means lose: the finest scale's energy
        img = img.astype(float)
        return float((img - np.repeat(np.repeat(textures._blocks(img), 2, 0), 2, 1)).std())

    for seed in range(20):
        scene = textures.render_scene(seed)
        flat_bg = world.render_scene(seed, size=128).background
        assert fine_detail(scene.background) > max(2.0, 3 * fine_detail(flat_bg)), seed
        for obj in scene.objects:
            mask = textures.object_mask(obj)
            assert mask.shape == (128, 128)
            assert abs(mask.sum() / 4 - world.object_mask(obj).sum()) < 0.1 * mask.sum() / 4


def test_textured_edits_keep_the_object_material_and_have_exact_masks() -> None:
    for s in textures.make_split("train", 12, seed=3):
        assert s.source.shape == s.target.shape == s.background.shape == (128, 128, 3)
        assert s.source_mask.shape == s.target_mask.shape == (128, 128)
        outside = ~world._dilate(s.source_mask | s.target_mask, 2)   # away from anti-aliased edges
        diff = np.abs(s.source[outside].astype(int) - s.target[outside])
        assert diff.max() <= 1                # only the edited object changes (the flat world's rounding aside)
        if s.kind == "remove":
            assert not s.target_mask.any()
        else:
            inside = s.target_mask & s.source_mask
            assert s.target[inside].std() > 4                        # textured, not flat


def test_textured_success_rule_tolerates_lost_texture_but_not_global_damage() -> None:
    from PIL import Image, ImageFilter

    for s in textures.make_split("train", 12, seed=6):
        blurred = np.asarray(Image.fromarray(s.target).filter(ImageFilter.GaussianBlur(1.5)))
        assert textures.edit_success(blurred, s)[0], s.instruction   # what a VAE does to texture
        shifted = np.clip(s.target.astype(int) + 40, 0, 255).astype(np.uint8)
        ok, d = textures.edit_success(shifted, s)
        assert not ok and not d["preserve_ok"]


def test_proxy_variants_have_sd_geometry() -> None:
    for variant in ("proxy", "proxy-b"):
        cfg = training.VARIANTS[variant](training.EditorConfig())
        assert cfg.world == "textured" and cfg.vae.latent_channels == 4
        assert 2 ** (len(cfg.vae.block_out_channels) - 1) == textures.LATENT_FACTOR == 8
        assert cfg.name == {"proxy": "proxy-ip2p", "proxy-b": "proxy-ip2p-b"}[variant]
    a, b = training.variant_proxy(training.EditorConfig()), training.variant_proxy_b(training.EditorConfig())
    assert a.seed != b.seed and a.unet != b.unet and a.vae.block_out_channels != b.vae.block_out_channels


def test_a_proxy_editor_saves_and_loads_with_8x_4_channel_latents(tmp_path) -> None:
    from danp_pipeline.protect.models import load_editor

    bundle = load_editor(str(tiny_proxy_editor(tmp_path / "editor")), device="cpu")
    assert bundle.kind == "ip2p" and bundle.vae_scale_factor == 8 and bundle.unet.config.in_channels == 8
    x = training.to_tensor(textures.render_scene(3).image[None])
    with torch.no_grad():
        z = bundle.vae.encode(x).latent_dist.mode()
    assert z.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("name", ["proxy-ip2p", "proxy-ip2p-b", "proxy-inpaint"])
def test_the_installed_proxies_have_sd_geometry_fit_the_budgets_and_differ(name) -> None:
    """Every proxy loads by name with 8x / 4-channel latents and its kind's UNet inputs, its weights are at most
    10 MB, its training took at most 2 h of work (its record says so), and each is another network."""
    from danp_pipeline.config import MICRO_EDITORS_DIR, PROXY_MODELS
    from danp_pipeline.protect.models import load_editor

    bundle = load_editor(name, device="cpu")
    record = json.loads((MICRO_EDITORS_DIR / name / "training.json").read_text())
    kind = record["config"].get("kind", "ip2p")
    assert bundle.kind == kind and bundle.unet.config.in_channels == {"ip2p": 8, "sd-inpaint": 9}[kind]
    assert bundle.vae_scale_factor == 8 and bundle.vae.config.latent_channels == 4
    assert record["weights_total_bytes"] <= 10 * 10**6 and record["total_train_s"] <= 2 * 3600
    assert record["config"]["name"] == name and record["config"]["world"] == "textured"
    seeds = {json.loads((MICRO_EDITORS_DIR / n / "training.json").read_text())["config"]["seed"] for n in PROXY_MODELS}
    assert len(seeds) == len(PROXY_MODELS) == 3                     # independently trained
    if name != "proxy-inpaint":
        other = load_editor({"proxy-ip2p": "proxy-ip2p-b", "proxy-ip2p-b": "proxy-ip2p"}[name], device="cpu")
        assert bundle.unet.config.block_out_channels != other.unet.config.block_out_channels


def test_a_proxy_editor_that_is_not_installed_is_refused_by_name(monkeypatch, tmp_path) -> None:
    from danp_pipeline.protect import models

    monkeypatch.setattr(models, "MICRO_DIR", tmp_path)
    with pytest.raises(ValueError, match="proxy-ip2p.*not installed"):
        models.load_editor("proxy-ip2p", device="cpu")


def test_denoiser_training_resumes_where_its_checkpoint_stopped(tmp_path) -> None:
    """A resumed run continues on the same batches from the same weights: the step after the checkpoint has
    the uninterrupted run's loss up to the weights' bfloat16 rounding, and the step after it (taken with
    rebuilt optimizer moments) stays close."""
    from danp_pipeline.micro import resume
    from danp_pipeline.micro.tokenizer import build_tokenizer

    tok = build_tokenizer(world.vocabulary(), tmp_path / "tok", model_max_length=16)
    edits = training.training_edits(6, seed=0)
    g = torch.Generator().manual_seed(0)
    src = torch.randn(len(edits.scenes), 4, 8, 8, generator=g)
    tgt = torch.randn(len(edits.targets), 4, 8, 8, generator=g)
    masks = torch.nn.functional.avg_pool2d(torch.from_numpy(edits.object_masks).float()[:, None], 8)[:, 0]
    cfg = tiny_proxy_config()
    cfg.steps, cfg.batch, cfg.checkpoint_every, cfg.checkpoint_every_s, cfg.time_budget_s = 5, 4, 3, 0.0, 0.0
    ids = training.tokenize(tok, edits.texts)
    args = (cfg, tok, src, tgt, torch.from_numpy(edits.index), ids)
    kw = {"object_masks": masks, "object_tokens": torch.from_numpy(edits.object_tokens).long()}
    saved = []

    def checkpoint(state):
        resume.save(tmp_path / "ckpt", state, {"note": "test"})
        saved.append(state.step)

    full = training.train_denoiser(*args, checkpoint, **kw)
    assert saved == [3] and resume.read_extra(tmp_path / "ckpt")["note"] == "test"
    resumed = training.train_denoiser(*args, **kw, resume_from=tmp_path / "ckpt")
    assert len(resumed[2]) == len(full[2]) == 5 and resumed[2][:3] == full[2][:3]
    assert abs(resumed[2][3] - full[2][3]) < 1e-2 * abs(full[2][3])  # same batch, bf16-rounded weights
    assert abs(resumed[2][4] - full[2][4]) < 5e-2 * abs(full[2][4])  # one step with rebuilt moments
    assert len(resumed[3]) == 5                                       # attention shares carried over, not rebuilt
    assert not (tmp_path / "ckpt" / "optimizer.safetensors").exists()


def test_train_editor_proxy_quick_trains_checkpoints_and_resumes(tmp_path) -> None:
    """`danp-protect train-editor --variant proxy --quick`, then the same run resumed from its checkpoint."""
    from danp_pipeline import cli
    from danp_pipeline.protect.models import load_editor

    out = tmp_path / "run"
    assert cli.entrypoint(["train-editor", str(out), "--variant", "proxy", "--quick"]) == 0
    info = json.loads((out / "editor" / "training.json").read_text())
    assert info["config"]["world"] == "textured" and info["unet_steps_done"] == 4
    assert load_editor(str(out / "editor"), device="cpu").vae_scale_factor == 8
    # a checkpoint at step 2 of 4, then a run resumed from it (the VAE is the checkpoint's, not retrained)
    cfg = training.quick(training.variant_proxy(training.EditorConfig()))
    cfg.checkpoint_every = 2
    training.train(cfg, tmp_path / "a", checkpoint_dir=tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "resume" / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"vae", "resume"}   # the VAE once, no editor copy
    assert sum(p.stat().st_size for p in (tmp_path / "ckpt").rglob("*") if p.is_file()) < 10 * 2**20
    info = training.train(cfg, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt", resume_run=True)
    assert info["resumed"] == 1 and info["unet_steps_done"] == 4 and "vae_train_s" in info["times_s"]
    assert not (tmp_path / "b" / "vae_stage").exists()


def test_the_edit_region_boxes_the_object_before_and_after_with_a_margin() -> None:
    for sample in textures.make_split("train", 6, 0, "train"):
        box = world.edit_region(sample)
        assert box[sample.source_mask].all() and box[sample.target_mask].all()
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        assert box[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].all()      # one box
        both = sample.source_mask | sample.target_mask
        assert box.sum() > both.sum() and box.mean() < 0.6                  # a margin, not the whole photo
        top, left = np.flatnonzero(both.any(axis=1))[0], np.flatnonzero(both.any(axis=0))[0]
        assert (rows[0], cols[0]) == (max(top - 8, 0), max(left - 8, 0))  # 1/16 of the 128-pixel side


def test_inpainting_conditions_are_what_the_inpainting_pipeline_puts_beside_the_latents(tmp_path) -> None:
    """The training's [mask, masked-photo latents] per edit equal StableDiffusionInpaintPipeline's own
    prepare_mask_latents, sample for sample (the same generator draws the posterior's noise)."""
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    from danp_pipeline.protect.models import load_editor

    bundle = load_editor(str(tiny_proxy_editor(tmp_path / "inpaint", kind="sd-inpaint")), device="cpu")
    assert bundle.kind == "sd-inpaint" and bundle.unet.config.in_channels == 9
    sample = textures.make_split("train", 1, 0, "train")[0]
    region = world.edit_region(sample)
    mean, std = training.inpainting_conditions(bundle.vae, sample.source[None], np.array([0]), region[None])
    pipe = StableDiffusionInpaintPipeline(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                                          unet=bundle.unet, scheduler=bundle.scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    image = pipe.image_processor.preprocess(Image.fromarray(sample.source), height=128, width=128)
    mask = pipe.mask_processor.preprocess(Image.fromarray(region.astype(np.uint8) * 255), height=128, width=128)
    with torch.no_grad():
        m, latents = pipe.prepare_mask_latents(mask, image * (mask < 0.5), 1, 128, 128, torch.float32, "cpu",
                                               torch.Generator().manual_seed(5), False)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(m, mean[:, :1]) and float(m.mean()) > 0.05
    torch.testing.assert_close(latents, mean[:, 1:] + std[:, 1:] * noise, rtol=1e-4, atol=1e-4)
    assert float(std[:, :1].abs().max()) == 0.0 and float(std[:, 1:].min()) > 0.0


def test_train_editor_proxy_inpaint_quick_saves_an_inpainting_editor_that_repaints_the_box(tmp_path) -> None:
    """`train-editor --variant proxy-inpaint --quick`: a 9-channel StableDiffusionInpaintPipeline editor of the
    textured world, with its own seeds, that the attacker's inpainting edit runs on with the edit's box."""
    from danp_pipeline import cli
    from danp_pipeline.evaluation.editing import Editor
    from danp_pipeline.protect.models import load_editor

    out = tmp_path / "run"
    assert cli.entrypoint(["train-editor", str(out), "--variant", "proxy-inpaint", "--quick"]) == 0
    info = json.loads((out / "editor" / "training.json").read_text())
    assert info["config"]["kind"] == "sd-inpaint" and info["config"]["seed"] == 2 and info["unet_steps_done"] == 4
    index = json.loads((out / "editor" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    bundle = load_editor(str(out / "editor"), device="cpu")
    assert bundle.kind == "sd-inpaint" and bundle.unet.config.in_channels == 9 and bundle.vae_scale_factor == 8
    sample = textures.make_split("heldout", 1, 0, "heldout")[0]
    edit = Editor(bundle)(sample.source, sample.instruction, 0, mask=world.edit_region(sample))
    assert edit.shape == (128, 128, 3)
    cfg = training.variant_proxy_inpaint(training.EditorConfig())
    assert cfg.p_drop_image == 0.0 and cfg.time_budget_s <= 2 * 3600


def test_the_installed_proxy_still_responds_to_an_attack(tmp_path) -> None:
    """The measuring stick must move: on four fixed training scenes PhotoGuard's encoder attack at 64/255
    stops every edit that succeeds clean, uniform noise at the same budget stops none (measured when the
    proxy was installed: 100 % → 0 % and 100 % → 100 %). A retrained or broken proxy that no attack can
    move, or that noise moves, fails here."""
    import pandas as pd

    from danp_pipeline import cli

    out = tmp_path / "gate"
    argv = ["micro-bench", str(out), "--world", "textured", "--editors", "proxy-ip2p", "--split", "train",
            "--scenes", "4", "--seeds", "0", "--methods", "pge,random", "--profile", "fast", "--eps", "64/255",
            "--workers", "1"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    own = df[df["prompt_set"] == "own"].groupby("method")[["edit_success_clean", "edit_success_protected"]].mean()
    assert own.loc["pge", "edit_success_clean"] >= 0.75                       # the editor edits
    assert own.loc["pge", "edit_success_protected"] <= own.loc["pge", "edit_success_clean"] - 0.5
    assert own.loc["random", "edit_success_protected"] == own.loc["random", "edit_success_clean"]
