"""The micro benchmark's world switch and budget curves (evaluation/micro_suite.py): the fast profile's step at
every budget, the worlds' editors, sizes and variants, and short real runs in both worlds."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_proxy_editor

from danp_pipeline import cli
from danp_pipeline.config import FAST_STEP_FRACTION, MICRO_ATTACK, MicroSuiteConfig, profile_config
from danp_pipeline.evaluation import micro_suite
from danp_pipeline.evaluation.budget_curves import curve_table


@pytest.mark.parametrize("gamma", [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255])
def test_the_fast_profiles_step_is_a_fraction_of_the_budget_and_reaches_it(gamma: float) -> None:
    fast = profile_config("fast", MICRO_ATTACK.replace(eps=gamma))
    assert fast.step_size == pytest.approx(FAST_STEP_FRACTION * gamma)
    assert fast.step_reach >= gamma and fast.reach_warning() is None
    kept = profile_config("fast", MICRO_ATTACK.replace(eps=gamma), step_size=0.5 / 255)
    assert kept.step_size == 0.5 / 255
    assert (kept.reach_warning() is None) == (kept.step_reach >= gamma)


def test_an_eps_list_runs_every_budget_with_its_own_step_and_warns_where_it_cannot_reach(caplog) -> None:
    parser = cli.command_parser("micro-bench")
    with caplog.at_level(logging.WARNING, logger="danp_pipeline"):
        config = cli.micro_suite_config(parser.parse_args(["out", "--profile", "fast", "--eps", "2/255,0.03,16/255"]))
    assert [a.eps for a in config.attacks] == pytest.approx([2 / 255, 0.03, 16 / 255])
    assert [a.step_size / a.eps for a in config.attacks] == pytest.approx([FAST_STEP_FRACTION] * 3)
    assert {a.steps for a in config.attacks} == {30} and not caplog.records
    with caplog.at_level(logging.WARNING, logger="danp_pipeline"):    # an explicit α is kept at every budget
        config = cli.micro_suite_config(parser.parse_args(["out", "--profile", "fast", "--step-size", "0.002",
                                                           "--eps", "2/255,16/255"]))
    assert [a.step_size for a in config.attacks] == [0.002, 0.002]
    assert [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()] == [
        config.attacks[1].reach_warning()]                          # Σα = 0.031 < 16/255 only
    single = cli.micro_suite_config(parser.parse_args(["out", "--eps", "0.03"]))
    assert single.attacks == (single.attack,) and single.attack.eps == 0.03 and single.budgets == ()
    with pytest.raises(ValueError, match="2/255"):                  # levels need their unit
        cli.micro_suite_config(parser.parse_args(["out", "--eps", "2,4"]))
    with pytest.raises(ValueError, match=r"budgets\[1\] must differ from attack in eps and step_size only.*steps=3"):
        MicroSuiteConfig(budgets=(MICRO_ATTACK, MICRO_ATTACK.replace(eps=0.06, steps=3)))


def test_the_world_chooses_editors_sizes_and_variants() -> None:
    assert MicroSuiteConfig().editors == ("micro-ip2p", "micro-ip2p-b")
    assert MicroSuiteConfig(world="textured").editors == ("proxy-ip2p", "proxy-ip2p-b")
    with pytest.raises(ValueError, match="'4x-3:2' is not drawn in the textured world"):
        MicroSuiteConfig(world="textured", size_variants=("4x-1:1", "4x-3:2"))
    with pytest.raises(ValueError, match="'micro-ip2p' is trained on the flat world"):
        MicroSuiteConfig(world="textured", editors=("micro-ip2p",))
    with pytest.raises(ValueError, match="world must be one of"):
        MicroSuiteConfig(world="photo")
    with pytest.raises(ValueError, match="attack.resolution must be the textured world's size 128, got 64"):
        micro_suite.check_world(MicroSuiteConfig(world="textured"))
    textured = MicroSuiteConfig(world="textured", scenes=3, attack=MICRO_ATTACK.replace(resolution=128))
    flat = micro_suite.cases(MicroSuiteConfig(scenes=3))
    for case, same in zip(micro_suite.cases(textured), flat):
        assert case.own.scene_seed == same.own.scene_seed and case.own.instruction == same.own.instruction
        assert case.own.source.shape == (128, 128, 3) and case.full_shape == (512, 512)


def test_the_textured_worlds_full_size_photo_is_its_scene_upscaled(tmp_path) -> None:
    """The attacker's copy of the 4x Lanczos upscale is the 128x128 ground truth up to resampling."""
    from danp_pipeline.evaluation.attacker import attackers_copy
    from danp_pipeline.evaluation.metrics import psnr
    from danp_pipeline.micro import worlds

    textured = worlds.get("textured")
    shape, frame = micro_suite.variant_frame("4x-1:1", textured)
    for sample in textured.make_split("heldout", 3, 0, "train", frame):
        photo = textured.photo(sample.scene_seed, shape, frame)
        seen = attackers_copy(photo, textured.size, textured.latent_factor, "lanczos", "none")
        assert photo.shape == (512, 512, 3) and psnr(seen, sample.source) > 35
    with pytest.raises(ValueError, match="'4x-16:9' is not drawn in the textured world"):
        micro_suite.variant_frame("4x-16:9", textured)
    editor = tiny_proxy_editor(tmp_path / "proxy")     # records the textured world: refused on the flat one
    with pytest.raises(ValueError, match="trained on the textured world, not on world='flat'"):
        micro_suite.check_world(MicroSuiteConfig(editors=(str(editor),)))


@pytest.fixture(scope="module")
def proxy_editor(tmp_path_factory):
    return tiny_proxy_editor(tmp_path_factory.mktemp("editors") / "proxy")


def test_micro_bench_on_the_textured_world_at_two_budgets(proxy_editor, tmp_path) -> None:
    out = tmp_path / "suite"
    argv = ["micro-bench", str(out), "--world", "textured", "--editors", str(proxy_editor),
            "--scenes", "1", "--methods", "danp", "--seeds", "0", "--steps", "1", "--timesteps", "1",
            "--eps", "2/255,8/255", "--view", "attacker"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 1 * 1 * 2 * 2                 # scenes × methods × budgets × (own, unseen)
    assert set(df["world"]) == {"textured"} and set(df["photo_size"]) == {"512x512"}
    assert sorted(set(df["eps"])) == pytest.approx([2 / 255, 8 / 255]) and (df["step_size"] == 1 / 255).all()
    assert (df["linf_levels"] <= np.ceil(255 * df["eps"] - 1e-9)).all()
    summary = (out / "summary.md").read_text()
    assert "micro/textures.py" in summary and "| danp | 2/255 | 4x-1:1 |" in summary
    assert "## Budget curves" in summary and "ε₅₀" in summary
    refused = ["micro-bench", str(tmp_path / "no"), "--world", "textured", "--size-variants", "4x-3:2"]
    assert cli.entrypoint(refused) == 2 and not (tmp_path / "no").exists()


def test_micro_bench_protects_against_an_ensemble_and_edits_with_an_inpainting_editor_in_the_box(
        proxy_editor, tmp_path, monkeypatch) -> None:
    """--ensemble 2: one perturbation against both editors (the immunizer holds both, the rows name both); a third,
    inpainting editor only edits, repainting the box drawn around each edit."""
    from danp_pipeline.evaluation.editing import Editor
    from danp_pipeline.micro import world

    second = tiny_proxy_editor(tmp_path / "second", seed=1)
    inpaint = tiny_proxy_editor(tmp_path / "inpaint", seed=2, kind="sd-inpaint")
    masks, call = [], Editor.__call__

    def spy(self, photo, prompt, seed, mask=None):
        masks.append((self.bundle.kind, None if mask is None else mask.copy()))
        return call(self, photo, prompt, seed, mask=mask)

    monkeypatch.setattr(Editor, "__call__", spy)
    config = MicroSuiteConfig(world="textured", editors=(str(proxy_editor), str(second), str(inpaint)), ensemble=2,
                              scenes=1, methods=("danp",), seeds=(0,),
                              attack=MICRO_ATTACK.replace(resolution=128, steps=1, num_timesteps=1))
    suite = micro_suite.MicroSuite(config)
    assert [len(i.editors) for i in suite.immunizers.values()] == [2]
    case = micro_suite.cases(config)[0]
    rows, _ = suite(case)
    assert {r["editor"] for r in rows} == {f"{proxy_editor}+{second}"}
    assert sorted({r["attack_editor"] for r in rows}) == sorted({str(proxy_editor), str(second), str(inpaint)})
    inpainted = [m for kind, m in masks if kind == "sd-inpaint"]
    assert len(inpainted) == 2 and all(np.array_equal(m, world.edit_region(case.own)) for m in inpainted)
    assert all(m is None for kind, m in masks if kind == "ip2p")
    summary = micro_suite.summary_markdown(pd.DataFrame(rows), config.settings())
    assert f"Protected against: {proxy_editor}+{second} (an ensemble" in summary
    with pytest.raises(ValueError, match="ensemble must be at most the 1 editor"):
        MicroSuiteConfig(world="textured", editors=(str(proxy_editor),), ensemble=2)


def test_micro_bench_budget_curve_on_the_flat_world(tmp_path) -> None:
    """The shipped flat editor at two budgets (uniform noise: no optimisation to wait for): rows for both, and
    ε₅₀ per method and setting."""
    out = tmp_path / "suite"
    argv = ["micro-bench", str(out), "--editors", "micro-ip2p", "--scenes", "1", "--methods", "random",
            "--seeds", "0", "--steps", "1", "--timesteps", "1", "--eps", "4/255,0.06"]
    assert cli.entrypoint(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 1 * 1 * 2 * 2 and set(df["world"]) == {"flat"}       # scene × method × budgets × settings
    assert df.groupby("eps").size().to_dict() == {4 / 255: 2, 0.06: 2}
    records = curve_table(df)                   # one curve per setting (own, unseen), a point per budget
    assert len(records) == 2 and all(r["eps"] == [4 / 255, 0.06] for r in records)
    assert records[0]["fidelity_psnr"][0] > records[0]["fidelity_psnr"][1] + 10     # 4/255 vs 15.3/255 of noise
    summary = (out / "summary.md").read_text()
    assert summary.count("| random | 4/255 |") == 2 and "ε₅₀ [95 % bootstrap]" in summary
