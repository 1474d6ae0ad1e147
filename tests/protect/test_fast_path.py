"""The fast path computes what the reference path (Algorithm 1, one timestep at a time) computes.

Tolerances: both paths draw the same timesteps and noise and differ only in floating-point summation
order (one VAE encode per iteration instead of one per timestep, batched UNet calls, gradients summed
at the latent instead of at the photo). In fp32 the per-term gradients agree to ~1e-5 of their largest
entry; we allow 1e-4. Loss values agree to 1e-5 relative. The PGD step takes sign(g), which can flip
where g is within rounding of zero, so δ after 3 PGD steps is compared by the fraction of identical
entries (≥ 99.9%); on these seeds it is identical.
"""

import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import AttackConfig
from danp_pipeline.protect.danp import DanpObjective, DiffusionObjective
from danp_pipeline.protect.diffusion import add_noise, predict_noise
from danp_pipeline.protect.pgd import pgd

PROMPTS = [["put her in a prison cell"]]
GRAD_RTOL = 1e-4   # of the largest |entry| of each term's gradient
LOSS_RTOL = 1e-5


def config(**changes) -> AttackConfig:
    return AttackConfig(steps=3, num_timesteps=4, resolution=64, **changes)


def one_iteration(bundle, cfg, x0, x, prompts=PROMPTS, seeds=(5,)):
    return DanpObjective(bundle, cfg, prompts, list(seeds), x0).gradients(x)


def assert_same_gradients(got, want):
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().item()
        assert scale > 0, f"{name}: reference gradient is all zero, the comparison would be vacuous"
        assert (got[name] - want[name]).abs().max().item() <= GRAD_RTOL * scale, name


def assert_same_values(got, want):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=LOSS_RTOL, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def photos():
    x0 = as_batch(photo("astronaut"))
    gen = torch.Generator().manual_seed(0)
    x = (x0 + 0.03 * torch.randn(x0.shape, generator=gen).sign()).clamp(0, 1)   # δ ≠ 0: NBA has a gradient
    return x0, x


def test_fast_is_the_default_and_batches_timesteps_up_to_the_unet_batch_limit(tiny_ip2p, photos):
    assert AttackConfig().path == "fast"

    def chunks(prompts=PROMPTS, **changes):
        x0 = photos[0].expand(len(prompts), -1, -1, -1)
        objective = DanpObjective(tiny_ip2p, config(**changes), prompts, list(range(len(prompts))), x0)
        return list(objective.chunks(sum(map(len, prompts))))

    assert chunks() == [[0, 1, 2, 3]]                                   # every timestep in one UNet call
    assert chunks(path="reference") == [[0], [1], [2], [3]]             # Algorithm 1: one at a time
    assert chunks(timestep_batch=3) == [[0, 1, 2], [3]]
    assert chunks([["a", "b", "c"]] * 2, max_unet_batch=12) == [[0, 1], [2, 3]]   # 6 pairs: 2 timesteps per call
    assert chunks([["a", "b", "c"]] * 2, max_unet_batch=4) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("changes", [
    {},
    {"timestep_batch": 3},
    {"gradient_checkpointing": True},
    {"vae_recompute": True},
    {"channels_last": True},
    {"timesteps": "random", "nba_target": "noise"},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_fast_path_options_give_the_reference_gradients(tiny_ip2p, photos, changes):
    x0, x = photos
    want_g, want_v = one_iteration(tiny_ip2p, config(path="reference", **changes), x0, x)
    got_g, got_v = one_iteration(tiny_ip2p, config(**changes), x0, x)
    assert_same_gradients(got_g, want_g)
    assert_same_values(got_v, want_v)


def test_fast_path_matches_for_several_photos_and_prompts(tiny_sd):
    x0 = as_batch(photo("coffee"), photo("chelsea"))
    x = (x0 + 0.03 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)
    prompts = [["add fire"], ["make it snow", "turn it into a painting"]]
    want_g, want_v = one_iteration(tiny_sd, config(path="reference"), x0, x, prompts, (1, 2))
    got_g, got_v = one_iteration(tiny_sd, config(), x0, x, prompts, (1, 2))
    assert_same_gradients(got_g, want_g)
    assert_same_values(got_v, want_v)


class NoiseLoss(DiffusionObjective):
    """A baseline-style objective that implements only ``chunk_losses``: the contract baselines.py uses."""

    def __init__(self, bundle, cfg, prompts, seeds):
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {"noise": 1.0, "latent": 1.0}

    def chunk_losses(self, z, cond, t, noise, chunk):
        eps = predict_noise(self.bundle, add_noise(self.bundle, z, noise, t), t, chunk.repeat(chunk.prompts.embeds),
                            cond)
        return {"noise": -(eps - noise).pow(2).flatten(1).sum(1), "latent": z.pow(2).flatten(1).sum(1)}, {}


def test_an_objective_with_only_chunk_losses_gets_the_same_gradients_on_both_paths(tiny_ip2p, photos):
    x0, x = photos
    results = [NoiseLoss(tiny_ip2p, config(path=path), PROMPTS, [3]).gradients(x) for path in ("reference", "fast")]
    assert_same_gradients(results[1][0], results[0][0])
    assert_same_values(results[1][1], results[0][1])


@pytest.mark.parametrize("changes", [{}, {"nba_target": "noise"}, {"use_daa": False, "init": "uniform"}],
                         ids=["default", "nba-noise", "nba-only-uniform-start"])
def test_pgd_gives_the_same_losses_and_delta_on_both_paths(tiny_ip2p, photos, changes):
    x0, _ = photos
    runs = {}
    for path in ("reference", "fast"):
        cfg = config(path=path, **changes)
        runs[path] = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPTS, [9], x0), cfg, seeds=[9])
    ref, fast = runs["reference"], runs["fast"]
    for name in ref.history:
        torch.testing.assert_close(torch.stack(fast.history[name]), torch.stack(ref.history[name]),
                                   rtol=LOSS_RTOL, atol=1e-7, msg=name)
    same = (fast.delta == ref.delta).float().mean().item()
    assert same >= 0.999, f"only {same:.4%} of δ entries agree"
    assert ref.delta.abs().max().item() > 0
