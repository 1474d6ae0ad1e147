"""The work of protecting one proxy-world photo against one proxy editor and against an ensemble of them.

Counts TFLOP per photo (evaluation/bench.py's count, every op of every iteration, on the CPU) for each method
and for the protected editor alone, each other editor alone and all of them at once, at the micro benchmark's
128x128 size and budget under a profile. The issue's bound for an ensemble is a cost of at most 2.2x the single
protection's; this gives the ratio from counted work, not from seconds measured on a shared machine.

    python benchmarks/proxy_ensemble_cost.py OUT.json [--editors proxy-ip2p,proxy-ip2p-b] [--methods danp]
        [--profile fast] [--eps 0.03]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from danp_pipeline.config import MICRO_ATTACK, method_config, profile_config
from danp_pipeline.evaluation.bench import count_photo_flops
from danp_pipeline.micro import textures
from danp_pipeline.protect.models import load_editor

logger = logging.getLogger("proxy_ensemble_cost")


def tflop(editors, cfg, prompt: str) -> float:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, cfg.resolution, cfg.resolution, generator=gen)
    # counted at a mid-run photo (δ ≠ 0): at δ = 0 NBA is exactly zero and balance_every re-measures every time
    x = (x0 + cfg.eps * (2 * torch.rand(x0.shape, generator=gen) - 1)).clamp(0, 1)
    return count_photo_flops(editors, cfg, x0, x, [[prompt]], [0])["tflop_per_photo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--editors", default="proxy-ip2p,proxy-ip2p-b")
    ap.add_argument("--methods", default="danp")
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--eps", type=float, default=0.03)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    names = args.editors.split(",")
    bundles = [load_editor(n, device="cpu") for n in names]
    prompt = textures.make_split("train", 1, 0, "train")[0].instruction
    base = profile_config(args.profile, MICRO_ATTACK.replace(resolution=textures.SIZE, eps=args.eps))
    rows = []
    for method in args.methods.split(","):
        cfg = method_config(method, base)
        alone = {n: tflop(b, cfg, prompt) for n, b in zip(names, bundles)}
        both = tflop(bundles, cfg, prompt)
        rows.append({"method": method, "tflop_alone": alone, "tflop_ensemble": both,
                     "ensemble_over_first": both / alone[names[0]]})
        logger.info("%s: alone %s, ensemble %.6f TFLOP (%.2fx %s)", method, alone, both,
                    both / alone[names[0]], names[0])
    result = {"editors": names, "profile": args.profile, "eps": args.eps, "size": textures.SIZE,
              "steps": base.steps, "prompt": prompt, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
