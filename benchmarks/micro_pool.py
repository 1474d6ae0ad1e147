"""Pool several micro-benchmark runs (``danp-protect eval --suite micro``) on disjoint scenes into one
table, and compare two methods scene by scene.

Each run directory holds the ``results.parquet`` the suite writes; runs on other scenes
(``--scene-seed``) add rows, runs of the same scenes with other methods add methods. Only methods
present for every scene are kept, so every cell has the same photos. The paired comparison counts,
per (attack editor, prompt set), the edits one method stopped and the other did not (the same clean
edit, the same seed). The micro-editors are proxies trained in this project, not Stable Diffusion.

    python benchmarks/micro_pool.py OUT RUN_DIR [RUN_DIR ...] [--methods a,b,c] [--pair danp-focused,danp]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from danp_pipeline.evaluation.micro_suite import summary_markdown, summary_table

logger = logging.getLogger("micro_pool")


def pooled(run_dirs: list[Path], methods: list[str] | None) -> pd.DataFrame:
    frames = []
    for run in run_dirs:
        df = pd.read_parquet(run / "results.parquet")
        df["run"] = run.name
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if "variant" not in df:             # runs before size variants: every scene was square
        df["variant"] = "4x-1:1"
    df["variant"] = df["variant"].fillna("4x-1:1")
    df["case"] = df["scene"]            # scenes are the unit: the suite's case index restarts in every run
    df = df.drop_duplicates(["method", "scene", "variant", "attack_editor", "prompt_set", "transform", "seed"])
    scenes = df["scene"].nunique()
    per_method = df.groupby("method")["scene"].nunique()
    complete = [m for m in (methods or list(dict.fromkeys(df["method"]))) if per_method.get(m, 0) == scenes]
    missing = sorted(set(methods or []) - set(complete))
    if missing:
        raise SystemExit(f"methods {missing} are not in every run's scenes ({scenes} scenes in all)")
    order = {m: i for i, m in enumerate(complete)}
    df = df[df["method"].isin(complete)]
    return df.sort_values("method", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)


def paired(df: pd.DataFrame, a: str, b: str) -> list[dict]:
    """Per setting: edits stopped by ``a`` but not ``b`` and the reverse (clean edit succeeded)."""
    key = ["scene", "variant", "attack_editor", "prompt_set", "transform", "seed"]
    both = df[df["method"] == a].merge(df[df["method"] == b], on=key, suffixes=("_a", "_b"))
    both = both[both["edit_success_clean_a"]]
    out = []
    for (editor, prompts), sub in both.groupby(["attack_editor", "prompt_set"], sort=False):
        stopped_a, stopped_b = ~sub["edit_success_protected_a"], ~sub["edit_success_protected_b"]
        out.append({"attack_editor": editor, "prompt_set": prompts, "clean_successes": len(sub),
                    f"stopped_by_{a}_only": int((stopped_a & ~stopped_b).sum()),
                    f"stopped_by_{b}_only": int((stopped_b & ~stopped_a).sum()),
                    "stopped_by_both": int((stopped_a & stopped_b).sum())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--methods", default=None, help="comma-separated, in table order (default: all complete)")
    ap.add_argument("--pair", default=None, help="two methods to compare edit by edit: a,b")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    df = pooled([Path(r) for r in args.runs], args.methods.split(",") if args.methods else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    settings = {"runs": [Path(r).name for r in args.runs], "scenes": int(df["scene"].nunique()),
                "note": "pooled by benchmarks/micro_pool.py; each run's own settings are in its summary.md"}
    text = summary_markdown(df, settings)
    result = {"scenes": settings["scenes"], "runs": settings["runs"], "table": summary_table(df)}
    if args.pair:
        a, b = args.pair.split(",")
        result["paired"] = paired(df, a, b)
        text += "\n## Paired: " + f"{a} vs {b}\n\n" + "\n".join(f"- {json.dumps(r)}" for r in result["paired"]) + "\n"
    (out / "summary.md").write_text(text)
    (out / "pooled.json").write_text(json.dumps(result, indent=2) + "\n")
    for r in result["table"]:
        logger.info("%s %s %s n=%d: %s -> %s (%s)", r["method"], r["attack_editor"], r["prompt_set"], r["n"],
                    r["edit_success_clean"], r["edit_success_protected"], r["success_reduction"])
    for r in result.get("paired", []):
        logger.info("paired %s", r)


if __name__ == "__main__":
    main()
