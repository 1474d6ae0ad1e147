"""The attacker's edit: real diffusers pipelines over the tiny editors, seeded and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInstructPix2PixPipeline,
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
