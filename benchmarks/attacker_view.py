"""How much of a protection reaches the attacker's editor, by photo size and aspect ratio.

For each full-size variant of a photo (4× the editor's size at 3:2, 16:9, 4:5; one smaller than it)
three protections are compared, all judged on the attacker's copy (the file resized by Pillow with
each filter, cropped to the VAE multiple):

- ``own-size``: the attacker's Lanczos copy protected directly at the editor's size (the reference);
- ``upsampled``: that δ upsampled bilinearly to full size and added to the full-size photo (how the
  product worked before δ lived at full resolution);
- ``full-size``: δ optimized at full resolution through the differentiable attacker's views.

Reported per arm: DANP's NBA term on the copy (one fixed draw; more negative = stronger), the edit
deviation (MSE between the edits of the protected and the clean copy, same seeds), both as a share
of ``own-size``; seconds. JSON to benchmarks/results/. Usage:

    python benchmarks/attacker_view.py --model tiny-ip2p --resolution 64 --steps 20 --timesteps 4
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from danp_pipeline.config import EVAL_SIZE_VARIANTS, AttackConfig, EditConfig
from danp_pipeline.demo import sample_photos
from danp_pipeline.evaluation.attacker import (
    attackers_copy,
    resize_for_editor,
    size_variants,
)
from danp_pipeline.evaluation.editing import Editor
from danp_pipeline.evaluation.objective_probe import ObjectiveProbe
from danp_pipeline.imaging.codec import decode_image
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.models import load_editor

FILTERS = ("lanczos", "bicubic", "bilinear")


def tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None] / 255


def upsampled(full: np.ndarray, own_clean: np.ndarray, own_protected: np.ndarray) -> np.ndarray:
    """The old path: the editor-size δ, upsampled bilinearly to the full size, added, clipped, quantized."""
    delta = tensor(own_protected) - tensor(own_clean)
    up = torch.nn.functional.interpolate(delta, size=full.shape[:2], mode="bilinear", align_corners=False)
    out = (tensor(full) + up).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return np.rint(out * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-ip2p")
    parser.add_argument("--prompt", default="put her in a prison cell")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--edit-steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--photos", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/cpu/attacker_view.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    bundle = load_editor(args.model, device="cpu")
    cfg = AttackConfig(steps=args.steps, num_timesteps=args.timesteps, resolution=args.resolution)
    immunizer, editor = Immunizer(bundle, cfg), Editor(bundle, EditConfig(steps=args.edit_steps))
    multiple, prompts = bundle.vae_scale_factor, [args.prompt]
    probe = ObjectiveProbe(bundle, cfg)
    results = []
    for path in sample_photos()[: args.photos]:
        source = decode_image(path.read_bytes()).rgb
        for variant, full in size_variants(source, args.resolution, EVAL_SIZE_VARIANTS).items():
            own_clean = resize_for_editor(full, args.resolution, multiple, "lanczos")
            start = time.perf_counter()
            own = immunizer.protect([own_clean], prompts)[0].pixels
            own_s = time.perf_counter() - start
            start = time.perf_counter()
            new = immunizer.protect([full], prompts)[0].pixels
            new_s = time.perf_counter() - start
            files = {"own-size": own, "upsampled": upsampled(full, own_clean, own), "full-size": new}
            for name, file in files.items():
                for filt in FILTERS:
                    clean = (own_clean if name == "own-size"
                             else resize_for_editor(full, args.resolution, multiple, filt))
                    seen = file if name == "own-size" else attackers_copy(file, args.resolution, multiple, filt, "none")
                    values = probe(clean, seen, prompts)
                    mse = np.mean([np.mean(((editor(seen, args.prompt, s).astype(np.float32)
                                             - editor(clean, args.prompt, s)) / 255) ** 2) for s in range(args.seeds)])
                    results.append({"photo": path.stem, "variant": variant, "size": list(full.shape[:2]),
                                    "arm": name, "filter": filt, "nba": values["nba"],
                                    "daa": values["daa"], "edit_mse": float(mse),
                                    "seconds": own_s if name == "own-size" else new_s if name == "full-size" else 0.0})
            print(f"{path.stem} {variant} {full.shape[1]}x{full.shape[0]} done", flush=True)
    summary = {}
    for variant in EVAL_SIZE_VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        ref = {k: np.mean([r[k] for r in rows if r["arm"] == "own-size"]) for k in ("nba", "edit_mse")}
        summary[variant] = {arm: {f"{k}_kept": float(np.mean([r[k] for r in rows if r["arm"] == arm]) / ref[k])
                                  for k in ("nba", "edit_mse")} for arm in ("upsampled", "full-size")}
        summary[variant]["own-size"] = {k: float(v) for k, v in ref.items()}
    report = {"model": args.model, "resolution": args.resolution, "steps": args.steps, "timesteps": args.timesteps,
              "edit_steps": args.edit_steps, "seeds": args.seeds, "filters": FILTERS, "summary": summary,
              "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
