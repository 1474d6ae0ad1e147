"""SDXL (img2img, InstructPix2Pix) and SD inpainting editors through the one PGD loop: every objective's
gradient is finite and non-zero, PGD lowers DANP's loss within the budget, the text conditioning is the
SDXL pipelines' own, and the inpainting objective sees the photo through the masked-image latent."""

from __future__ import annotations

import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import METHODS, AttackConfig, method_config
from danp_pipeline.protect.baselines import OBJECTIVES, build_objective
from danp_pipeline.protect.diffusion import (
    Sampler,
    encode_photos,
    encode_prompts,
    latents_and_condition,
    predict_noise,
    unconditional_embeds,
    unet_text_inputs,
)
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.inpaint_masks import draw_masks, mask_out
from danp_pipeline.protect.models import load_editor

KINDS = ("sdxl", "sdxl-ip2p", "sd-inpaint")
PROMPT = "put her in a prison cell"
SMALL = AttackConfig(resolution=48, resolution_multiple=16, steps=2, num_timesteps=2)


@pytest.fixture(scope="module", params=KINDS)
def editor(request):
    return load_editor(f"tiny-{request.param}", device="cpu")


@pytest.fixture(scope="module")
def x0():
    return as_batch(photo("astronaut", (48, 32)))        # [1, 3, 32, 48]


def test_every_objective_has_a_finite_nonzero_gradient(editor, x0):
    """At a random δ (NBA is flat at δ = 0) every term of every method's objective has a finite gradient, and
    every method's gradient is non-zero."""
    x = (x0 + 0.03 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    for method in (m for m in METHODS if m != "random"):
        cfg = method_config(method, SMALL)
        grads, values = build_objective(method, editor, cfg, [[PROMPT]], [7], x0).gradients(x)
        assert set(grads) == set(OBJECTIVES[method](editor, cfg, [[PROMPT]], [7], x0).weights)
        for name, g in grads.items():
            assert g.shape == x0.shape and torch.isfinite(g).all(), (editor.kind, method, name)
        total = sum(g.abs().mean() for g in grads.values())
        assert total > 1e-8, (editor.kind, method, float(total))
        assert all(torch.isfinite(v).all() for v in values.values())


def test_pgd_lowers_the_danp_loss_within_the_budget(editor):
    """Eight steps with the noise (and, for inpainting, the masks) held fixed: the last two iterations' loss is
    below the first two's by a margin, and the protected photo keeps the L∞ bound."""
    cfg = SMALL.replace(steps=8, eps=8 / 255, step_size=2 / 255, noise="fixed")
    x0 = as_batch(photo("astronaut", (48, 32)))
    result = Immunizer(editor, cfg).perturb(x0, [[PROMPT]], [3])
    total = result.total()[:, 0]
    first, last = float(total[:2].mean()), float(total[-2:].mean())
    scale = float(total.abs().max())
    assert last < first - 0.5 * scale, (editor.kind, total.tolist())
    assert float(result.delta.abs().max()) <= cfg.eps + 1e-6
    protected = Immunizer(editor, cfg.replace(steps=2)).protect([photo("chelsea", (48, 32))], PROMPT)[0]
    assert 1 <= protected.linf_levels <= cfg.linf_levels_bound and protected.failure() is None


def test_an_ensemble_of_different_kinds_protects_against_both(x0):
    """One δ against an InstructPix2Pix and an SDXL editor at once: both members pull, the bound holds."""
    editors = [load_editor("tiny-ip2p", device="cpu"), load_editor("tiny-sdxl", device="cpu")]
    out = Immunizer(editors, SMALL).protect([photo("astronaut", (48, 32))], PROMPT)[0]
    assert set(out.terms) >= {"0", "1", "0/daa", "1/daa", "0/nba", "1/nba"}
    assert 1 <= out.linf_levels <= SMALL.linf_levels_bound


def test_sdxl_text_conditioning_is_the_pipelines(x0):
    """Token states, pooled embedding, zeroed unconditional branch and time ids as StableDiffusionXL*Pipeline
    computes them by default."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    bundle = load_editor("tiny-sdxl-ip2p", device="cpu")
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, text_encoder_2=bundle.text_encoder_2,
        tokenizer=bundle.tokenizer, tokenizer_2=bundle.tokenizer_2, unet=bundle.unet, scheduler=bundle.scheduler,
        add_watermarker=False)
    states, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                                   do_classifier_free_guidance=True)
    embeds = encode_prompts(bundle, [[PROMPT]]).embeds
    inputs = unet_text_inputs(bundle, embeds, (4, 6))
    assert torch.equal(inputs["encoder_hidden_states"], states)
    assert torch.equal(inputs["added_cond_kwargs"]["text_embeds"], pooled)
    time_ids = pipe._get_add_time_ids((32, 48), (0, 0), (32, 48), dtype=torch.float32,
                                      text_encoder_projection_dim=bundle.text_encoder_2.config.projection_dim)
    assert torch.equal(inputs["added_cond_kwargs"]["time_ids"], time_ids)
    blank = unet_text_inputs(bundle, unconditional_embeds(bundle), (4, 6))
    assert torch.equal(blank["encoder_hidden_states"], negative) and not negative.any()
    assert torch.equal(blank["added_cond_kwargs"]["text_embeds"], negative_pooled)


def test_inpainting_sees_the_photo_through_the_unmasked_pixels(x0):
    """The masked photo is the pipeline's (repainted pixels 0 on its [−1, 1] scale), its mask channel the
    pipeline's resize; the UNet's prediction at a fixed z_t depends on the photo's unmasked pixels only."""
    from diffusers.image_processor import VaeImageProcessor

    bundle = load_editor("tiny-sd-inpaint", device="cpu")
    masks = draw_masks(torch.Generator().manual_seed(5), 2, 32, 48, SMALL.inpaint_mask_area)[None]   # [1,2,1,H,W]
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    pipeline_mask = processor.preprocess(masks[0, 0], height=32, width=48)
    pipeline_masked = (2 * x0 - 1) * (pipeline_mask < 0.5)
    assert torch.allclose(2 * mask_out(x0, masks[:, :1]) - 1, pipeline_masked, atol=1e-6)

    x = x0.clone().requires_grad_(True)
    z, cond = latents_and_condition(bundle, encode_photos(bundle, x, masks), masks)
    assert cond.shape == (1, 2, 5, 4, 6)
    small = torch.nn.functional.interpolate(pipeline_mask, size=(4, 6))
    assert torch.equal(cond[0, 0, :1], small[0])
    embeds = encode_prompts(bundle, [[PROMPT]]).embeds
    z_t = z.detach() + torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    eps = predict_noise(bundle, z_t, torch.tensor([900]), embeds, cond[:, 0])
    (g,) = torch.autograd.grad(eps.pow(2).sum(), x)
    under = masks[0, 0, 0].bool()
    assert float(g[..., under].abs().max()) == 0.0 and float(g[..., ~under].abs().mean()) > 1e-6


def test_inpainting_masks_are_drawn_per_photo_and_iteration_one_per_bin():
    bundle = load_editor("tiny-sd-inpaint", device="cpu")
    cfg = SMALL.replace(num_timesteps=4, inpaint_masks=2)
    prompts = encode_prompts(bundle, [[PROMPT], [PROMPT]])
    first, second = (Sampler(bundle, cfg, prompts, [1, 2]).draw(0, (4, 4, 6)) for _ in range(2))
    assert first.masks.shape == (2, 2, 1, 32, 48) and torch.equal(first.masks, second.masks)   # seeded per photo
    assert not torch.equal(first.masks[0], first.masks[1])
    sampler = Sampler(bundle, cfg, prompts, [1, 2])
    draws = [sampler.draw(i, (4, 4, 6)) for i in range(2)]
    assert not torch.equal(draws[0].masks, draws[1].masks)                              # fresh each iteration
    fixed = Sampler(bundle, cfg.replace(noise="fixed"), prompts, [1, 2])
    kept = [fixed.draw(i, (4, 4, 6)).masks for i in range(2)]
    assert kept[0] is kept[1]                                                           # with the fixed noise
    edit = Sampler(bundle, cfg, prompts, [1, 2], per_timestep=False).draw(0, (4, 4, 6))
    assert edit.masks.shape == (2, 1, 1, 32, 48)
