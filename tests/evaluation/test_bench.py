"""``danp-protect bench`` end to end on the tiny editor, the counting of its work (one iteration per kind,
ensembles), and the full-size architectures' sizes.

No assertion depends on timing: only that the report is complete, its numbers are positive, and counts
are equal to the FLOP where they must be.
"""

import json

import pytest
import torch

from danp_pipeline.cli import entrypoint
from danp_pipeline.config import ACTOR_BYTES_PER_PIXEL, AttackConfig, profile_config
from danp_pipeline.evaluation.bench import build_editor, count_work
from danp_pipeline.evaluation.flops import FlopTable
from danp_pipeline.evaluation.memory import weights_bytes
from danp_pipeline.protect.models import full_size_editor

META = torch.device("meta")


def test_bench_reports_both_paths_as_json(tmp_path):
    out = tmp_path / "bench.json"
    code = entrypoint(["bench", "--arch", "tiny-ip2p", "--resolution", "64", "--timesteps", "2", "--iterations", "1",
                       "--steps", "4", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["arch"] == "tiny-ip2p" and report["device"]["type"] == "cpu"
    assert report["resolution"] == [64, 64] and report["batch_size"] == 1 and report["steps"] == 4
    assert set(report["results"]) == {"reference", "fast"}
    for name, res in report["results"].items():
        assert res["config"]["path"] == name
        for key in ("sec_per_iteration", "cpu_sec_per_iteration", "sec_per_photo", "photos_per_hour",
                    "peak_memory_bytes", "flop_per_iteration", "achieved_tflops", "setup_flop", "tflop_per_photo"):
            assert res[key] > 0, (name, key)
        # a photo's work: the setup plus its 4 iterations; the one timed here is the first, which also derives
        # the clean branch (the objective's prepare()): a few percent more than each of the others
        assert 0.95 * 4 * res["flop_per_iteration"] < res["iterations_flop"] < 4 * res["flop_per_iteration"]
        assert res["traced_iterations"] == 2               # the first, and one of the three alike
        assert res["tflop_per_photo"] * 1e12 == pytest.approx(res["setup_flop"] + res["iterations_flop"])
        assert len(res["iteration_s"]) == 1
    assert report["memory"]["weights_bytes"] > 0 and report["memory"]["peak"].startswith("peak resident memory")
    # --device meta counts the same work from shapes alone, timing nothing
    meta_out = tmp_path / "meta.json"
    assert entrypoint(["bench", "--arch", "tiny-ip2p", "--resolution", "64", "--timesteps", "2", "--steps", "4",
                       "--device", "meta", "--json", str(meta_out)]) == 0
    meta = json.loads(meta_out.read_text())
    assert meta["device"]["type"] == "meta"
    for name, res in meta["results"].items():
        assert "sec_per_iteration" not in res
        # the timed run counts its work on the meta device too: the same count
        assert res["tflop_per_photo"] == report["results"][name]["tflop_per_photo"]
    # same work on both paths, except the VAE: the reference encodes (and backpropagates) once per timestep
    assert report["results"]["reference"]["flop_per_iteration"] > report["results"]["fast"]["flop_per_iteration"]
    assert report["speedup_fast_over_reference"] > 0


def test_bench_refuses_an_unknown_architecture_and_a_method_without_iterations():
    with pytest.raises(SystemExit):
        entrypoint(["bench", "--arch", "sd99"])
    assert entrypoint(["bench", "--method", "random", "--resolution", "64"]) == 2


@pytest.mark.parametrize("kind, unet_params", [("sd", 859_520_964), ("ip2p", 859_532_484)])
def test_full_size_architectures_have_the_published_sizes(kind, unet_params):
    bundle = full_size_editor(kind, device="meta")     # no memory, no weights: shapes only
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(bundle.unet) == unet_params             # SD v1.5 UNet; InstructPix2Pix adds 4 input channels
    assert count(bundle.vae) == 83_653_863
    assert count(bundle.text_encoder) == 123_060_480     # CLIP ViT-L/14 text tower
    assert bundle.unet.config.in_channels == (8 if kind == "ip2p" else 4)
    # float32 weights, and the text encoder's 77 int64 position ids
    assert weights_bytes(bundle) == 4 * (unet_params + 83_653_863 + 123_060_480) + 77 * 8


@pytest.mark.parametrize("kind, unet_params, second_encoder", [
    ("sdxl", 2_567_463_684, 694_659_840),         # SDXL base 1.0; OpenCLIP ViT-bigG/14 with its projection
    ("sdxl-ip2p", 2_567_475_204, 694_659_840),    # 4 more input channels
    ("sd-inpaint", 859_535_364, None),             # SD 1.5 inpainting: 5 more input channels
])
def test_new_full_size_architectures_have_the_published_sizes(kind, unet_params, second_encoder):
    bundle = full_size_editor(kind, device="meta")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(bundle.unet) == unet_params and count(bundle.vae) == 83_653_863
    assert count(bundle.text_encoder) == 123_060_480
    assert (None if bundle.text_encoder_2 is None else count(bundle.text_encoder_2)) == second_encoder


def test_bench_counts_sdxl_at_1024_on_the_meta_device(tmp_path):
    """The full-size SDXL architecture, built on the meta device (no memory, no weights), traced once per kind of
    iteration on the fast path (--device meta's default)."""
    out = tmp_path / "sdxl.json"
    assert entrypoint(["bench", "--arch", "sdxl", "--resolution", "1024", "--device", "meta", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model_id"] == "sdxl-arch" and report["resolution"] == [1024, 1024]
    (name, res), = report["results"].items()
    assert name == "fast" and res["traced_iterations"] == 2
    # 100 iterations × 10 timesteps of a ~2.6 B-parameter UNet's forward and backward on 128² latents
    assert 2.0e4 < res["tflop_per_photo"] < 4.0e4


def test_bench_times_a_tiny_inpainting_editor_and_counts_its_masked_encodes(tmp_path):
    arch = "tiny-sd-inpaint"
    out = tmp_path / "bench.json"
    assert entrypoint(["bench", "--arch", arch, "--resolution", "64", "--timesteps", "2", "--iterations", "1",
                       "--steps", "2", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model_id"] == arch and set(report["results"]) == {"reference", "fast"}
    for res in report["results"].values():
        assert res["sec_per_iteration"] > 0 and res["flop_per_iteration"] > 0


FOUR = ["put her in a prison cell", "make it snow", "turn him into a clown", "add fire in the background"]


def photo(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo x0 and a protected version x at the budget's corners."""
    x0 = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x0, (x0 + 0.03 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)


@pytest.mark.parametrize("profile, changes, prompts", [
    ("paper", {}, 1),
    ("fast", {}, 1),                                             # balance_every=5, half the timesteps
    ("fast", {"prompt_subset": 2}, 4),
    ("paper", {"noise": "fixed", "balance_every": 3}, 1),
    ("paper", {"timestep_subset": 2}, 1),
])
def test_one_traced_iteration_per_kind_counts_what_tracing_every_iteration_counts(profile, changes, prompts):
    cfg = profile_config(profile, AttackConfig(steps=40 if profile == "fast" else 7, num_timesteps=4,
                                               resolution=64)).replace(**changes)
    assert profile == "paper" or cfg.balance_every == 5
    bundle = build_editor("tiny-ip2p", META, "auto")
    x0, x = photo()
    lists = [FOUR[:prompts]]
    short, every = (count_work(bundle, cfg, x0, x, lists, [0], every=flag) for flag in (False, True))
    assert sorted(short.traced) == ([0, 1, cfg.balance_every] if cfg.balance_every > 1 else [0, 1])
    assert len(every.traced) == cfg.steps
    assert [short.flop(i) for i in range(cfg.steps)] == [every.flop(i) for i in range(cfg.steps)]
    assert short.photo(cfg.steps, 1)["iterations_flop"] == every.photo(cfg.steps, 1)["iterations_flop"]
    kinds = {every.flop(i) for i in range(1, cfg.steps)}
    assert len(kinds) == (2 if cfg.balance_every > 1 else 1)       # a measuring and a single-backward iteration


def test_fixed_noise_on_a_subset_of_timesteps_is_traced_every_iteration():
    cfg = AttackConfig(steps=4, num_timesteps=4, resolution=64, noise="fixed", timestep_subset=2)
    bundle = build_editor("tiny-ip2p", META, "auto")
    x0 = torch.rand(1, 3, 64, 64)
    assert len(count_work(bundle, cfg, x0, x0, [FOUR[:1]], [0]).traced) == 4     # its clean cache fills at random


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_replaying_distinct_ops_on_meta_counts_what_the_full_trace_counts(path):
    # three kinds of iteration: the first, a single backward of the balanced terms, a measuring one
    cfg = AttackConfig(steps=3, num_timesteps=2, resolution=64, balance_every=2, path=path)
    bundle = build_editor("tiny-ip2p", META, "auto")
    x0, x = photo()
    table = FlopTable()
    replayed = count_work(bundle, cfg, x0, x, [FOUR[:1]], [0], table=table)
    full = count_work(bundle, cfg, x0, x, [FOUR[:1]], [0], replay=False)      # FlopCounterMode on every op
    assert sorted(full.traced) == [0, 1, 2] and len(set(full.traced.values())) == 3
    assert (replayed.setup_flop, replayed.traced) == (full.setup_flop, full.traced)
    assert table.replayed > table.traced / 2 > 0


def test_an_ensembles_count_is_the_sum_of_each_editors_alone():
    cfg = AttackConfig(steps=3, num_timesteps=2, resolution=64)
    editors = [build_editor("tiny-ip2p", META, "auto", seed=0), build_editor("tiny-sd", META, "auto", seed=1)]
    x0, x = photo()
    both = count_work(editors, cfg, x0, x, [FOUR[:1]], [0])
    alone = [count_work(e, cfg, x0, x, [FOUR[:1]], [0]) for e in editors]
    assert both.setup_flop == sum(w.setup_flop for w in alone) > 0        # the prompts, through each text encoder
    assert both.traced == {i: sum(w.traced[i] for w in alone) for i in (0, 1)}
    assert both.photo(3, 1)["iterations_flop"] == sum(w.photo(3, 1)["iterations_flop"] for w in alone)


def test_counting_on_meta_traces_two_iterations_whatever_the_steps_and_each_distinct_op_once():
    bundle = build_editor("tiny-ip2p", META, "auto")
    passes = []
    bundle.unet.register_forward_hook(lambda *_: passes.append(1))
    x0, x = photo()
    table = FlopTable()

    def count(steps):
        passes.clear()
        work = count_work(bundle, AttackConfig(steps=steps, num_timesteps=4, resolution=64), x0, x, [FOUR[:1]], [0],
                          table=table)
        return work, len(passes)

    (few, few_passes), distinct = count(4), len(table.entries)
    many, many_passes = count(100)
    # the first iteration and one of the rest, each one UNet pass capturing attention (the 4 timesteps in one
    # call) and one clean pass: 4 traced passes for 100 iterations as for 4
    assert few_passes == many_passes == 4
    assert len(table.entries) == distinct            # the second count replayed every op the first one traced
    assert many.traced == few.traced
    assert many.photo(100, 1)["iterations_flop"] == many.traced[0] + 99 * many.traced[1]


def test_bench_counts_an_ensemble_and_its_memory(tmp_path):
    out = tmp_path / "ensemble.json"
    assert entrypoint(["bench", "--arch", "tiny-ip2p", "--arch", "tiny-sd", "--resolution", "64", "--timesteps", "2",
                       "--steps", "3", "--path", "fast", "--device", "meta", "--model-weights", "2,1",
                       "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["archs"] == ["tiny-ip2p", "tiny-sd"] and report["model_id"] == "tiny-ip2p + tiny-sd"
    res = report["results"]["fast"]
    assert len(res["tflop_per_photo_by_editor"]) == 2
    assert res["tflop_per_photo"] == pytest.approx(sum(res["tflop_per_photo_by_editor"]), rel=1e-12)
    memory = report["memory"]
    held = [weights_bytes(build_editor(arch, META, "auto")) for arch in ("tiny-ip2p", "tiny-sd")]
    assert memory["weights_bytes_by_editor"] == held and memory["weights_bytes"] == sum(held)
    assert memory["estimate_bytes"] == sum(held) + 64 * 64 * ACTOR_BYTES_PER_PIXEL
    assert entrypoint(["bench", "--arch", "tiny-ip2p", "--arch", "tiny-sd", "--model-weights", "2,1,1",
                       "--resolution", "64", "--device", "meta"]) == 2      # three weights for two editors
