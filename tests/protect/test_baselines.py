"""Baselines: each moves its own loss the way it optimizes, and every method beats random noise.

One module-scoped protection per method (2 photos, same budget γ=0.06, N=8, |𝒯|=2), then the
attacker's edit on the tiny InstructPix2Pix with fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import (
    EVAL_METHODS,
    METHODS,
    AttackConfig,
    EditConfig,
    method_config,
)
from danp_pipeline.evaluation.editing import Editor
from danp_pipeline.evaluation.metrics import psnr, ssim
from danp_pipeline.protect.baselines import OBJECTIVES, build_objective, few_step_edit
from danp_pipeline.protect.danp import DanpObjective
from danp_pipeline.protect.diffusion import (
    encode_mean,
    encode_prompts,
    latents_and_condition,
)
from danp_pipeline.protect.immunizer import Immunizer

PROMPT = "put her in a prison cell"
SEEDS = (0, 1)
BASE = AttackConfig(eps=0.06, steps=8, step_size=0.01, num_timesteps=2, resolution=64, timestep_batch=2)
BASELINES = ("pge", "pgd-e2e", "sa", "advdm", "mist", "sds")


@pytest.fixture(scope="module")
def photos():
    return [photo("astronaut"), photo("chelsea")]


@pytest.fixture(scope="module")
def protected(tiny_ip2p, photos):
    """method -> protected uint8 photos, every method at the same budget and step count."""
    out = {}
    for name in EVAL_METHODS:
        results = Immunizer(tiny_ip2p, method_config(name, BASE)).protect(photos, PROMPT)
        out[name] = [r.pixels for r in results]
    return out


@pytest.fixture(scope="module")
def editor(tiny_ip2p):
    return Editor(tiny_ip2p, EditConfig(steps=3))


def _values(bundle, cfg, x0, x):
    """Loss terms at photos x with one fixed draw of timesteps and noise (not the attack's draws)."""
    objective = build_objective(cfg.method, bundle, cfg, [[PROMPT]] * len(x0), [123] * len(x0), x0)
    _, values = objective.gradients(x)
    return {k: v.mean().item() for k, v in values.items()}


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_moves_its_own_loss_in_its_direction(tiny_ip2p, photos, protected, method):
    cfg = method_config(method, BASE)
    x0, x = as_batch(*photos), as_batch(*protected[method])
    before, after = _values(tiny_ip2p, cfg, x0, x0), _values(tiny_ip2p, cfg, x0, x)
    if method == "sds":     # SDS(−) descends the diffusion loss; its surrogate is not a loss value
        assert after["sds_mse"] < before["sds_mse"]
    elif method == "mist":  # fused: on the tiny editor the textural term's gradient decides the signs
        assert after["textural"] < 0.7 * before["textural"]
        assert after["advdm"] < before["advdm"] + 1e-3 * abs(before["advdm"])
    else:
        for term in build_objective(method, tiny_ip2p, cfg, [[PROMPT]] * 2, [0, 0], x0).weights:
            assert after[term] < before[term], (term, before, after)
    if method == "advdm":   # maximized diffusion loss: the noise is predicted worse
        assert -after["advdm"] > -before["advdm"] * 1.01


def test_every_method_uses_the_whole_budget_and_no_more(photos, protected):
    levels = BASE.linf_levels_bound
    for name, pixels in protected.items():
        for original, p in zip(photos, pixels):
            linf = np.abs(p.astype(int) - original.astype(int)).max()
            assert levels - 2 <= linf <= levels, (name, linf)


def test_danp_and_every_baseline_beat_random_noise_on_efficacy(photos, protected, editor):
    """Lower PSNR and SSIM between edit(protected) and edit(clean) than uniform noise at the same γ."""
    clean = {(i, s): editor(p, PROMPT, s) for i, p in enumerate(photos) for s in SEEDS}

    def efficacy(name):
        edits = [(clean[i, s], editor(p, PROMPT, s)) for i, p in enumerate(protected[name]) for s in SEEDS]
        return np.mean([psnr(a, b) for a, b in edits]), np.mean([ssim(a, b) for a, b in edits])

    scores = {name: efficacy(name) for name in EVAL_METHODS}
    random_psnr, random_ssim = scores.pop("random")
    for name, (p, s) in scores.items():
        assert p < random_psnr - 1.0, (name, p, random_psnr, scores)
        assert s < random_ssim, (name, s, random_ssim)


def test_every_method_has_one_objective_and_every_objective_a_method():
    assert set(OBJECTIVES) | {"random"} == set(METHODS)
    assert {cfg["method"] for cfg in EVAL_METHODS.values()} == set(METHODS)


def test_method_config_maps_ablations_to_config_fields():
    assert method_config("danp-no-daa", BASE).use_daa is False
    assert method_config("danp-no-nba", BASE).use_nba is False
    assert method_config("danp-fixed-mask", BASE).mask == "fixed"
    assert method_config("pge", BASE).method == "pge" and method_config("pge", BASE).eps == BASE.eps
    with pytest.raises(ValueError, match="unknown method 'photoguard'"):
        method_config("photoguard", BASE)
    with pytest.raises(ValueError, match="has no objective"):
        build_objective("random", None, BASE, [[PROMPT]], [0], torch.zeros(1, 3, 64, 64))


def test_sa_suppresses_attention_inside_the_same_fixed_mask_as_danp(tiny_ip2p, photos):
    x0 = as_batch(photos[0])
    sa = build_objective("sa", tiny_ip2p, method_config("sa", BASE), [[PROMPT]], [0], x0)
    danp = DanpObjective(tiny_ip2p, method_config("danp-fixed-mask", BASE), [[PROMPT]], [0], x0)
    sa.prepare()
    danp.prepare()
    assert torch.equal(sa.fixed_masks, danp.fixed_masks)
    assert 0 < sa.fixed_masks.mean().item() < 1


@pytest.mark.parametrize("kind", ["ip2p", "sd"])
def test_few_step_edit_is_differentiable_and_depends_on_the_photo(request, kind):
    bundle = request.getfixturevalue(f"tiny_{kind}")
    x = as_batch(photo("astronaut")).requires_grad_(True)
    z, cond = latents_and_condition(bundle, encode_mean(bundle, x))
    prompts = encode_prompts(bundle, [[PROMPT]])
    uncond = encode_prompts(bundle, [[""]]).embeds
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    out = few_step_edit(bundle, z, cond, prompts.embeds, uncond, noise, steps=2, strength=0.6)
    assert out.shape == z.shape and torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.abs().sum() > 0


def test_sa_with_a_prompt_subset_uses_the_masks_of_the_drawn_prompts(tiny_ip2p, photos):
    x0 = as_batch(photos[0])
    cfg = method_config("sa", BASE.replace(prompt_subset=1))
    sa = build_objective("sa", tiny_ip2p, cfg, [[PROMPT, "make it snow", "add fire"]], [1], x0)
    grads, values = sa.gradients((x0 + 0.01).clamp(0, 1))
    assert torch.isfinite(values["sa"]).all() and float(grads["sa"].abs().sum()) > 0
