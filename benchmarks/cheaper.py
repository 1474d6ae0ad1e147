"""Cheaper protection at equal efficacy: work per photo against edit-success reduction.

Each candidate is an AttackConfig change (or the ``fast`` profile). For each one:

- **work**: FLOPs of one protected photo, counted with torch's FlopCounterMode over the objective's setup
  and every iteration (evaluation/bench.count_photo_flops), on the full-size InstructPix2Pix
  architecture at 512² (on the "meta" device: counted, not run) and on the micro-editor at 64²;
- **efficacy**: DANP with that config on the micro benchmark (evaluation/micro_suite.py): edit success
  on clean vs protected held-out scenes, own wording, unseen wording and transfer to the other editor;
  with ``--view attacker`` the same in the attacker's view (full-size square scenes protected at full size,
  resized by the attacker with Pillow), kept beside the editor-view figures.

Outputs JSON, a Markdown table and an SVG Pareto plot (reduction vs TFLOP per photo at 512²) under --out.
The micro-editors are proxies trained in this project, not Stable Diffusion. Usage:

    python benchmarks/cheaper.py --scenes 24 --seeds 0,1 --workers 2 [--paper-from DIR] [--only flops|efficacy]
                                 [--view attacker]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from danp_pipeline.config import (
    DEFAULT_PROMPTS,
    MICRO_ATTACK,
    AttackConfig,
    MicroSuiteConfig,
    profile_config,
)
from danp_pipeline.evaluation import micro_suite
from danp_pipeline.evaluation.bench import count_photo_flops
from danp_pipeline.micro import world
from danp_pipeline.protect.models import full_size_editor, load_editor

logger = logging.getLogger("cheaper")

CANDIDATES: dict[str, dict] = {
    "paper": {},
    "one-backward (k=5)": {"balance_every": 5},
    "fixed noise (clean reused)": {"noise": "fixed"},
    "half the timesteps": {"timestep_subset": 5},
    "30 steps α 2/255 cosine": {"steps": 30, "step_size": 2 / 255, "step_decay": "cosine"},
    # The first fast profile: it held the noise fixed and lost the unseen wordings, so it was replaced.
    "first fast profile (fixed noise)": ("fast", {"noise": "fixed"}),
    "fast profile": "fast",
    # The other preset candidate when the fast profile was chosen on training scenes (--split train).
    "30 steps cosine + one-backward (k=5)": {"steps": 30, "step_size": 2 / 255, "step_decay": "cosine",
                                            "balance_every": 5},
    # Several prompts per photo: each iteration a random one of them (efficacy: --protect-set kinds, 3 prompts).
    "one prompt per iteration": {"prompt_subset": 1},
}


def candidate_config(change, base: AttackConfig) -> AttackConfig:
    """A candidate: a profile name, a dict of AttackConfig changes, or (profile, changes on top of it)."""
    if isinstance(change, str):
        return profile_config(change, base)
    if isinstance(change, tuple):
        return profile_config(change[0], base).replace(**change[1])
    return base.replace(**change)


def flops(cfg: AttackConfig, bundle, size: int, prompt: str | list[str]) -> float:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, size, size, generator=gen)
    # counted at a mid-run photo (δ ≠ 0): at δ = 0 NBA is exactly zero and balance_every re-measures every time
    x = (x0 + cfg.eps * (2 * torch.rand(x0.shape, generator=gen) - 1)).clamp(0, 1)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return count_photo_flops(bundle, cfg.replace(resolution=size), x0.to(bundle.device), x.to(bundle.device),
                             [prompts], [0])["tflop_per_photo"]


def efficacy(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per setting: clean and protected success rates and their difference (the reduction), in %."""
    out = {}
    for (editor, prompts), sub in df.groupby(["attack_editor", "prompt_set"], sort=False):
        key = "transfer" if editor != df["editor"].iloc[0] else prompts
        clean, prot = sub["edit_success_clean"].mean(), sub["edit_success_protected"].mean()
        out[key] = {"clean": 100 * clean, "protected": 100 * prot, "reduction": 100 * (clean - prot), "n": len(sub)}
    return out


def pareto_svg(points: list[tuple[str, float, float]], path: Path) -> None:
    """Reduction (own prompts, pts) against TFLOP per photo at 512², log x axis."""
    w, h, m = 640, 400, 60
    xs = np.log10([p[1] for p in points])
    lo, hi = xs.min() - 0.15, xs.max() + 0.15
    ys = [p[2] for p in points]
    ylo, yhi = min(0.0, min(ys) - 5), max(ys) + 10
    px = lambda v: m + (np.log10(v) - lo) / (hi - lo) * (w - 2 * m)  # noqa: E731
    py = lambda v: h - m - (v - ylo) / (yhi - ylo) * (h - 2 * m)      # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
             f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">TFLOP per photo, full-size InstructPix2Pix '
             f'architecture at 512² (log)</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">edit-success '
             f'reduction, own prompts (pts)</text>',
             f'<text x="{w / 2}" y="25" text-anchor="middle" font-size="13">DANP cost candidates on the micro '
             f'benchmark (a proxy, not SD)</text>']
    for decade in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        v = 10.0 ** decade
        if lo <= decade <= hi:
            parts.append(f'<text x="{px(v):.1f}" y="{h - m + 15}" text-anchor="middle">{v:g}</text>')
    for tick in np.linspace(ylo, yhi, 5):
        parts.append(f'<text x="{m - 5}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:.0f}</text>')
    for name, x, y in points:
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="#c0392b"/>')
        parts.append(f'<text x="{px(x) + 6:.1f}" y="{py(y) - 6:.1f}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def measure_flops(row: dict, cfg: AttackConfig, micro, full, prompt: str, prompts: int = 1) -> None:
    """FLOPs per photo with one prompt; with ``prompts`` > 1, at 512² with that many of the default prompts
    (``tflop_per_photo_512_k{prompts}``)."""
    if prompts > 1:
        if full is not None:
            row[f"tflop_per_photo_512_k{prompts}"] = flops(cfg, full, 512, list(DEFAULT_PROMPTS[:prompts]))
        return
    row["tflop_per_photo_micro"] = flops(cfg, micro, world.SIZE, prompt)
    if full is not None:
        row["tflop_per_photo_512"] = flops(cfg, full, 512, "make it snow")


def check_run(suite_dir: Path, expected: dict) -> None:
    """Refuse a run whose attack settings (its summary.md) are not the candidate's: a renamed or redefined
    candidate must not inherit another configuration's figures."""
    text = (suite_dir / "summary.md").read_text()
    attack = json.loads(text.split("```json", 1)[1].split("```", 1)[0])["attack"]
    wrong = {k: (attack[k], v) for k, v in expected.items() if k in attack and attack[k] != v}
    if wrong:
        raise SystemExit(f"{suite_dir} was run with other settings (run, candidate): {wrong}")


def measure_efficacy(row: dict, name: str, cfg: AttackConfig, args: argparse.Namespace, out: Path) -> None:
    slug = name.replace("α", "alpha").replace(" ", "_").replace("/", "-")
    suite_dir = out / slug.replace(",", "").replace("(", "").replace(")", "")
    if args.view == "attacker":
        suite_dir = suite_dir.with_name(suite_dir.name + "_attacker")
    if name == "paper" and args.paper_from:
        df = pd.read_parquet(Path(args.paper_from) / "results.parquet")
        df = df[(df["method"] == "danp") & (df["transform"] == "none")]
    else:
        if not (args.reuse and (suite_dir / "results.parquet").exists()):
            suite = MicroSuiteConfig(editors=tuple(args.editors.split(",")), scenes=args.scenes, methods=("danp",),
                                     attack=cfg, seeds=tuple(int(s) for s in args.seeds.split(",")),
                                     workers=args.workers, view=args.view)
            micro_suite.run(suite, suite_dir)
        check_run(suite_dir, row["config"])
        df = pd.read_parquet(suite_dir / "results.parquet")
        df = df[(df["method"] == "danp") & (df["transform"] == "none")]
    if args.view == "attacker":
        row["efficacy_attacker"] = efficacy(df)
        return
    row["efficacy"] = efficacy(df)
    row["efficacy_editors"] = list(dict.fromkeys([df["editor"].iloc[0], *df["attack_editor"].unique()]))
    row["scenes"] = int(df["case"].nunique())
    row["seconds_per_photo_micro"] = float(df.drop_duplicates("case")["seconds"].mean())


def table(results: dict) -> list[str]:
    paper = results.get("paper")
    lines = ["| candidate | TFLOP/photo 512² | share of paper | TFLOP/photo micro | own: reduction (kept) | "
             "unseen: reduction (kept) | transfer: reduction (kept) | attacker's view: own / unseen / transfer | "
             "s/photo micro |", "|" + "---|" * 9]
    for name, row in results.items():
        cells = [name]
        key = "tflop_per_photo_512"
        several = sorted(k for k in row if k.startswith("tflop_per_photo_512_k"))
        if key not in row and several:      # a candidate about several prompts: counted with k of them
            key = several[-1]
        suffix = f" ({key.rsplit('_k', 1)[1]} prompts)" if key != "tflop_per_photo_512" else ""
        cells.append(f"{row[key]:.0f}{suffix}" if key in row else "—")
        cells.append(f"{100 * row[key] / paper[key]:.0f}%" if paper and key in row and key in paper else "—")
        cells.append(f"{row['tflop_per_photo_micro']:.3f}" if "tflop_per_photo_micro" in row else "—")
        for setting in ("own", "unseen", "transfer"):
            e = row.get("efficacy", {}).get(setting)
            if e is None:
                cells.append("—")
                continue
            kept = ""
            if paper and setting in paper.get("efficacy", {}) and paper["efficacy"][setting]["reduction"] > 0:
                kept = f" ({100 * e['reduction'] / paper['efficacy'][setting]['reduction']:.0f}%)"
            cells.append(f"{e['reduction']:.0f} pts{kept}")
        seen = row.get("efficacy_attacker", {})
        reductions = [f"{seen[k]['reduction']:.0f}" for k in ("own", "unseen", "transfer") if k in seen]
        cells.append(" / ".join(reductions) or "—")
        cells.append(f"{row['seconds_per_photo_micro']:.1f}" if "seconds_per_photo_micro" in row else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--only", choices=("flops", "efficacy"), default=None,
                    help="measure one half; the other half's figures already in --out/cheaper.json are kept")
    ap.add_argument("--paper-from", default=None, help="a micro-suite output whose danp rows are the paper config")
    ap.add_argument("--reuse", action="store_true",
                    help="read a candidate's efficacy from its run directory when it exists (settings checked)")
    ap.add_argument("--prompts", type=int, default=1, choices=range(1, len(DEFAULT_PROMPTS) + 1),
                    help="count FLOPs at 512² with this many of the default prompts per photo (kept beside the "
                         "one-prompt figures)")
    ap.add_argument("--view", choices=("editor", "attacker"), default="editor",
                    help="efficacy at the editor's size, or in the attacker's view (kept as efficacy_attacker)")
    ap.add_argument("--skip-512", action="store_true", help="do not count FLOPs at 512² (minutes per candidate)")
    ap.add_argument("--editors", default=",".join(MicroSuiteConfig().editors),
                    help="the micro suite's editors: protect against the first, the rest are transfer")
    ap.add_argument("--micro-editor", default="micro-ip2p",
                    help="the editor whose architecture the micro FLOPs count (weights do not change the count)")
    ap.add_argument("--out", default="benchmarks/results/cpu/cheaper")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    saved = out / "cheaper.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    micro = load_editor(args.micro_editor)
    full = None if args.skip_512 or args.only == "efficacy" else full_size_editor("ip2p", device="meta")
    prompt = world.make_split("heldout", 1)[0].instruction
    for name in names:
        cfg = candidate_config(CANDIDATES[name], MICRO_ATTACK)
        row = results.setdefault(name, {})
        row["config"] = {k: getattr(cfg, k) for k in ("steps", "step_size", "step_decay", "num_timesteps",
                                                        "timestep_subset", "prompt_subset", "noise", "balance_every")}
        if args.only != "efficacy":
            measure_flops(row, cfg, micro, full, prompt, args.prompts)
        if args.only != "flops":
            measure_efficacy(row, name, cfg, args, out)
        logger.info("%s: %s", name, json.dumps(row))
        saved.write_text(json.dumps(results, indent=2, default=str))    # after each: a stop loses one candidate
    results = {n: results[n] for n in CANDIDATES if n in results}
    lines = table(results)
    (out / "cheaper.md").write_text("\n".join(lines) + "\n")
    saved.write_text(json.dumps(results, indent=2, default=str))
    plotted = [(n, r["tflop_per_photo_512"], r["efficacy"]["own"]["reduction"]) for n, r in results.items()
               if "tflop_per_photo_512" in r and "own" in r.get("efficacy", {})]
    if plotted:
        pareto_svg(plotted, out / "pareto.svg")
    logger.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
