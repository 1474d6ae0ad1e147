"""Do the micro-editors edit? Clean edit success with ground truth, through the real diffusers pipeline.

``--tune``: scores sampler settings (steps, text guidance, image guidance) on TRAIN scenes only and
prints them (the settings in config.MICRO_MODELS were chosen this way; held-out scenes are never used
to choose). Without it: each editor's clean edit success on held-out scenes with the training
wordings and with the held-out wordings, per edit kind, and PSNR(edit, target) against
PSNR(source, target) (an editor that does nothing scores the latter). JSON under --out.

The micro-editors are proxies trained in this project, not Stable Diffusion. Usage:

    python benchmarks/micro_editors.py --scenes 96
    python benchmarks/micro_editors.py --tune --scenes 48 --editors micro-ip2p
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from danp_pipeline.config import MICRO_EDITORS_DIR, MICRO_MODELS, EditConfig, micro_edit_config
from danp_pipeline.evaluation.editing import Editor
from danp_pipeline.evaluation.micro_suite import wilson
from danp_pipeline.micro import world
from danp_pipeline.protect.models import load_editor

logger = logging.getLogger("micro_editors")

TUNE_GRID = [(20, g, ig) for g in (3.0, 5.0, 7.5) for ig in (1.2, 1.5, 2.0)]


def score(editor: Editor, samples: list[world.EditSample]) -> dict:
    start = time.perf_counter()
    ok, kinds, pe, ps = [], [], [], []
    for i, s in enumerate(samples):
        edit = editor(s.source, s.instruction, i)
        ok.append(world.edit_success(edit, s)[0])
        kinds.append(s.kind)
        pe.append(world.psnr(edit, s.target))
        ps.append(world.psnr(s.source, s.target))
    ok_arr = np.array(ok)
    lo, hi = wilson(int(ok_arr.sum()), len(ok_arr))
    return {"success": float(ok_arr.mean()), "success_ci95": [lo, hi], "n": len(ok),
            "by_kind": {k: float(ok_arr[np.array(kinds) == k].mean()) for k in world.EDIT_KINDS},
            "psnr_edit_target": float(np.mean(pe)), "psnr_source_target": float(np.mean(ps)),
            "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--editors", default=",".join(MICRO_MODELS))
    ap.add_argument("--scenes", type=int, default=96)
    ap.add_argument("--tune", action="store_true", help="score sampler settings on train scenes only")
    ap.add_argument("--grid", default=None,
                    help="with --tune: settings to score, 'steps,guidance,image_guidance;...' (default: TUNE_GRID)")
    ap.add_argument("--out", default="benchmarks/results/cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    report = {"note": "trained micro-editors: proxies for Stable Diffusion, not substitutes", "editors": {}}
    for name in [e.strip() for e in args.editors.split(",") if e.strip()]:
        bundle = load_editor(name)
        if args.tune:
            samples = world.make_split("train", args.scenes, seed=555)
            rows = []
            grid = ([tuple(float(v) for v in item.split(",")) for item in args.grid.split(";")] if args.grid
                    else TUNE_GRID)
            for steps, g, ig in grid:
                steps = int(steps)
                r = score(Editor(bundle, EditConfig(steps=steps, guidance_scale=g, image_guidance_scale=ig)), samples)
                rows.append({"steps": steps, "guidance": g, "image_guidance": ig, **r})
                logger.info("%s train %s: %.1f%%", name, (steps, g, ig), 100 * r["success"])
            report["editors"][name] = {"tuning_on_train_scenes": rows}
            continue
        editor = Editor(bundle, micro_edit_config(name))
        folder = MICRO_EDITORS_DIR / name if name in MICRO_MODELS else Path(name)
        training = json.loads((folder / "training.json").read_text())
        entry = {"sampler": dataclasses.asdict(micro_edit_config(name)),
                 "training": {k: training[k] for k in ("unet_steps_done", "times_s", "total_train_s",
                                                       "weights_total_bytes", "vae_recon_psnr_heldout",
                                                       "torch_threads")}}
        for wordings in ("train", "heldout"):
            r = score(editor, world.make_split("heldout", args.scenes, seed=1, wordings=wordings))
            entry[f"heldout_scenes_{wordings}_wordings"] = r
            logger.info("%s held-out scenes, %s wordings: %.1f%% [%.0f, %.0f] (n=%d), PSNR to target %.2f vs %.2f dB",
                        name, wordings, 100 * r["success"], 100 * r["success_ci95"][0], 100 * r["success_ci95"][1],
                        r["n"], r["psnr_edit_target"], r["psnr_source_target"])
        report["editors"][name] = entry
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("micro_editors_tuning.json" if args.tune else "micro_editors.json")
    if path.exists():       # keep the entries of editors not measured this time
        report["editors"] = {**json.loads(path.read_text())["editors"], **report["editors"]}
    path.write_text(json.dumps(report, indent=2, default=str))
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
