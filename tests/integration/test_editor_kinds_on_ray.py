"""`danp-protect run` on Ray against SDXL and inpainting editors saved to disk, alone and in an ensemble of
kinds: the photo ends as an ok row with its protected PNG, within the budget, and the output verifies. The
same without Ray, per kind: tests/job/test_worker.py."""

from __future__ import annotations

import pytest
from helpers import FAST_ARGS, FAST_ATTACK, check_linf, encode, photo

from danp_pipeline import cli, storage
from danp_pipeline.manifest import provenance
from danp_pipeline.manifest.output import Output
from danp_pipeline.protect.models import load_editor


@pytest.mark.integration
@pytest.mark.parametrize("models", [("sdxl",), ("sdxl-ip2p",), ("sd-inpaint",), ("tiny-ip2p", "sdxl")],
                         ids=["sdxl", "sdxl-ip2p", "sd-inpaint", "ensemble-ip2p+sdxl"])
def test_run_protects_against_new_editor_kinds_saved_to_disk(tmp_path, ray_local, models):
    paths = []
    for name in models:
        if name.startswith("tiny-"):
            paths.append(name)
            continue
        load_editor(f"tiny-{name}").save_pretrained(tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "in").mkdir()
    files = {"a.jpg": encode(photo("astronaut", (72, 48)), "JPEG")}
    for key, data in files.items():
        (tmp_path / "in" / key).write_bytes(data)
    out = tmp_path / "out"
    models_args = [arg for path in paths for arg in ("--model", path)]
    assert cli.entrypoint(["run", str(tmp_path / "in"), str(out), *models_args, *FAST_ARGS[2:]]) == 0
    fs, root = storage.filesystem(str(out))
    rows = {r["source_key"]: r for r in provenance.read_manifest(fs, Output(fs, root).manifest_dir).to_pylist()}
    assert sorted(rows) == sorted(files)
    for key, row in rows.items():
        assert row["status"] == "ok", row["error"]
        assert row["model_id"] == "+".join(paths) and row["output_uri"].startswith(f"file://{out}/images/{key}")
        data = fs.cat_file(row["output_uri"])
        assert 1 <= check_linf(files[key], data, FAST_ATTACK.eps) == row["linf_levels"] <= FAST_ATTACK.linf_levels_bound
    assert cli.entrypoint(["verify", str(out)]) == 0
