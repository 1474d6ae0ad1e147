"""How fast the Ray job protects photos, and how its memory behaves as the archive grows.

    python benchmarks/pipeline_scale.py demo            # 8 photos, tiny-ip2p, resolution 64, 10 steps
    python benchmarks/pipeline_scale.py scale 50 500    # N small photos, 1 step, 1 timestep

Each measurement runs ``pipeline.run`` in a fresh Python process that starts its own local Ray, so
peak figures belong to that run alone. Reported per run: wall seconds and photos/hour over the
whole run (Ray start and model load included) and in steady state (between the first and the last
photo finished); the driver's RSS after imports and its peak (ru_maxrss); and the peak summed RSS
of the driver plus every process it started (Ray's GCS, raylet, workers, the actor), sampled every
0.5 s from /proc. Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path

from _support import TreeSampler, peak_rss_mb, rss_mb, run_self

SIZES = [(64, 48), (48, 64), (80, 60), (64, 64)]
NAMES = ["astronaut", "chelsea", "coffee", "camera", "rocket"]


def make_photos(directory: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = [np.asarray(getattr(data, name)()) for name in NAMES]
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)]).resize(SIZES[i % len(SIZES)])
        path = directory / f"batch{i // 100:02d}" / f"photo{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        path.write_bytes(buf.getvalue())


def one(n: int, steps: int, timesteps: int, resolution: int) -> dict:
    """Run the job once in this process and return its figures."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from danp_pipeline.config import AttackConfig, PipelineConfig
    from danp_pipeline.job import pipeline
    from danp_pipeline.manifest.output import Output

    work = Path(tempfile.mkdtemp(prefix="danp-bench-"))
    make_photos(work / "in", n)
    driver_before = rss_mb()
    sampler = TreeSampler()
    sampler.start()
    cfg = PipelineConfig(input_uri=str(work / "in"), output_uri=str(work / "out"), model="tiny-ip2p",
                         attack=AttackConfig(resolution=resolution, steps=steps, num_timesteps=timesteps))
    summary = pipeline.run(cfg)
    sampler.stop.set()
    rows = Output.open(cfg.output_uri).read().to_pylist()
    finished = sorted(r["finished_at"] for r in rows if r["status"] == "ok")
    span = (finished[-1] - finished[0]).total_seconds() if len(finished) > 1 else 0.0
    return {
        "photos": n, "ok": summary.ok, "errors": summary.errors, "steps": steps, "timesteps": timesteps,
        "resolution": resolution, "seconds": round(summary.seconds, 1),
        "photos_per_hour": round(summary.photos_per_hour),
        "steady_photos_per_hour": round((len(finished) - 1) * 3600 / span) if span else None,
        "mean_photo_s": round(sum(r["duration_s"] for r in rows) / len(rows), 3),
        "driver_rss_after_imports_mb": round(driver_before),
        "driver_peak_rss_mb": round(peak_rss_mb()),
        "job_tree_peak_rss_mb": round(sampler.peak_mb),
    }


def measure(n: int, steps: int, timesteps: int, resolution: int) -> dict:
    return run_self(__file__, "_one", str(n), str(steps), str(timesteps), str(resolution),
                    what=f"run of {n} photos")


def table(results: list[dict]) -> str:
    keys = list(results[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["_one"]:
        print(json.dumps(one(*(int(a) for a in argv[1:5]))))
        return
    load = os.getloadavg()[0]
    if argv[:1] == ["demo"]:
        results = [measure(8, 10, 10, 64)]
    elif argv[:1] == ["scale"]:
        results = [measure(int(n), 1, 1, 64) for n in (argv[1:] or ["50", "500"])]
    else:
        raise SystemExit(__doc__)
    print(f"load average at start: {load:.1f}, at end: {os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs")
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
