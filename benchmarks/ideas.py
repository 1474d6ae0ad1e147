"""Measure each fast-path idea against the reference path in one run, iterations interleaved.

    python benchmarks/ideas.py --arch tiny-ip2p --resolution 256 --threads 1 --iterations 3 --out ideas.json
    python benchmarks/ideas.py --arch ip2p --device cuda --precision bf16 --iterations 10 --variants all

Each variant is an AttackConfig change on top of the paper's settings (100 steps, 10 timesteps, 1 prompt).
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from danp_pipeline.bench import benchmark, build_editor, format_report
from danp_pipeline.config import AttackConfig

VARIANTS: dict[str, dict] = {
    "reference": {"path": "reference"},
    "fast-1-timestep-per-call": {"timestep_batch": 1},     # VAE once per iteration, UNet calls not batched
    "fast": {},                                            # the default: all timesteps in one UNet call
    "fast+channels_last": {"channels_last": True},
    "fast+gradient_checkpointing": {"gradient_checkpointing": True},
    "fast+vae_recompute": {"vae_recompute": True},
    "fast+compile": {"compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny-ip2p")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default="reference,fast-1-timestep-per-call,fast,fast+channels_last,"
                        "fast+gradient_checkpointing,fast+vae_recompute",
                        help=f"comma-separated subset of {list(VARIANTS)}, or 'all'")
    parser.add_argument("--no-flops", dest="flops", action="store_false")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    base = AttackConfig(resolution=args.resolution, precision=args.precision).validate()
    bundle = build_editor(args.arch, torch.device(args.device), args.precision)
    report = benchmark(bundle, {n: base.replace(**VARIANTS[n]) for n in names}, batch_size=args.batch_size,
                       iterations=args.iterations, warmup=args.warmup, count_flops=args.flops)
    report["arch"] = args.arch
    ref = report["results"].get("reference")
    if ref:
        for res in report["results"].values():
            res["speedup_over_reference"] = ref["sec_per_iteration"] / res["sec_per_iteration"]
            res["cpu_speedup_over_reference"] = ref["cpu_sec_per_iteration"] / res["cpu_sec_per_iteration"]
    print(format_report(report))
    for name, res in report["results"].items():
        print(f"  {name:<30} median {res['sec_per_iteration']:.3f} s/it (cpu {res['cpu_sec_per_iteration']:.3f} s)"
              f"  x{res.get('speedup_over_reference', float('nan')):.2f} vs reference"
              f"  all: {', '.join(f'{t:.2f}' for t in res['iteration_s'])}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
