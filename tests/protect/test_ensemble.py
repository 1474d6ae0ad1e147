"""Protection against several editors at once: one δ, the weighted mean of their objectives."""

import numpy as np
import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline import Immunizer
from danp_pipeline.config import AttackConfig
from danp_pipeline.protect.danp import DanpObjective
from danp_pipeline.protect.ensemble import EnsembleObjective, editor_weights
from danp_pipeline.protect.models import tiny_editor
from danp_pipeline.protect.pgd import pgd

PROMPT = [["put her in a prison cell"]]
CFG = AttackConfig(steps=12, num_timesteps=4, resolution=64)


@pytest.fixture(scope="module")
def other_ip2p():
    """A second editor of the same kind with other weights: the attacker's editor may be any of them."""
    return tiny_editor("ip2p", seed=1).freeze()


def test_one_delta_lowers_both_editors_objectives(tiny_ip2p, other_ip2p):
    x0 = as_batch(photo("astronaut"))
    members = [DanpObjective(e, CFG, PROMPT, [0], x0) for e in (tiny_ip2p, other_ip2p)]
    grads, values = EnsembleObjective(members).gradients(x0.clone())
    assert set(grads) == {"0", "1"} and all(g.abs().sum() > 0 for g in grads.values())   # both pull δ
    assert {"0/daa", "0/nba", "1/daa", "1/nba"} <= set(values)

    result = pgd(x0, EnsembleObjective(members), CFG)
    for member in ("0", "1"):
        loss = torch.stack(result.history[member])[:, 0]
        assert loss[-3:].mean() < loss[:3].mean() - 1.0, member       # each editor's loss falls
    assert result.delta.abs().max() <= CFG.eps + 1e-6


def test_an_ensemble_of_one_is_the_editor_itself(tiny_ip2p):
    x0 = as_batch(photo("coffee"))
    cfg = CFG.replace(steps=4)
    alone = pgd(x0, DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0), cfg)
    ensemble = pgd(x0, EnsembleObjective([DanpObjective(tiny_ip2p, cfg, PROMPT, [0], x0)]), cfg)
    assert torch.equal(alone.delta, ensemble.delta)                    # the sign step does not see the scale


def test_the_immunizer_protects_against_both_editors_within_the_budget(tiny_ip2p, other_ip2p):
    fast = AttackConfig(steps=2, num_timesteps=2, resolution=64)
    original = photo("chelsea", (80, 60))
    (out,) = Immunizer([tiny_ip2p, other_ip2p], fast, editor_weights=[2, 1]).protect([original], "add fire")
    assert 0 < out.linf_levels <= fast.linf_levels_bound
    assert np.abs(out.pixels.astype(int) - original.astype(int)).max() == out.linf_levels
    assert {"0", "1", "0/daa", "1/nba"} <= set(out.terms) and np.isfinite(out.loss_last)
    assert Immunizer([tiny_ip2p, other_ip2p], fast).editor_weights == [0.5, 0.5]


def test_editor_weights_are_checked_and_normalized():
    assert editor_weights([1, 3], 2) == [0.25, 0.75]
    assert editor_weights(None, 4) == [0.25] * 4
    for bad in ([1], [1, 0], [1, -2], [1, float("nan")]):
        with pytest.raises(ValueError, match="editor weights must be 2 positive finite numbers"):
            editor_weights(bad, 2)
    with pytest.raises(ValueError, match="at least one editor"):
        Immunizer([], CFG)
