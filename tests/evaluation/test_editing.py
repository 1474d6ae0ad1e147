"""The attacker's edit: real diffusers pipelines over the tiny editors of every kind, seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInstructPix2PixPipeline,
)
from helpers import photo

from danp_pipeline.config import EditConfig
from danp_pipeline.evaluation.editing import Editor, build_pipeline
from danp_pipeline.evaluation.metrics import psnr

PROMPT = "make it look like a painting"


@pytest.mark.parametrize("kind, cls, scheduler", [
    ("ip2p", StableDiffusionInstructPix2PixPipeline, EulerAncestralDiscreteScheduler),
    ("sd", StableDiffusionImg2ImgPipeline, PNDMScheduler),
])
def test_pipeline_is_the_real_one_with_the_usual_scheduler_and_shares_the_bundle(request, kind, cls, scheduler):
    bundle = request.getfixturevalue(f"tiny_{kind}")
    pipe = build_pipeline(bundle)
    assert type(pipe) is cls and type(pipe.scheduler) is scheduler
    assert pipe.unet is bundle.unet and pipe.vae is bundle.vae and pipe.safety_checker is None
    assert isinstance(build_pipeline(bundle, "ddim").scheduler, DDIMScheduler)


@pytest.mark.parametrize("kind", ["ip2p", "sd"])
def test_same_seed_same_edit_other_seed_other_edit(request, kind):
    editor = Editor(request.getfixturevalue(f"tiny_{kind}"), EditConfig(steps=3))
    img = photo("astronaut")
    a, b, c = editor(img, PROMPT, 0), editor(img, PROMPT, 0), editor(img, PROMPT, 1)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert psnr(a, c) < 40


def test_options_follow_each_pipeline_and_its_defaults(tiny_ip2p, tiny_sd):
    assert Editor(tiny_ip2p).options() == {"guidance_scale": 7.5, "image_guidance_scale": 1.5}
    sd = Editor(tiny_sd, EditConfig(steps=4, strength=0.5, guidance_scale=5.0)).options()
    assert sd == {"guidance_scale": 5.0, "num_inference_steps": 4, "strength": 0.5}


def test_img2img_strength_controls_how_much_of_the_photo_survives(tiny_sd):
    img = photo("chelsea")
    weak = Editor(tiny_sd, EditConfig(steps=4, strength=0.25))(img, PROMPT, 0)
    strong = Editor(tiny_sd, EditConfig(steps=4, strength=1.0))(img, PROMPT, 0)
    # the random decoder distorts colours, so compare against the edit at full strength, not the photo
    assert psnr(weak, strong) < 30


def test_bad_settings_and_sizes_are_refused(tiny_ip2p):
    with pytest.raises(ValueError, match="strength must be in"):
        EditConfig(strength=0.0)
    with pytest.raises(ValueError, match="steps must be None or an integer"):
        EditConfig(steps=0)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        EditConfig(scheduler="lms")
    with pytest.raises(ValueError, match="multiple of 8"):
        Editor(tiny_ip2p, EditConfig(steps=1))(np.zeros((60, 64, 3), np.uint8), PROMPT, 0)


NEW_KINDS = ("sdxl", "sdxl-ip2p", "sd-inpaint")


@pytest.fixture(scope="module")
def new_editors():
    from danp_pipeline.protect.models import load_editor

    return {kind: load_editor(f"tiny-{kind}", device="cpu") for kind in NEW_KINDS}


@pytest.mark.parametrize("kind, cls, scheduler", [
    ("sdxl", StableDiffusionXLImg2ImgPipeline, EulerDiscreteScheduler),
    ("sdxl-ip2p", StableDiffusionXLInstructPix2PixPipeline, EulerDiscreteScheduler),
    ("sd-inpaint", StableDiffusionInpaintPipeline, PNDMScheduler),
])
def test_new_kinds_edit_with_their_real_pipeline(new_editors, kind, cls, scheduler):
    bundle = new_editors[kind]
    pipe = build_pipeline(bundle)
    assert type(pipe) is cls and type(pipe.scheduler) is scheduler and pipe.unet is bundle.unet
    assert (getattr(pipe, "text_encoder_2", None) is bundle.text_encoder_2) and getattr(pipe, "watermark", None) is None
    editor = Editor(bundle, EditConfig(steps=3))
    options = editor.options()
    assert ("image_guidance_scale" in options, "strength" in options) == (kind == "sdxl-ip2p", kind == "sdxl")
    img = photo("astronaut", (48, 32))
    a, b, c = editor(img, PROMPT, 0), editor(img, PROMPT, 0), editor(img, PROMPT, 1)
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b) and psnr(a, c) < 40


def test_the_real_pipelines_edit_a_protected_photo(new_editors):
    """Each new kind protects a photo (DANP, two steps) and its own pipeline then edits the protected file; the
    edit of the protected photo differs from the edit of the clean one (same seed, same mask)."""
    from danp_pipeline.config import AttackConfig
    from danp_pipeline.protect.immunizer import Immunizer

    img = photo("chelsea", (48, 32))
    cfg = AttackConfig(resolution=48, resolution_multiple=16, steps=2, num_timesteps=2, eps=8 / 255,
                       step_size=4 / 255)
    for kind, bundle in new_editors.items():
        protected = Immunizer(bundle, cfg).protect([img], PROMPT)[0]
        assert 1 <= protected.linf_levels <= cfg.linf_levels_bound
        editor = Editor(bundle, EditConfig(steps=3))
        clean, edited = editor(img, PROMPT, 4), editor(protected.pixels, PROMPT, 4)
        assert edited.shape == img.shape and not np.array_equal(clean, edited), kind


def test_inpainting_repaints_the_given_mask_or_one_drawn_with_the_seed(new_editors):
    editor = Editor(new_editors["sd-inpaint"], EditConfig(steps=3))
    assert editor.options() == {"guidance_scale": 7.5, "num_inference_steps": 3}      # the pipeline's strength 1.0
    drawn = editor.mask(32, 48, 7)
    assert drawn.shape == (32, 48) and set(np.unique(drawn)) == {0, 255}
    assert np.array_equal(drawn, editor.mask(32, 48, 7)) and not np.array_equal(drawn, editor.mask(32, 48, 8))
    img = photo("astronaut", (48, 32))
    left = np.zeros((32, 48), np.uint8)
    left[:, :24] = 1
    assert np.array_equal(editor(img, PROMPT, 7), editor(img, PROMPT, 7, mask=drawn))
    assert not np.array_equal(editor(img, PROMPT, 7), editor(img, PROMPT, 7, mask=left))
    with pytest.raises(ValueError, match=r"mask shape \(32, 24\) must be the photo's"):
        editor(img, PROMPT, 7, mask=left[:, :24])
    with pytest.raises(ValueError, match="a mask was given for a sdxl editor, which takes none"):
        Editor(new_editors["sdxl"], EditConfig(steps=1))(img, PROMPT, 0, mask=left)
