"""Cheaper protection: each knob does what it says and costs less work, counted in FLOPs.

Tiny random-weight editor: these tests check mechanics (which timesteps, which noise, how many
backward passes, the FLOPs counted), not efficacy; efficacy is measured on the micro benchmark.
"""

import itertools

import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import PROFILES, AttackConfig, profile_config
from danp_pipeline.evaluation.bench import count_flops_of
from danp_pipeline.protect.danp import DanpObjective
from danp_pipeline.protect.diffusion import Sampler
from danp_pipeline.protect.pgd import COMBINED, Balancer, pgd, step_size

PROMPTS = [["put her in a prison cell"]]


def config(**changes) -> AttackConfig:
    return AttackConfig(steps=4, num_timesteps=4, resolution=64).replace(**changes)


@pytest.fixture(scope="module")
def photos():
    x0 = as_batch(photo("astronaut"))
    x = (x0 + 0.03 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    return x0, x


def objective(bundle, cfg, x0):
    return DanpObjective(bundle, cfg, PROMPTS, [5], x0)


def twin_draws(obj, x, seeds=(5,)):
    """The draws ``obj`` makes, iteration by iteration: a sampler on the same prompts and seeds."""
    twin = Sampler(obj.bundle, obj.cfg, obj.sampler.prompts, list(seeds))
    shape = (obj.bundle.vae.config.latent_channels, *(s // obj.bundle.vae_scale_factor for s in x.shape[-2:]))
    return (twin.draw(i, shape) for i in itertools.count())


def test_timestep_subset_draws_m_distinct_bins_per_iteration(tiny_ip2p, photos):
    x0, x = photos
    obj = objective(tiny_ip2p, config(timestep_subset=2), x0)
    seen = set()
    for _, draw in zip(range(6), twin_draws(obj, x)):
        obj.gradients(x)
        bins = draw.bins[0].tolist()
        assert len(bins) == 2 and len(set(bins)) == 2 and bins == sorted(bins)
        seen.update(bins)
    assert seen == {0, 1, 2, 3}                      # every bin gets its turn across iterations
    assert sum(len(c) for c in obj.chunks(1)) == 2
    with pytest.raises(ValueError, match="draws come in order"):      # generator streams: no going back
        obj.sampler.draw(0, (4, 8, 8))


def test_fixed_noise_reuses_the_clean_branch_and_changes_nothing_else(tiny_ip2p, photos):
    x0, x = photos
    x1 = (x0 + 0.03 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)
    reused = objective(tiny_ip2p, config(noise="fixed"), x0)
    reused.gradients(x1)
    assert len(reused.clean_cache) == 4                           # 4 bins × 1 pair
    got, got_values = reused.gradients(x)                         # the clean branch from the cache
    want, want_values = objective(tiny_ip2p, config(noise="fixed"), x0).gradients(x)   # computed afresh
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_values["nba"], want_values["nba"])
    zero, values = objective(tiny_ip2p, config(noise="fixed"), x0).gradients(x0)
    assert float(values["nba"].abs().max()) == 0.0               # NBA is exactly 0 at δ = 0
    with pytest.raises(ValueError, match="noise='fixed'"):
        config(noise="fixed", timesteps="random")


def test_balance_every_k_backpropagates_once_between_measurements(tiny_ip2p, photos):
    x0, x = photos
    obj = objective(tiny_ip2p, config(noise="fixed", balance_every=3), x0)
    keys = [sorted(obj.gradients(x)[0]) for _ in range(4)]
    assert keys == [["daa", "nba"], [COMBINED], [COMBINED], ["daa", "nba"]]
    # At the same photo and noise, the single backward points where the balanced sum of the terms does.
    full = objective(tiny_ip2p, config(noise="fixed", balance_every=3), x0)
    terms = full.gradients(x)[0]
    single = full.gradients(x)[0][COMBINED]
    balanced = Balancer(full.weights, "grad").combine(terms)
    cos = torch.nn.functional.cosine_similarity(single.flatten(), balanced.flatten(), dim=0)
    assert cos > 0.999, float(cos)


def test_nba_zero_at_the_start_is_measured_again_before_any_single_backward(tiny_ip2p, photos):
    x0, _ = photos
    obj = objective(tiny_ip2p, config(noise="fixed", balance_every=4), x0)
    first = obj.gradients(x0)[0]                  # δ = 0: NBA's gradient is 0, its norm unknown
    assert float(first["nba"].abs().max()) == 0.0
    assert sorted(obj.gradients(x0)[0]) == ["daa", "nba"]     # so it is measured again


def test_cosine_step_decay():
    cfg = config(steps=10, step_size=4 / 255, step_decay="cosine")
    assert step_size(cfg, 0) == pytest.approx(4 / 255)
    assert step_size(cfg, 5) == pytest.approx(2 / 255)
    assert step_size(config(steps=10), 7) == pytest.approx(1 / 255)


def test_each_knob_cuts_the_counted_work_of_an_iteration(tiny_ip2p, photos):
    x0, x = photos

    def flops(**changes):
        obj = objective(tiny_ip2p, config(**changes), x0)
        for _ in range(9):                                    # then iteration 9: a single backward at k=2
            obj.gradients(x)
        return count_flops_of(lambda: obj.gradients(x))      # a steady-state iteration

    full = flops(noise="fixed")
    assert flops(noise="fixed", balance_every=2) < 0.85 * full            # one UNet and VAE backward, not two
    assert flops() > 1.1 * full                                            # fresh noise: the clean branch again
    assert flops(noise="fixed", timestep_subset=2) < 0.75 * full   # half the UNet work; the VAE's stays


def test_fast_profile_protects_within_the_budget(tiny_ip2p, photos):
    x0, _ = photos
    cfg = profile_config("fast", config(steps=20))
    assert cfg.steps == 6 and cfg.timestep_subset == 2 and set(PROFILES) >= {"paper", "fast"}
    assert cfg.noise == "fresh"       # fixed noise lost the unseen wordings on the micro benchmark
    assert profile_config("paper", config()) == config()
    obj = objective(tiny_ip2p, cfg, x0)
    result = pgd(x0, obj, cfg)
    assert float(result.delta.abs().max()) <= cfg.eps + 1e-6
    assert float(result.delta.abs().max()) > 0.5 * cfg.eps


@pytest.mark.parametrize("eps", [2 / 255, 4 / 255, 0.03, 16 / 255, 0.125, 0.25])
def test_fast_profile_steps_follow_the_budget_and_reach_it(eps):
    """α is a fixed fraction of γ (2/255 at the default 0.03), so Σα ≥ γ at every budget: 0.125 and 0.25
    were once the same attack (α fixed at 2/255, Σα = 31/255). An explicit step size is always kept."""
    paper = AttackConfig(eps=eps)
    fast = profile_config("fast", paper)
    assert fast.step_size == pytest.approx(eps * (2 / 255) / 0.03)
    assert fast.step_reach >= eps and fast.reach_warning() is None
    assert profile_config("fast", paper, step_size=1 / 255).step_size == 1 / 255
    assert profile_config("paper", paper, step_size=0.5 / 255).step_size == 0.5 / 255
    short = AttackConfig(eps=eps, steps=2, step_size=1 / 255)
    assert (short.reach_warning() is None) == (2 / 255 >= eps)        # warned wherever Σα < γ


FOUR = [["put her in a prison cell", "make it snow", "turn him into a clown", "add fire in the background"]]


def test_prompt_subset_draws_m_of_a_photos_prompts_per_iteration(tiny_ip2p, photos):
    x0, x = photos
    obj = DanpObjective(tiny_ip2p, config(prompt_subset=1, noise="fixed"), FOUR, [5], x0)
    seen = set()
    for _, draw in zip(range(8), twin_draws(obj, x)):
        _, values = obj.gradients(x)
        assert draw.prompts.counts == [1] and len(draw.pair_ids) == 1 and float(draw.prompts.pair_weight) == 1.0
        assert torch.equal(draw.prompts.embeds[0], obj.sampler.prompts.embeds[int(draw.pair_ids[0])])
        assert torch.isfinite(values["nba"]).all()
        seen.add(int(draw.pair_ids[0]))
    assert seen == {0, 1, 2, 3}                                   # every prompt gets its turn
    assert {slot % 4 for slot in obj.clean_cache} == seen          # cached per (bin, prompt of all four)
    # m at least the number of prompts keeps them all and draws nothing: the same gradients as m = 0.
    every = DanpObjective(tiny_ip2p, config(prompt_subset=4), FOUR, [5], x0).gradients(x)[0]
    plain = DanpObjective(tiny_ip2p, config(), FOUR, [5], x0).gradients(x)[0]
    for name in plain:
        torch.testing.assert_close(every[name], plain[name])


def test_prompt_subset_cuts_the_work_of_k_prompts(tiny_ip2p, photos):
    x0, x = photos

    def flops(**changes):
        obj = DanpObjective(tiny_ip2p, config(noise="fixed", **changes), FOUR, [5], x0)
        obj.gradients(x)
        return count_flops_of(lambda: obj.gradients(x))

    four, one = flops(), flops(prompt_subset=1)
    assert one < 0.4 * four          # a quarter of the UNet work (0.35 here: the VAE encode is one per photo anyway)


def test_photoguard_diffusion_attack_uses_the_prompt_subset(tiny_ip2p, photos):
    from danp_pipeline.protect.baselines import DiffusionAttack

    x0, x = photos
    attack = DiffusionAttack(tiny_ip2p, config(prompt_subset=2), FOUR, [5], x0, steps=2)
    grads, values = attack.gradients(x)
    assert torch.isfinite(values["pgd_e2e"]).all() and float(grads["pgd_e2e"].abs().sum()) > 0
    with pytest.raises(ValueError, match="prompt_subset"):
        config(prompt_subset=-1)
