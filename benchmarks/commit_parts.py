"""How big should the manifest's parts be? Planning reads every part; the driver commits them.

    python benchmarks/commit_parts.py --rows 100000 --part-rows 4,100,1000,10000 \
        --json benchmarks/results/cpu/commit_parts.json

For each part size, a manifest of ``--rows`` synthetic rows is written as parts of that many rows
(4 rows is a part per 4-photo batch, as actors committed before the driver did), then the job's own
planning reads it back (``planning.plan`` with no listing: every part read by Ray tasks, the rows
joined per hash partition, as every run does before protecting anything), on a local Ray of
``--cpus`` CPUs. Reported per size: parts, seconds to write them, seconds to plan. The committer's
parts for an archive follow from its rule: ceil(rows / commit_rows) when photos finish faster than
commit_rows per commit_seconds. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


def write_manifest(root: Path, rows: int, part_rows: int) -> tuple[int, float]:
    from danp_pipeline.manifest import provenance, writer
    from danp_pipeline.manifest.output import Output

    output = Output.open(str(root))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock, parts = time.perf_counter(), 0
    for start in range(0, rows, part_rows):
        batch = [provenance.make_row(source_uri=f"s3://archive/photos/{i // 1000:05d}/{i:09d}.jpg",
                                     source_key=f"photos/{i // 1000:05d}/{i:09d}.jpg", status="ok",
                                     config_sha256="c" * 64, source_sha256=f"{i:064x}", source_bytes=3_000_000,
                                     finished_at=t0 + timedelta(seconds=i), prompts=["add fire and smoke"],
                                     output_uri=f"file://{root}/images/{i:09d}.png")
                 for i in range(start, min(rows, start + part_rows))]
        writer.write_part(output.fs, output.manifest_dir, batch)
        parts += 1
    return parts, time.perf_counter() - clock


def plan_seconds(root: Path) -> float:
    from danp_pipeline.config import PipelineConfig
    from danp_pipeline.job import planning
    from danp_pipeline.job.identity import Run

    cfg = PipelineConfig(input_uri="s3://archive/photos", output_uri=str(root), model="tiny-ip2p")
    clock = time.perf_counter()
    planning.plan(None, Run(cfg, "bench", "{}", "c" * 64), prompts=None)
    return time.perf_counter() - clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--part-rows", default="4,100,1000,10000", help="comma-separated part sizes")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", default=None, metavar="OUT.json")
    args = parser.parse_args(argv)

    import ray

    from danp_pipeline.job.pipeline import SLOW_START_ENV

    for name, value in SLOW_START_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    for part_rows in (int(p) for p in args.part_rows.split(",")):
        root = Path(tempfile.mkdtemp(prefix=f"danp-parts-{part_rows}-"))
        parts, write_s = write_manifest(root, args.rows, part_rows)
        seconds = plan_seconds(root)
        results.append({"rows": args.rows, "part_rows": part_rows, "parts": parts, "write_s": round(write_s, 1),
                        "plan_s": round(seconds, 1)})
        sys.stdout.write(json.dumps(results[-1]) + "\n")
        sys.stdout.flush()
        shutil.rmtree(root, ignore_errors=True)
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
