"""Measure each fast-path idea against the reference path in one run, iterations interleaved.

    python benchmarks/ideas.py --arch tiny-ip2p --resolution 256 --threads 1 --iterations 3 --out ideas.json
    python benchmarks/ideas.py --arch ip2p --device cuda --precision bf16 --iterations 10 --variants all
    python benchmarks/ideas.py --resolution 64 --variants reference,fast --breakdown   # where the time goes

Each variant is an AttackConfig change on top of the paper's settings (100 steps, 10 timesteps, 1 prompt).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from danp_pipeline.config import AttackConfig
from danp_pipeline.evaluation.bench import benchmark, build_editor, format_report
from danp_pipeline.protect.attention import AttentionStore, capture_cross_attention
from danp_pipeline.protect.diffusion import (
    encode_mean,
    encode_prompts,
    latents_and_condition,
    predict_noise,
)
from danp_pipeline.protect.models import EditorBundle

VARIANTS: dict[str, dict] = {
    "reference": {"path": "reference"},
    "fast-1-timestep-per-call": {"timestep_batch": 1},     # VAE once per iteration, UNet calls not batched
    "fast": {},                                            # the default: all timesteps in one UNet call
    "fast+channels_last": {"channels_last": True},
    "fast+gradient_checkpointing": {"gradient_checkpointing": True},
    "fast+vae_recompute": {"vae_recompute": True},
    "fast+compile": {"compile": True},
}


def breakdown(bundle: EditorBundle, cfg: AttackConfig, batch_size: int, repeats: int = 3) -> dict[str, float]:
    """Median seconds of the two parts of an iteration, timed alone: the VAE (encode + one backward per
    loss term) and the UNet work of one timestep (forward with capture, clean forward, one backward per
    term to the UNet input), for batch_size photos and for batch_size × |𝒯| in one call."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, cfg.resolution, cfg.resolution, generator=gen).to(bundle.device)
    prompts = encode_prompts(bundle, [["make it snow"]] * batch_size)
    sync = torch.cuda.synchronize if bundle.device.type == "cuda" else (lambda: None)

    def median(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def vae() -> None:
        leaf = x.clone().requires_grad_(True)
        mean = encode_mean(bundle, leaf)
        for j in range(2):
            torch.autograd.grad(mean, leaf, torch.ones_like(mean), retain_graph=j == 0)

    def unet(k: int):
        with torch.no_grad():
            z, cond = latents_and_condition(bundle, encode_mean(bundle, x))
        z, cond = z.repeat(k, 1, 1, 1), None if cond is None else cond.repeat(k, 1, 1, 1)
        t = torch.full((len(z),), bundle.num_train_timesteps // 2, device=bundle.device)
        embeds = prompts.embeds.repeat(k, 1, 1)

        def run() -> None:
            leaf = z.detach().requires_grad_(True)
            store = AttentionStore()
            store.begin(tuple(z.shape[-2:]), prompts.token_weights.repeat(k, 1))
            with capture_cross_attention(bundle.unet, store):
                eps = predict_noise(bundle, leaf, t, embeds, cond)
            att = store.aggregate()
            with torch.no_grad(), capture_cross_attention(bundle.unet, None):
                clean = predict_noise(bundle, z, t, embeds, cond)
            torch.autograd.grad(att.pow(2).sum(), leaf, retain_graph=True)
            torch.autograd.grad((clean - eps).pow(2).sum(), leaf)
        return run

    n = cfg.num_timesteps
    out = {"vae_s": median(vae), "unet_one_timestep_s": median(unet(1)), "unet_all_timesteps_s": median(unet(n))}
    out["model_reference_s"] = n * (out["vae_s"] + out["unet_one_timestep_s"])
    out["model_fast_s"] = out["vae_s"] + out["unet_all_timesteps_s"]
    return out


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
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the VAE and the UNet work of an iteration alone (see breakdown())")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    base = AttackConfig(resolution=args.resolution, precision=args.precision)
    bundle = build_editor(args.arch, torch.device(args.device), args.precision)
    counter = build_editor(args.arch, torch.device("meta"), args.precision) if args.flops else None
    report = benchmark(bundle, {n: base.replace(**VARIANTS[n]) for n in names}, batch_size=args.batch_size,
                       iterations=args.iterations, warmup=args.warmup, counter=counter)
    report["arch"] = args.arch
    ref = report["results"].get("reference")
    if ref:
        for res in report["results"].values():
            res["speedup_over_reference"] = ref["sec_per_iteration"] / res["sec_per_iteration"]
            res["cpu_speedup_over_reference"] = ref["cpu_sec_per_iteration"] / res["cpu_sec_per_iteration"]
    if args.breakdown:
        parts = report["breakdown"] = breakdown(bundle, base, args.batch_size)
        if ref:
            parts["unet_share_of_reference"] = (base.num_timesteps * parts["unet_one_timestep_s"]
                                                / ref["sec_per_iteration"])
            parts["vae_share_of_reference"] = base.num_timesteps * parts["vae_s"] / ref["sec_per_iteration"]
    print(format_report(report))
    for name, res in report["results"].items():
        print(f"  {name:<30} median {res['sec_per_iteration']:.3f} s/it (cpu {res['cpu_sec_per_iteration']:.3f} s)"
              f"  x{res.get('speedup_over_reference', float('nan')):.2f} vs reference"
              f"  all: {', '.join(f'{t:.2f}' for t in res['iteration_s'])}")
    if args.breakdown:
        print("  breakdown: " + ", ".join(f"{k} {v:.3f}" for k, v in report["breakdown"].items()))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
