import json

import pytest
import torch

from danp_pipeline.protect.diffusion import encode_photos, encode_prompts, latents_and_condition, predict_noise
from danp_pipeline.protect.inpaint_masks import draw_masks
from danp_pipeline.protect.models import load_editor, tiny_editor

NEW_KINDS = ("sdxl", "sdxl-ip2p", "sd-inpaint")


@pytest.mark.parametrize("kind, channels", [("ip2p", 8), ("sd", 4), ("sdxl", 4), ("sdxl-ip2p", 8), ("sd-inpaint", 9)])
def test_tiny_editors_have_the_real_layout(kind, channels):
    bundle = tiny_editor(kind, seed=0)
    assert bundle.kind == kind and bundle.unet.config.in_channels == channels
    xl = kind.startswith("sdxl")
    assert (bundle.unet.config.addition_embed_type == "text_time") == xl == (bundle.text_encoder_2 is not None)
    assert bundle.vae_scale_factor == 8                     # like SD: 64 px -> 8 latent
    assert bundle.tokenizer.model_max_length == 77
    assert bundle.num_train_timesteps == 1000


def test_save_pretrained_and_load_back_through_the_real_path(tmp_path, tiny_ip2p):
    tiny_ip2p.save_pretrained(tmp_path / "editor")
    files = {p.name for p in (tmp_path / "editor").rglob("*")}
    assert "diffusion_pytorch_model.safetensors" in files and "model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".ckpt")) for name in files)
    loaded = load_editor(str(tmp_path / "editor"), device="cpu")
    assert loaded.kind == "ip2p" and loaded.revision.startswith("local-")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 8, 8, 8, generator=gen)
    ids = tiny_ip2p.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        for a, b in [(tiny_ip2p, loaded)]:
            emb_a, emb_b = a.text_encoder(ids)[0], b.text_encoder(ids)[0]
            assert torch.allclose(emb_a, emb_b, atol=1e-6)
            out_a = a.unet(sample, 10, encoder_hidden_states=emb_a).sample
            out_b = b.unet(sample, 10, encoder_hidden_states=emb_b).sample
            assert torch.allclose(out_a, out_b, atol=1e-6)
    assert all(not p.requires_grad for p in loaded.unet.parameters())
    assert not loaded.unet.training


def test_pickle_weights_are_refused(tmp_path, tiny_sd):
    tiny_sd.save_pretrained(tmp_path / "editor")
    unet_dir = tmp_path / "editor" / "unet"
    state = {k: v for k, v in tiny_sd.unet.state_dict().items()}
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        load_editor(str(tmp_path / "editor"), device="cpu")


def test_unsupported_unet_is_refused(tmp_path, tiny_sd):
    from diffusers import UNet2DConditionModel

    tiny_sd.save_pretrained(tmp_path / "editor")
    odd = UNet2DConditionModel.from_config({**tiny_sd.unet.config, "in_channels": 5})
    odd.save_pretrained(tmp_path / "editor" / "unet", safe_serialization=True)
    with pytest.raises(ValueError, match="5 input channels; supported: 8 for StableDiffusionInstructPix2PixPipeline"):
        load_editor(str(tmp_path / "editor"), device="cpu")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_noise_reads_the_unet_output_as_noise_for_both_parametrizations(tiny_ip2p, prediction_type):
    """The micro-editors predict v (SD 2.x style); every objective reads ε. A UNet that outputs the exact
    target of its parametrization must come back as the noise that was added."""
    import dataclasses
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from danp_pipeline.protect.diffusion import predict_noise

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 990])
    target = noise if prediction_type == "epsilon" else sched.get_velocity(z0, noise, t)
    bundle = dataclasses.replace(tiny_ip2p, scheduler=sched,
                                 unet=lambda sample, t, encoder_hidden_states: SimpleNamespace(sample=target))
    eps = predict_noise(bundle, sched.add_noise(z0, noise, t), t, None, None)
    torch.testing.assert_close(eps, noise, rtol=1e-4, atol=1e-5)
    if prediction_type == "v_prediction":      # read as ε without the conversion, it would be far off
        assert (target - noise).abs().mean() > 0.3


def _prediction(bundle, x, masks):
    """Prompt embedding and ε_θ of one noised photo with the kind's full conditioning (SDXL's pooled embedding
    and time ids, InstructPix2Pix's image latent, inpainting's mask and masked-image latent)."""
    embeds = encode_prompts(bundle, [["make it snow"]]).embeds
    z, cond = latents_and_condition(bundle, encode_photos(bundle, x, masks), masks)
    cond = None if cond is None else cond[:, 0] if cond.ndim == 5 else cond
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return embeds, predict_noise(bundle, z + noise, torch.tensor([500]), embeds, cond)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_new_kinds_round_trip_through_load_editor_with_identical_outputs(tmp_path, kind):
    bundle = load_editor(f"tiny-{kind}", device="cpu")
    bundle.save_pretrained(tmp_path / kind)
    files = {str(p.relative_to(tmp_path / kind)) for p in (tmp_path / kind).rglob("*")}
    assert ("text_encoder_2/model.safetensors" in files) == kind.startswith("sdxl")
    assert not any(name.endswith((".bin", ".pt", ".ckpt")) for name in files)
    loaded = load_editor(str(tmp_path / kind), device="cpu")
    assert (loaded.kind, loaded.spec.pipeline) == (kind, bundle.spec.pipeline)
    assert loaded.revision.startswith("local-") and not loaded.unet.training
    assert all(not p.requires_grad for module in loaded.modules for p in module.parameters())
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    masks = draw_masks(torch.Generator().manual_seed(2), 1, 32, 48, (0.1, 0.5))[None] if kind == "sd-inpaint" else None
    (emb_a, out_a), (emb_b, out_b) = _prediction(bundle, x, masks), _prediction(loaded, x, masks)
    assert torch.equal(emb_a, emb_b) and torch.equal(out_a, out_b)
    assert out_a.shape == (1, 4, 4, 6) and out_a.abs().mean() > 0.1


def test_sdxl_settings_it_cannot_honour_are_refused(tmp_path):
    from diffusers import UNet2DConditionModel

    tiny_editor("sdxl").save_pretrained(tmp_path / "editor")
    index = tmp_path / "editor" / "model_index.json"
    assert json.loads(index.read_text())["force_zeros_for_empty_prompt"] is True
    index.write_text(json.dumps({**json.loads(index.read_text()), "requires_aesthetics_score": True}))
    with pytest.raises(ValueError, match="requires_aesthetics_score=True"):
        load_editor(str(tmp_path / "editor"), device="cpu")
    index.write_text(json.dumps({**json.loads(index.read_text()), "requires_aesthetics_score": False}))
    unet = tiny_editor("sdxl").unet
    refiner = UNet2DConditionModel.from_config({**unet.config, "projection_class_embeddings_input_dim": 72})
    refiner.save_pretrained(tmp_path / "editor" / "unet", safe_serialization=True)
    with pytest.raises(ValueError, match="added embedding takes 72 values, not the 80"):
        load_editor(str(tmp_path / "editor"), device="cpu")


def test_loading_says_nothing_about_a_missing_accelerate(tmp_path, tiny_ip2p, caplog):
    import logging

    tiny_ip2p.save_pretrained(tmp_path / "editor")
    diffusers_log = logging.getLogger("diffusers")        # diffusers' own tree: it does not propagate to root
    diffusers_log.addHandler(caplog.handler)
    try:
        load_editor(str(tmp_path / "editor"), device="cpu")
    finally:
        diffusers_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "accelerate" in r.getMessage()]
