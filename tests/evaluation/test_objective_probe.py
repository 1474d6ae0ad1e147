"""The objective probe: DANP's terms on the editor's copy, one measure for every view and configuration."""

from __future__ import annotations

import numpy as np
from helpers import photo

from danp_pipeline.config import AttackConfig, profile_config
from danp_pipeline.evaluation.objective_probe import ObjectiveProbe

PROMPTS = ["make it snow"]


def test_probe_is_zero_on_the_clean_copy_and_negative_on_a_perturbed_one(tiny_ip2p):
    probe = ObjectiveProbe(tiny_ip2p, AttackConfig(resolution=64, num_timesteps=2))
    clean = photo(size=(64, 64))
    assert probe(clean, clean, PROMPTS)["nba"] == 0.0
    noisy = np.clip(clean.astype(int) + np.random.default_rng(0).integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    first, again = probe(clean, noisy, PROMPTS), probe(clean, noisy, PROMPTS)
    assert first["nba"] < 0 and first == again                # one fixed draw: the same value every time
    assert np.isnan(probe(clean, noisy[:32], PROMPTS)["nba"])   # copies of other sizes are not compared


def test_probe_measures_every_configuration_with_the_full_objective(tiny_ip2p):
    """A cheaper protection (timestep and prompt subsets, fixed noise) is judged by the paper's sampling, so
    its figures compare with the paper configuration's."""
    paper = AttackConfig(resolution=64, num_timesteps=4)
    cheap = profile_config("fast", paper).replace(prompt_subset=1, noise="fixed")
    assert cheap.timestep_subset and cheap.noise == "fixed"
    clean = photo(size=(64, 64))
    noisy = np.clip(clean.astype(int) + np.random.default_rng(1).integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    prompts = PROMPTS + ["turn it into a painting"]
    measured = [ObjectiveProbe(tiny_ip2p, cfg)(clean, noisy, prompts) for cfg in (cheap, paper)]
    assert measured[0] == measured[1]
