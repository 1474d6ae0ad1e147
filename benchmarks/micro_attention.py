"""Where a trained micro-editor's cross-attention looks: the named object's words on held-out scenes.

For each held-out scene and instruction, the cross-attention of the object's own words (its colour and
shape, e.g. "red circle") is captured from every ``attn2`` layer (protect/attention.py, the maps DANP
optimizes), averaged over layers and over timesteps spread across [0, T), and compared with the
object's mask at the latent grid. Reported: the share of the words' attention mass that falls inside
the object, against the object's share of the picture (what attention spread evenly would give), and
the same for a word that is not about the object ("the"/"make" are instruction words). A picture
(source | object-word attention | mask) goes next to the JSON.

The micro-editors are proxies trained in this project, not Stable Diffusion. Usage:

    python benchmarks/micro_attention.py --model micro-ip2p --scenes 48
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from danp_pipeline.micro import world
from danp_pipeline.micro.probe import attention_maps, mask_overlap
from danp_pipeline.micro.training import object_token_positions, share_inside
from danp_pipeline.protect.models import load_editor

logger = logging.getLogger("micro_attention")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="micro-ip2p")
    ap.add_argument("--scenes", type=int, default=48)
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--split", default="heldout", choices=("train", "heldout"),
                    help="scenes to measure on; choose DAA options on train scenes, report on heldout")
    ap.add_argument("--out", default="benchmarks/results/cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    bundle = load_editor(args.model)
    T = bundle.num_train_timesteps
    timesteps = [int((i + 0.5) * T / args.timesteps) for i in range(args.timesteps)]
    rows, panels = [], []
    for sample in world.make_split(args.split, args.scenes, seed=11):
        obj = sample.source_object
        def maps(tokens, sample=sample):
            return attention_maps(bundle, sample.instruction, sample.source, tokens, timesteps, seed=sample.scene_seed)

        att_t = maps(list(object_token_positions(sample.instruction, obj)))
        att = att_t.mean(0)
        other = maps([1]).mean(0)   # the first word
        content_t, focused_t = maps("content"), maps("focused")
        h, w = att.shape
        mask = F.interpolate(torch.from_numpy(sample.source_mask.astype(np.float32))[None, None], size=(h, w),
                             mode="area")[0, 0]
        inside = float(share_inside(att, mask))
        inside_other = float(share_inside(other, mask))
        daa_content = mask_overlap(content_t, mask)
        daa_focused = mask_overlap(focused_t, mask)
        daa_words = mask_overlap(att_t, mask)
        rows.append({"scene": sample.scene_seed, "instruction": sample.instruction, "words": obj.name,
                     "mass_inside_object": inside, "object_area_share": float(mask.mean()),
                     "first_word_mass_inside": inside_other,
                     "content_tokens_mass_inside": float(share_inside(content_t.mean(0), mask)),
                     "focused_tokens_mass_inside": float(share_inside(focused_t.mean(0), mask)),
                     **{f"daa_mask_content_{k}": v for k, v in daa_content.items()},
                     **{f"daa_mask_focused_{k}": v for k, v in daa_focused.items()},
                     **{f"daa_mask_object_words_{k}": v for k, v in daa_words.items()}})
        if len(panels) < 8:
            heat = (att / att.max()).numpy()
            heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((world.SIZE, world.SIZE),
                                                                                    Image.Resampling.NEAREST))
            panels.append(np.concatenate([sample.source, np.repeat(heat[..., None], 3, -1),
                                          np.repeat((sample.source_mask * 255).astype(np.uint8)[..., None], 3, -1)],
                                         axis=1))
    inside = np.array([r["mass_inside_object"] for r in rows])
    area = np.array([r["object_area_share"] for r in rows])
    other = np.array([r["first_word_mass_inside"] for r in rows])
    daa_keys = [k for k in rows[0] if k.startswith(("daa_mask_", "content_tokens_", "focused_tokens_"))]
    result = {"model": args.model, "split": args.split, "scenes": len(rows), "timesteps": timesteps,
              **{k: float(np.mean([r[k] for r in rows])) for k in daa_keys},
              "object_words_mass_inside_object": float(inside.mean()),
              "object_area_share": float(area.mean()),
              "first_word_mass_inside_object": float(np.nanmean(other)),
              "ratio_to_uniform": float((inside / area).mean()),
              "share_of_scenes_above_uniform": float((inside > area).mean()), "rows": rows,
              "note": "trained micro-editor: a proxy for Stable Diffusion, not a substitute"}
    out, suffix = Path(args.out), "" if args.split == "heldout" else f"_{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"micro_attention_{args.model}{suffix}.json").write_text(json.dumps(result, indent=2))
    picture = np.concatenate(panels, axis=0)
    Image.fromarray(picture).resize((picture.shape[1] * 2, picture.shape[0] * 2), Image.Resampling.NEAREST).save(
        out / f"micro_attention_{args.model}{suffix}.png")
    logger.info("object words: %.1f%% of attention inside the object (area %.1f%%; first word %.1f%%), %d scenes",
                100 * result["object_words_mass_inside_object"], 100 * result["object_area_share"],
                100 * result["first_word_mass_inside_object"], len(rows))
    for tokens in ("content", "focused", "object_words"):
        logger.info("DAA's Kapur mask vs the object, %s tokens: IoU %.2f precision %.2f recall %.2f area %.1f%%",
                    tokens, *(result[f"daa_mask_{tokens}_{k}"] * (100 if k == "mask_area" else 1)
                              for k in ("iou", "precision", "recall", "mask_area")))


if __name__ == "__main__":
    main()
