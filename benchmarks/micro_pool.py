"""Pool several micro-benchmark runs (``danp-protect micro-bench``) on disjoint scenes into one
table, and compare two methods scene by scene.

Each run directory holds the ``results.parquet`` the suite writes; runs on other scenes
(``--scene-seed``) add rows, runs of the same scenes with other methods add methods. Only methods
present for every scene are kept, so every cell has the same photos. The paired comparison counts,
per (attack editor, prompt set), the edits one method stopped and the other did not (the same clean
edit, the same seed), and a bootstrap over scenes gives a 95 % interval for the difference of their
success reductions, for each reduction, and for the ratio ("share of b's reduction that a keeps"). A run given as
``LABEL=RUN_DIR`` contributes only its ``--label-method`` rows (default danp), named LABEL: two
configurations of one method (the paper's and the fast profile, say) become two methods here. The
micro-editors are proxies trained in this project, not Stable Diffusion.

    python benchmarks/micro_pool.py OUT [LABEL=]RUN_DIR [[LABEL=]RUN_DIR ...] [--methods a,b,c] [--pair a,b]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from danp_pipeline.evaluation.micro_suite import GROUP, edit_deviation, summary_markdown, summary_table

logger = logging.getLogger("micro_pool")


BOOTSTRAP = 10_000


def parse_run(arg: str) -> tuple[str | None, Path]:
    """``LABEL=DIR`` or ``DIR``."""
    label, sep, path = arg.partition("=")
    return (label, Path(path)) if sep and label and not Path(arg).exists() else (None, Path(arg))


def run_settings(run: Path) -> dict:
    """The settings a run recorded in its summary.md."""
    text = (run / "summary.md").read_text()
    start = text.index("```json") + len("```json")
    return json.loads(text[start:text.index("```", start)])


def run_eps(run: Path) -> float:
    """The budget of a run."""
    return float(run_settings(run)["attack"]["eps"])


def runs_world(runs: list[tuple[str | None, Path]]) -> str:
    """The world every run measured in (flat or textured); runs of two worlds do not pool."""
    worlds = {run: run_settings(run).get("world", "flat") for _, run in runs}
    if len(set(worlds.values())) > 1:
        raise SystemExit(f"runs of different worlds cannot be pooled: {worlds}")
    return next(iter(worlds.values()))


def pooled(runs: list[tuple[str | None, Path]], methods: list[str] | None, label_method: str = "danp") -> pd.DataFrame:
    frames = []
    for label, run in runs:
        df = pd.read_parquet(run / "results.parquet")
        if label is not None:
            if label_method not in set(df["method"]):
                raise SystemExit(f"{run} has no {label_method!r} rows to label {label!r} "
                                 f"(methods: {sorted(set(df['method']))})")
            df = df[df["method"] == label_method].assign(method=label)
        df["run"] = run.name
        if "eps" not in df:
            df["eps"] = np.nan
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if "variant" not in df:             # runs before size variants: every scene was square
        df["variant"] = "4x-1:1"
    df["variant"] = df["variant"].fillna("4x-1:1")
    if df["eps"].isna().any():          # runs before budget curves: each run's one budget, from its settings
        df["eps"] = df["eps"].fillna(df["run"].map({run.name: run_eps(run) for _, run in runs}))
    df["case"] = df["scene"]            # scenes are the unit: the suite's case index restarts in every run
    df = df.drop_duplicates(["method", "eps", "scene", "variant", "attack_editor", "prompt_set", "transform", "seed"])
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


def deviations(df: pd.DataFrame) -> list[dict]:
    """Mean squared difference between the clean and the protected edit (images in [0, 1]), per cell."""
    return [{**dict(zip(GROUP, key)), "mean_squared_difference": edit_deviation(sub["edits_psnr"])}
            for key, sub in df.groupby(GROUP, sort=False)]


def reductions(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per (transform, attack editor, prompt set) × scene: clean and protected successes and edit count."""
    sub = df[df["method"] == method]
    return sub.groupby(["transform", "attack_editor", "prompt_set", "scene"], sort=False).agg(
        clean=("edit_success_clean", "sum"), protected=("edit_success_protected", "sum"), n=("seed", "size"))


def bootstrap(df: pd.DataFrame, a: str, b: str, draws: int = BOOTSTRAP, seed: int = 0) -> list[dict]:
    """Per setting: the reductions of ``a`` and ``b`` (pts), a − b and a / b, with 95 % intervals from resampling
    scenes with replacement (both methods on the same resampled scenes: paired)."""
    ra, rb = reductions(df, a), reductions(df, b)
    gen = np.random.default_rng(seed)
    out = []
    for (transform, editor, prompts), sa in ra.groupby(level=[0, 1, 2], sort=False):
        if (transform, editor, prompts) not in rb.index.droplevel("scene"):
            continue
        sb = rb.loc[(transform, editor, prompts)].reindex(sa.index.get_level_values("scene"))
        if sb["n"].isna().any():
            continue                # the two methods do not share these scenes under this transform
        cells = [np.stack([s["clean"].to_numpy(float), s["protected"].to_numpy(float), s["n"].to_numpy(float)])
                 for s in (sa.droplevel([0, 1, 2]), sb)]
        idx = gen.integers(0, cells[0].shape[1], size=(draws, cells[0].shape[1]))

        def red(c, i=slice(None)):
            c = c[:, i]
            return 100 * (c[0].sum(-1) - c[1].sum(-1)) / c[2].sum(-1)

        ba, bb = red(cells[0], idx), red(cells[1], idx)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(bb > 0, ba / bb, np.nan)
        point_a, point_b = float(red(cells[0])), float(red(cells[1]))
        out.append({"transform": transform, "attack_editor": editor, "prompt_set": prompts,
                    "scenes": int(cells[0].shape[1]),
                    "edits": int(cells[0][2].sum()), f"reduction_{a}": round(point_a, 1),
                    f"reduction_{a}_95": [round(float(v), 1) for v in np.percentile(ba, [2.5, 97.5])],
                    f"reduction_{b}": round(point_b, 1),
                    f"reduction_{b}_95": [round(float(v), 1) for v in np.percentile(bb, [2.5, 97.5])],
                    "difference": round(point_a - point_b, 1),
                    "difference_95": [round(float(v), 1) for v in np.percentile(ba - bb, [2.5, 97.5])],
                    "kept": round(point_a / point_b, 3) if point_b > 0 else None,
                    "kept_95": [round(float(v), 2) for v in np.nanpercentile(ratio, [2.5, 97.5])],
                    "draws_with_b_reduction_le_0": int((bb <= 0).sum())})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--methods", default=None, help="comma-separated, in table order (default: all complete)")
    ap.add_argument("--pair", default=None, help="two methods to compare edit by edit and by bootstrap: a,b")
    ap.add_argument("--label-method", default="danp", help="the method a LABEL=RUN_DIR run contributes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runs = [parse_run(r) for r in args.runs]
    df = pooled(runs, args.methods.split(",") if args.methods else None, args.label_method)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    settings = {"runs": [f"{label}={run}" if label else str(run) for label, run in runs],
                "world": runs_world(runs), "scenes": int(df["scene"].nunique()),
                "note": "pooled by benchmarks/micro_pool.py; each run's own settings are in its summary.md"}
    text = summary_markdown(df, settings)
    result = {"scenes": settings["scenes"], "runs": settings["runs"], "table": summary_table(df),
              "edit_deviation": deviations(df)}
    if args.pair:
        a, b = args.pair.split(",")
        result["paired"] = paired(df, a, b)
        result["bootstrap"] = bootstrap(df, a, b)
        text += "\n## Paired: " + f"{a} vs {b}\n\n" + "\n".join(f"- {json.dumps(r)}" for r in result["paired"]) + "\n"
        text += (f"\n## Bootstrap over scenes ({BOOTSTRAP} draws): {a} vs {b}\n\n"
                 + "\n".join(f"- {json.dumps(r)}" for r in result["bootstrap"]) + "\n")
    (out / "summary.md").write_text(text)
    (out / "pooled.json").write_text(json.dumps(result, indent=2) + "\n")
    for r in result["table"]:
        logger.info("%s %s %s n=%d: %s -> %s (%s)", r["method"], r["attack_editor"], r["prompt_set"], r["n"],
                    r["edit_success_clean"], r["edit_success_protected"], r["success_reduction"])
    for r in result.get("paired", []) + result.get("bootstrap", []):
        logger.info("paired %s", r)


if __name__ == "__main__":
    main()
