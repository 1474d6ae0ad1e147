"""The run report: its numbers equal the manifest's, its gallery exists, a browser renders it."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import bad_inputs, fast_config, good_photos, protect_rows, read_files
from PIL import Image

from danp_pipeline import cli
from danp_pipeline.job import progress
from danp_pipeline.manifest.output import Output
from danp_pipeline.manifest.provenance import error_reason
from danp_pipeline.report import gallery, summary, write_report

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars"]


@pytest.fixture(scope="module")
def protected_output(tmp_path_factory) -> Path:
    """An OUTPUT made by the job's own stages (tiny editor): real photos ok, broken files as error rows."""
    root = tmp_path_factory.mktemp("report")
    cfg = fast_config(str(root / "in"), str(root / "out"))
    protect_rows(cfg, read_files(cfg, {**good_photos(), **{k: v for k, (v, _) in bad_inputs().items()}}))
    return root / "out"


def _card(html: str, label: str) -> int:
    return int(re.search(rf"<b>(\d+)</b>{label}", html).group(1))


def test_the_report_shows_the_manifest_s_counts_errors_and_an_existing_gallery(protected_output):
    rows = Output.open(str(protected_output)).current_rows()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    assert len(ok) == len(good_photos()) and len(errors) == len(bad_inputs())

    uri = write_report(str(protected_output), sample=3)

    page = protected_output / "report" / "index.html"
    assert uri == f"file://{page}"
    html = page.read_text()
    assert (_card(html, "protected"), _card(html, "errors")) == (len(ok), len(errors))
    assert "empty file" in html and "bad/empty.jpg" in html            # a reason and an example key
    images = re.findall(r'<img src="(thumbs/[^"]+)"', html)
    assert len(images) == 3 * 3                                         # original, protected, δ for 3 photos
    for name in images:
        with Image.open(page.parent / name) as img:
            assert max(img.size) <= summary_thumb_px()
    worst = min(ok, key=lambda r: r["psnr_db"])
    first_tile = html.index('class="tile"')
    assert html.index(worst["source_key"], first_tile) < html.index('class="tile"', first_tile + 1)
    assert html.count("data:image/png;base64,") == 3                   # fidelity, throughput, seconds/photo
    assert "L∞ ≤ 8: kept by every photo" in html


def summary_thumb_px() -> int:
    from danp_pipeline.config import REPORT_THUMB_PX

    return REPORT_THUMB_PX


def test_the_summary_counts_reasons_and_fidelity_from_the_manifest(protected_output):
    s = summary.summarize(Output.open(str(protected_output)))
    assert s.counts == {"ok": len(good_photos()), "error": len(bad_inputs())}
    assert sum(e.count for e in s.errors) == len(bad_inputs())
    assert any("empty file" in e.reason for e in s.errors)
    (png,) = s.fidelity
    assert png.bounded and png.n == len(good_photos()) and png.bound_levels == 8 and png.over_bound == 0
    assert png.linf.max() <= 8 and png.psnr.min() > 30
    (config,) = s.configurations
    assert (config.model, config.method, config.eps) == ("tiny-ip2p", "danp", 0.03)


def test_the_report_imports_no_torch(protected_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(protected_output, out)
    code = ("import sys; from danp_pipeline.report import write_report; "
            f"write_report({str(out)!r}, sample=1); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_reasons_group_rows_that_fail_the_same_way():
    assert error_reason("no finite gradient in 3 iteration(s) of 100") == \
        error_reason("no finite gradient in 12 iteration(s) of 100")
    assert error_reason("cannot write output: 'a.png' exists") == error_reason("cannot write output: 'b.png' exists")
    assert error_reason("empty file") != error_reason("not an image")
    assert error_reason(None) == error_reason("") == "unknown error"


def test_the_delta_map_shows_where_the_perturbation_went():
    original = np.full((32, 48, 3), 128, np.uint8)
    protected = original.copy()
    protected[8:16, 16:24] += 4                     # δ = 4 levels in one 8x8 block only
    magnitude = gallery.delta_magnitude(original, protected)
    assert magnitude.shape == (4, 6)
    assert magnitude[1, 2] == pytest.approx(4.0) and np.count_nonzero(magnitude) == 1
    rng = np.random.default_rng(0)
    noisy = np.clip(original.astype(int) + rng.integers(-8, 9, original.shape), 0, 255).astype(np.uint8)
    whole = gallery.delta_magnitude(original[:30], noisy[:30], strip_blocks=100)   # 30 rows: a partial block
    assert np.allclose(gallery.delta_magnitude(original[:30], noisy[:30], strip_blocks=1), whole)
    assert whole.shape == (4, 6) and 4 < whole.mean() < 6           # RMS of uniform -8..8 ≈ 5.1 levels


def test_the_gallery_sample_is_fixed_worst_first_and_nested():
    rows = [{"source_uri": f"s3://b/{i}.jpg", "status": "ok", "psnr_db": 40.0 + (i % 7)} for i in range(20)]
    rows[13]["psnr_db"] = 31.0
    table = pa.Table.from_pylist(rows + [{"source_uri": "s3://b/bad.jpg", "status": "error", "psnr_db": None}])
    five, six = gallery.sample(table, 5), gallery.sample(table, 6)
    assert five[0]["source_uri"] == "s3://b/13.jpg"
    assert [r["source_uri"] for r in five] == [r["source_uri"] for r in six[:5]]
    assert gallery.sample(table, 5) == five and all(r["status"] == "ok" for r in six)


def test_throughput_bins_cover_the_run():
    assert summary._nice_width(0.3) == 1 and summary._nice_width(700) == 900 and summary._nice_width(2e5) == 259200


def test_report_of_an_output_without_a_manifest_exits_2_in_one_line(tmp_path, caplog):
    args = cli.command_parser("report").parse_args([str(tmp_path)])
    assert cli.run_command("report", args) == 2
    assert "no manifest under" in caplog.text


def test_ray_progress_reaches_the_console_only_on_a_terminal():
    import ray.data  # noqa: F401

    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    assert console, "Ray Data's console handler"
    ours = logging.StreamHandler()                  # e.g. a test's capture, or a handler the user attached
    logging.getLogger("ray.data").addHandler(ours)
    before = console[0].level
    try:
        progress.ray_console(interactive=True)
        assert console[0].level == before
        progress.ray_console(interactive=False)
        assert console[0].level == logging.WARNING and ours.level == logging.NOTSET
    finally:
        console[0].setLevel(before)
        logging.getLogger("ray.data").removeHandler(ours)


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_a_headless_browser_renders_the_report(protected_output, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium; none could be installed)")
    page = protected_output / "report" / "index.html"
    if not page.exists():
        write_report(str(protected_output), sample=3)
    shot = tmp_path / "report.png"
    result = subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                             "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20                                   # text, tables and charts, not a blank page
    assert (pixels.mean(axis=2) < 200).mean() > 0.02          # a visible share of the page is ink
