import dataclasses

import pytest

from danp_pipeline.config import (
    AttackConfig,
    PipelineConfig,
    config_json,
    config_sha256,
    validate_prompts,
)
from danp_pipeline.protect.devices import resolve_dtype
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.models import load_editor, tiny_editor


def test_defaults_follow_the_spec():
    c = AttackConfig()
    assert (c.eps, c.steps, c.num_timesteps, c.threshold_bins) == (0.03, 100, 10, 128)
    assert c.step_size == pytest.approx(1 / 255)
    assert (c.lambda_daa, c.lambda_nba, c.nba_target, c.balance) == (1.0, 1.0, "clean", "grad")
    assert c.init == "zero"                                   # Algorithm 1: δ ← 0
    assert (c.timesteps, c.token_reduction, c.upsample, c.resolution) == ("centres", "content", "bilinear", 512)
    assert c.linf_levels_bound == 8                      # ceil(255 * 0.03) = ceil(7.65)
    assert AttackConfig(eps=4 / 255).linf_levels_bound == 4


@pytest.mark.parametrize("change, message", [
    (dict(eps=-0.01), "eps must be a finite number > 0, got -0.01"),
    (dict(eps=float("nan")), "eps must be"),
    (dict(eps=3.0), "eps is on the \\[0,1\\] pixel scale"),
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), "steps must be an integer"),
    (dict(step_size=0), "step_size"),
    (dict(num_timesteps=0), "num_timesteps"),
    (dict(timesteps="uniform"), "timesteps must be one of \\['centres', 'random'\\], got 'uniform'"),
    (dict(nba_target="target"), "nba_target"),
    (dict(balance="auto"), "balance"),
    (dict(init="gaussian"), "init"),
    (dict(threshold_bins=1), "threshold_bins"),
    (dict(strength=1.5), "strength"),
    (dict(resolution=32), "resolution must be an integer >= 64, got 32"),
    (dict(use_daa=False, use_nba=False), "both False"),
    (dict(method="photoshop"), "method must be one of"),
    (dict(inpaint_masks=0), "inpaint_masks must be an integer >= 1, got 0"),
    (dict(inpaint_mask_area=(0.5, 0.2)), "inpaint_mask_area must be a tuple \\(low, high\\) with 0 < low <= high < 1, "
                                         "got \\(0.5, 0.2\\)"),
])
def test_bad_settings_are_refused_naming_field_and_value(change, message):
    with pytest.raises(ValueError, match=message):
        AttackConfig(**change)


def test_bad_settings_are_refused_before_any_work(tiny_ip2p):
    with pytest.raises(ValueError, match="steps"):
        Immunizer(tiny_ip2p, AttackConfig(steps=0))
    immunizer = Immunizer(tiny_ip2p, AttackConfig(steps=1))
    with pytest.raises(ValueError, match="prompts is empty"):
        immunizer.protect([b"not even decoded"], prompts=[])
    with pytest.raises(ValueError, match="non-empty string"):
        validate_prompts(["ok", "  "])


def test_unknown_model_kind_and_model_are_refused():
    with pytest.raises(ValueError, match="unknown editor kind 'flux'"):
        tiny_editor("flux")
    with pytest.raises(ValueError, match="neither an existing directory nor a repo id"):
        load_editor("./no/such/dir", device="cpu")
    with pytest.raises(ValueError, match="fp16"):
        resolve_dtype("fp16", __import__("torch").device("cpu"))


def test_pipeline_config_validation_and_hash():
    ok = PipelineConfig("in", "out")
    with pytest.raises(ValueError, match="actors must be an integer >= 1, got 0"):
        dataclasses.replace(ok, actors=0)
    with pytest.raises(ValueError, match="max_photo_attempts must be an integer >= 1, got 0"):
        dataclasses.replace(ok, max_photo_attempts=0)
    with pytest.raises(ValueError, match="input_uri"):
        dataclasses.replace(ok, input_uri=" ")
    with pytest.raises(ValueError, match="prompts"):
        dataclasses.replace(ok, prompts=("",))
    a = config_json(AttackConfig(), "tiny-ip2p", "r1")
    assert config_sha256(a) == config_sha256(config_json(AttackConfig(), "tiny-ip2p", "r1"))
    assert config_sha256(a) != config_sha256(config_json(AttackConfig(eps=0.02), "tiny-ip2p", "r1"))
    assert config_sha256(a) != config_sha256(config_json(AttackConfig(), "tiny-ip2p", "r2"))
    # Settings of some editor kinds only (inpainting masks) are recorded only when changed: a configuration's
    # hash does not move for editors they do not concern.
    assert '"inpaint_masks"' not in a and '"inpaint_mask_area"' not in a
    changed = config_json(AttackConfig(inpaint_masks=3), "tiny-ip2p", "r1")
    assert '"inpaint_masks":3' in changed and config_sha256(changed) != config_sha256(a)


def test_cpu_stage_concurrency_is_a_validated_pipeline_setting():
    from danp_pipeline.config import TASKS_PER_ACTOR, PipelineConfig

    assert PipelineConfig(input_uri="in", output_uri="out").tasks_per_actor == TASKS_PER_ACTOR
    with pytest.raises(ValueError, match="tasks_per_actor must be an integer >= 1, got 0"):
        PipelineConfig(input_uri="in", output_uri="out", tasks_per_actor=0)
