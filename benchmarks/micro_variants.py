"""How much of the protection reaches the attacker's editor, per photo size and aspect, on the micro benchmark.

Compares an attacker-view run of ``danp-protect micro-bench --view attacker --size-variants …``
(each scene a full-size photo protected at full size, then resized by the attacker with Pillow) with
editor-view runs of the same scenes (the attacker's copy protected directly at the editor's size: the
reference). A variant is matched to the editor-view variant whose frame is the same (the small 3:2 photo's
attacker copy has the 4× 3:2 photo's frame). Per variant and setting (own wording, unseen wording,
transfer editor): edit success clean → protected and its reduction in both views, and the edit deviation
(mean squared difference between the edits of the clean and the protected photo, in [0, 1]² units) with
the share of the reference's that survives the attacker's path, and (runs that recorded it) DANP's NBA term on the
protected editor's copy as a share of the reference's; the same after a JPEG of the full-size
file when the attacker-view run has it. The micro-editors are proxies trained in this project, not
Stable Diffusion.

    python benchmarks/micro_variants.py OUT --attacker RUN --editor RUN [RUN ...] [--method danp]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from danp_pipeline.evaluation.attacker import variant_shape
from danp_pipeline.evaluation.micro_suite import edit_deviation, variant_frame
from danp_pipeline.micro import world

logger = logging.getLogger("micro_variants")

SETTINGS = ["attack_editor", "prompt_set"]


def load(run: Path) -> pd.DataFrame:
    df = pd.read_parquet(run / "results.parquet")
    if "variant" not in df:                        # runs before size variants: square scenes
        df["variant"] = "4x-1:1"
    return df


def cell(sub: pd.DataFrame) -> dict:
    clean, protected = sub["edit_success_clean"].to_numpy(bool), sub["edit_success_protected"].to_numpy(bool)
    out = {"n": len(sub), "clean": float(clean.mean()), "protected": float(protected.mean()),
           "reduction_pts": round(100 * (clean.mean() - protected.mean()), 1),
           "deviation": edit_deviation(sub["edits_psnr"])}
    if "nba" in sub:           # the objective on the protected editor's copy, once per scene (older runs lack it)
        out["nba"] = float(sub.drop_duplicates("case")["nba"].mean())
    return out


def shares(cell_: dict, reference: dict) -> dict:
    """What survives the attacker's path, as shares of the reference (the attacker's copy protected directly)."""
    out = {"deviation_share": cell_["deviation"] / reference["deviation"]}
    if "nba" in cell_ and "nba" in reference:
        out["nba_share"] = cell_["nba"] / reference["nba"]
    return out


def compare(attacker: pd.DataFrame, editor: pd.DataFrame, method: str) -> list[dict]:
    frames = {v: variant_frame(v)[1] for v in set(editor["variant"])}
    rows = []
    for variant in dict.fromkeys(attacker["variant"]):
        frame = variant_frame(variant)[1]
        reference = [v for v, f in frames.items() if f == frame]
        if not reference:
            raise SystemExit(f"no editor-view run has the frame of {variant} ({frame})")
        ref = editor[(editor["variant"] == reference[0]) & (editor["method"] == method)
                     & (editor["transform"] == "none")]
        att = attacker[(attacker["variant"] == variant) & (attacker["method"] == method)]
        scenes = sorted(set(att["scene"]))
        if sorted(set(ref["scene"])) != scenes:
            raise SystemExit(f"{variant}: the editor-view run has other scenes than the attacker-view run")
        for (editor_name, prompts), own_size in ref.groupby(SETTINGS, sort=False):
            height, width = variant_shape(variant, world.SIZE)
            row = {"variant": variant, "photo_size": f"{width}x{height}",
                   "reference_variant": reference[0], "attack_editor": editor_name, "prompt_set": prompts,
                   "scenes": len(scenes), "own_size": cell(own_size)}
            for transform, sub in att[(att["attack_editor"] == editor_name) & (att["prompt_set"] == prompts)
                                      ].groupby("transform", sort=False):
                row[f"attacker_{transform}"] = {**cell(sub), **shares(cell(sub), row["own_size"])}
            rows.append(row)
    return rows


def markdown(rows: list[dict], transforms: list[str]) -> str:
    objective = all("nba_share" in r[f"attacker_{t}"] for r in rows for t in transforms)
    head = ["photo", "attacker's copy from", "setting", "own size: clean → protected (reduction)",
            *[f"attacker {t}: clean → protected (reduction)" for t in transforms],
            *[f"edit deviation kept, {t}" for t in transforms],
            *([f"NBA kept, {t}" for t in transforms] if objective else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        setting = (r["prompt_set"] if r["attack_editor"] == rows[0]["attack_editor"]
                   else f"transfer ({r['attack_editor']})")

        def rate(c: dict) -> str:
            return f"{100 * c['clean']:.0f} → {100 * c['protected']:.0f} % ({c['reduction_pts']:.0f} pts)"

        lines.append("| " + " | ".join([
            f"{r['variant']} ({r['photo_size']})", r["reference_variant"], setting, rate(r["own_size"]),
            *[rate(r[f"attacker_{t}"]) for t in transforms],
            *[f"{100 * r[f'attacker_{t}']['deviation_share']:.0f} %" for t in transforms],
            *([f"{100 * r[f'attacker_{t}']['nba_share']:.0f} %" for t in transforms] if objective else [])]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--attacker", required=True, help="an micro-bench --view attacker run")
    ap.add_argument("--editor", nargs="+", required=True, help="editor-view runs of the same scenes (references)")
    ap.add_argument("--method", default="danp")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    attacker = load(Path(args.attacker))
    editor = pd.concat([load(Path(r)) for r in args.editor], ignore_index=True)
    rows = compare(attacker, editor, args.method)
    transforms = list(dict.fromkeys(attacker["transform"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"method": args.method, "attacker_run": args.attacker, "editor_runs": args.editor, "rows": rows,
              "note": "micro-editors are proxies trained in this project, not Stable Diffusion; deviation is the mean "
                      "squared difference between the edits of the clean and protected photo (images in [0, 1])"}
    (out / "variants.json").write_text(json.dumps(result, indent=2, default=float))
    text = markdown(rows, transforms)
    (out / "variants.md").write_text(text)
    print(text)
    for key, what in (("deviation_share", "edit deviation"), ("nba_share", "NBA objective")):
        kept = [r[f"attacker_{t}"][key] for r in rows for t in transforms if key in r[f"attacker_{t}"]]
        if kept:
            logger.info("%s kept: %.0f-%.0f %% over %d cells", what, 100 * np.min(kept), 100 * np.max(kept), len(kept))


if __name__ == "__main__":
    main()
