import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import AttackConfig
from danp_pipeline.protect.danp import DanpObjective
from danp_pipeline.protect.diffusion import attack_timesteps
from danp_pipeline.protect.pgd import Balancer, pgd, uniform_delta

PROMPT = [["put her in a prison cell"]]


def small(**changes) -> AttackConfig:
    return AttackConfig(**{"steps": 12, "num_timesteps": 4, "resolution": 64, **changes})


def evaluate(bundle, cfg, x0, x, seed=123):
    """Loss terms at x with one fixed draw of timesteps and noise (independent of the attack's draws)."""
    _, values = DanpObjective(bundle, cfg, PROMPT, [seed], x0).gradients(x)
    return {k: float(v[0]) for k, v in values.items()}


def test_spec_timesteps_are_bin_centres_and_respect_strength():
    assert attack_timesteps(1000, 10, 1.0, "centres").tolist() == list(range(50, 1000, 100))
    assert attack_timesteps(1000, 4, 0.5, "centres").tolist() == [62, 187, 312, 437]
    gen = torch.Generator().manual_seed(0)
    drawn = attack_timesteps(1000, 10, 0.6, "random", gen)
    assert all(60 * k <= t < 60 * (k + 1) for k, t in enumerate(drawn.tolist()))


def test_danp_loss_falls_and_attention_moves_out_of_the_mask(tiny_ip2p):
    cfg = small()
    x0 = as_batch(photo("astronaut"))
    result = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0), cfg)
    total = result.total()[:, 0]
    assert total[-3:].mean() < total[:3].mean() - 1.0        # NBA opens a gap of several units
    assert result.history["nba"][0].item() == 0.0              # NBA is exactly zero at δ = 0
    before = evaluate(tiny_ip2p, cfg, x0, x0)
    after = evaluate(tiny_ip2p, cfg, x0, x0 + result.delta)
    assert after["daa"] + after["nba"] < before["daa"] + before["nba"]
    assert after["att_inside"] < before["att_inside"]
    assert after["att_outside"] > before["att_outside"]


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_nba_is_exactly_flat_at_delta_zero_so_the_first_step_is_the_daa_step(tiny_sd, path):
    # The clean branch runs the protected branch's attn2 arithmetic, so no rounding noise gets
    # normalized to unit size by balance="grad" and steered into the first step.
    x0 = as_batch(photo("coffee"))
    grads, values = DanpObjective(tiny_sd, small(path=path), PROMPT, [2], x0).gradients(x0)
    assert values["nba"].item() == 0.0
    assert grads["nba"].abs().max().item() == 0.0 and grads["daa"].abs().max().item() > 0
    one_step = {}
    for name, cfg in {"danp": small(steps=1, path=path), "daa": small(steps=1, path=path, use_nba=False)}.items():
        one_step[name] = pgd(x0, DanpObjective(tiny_sd, cfg, PROMPT, [2], x0), cfg).delta
    assert torch.equal(one_step["danp"], one_step["daa"])


def test_nba_alone_needs_the_uniform_start(tiny_ip2p):
    x0 = as_batch(photo("chelsea"))
    stuck_cfg = small(steps=3, use_daa=False)
    stuck = pgd(x0, DanpObjective(tiny_ip2p, stuck_cfg, PROMPT, [4], x0), stuck_cfg)
    assert stuck.delta.abs().max().item() == 0.0          # sign(0) = 0: never leaves δ = 0

    cfg = small(steps=6, use_daa=False, init="uniform")
    start = uniform_delta(x0, cfg.eps, [4])
    assert start.abs().max().item() <= cfg.eps and start.abs().mean().item() > cfg.eps / 3
    result = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [4], x0), cfg, seeds=[4])
    nba = torch.stack(result.history["nba"])[:, 0]
    assert nba[0].item() < 0                               # the start is already off the flat point
    assert nba[-2:].mean().item() < nba[0].item()          # and NBA keeps falling from there
    assert result.delta.abs().max().item() <= cfg.eps + 1e-7
    with pytest.raises(ValueError, match="init='uniform' needs one seed per image"):
        pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [4], x0), cfg)


def test_daa_alone_lowers_attention_inside_a_fixed_mask(tiny_ip2p):
    cfg = small(use_nba=False, mask="fixed", steps=8)
    x0 = as_batch(photo("chelsea"))
    result = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0), cfg)
    before = evaluate(tiny_ip2p, cfg, x0, x0)
    after = evaluate(tiny_ip2p, cfg, x0, x0 + result.delta)
    assert after["daa"] < before["daa"]
    assert after["att_inside"] < before["att_inside"] and after["att_outside"] > before["att_outside"]


def test_delta_respects_the_budget_and_the_pixel_range(tiny_sd):
    cfg = small(steps=4, eps=0.05, step_size=0.02)
    x0 = as_batch(photo("astronaut"), photo("coffee"))
    x0[0, :, :8] = 1.0     # saturated pixels: δ may not push them past 1
    result = pgd(x0, DanpObjective(tiny_sd, cfg, PROMPT * 2, [0, 0], x0), cfg)
    assert result.delta.abs().max().item() <= cfg.eps + 1e-7
    assert result.delta.abs().max().item() > cfg.eps - 1e-6   # the budget is actually used
    assert ((x0 + result.delta) >= 0).all() and ((x0 + result.delta) <= 1 + 1e-7).all()


def test_same_seed_same_result_different_seed_different_result(tiny_ip2p):
    cfg = small(steps=2, timesteps="random")
    x0 = as_batch(photo("coffee"))

    def run(seed):
        return pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [seed], x0), cfg).delta

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert (a != c).float().mean().item() > 0.05


def test_a_photo_gets_the_same_draws_alone_or_in_a_batch(tiny_ip2p):
    """Noise and timesteps come from the photo's own seed, so batching does not change its objective."""
    cfg = small(steps=1, timesteps="random")
    x0 = as_batch(photo("astronaut"), photo("coffee"))
    alone = pgd(x0[:1], DanpObjective(tiny_ip2p, cfg, PROMPT, [3], x0[:1]), cfg)
    batched = pgd(x0, DanpObjective(tiny_ip2p, cfg, [PROMPT[0], ["add fire", "make it snow"]], [3, 4], x0), cfg)
    for term in ("daa", "nba", "att_inside", "att_outside"):
        a, b = alone.history[term][0][0].item(), batched.history[term][0][0].item()
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (term, a, b)


def test_every_option_of_the_spec_runs_and_changes_the_result(tiny_ip2p):
    x0 = as_batch(photo("astronaut"))
    base = small(steps=2, num_timesteps=2)
    ref = pgd(x0, DanpObjective(tiny_ip2p, base, PROMPT, [0], x0), base).delta
    for change in [dict(nba_target="noise"), dict(balance="raw"), dict(token_reduction="all"),
                   dict(upsample="nearest"), dict(threshold_bins=16), dict(strength=0.5), dict(lambda_daa=0.0)]:
        cfg = base.replace(**change)
        out = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0), cfg)
        assert torch.isfinite(out.delta).all(), change
        assert not torch.equal(out.delta, ref), change


def test_gradient_balance_gives_each_term_unit_l1_norm_and_survives_zeros():
    g1 = torch.randn(2, 3, 4, 4) * 1e-6
    g2 = torch.randn(2, 3, 4, 4) * 1e3
    g2[1] = 0
    out = Balancer({"daa": 1.0, "nba": 1.0}, "grad").combine({"daa": g1, "nba": g2})
    assert torch.allclose(out[1].abs().sum(), torch.tensor(1.0))          # only daa, normalized
    both = g1[0] / g1[0].abs().sum() + g2[0] / g2[0].abs().sum()
    assert torch.allclose(out[0], both)
    raw = Balancer({"daa": 1.0, "nba": 0.5}, "raw").combine({"daa": g1, "nba": g2})
    assert torch.allclose(raw, g1 + 0.5 * g2)
