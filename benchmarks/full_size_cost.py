"""Seconds and peak memory of protecting one large photo with δ at full resolution.

Protects a 6000×4000 (24 MP) photo with the tiny editor (CPU) and reports the wall time of the
protection, the time per PGD iteration, and the process's peak RSS above what it held before, in
units of one full-size float32 copy of the photo (3 × H × W × 4 bytes). JSON to benchmarks/results/.

    python benchmarks/full_size_cost.py --width 6000 --height 4000 --steps 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _support import rss_bytes

from danp_pipeline.config import AttackConfig
from danp_pipeline.evaluation.memory import peak_memory
from danp_pipeline.imaging.codec import decode_image
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.models import load_editor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--resolution", type=int, default=128, help="the editor's size (long side)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/cpu/full_size_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (args.height // 50, args.width // 50, 3), dtype=np.uint8)
    from PIL import Image

    photo = np.asarray(Image.fromarray(small).resize((args.width, args.height), Image.Resampling.BICUBIC))
    buf = __import__("io").BytesIO()
    Image.fromarray(photo).save(buf, format="PNG", compress_level=1)
    decoded = decode_image(buf.getvalue(), max_pixels=args.width * args.height)
    del photo, buf
    bundle = load_editor("tiny-ip2p", device="cpu")
    results = {}
    for steps in (1, args.steps):           # two step counts: per-iteration time without the setup
        cfg = AttackConfig(steps=steps, num_timesteps=args.timesteps, resolution=args.resolution)
        before = rss_bytes()
        with peak_memory(torch.device("cpu")) as peak:
            start = time.perf_counter()
            result = Immunizer(bundle, cfg).protect([decoded], "put her in a prison cell")[0]
            seconds = time.perf_counter() - start
        results[steps] = {"seconds": seconds, "peak_rss_bytes": peak.bytes(), "rss_before_bytes": before,
                          "linf_levels": result.linf_levels, "editor_size": result.editor_size}
    copy = 3 * args.width * args.height * 4
    per_iteration = (results[args.steps]["seconds"] - results[1]["seconds"]) / max(args.steps - 1, 1)
    report = {"photo": [args.width, args.height], "resolution": args.resolution, "timesteps": args.timesteps,
              "threads": args.threads, "runs": results, "sec_per_iteration": per_iteration,
              "setup_and_io_s": results[1]["seconds"] - per_iteration,
              "float32_copy_bytes": copy,
              "peak_above_start_in_copies": (results[args.steps]["peak_rss_bytes"]
                                             - results[args.steps]["rss_before_bytes"]) / copy}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
