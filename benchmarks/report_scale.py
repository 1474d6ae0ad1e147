"""How long does the run report take, and how much memory, for a large archive?

    python benchmarks/report_scale.py --rows 100000 --json benchmarks/results/cpu/report_scale.json

Writes a manifest of ``--rows`` synthetic rows in parts of ``COMMIT_ROWS`` (as the driver commits them):
2 % error rows over six reasons, PSNR and L∞ spread as protected photos have them, metadata records,
finish times over ten hours, two devices. The photos the report's gallery will sample (the worst PSNR
and the fixed sample, ``--sample``) get real files, originals and protected copies of ``--megapixels``
MP, so that the gallery's decoding is measured too. Then ``danp-protect report``'s own function runs in a
fresh process: its wall time and peak resident memory (ru_maxrss, Python and every import included) are
the result. Targets: ≤ 30 s and ≤ 500 MB for 100 k rows on a 2-core machine. Not a test: timings depend
on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from _support import peak_rss_mb, run_self

REASONS = ("cannot decode: truncated file", "empty file", "too large: 60000000 pixels (limit 40000000)",
           "cannot write output: ConnectionError: 'endpoint' unreachable",
           "no finite gradient in 3 iteration(s): every step skipped",
           "the worker process died 3 times while protecting this photo")


def write_manifest(root: Path, rows: int, seed: int = 0) -> None:
    from danp_pipeline.config import COMMIT_ROWS, AttackConfig, config_json, config_sha256
    from danp_pipeline.manifest import provenance, writer
    from danp_pipeline.manifest.output import Output

    output = Output.open(str(root))
    text = config_json(AttackConfig(), "timbrooks/instruct-pix2pix", None)
    sha = config_sha256(text)
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    meta = json.dumps({"kept": {"exif": 812, "icc": 3144}, "stripped": [], "dropped": []})
    for start in range(0, rows, COMMIT_ROWS):
        batch = []
        for i in range(start, min(rows, start + COMMIT_ROWS)):
            key = f"photos/{i // 1000:05d}/{i:09d}.jpg"
            error = REASONS[i % len(REASONS)] if rng.random() < 0.02 else None
            finished = t0 + timedelta(seconds=i * 0.36 + float(rng.normal(0, 2)))
            batch.append(provenance.make_row(
                source_uri=f"file://{root}/in/{key}", source_key=key, source_sha256=f"{i:064x}", source_bytes=3_000_000,
                width=4000, height=3000, status="error" if error else "ok", error=error,
                output_uri=None if error else f"file://{root}/images/{key}.png",
                output_key=None if error else f"images/{key}.png", output_sha256=None if error else "0" * 64,
                method="danp", model_id="timbrooks/instruct-pix2pix", prompts=["add fire and smoke"],
                config_json=text, config_sha256=sha, linf_levels=None if error else int(rng.integers(6, 9)),
                psnr_db=None if error else float(rng.normal(35.5, 0.8)), duration_s=float(rng.gamma(4, 2.5)),
                device="cuda:0 NVIDIA H100" if i % 2 else "cuda:1 NVIDIA H100",
                started_at=finished - timedelta(seconds=10),
                finished_at=finished, output_format="png", output_bytes=18_000_000, linf_bounded=True,
                metadata=None if error else meta, run_id=f"run{i // 40_000}"))
        writer.write_part(output.fs, output.manifest_dir, batch)


def write_gallery_photos(root: Path, sample: int, megapixels: float) -> int:
    """Real originals and protected copies for the rows the report will sample."""
    from PIL import Image

    from danp_pipeline.manifest.output import Output
    from danp_pipeline.report import gallery, summary

    output = Output.open(str(root))
    rows = gallery.sample(summary.summarize(output).table, sample)
    h = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = int(h * 4 / 3)
    rng = np.random.default_rng(1)
    base = (np.add.outer(np.linspace(40, 200, h), np.linspace(0, 50, w))[..., None] + np.array([0, 10, 20]))
    for row in rows:
        original = np.clip(base + rng.integers(-6, 7, (1, w, 3)), 0, 255).astype(np.uint8)
        protected = np.clip(original.astype(np.int16) + rng.integers(-8, 9, original.shape, dtype=np.int16), 0,
                            255).astype(np.uint8)
        for uri, pixels, fmt in ((row["source_uri"], original, "JPEG"), (row["output_uri"], protected, "PNG")):
            path = Path(uri.removeprefix("file://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            options = {"quality": 92} if fmt == "JPEG" else {"compress_level": 1}
            Image.fromarray(pixels).save(path, format=fmt, **options)
    return len(rows)


def measure(root: str, sample: int) -> dict:
    from danp_pipeline.report import write_report

    clock = time.perf_counter()
    write_report(root, sample=sample)
    return {"report_s": round(time.perf_counter() - clock, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=12, help="gallery photos (default 12, the report's default)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the gallery's photos")
    parser.add_argument("--json", default=None, metavar="OUT.json")
    parser.add_argument("--measure", default=None, metavar="OUTPUT", help=argparse.SUPPRESS)   # the child process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.sample)))
        return 0

    with tempfile.TemporaryDirectory(prefix="danp-report-") as tmp:
        root = Path(tmp)
        clock = time.perf_counter()
        write_manifest(root, args.rows)
        photos = write_gallery_photos(root, args.sample, args.megapixels)
        setup_s = time.perf_counter() - clock
        result = run_self(__file__, "--measure", str(root), "--sample", str(args.sample), what="report")
        parts = len(list((root / "manifest").glob("part-*.parquet")))
    result = {"rows": args.rows, "parts": parts, "gallery_photos": photos, "megapixels": args.megapixels,
              "setup_s": round(setup_s, 1), **result, "targets": {"report_s": 30, "peak_rss_mb": 500}}
    print(json.dumps(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
