"""``danp-protect bench`` end to end on the tiny editor, and the full-size architectures' sizes.

No assertion depends on timing: only that the report is complete and its numbers are positive.
"""

import json

import pytest

from danp_pipeline.cli import entrypoint
from danp_pipeline.protect.models import full_size_editor


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
        # a photo's work: the setup plus its 4 iterations, each as much as the separately counted one (the
        # first also runs the objective's prepare(): a fraction of a percent here)
        assert res["iterations_flop"] == pytest.approx(4 * res["flop_per_iteration"], rel=0.02)
        assert res["tflop_per_photo"] * 1e12 == pytest.approx(res["setup_flop"] + res["iterations_flop"])
        assert len(res["iteration_s"]) == 1
    # --device meta counts the same work from shapes alone, timing nothing
    meta_out = tmp_path / "meta.json"
    assert entrypoint(["bench", "--arch", "tiny-ip2p", "--resolution", "64", "--timesteps", "2", "--steps", "4",
                       "--device", "meta", "--json", str(meta_out)]) == 0
    meta = json.loads(meta_out.read_text())
    assert meta["device"]["type"] == "meta"
    for name, res in meta["results"].items():
        assert "sec_per_iteration" not in res
        # within 2%: without values, meta takes every data-dependent branch as if all terms were non-zero
        assert res["tflop_per_photo"] == pytest.approx(report["results"][name]["tflop_per_photo"], rel=0.02)
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
