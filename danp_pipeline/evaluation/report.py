"""The evaluation report: a Parquet table, a Markdown summary and one picture grid per photo.

``results.parquet`` has one row per (photo, method, edit seed, robustness transform, purifier). The
summary gives mean ± std per method over photos and seeds (efficacy: edit of the protected photo against
edit of the clean one; fidelity: protected against original; cost per photo), then the efficacy
PSNR/SSIM under each robustness transform, all on the unpurified file; with purifiers, the protection
under each of them and under the attacker's best choice per photo (:func:`purification_table`, shared
with the micro benchmark). ``grids/<photo>.png`` has one row per method:
original | protected | amplified δ | edit of clean | edit of protected.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..storage import write_local

logger = logging.getLogger(__name__)

#: (column, header) of the efficacy metrics, with the direction that means "protection works".
EFFICACY = (("psnr", "PSNR↓"), ("ssim", "SSIM↓"), ("fsim", "FSIM↓"), ("vifp", "VIFp↓"), ("lpips", "LPIPS↑"))
FIDELITY = (("fidelity_psnr", "PSNR↑"), ("fidelity_ssim", "SSIM↑"), ("linf_levels", "L∞ (levels)"))
COST = (("seconds", "s/photo"), ("peak_mem_mb", "peak MiB"))
COLUMNS = ("photo", "prompt", "method", "variant", "view", "width", "height", "seed", "transform", "purifier",
           *(c for c, _ in EFFICACY + FIDELITY + COST), "edit_mse", "nba", "daa", "loss_first", "loss_last",
           "memory_kind", "model", "editor_kind")
PANELS = 5


def amplify(original: np.ndarray, protected: np.ndarray, levels: int) -> np.ndarray:
    """δ shown as an image: mid-grey is zero, ±``levels`` map to black/white."""
    delta = protected.astype(np.float32) - original.astype(np.float32)
    scale = 127.5 / max(levels, 1)
    return np.clip(np.rint(127.5 + delta * scale), 0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Stack rows of equally sized uint8 HxWx3 panels into one image (len(rows)·H × PANELS·W)."""
    if not rows or any(len(r) != PANELS for r in rows):
        raise ValueError(f"every grid row needs {PANELS} panels, got {[len(r) for r in rows]}")
    shapes = {p.shape for r in rows for p in r}
    if len(shapes) != 1:
        raise ValueError(f"grid panels must share one shape, got {sorted(shapes)}")
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def _fmt(values: pd.Series, digits: int) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return "n/a"
    mean, std = values.mean(), values.std(ddof=0) if len(values) > 1 else 0.0
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _digits(column: str) -> int:
    return 2 if column in ("psnr", "fidelity_psnr", "seconds", "linf_levels") else (0 if column == "peak_mem_mb" else 4)


def summary_markdown(df: pd.DataFrame, methods: Sequence[str], notes: Sequence[str] = (),
                     settings: dict | None = None, transforms: Sequence[str] | None = None) -> str:
    """Mean ± std per method: efficacy (no transform), fidelity and cost, then robustness (columns in
    the order of ``transforms``, default: first appearance in ``df``), on the unpurified file; then the
    purification section when ``df`` has purified rows."""
    purified, df = df, unpurified(df)
    attacked = df[df["view"] != "own-size"]          # the attacker's copies (or the editor-size photos)
    clean = attacked[attacked["transform"] == "none"]
    per_photo = clean.drop_duplicates(["photo", "variant", "method"])
    header = ["method", *(h for _, h in EFFICACY), *(f"fid. {h}" for _, h in FIDELITY), *(h for _, h in COST)]
    rows = []
    for m in methods:
        eff, once = clean[clean["method"] == m], per_photo[per_photo["method"] == m]
        rows.append([m, *(_fmt(eff[c], _digits(c)) for c, _ in EFFICACY),
                     *(_fmt(once[c], _digits(c)) for c, _ in FIDELITY + COST)])
    n_photos, n_seeds = df["photo"].nunique(), df["seed"].nunique()
    parts = ["# Protection evaluation", "",
             f"{n_photos} photo(s) × {n_seeds} edit seed(s) per method. Efficacy compares the edit of the "
             "protected photo with the edit of the clean photo (same prompt, same seed): lower PSNR/SSIM/FSIM/"
             "VIFp and higher LPIPS mean a stronger protection. Fidelity compares the protected photo with the "
             "original. Mean ± std over photos × seeds (fidelity and cost: over photos).", "",
             _table(header, rows)]
    transforms = [t for t in (transforms or dict.fromkeys(df["transform"])) if t != "none"]
    if transforms:
        parts += ["", "## Robustness", "",
                  "Efficacy PSNR↓ / SSIM↓ when the protected photo is transformed before the edit "
                  "(the edit of the clean photo is the reference).", ""]
        rob_rows = []
        for m in methods:
            sub = attacked[attacked["method"] == m]
            rob_rows.append([m, *(f"{_fmt(sub[sub['transform'] == t]['psnr'], 2)} / "
                                  f"{_fmt(sub[sub['transform'] == t]['ssim'], 3)}" for t in ["none", *transforms])])
        parts.append(_table(["method", "none", *transforms], rob_rows))
    if (df["view"] == "own-size").any():
        parts += ["", *_attacker_view_section(df, methods)]
    parts += purification_section(
        purified[purified["view"] != "own-size"], ["method", "transform"], ["photo", "variant", "view"], "edit_mse",
        lambda v: f"{v:.5f}", "Edit MSE of the protected photo's edit against the clean photo's ([0,1]², higher = "
        "the protection works), mean over photos × seeds (× the attacker's filters in the attacker view)")
    if notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if settings:
        parts += ["", "## Settings", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```"]
    parts += ["", f"Grids (`grids/<photo>.png`): one row per method in the order {', '.join(methods)}; "
              "columns: original | protected | amplified δ | edit of clean | edit of protected.", ""]
    return "\n".join(parts)


def _attacker_view_section(df: pd.DataFrame, methods: Sequence[str]) -> list[str]:
    """Per method and full-size variant: the edit deviation and DANP's NBA term in the attacker's copy
    against the same protection computed at the editor's own size, and the share that survives."""
    header = ["method", "variant", "edit MSE own size", "edit MSE attacker", "kept", "NBA own size", "NBA attacker",
              "kept"]
    rows = []
    for m in methods:
        for variant in dict.fromkeys(df["variant"]):
            sub = df[(df["method"] == m) & (df["variant"] == variant) & (df["transform"] == "none")]
            own, att = sub[sub["view"] == "own-size"], sub[sub["view"] != "own-size"]
            if own.empty or att.empty:
                continue
            cells = []
            for column, digits in (("edit_mse", 5), ("nba", 3)):
                a, b = own[column].astype(float).mean(), att[column].astype(float).mean()
                kept = f"{100 * b / a:.0f}%" if a and not math.isnan(a) and not math.isnan(b) else "n/a"
                cells += [_fmt(own[column], digits), _fmt(att[column], digits), kept]
            rows.append([m, variant, *cells])
    return ["## Attacker's view", "",
            "Full-size photos protected at full size, then resized by the attacker (Pillow, each filter; mean over "
            "filters) against the same photo resized first and protected at the editor's own size. Edit MSE: the "
            "edit of the protected copy against the edit of the clean copy ([0,1]², higher = protection works); "
            "NBA: DANP's noise term on the copy, one fixed draw (more negative = stronger). kept = attacker / own.",
            "", _table(header, rows)]


def unpurified(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the unpurified file (``purifier`` "none"; rows without a purifier count as unpurified)."""
    if "purifier" not in df:
        return df
    return df[df["purifier"].fillna("none") == "none"]


def purification_table(df: pd.DataFrame, group: Sequence[str], unit: Sequence[str], measure: str) -> list[dict]:
    """Per ``group`` key: the protection ``measure`` (a number per row, higher = the protection works, 0 = it
    does nothing) under every purifier, its mean over the suite (the purifiers other than "none"), and the
    worst case: per ``unit`` (a photo or scene, seeds averaged), the choice of the suite or of no purification
    that leaves the attacker the best edit (the lowest measure), then averaged over units. ``surviving`` =
    worst case / unpurified (NaN when the unpurified measure is not positive); ``worst_purifier``: the most
    frequent choice (ties: the first in the suite's order, "none" first)."""
    df = df.assign(purifier=df["purifier"].fillna("none"))
    order = ["none", *(p for p in dict.fromkeys(df["purifier"]) if p != "none")]
    per_unit = df.groupby([*group, *unit, "purifier"], sort=False, dropna=False)[measure].mean()
    records = []
    for key, sub in per_unit.groupby(level=list(range(len(group))), sort=False, dropna=False):
        table = sub.unstack("purifier").reindex(columns=order)          # units × purifiers
        means = table.mean()
        best = table.idxmin(axis=1, skipna=True)                         # the attacker's choice per unit
        worst = float(table.min(axis=1, skipna=True).mean())
        none, counts = float(means["none"]), best.value_counts()
        records.append({**dict(zip(group, key if isinstance(key, tuple) else (key,))), "units": len(table),
                        "purifiers": {p: float(means[p]) for p in order},
                        "suite_mean": float(means[order[1:]].mean()) if len(order) > 1 else float("nan"),
                        "worst_case": worst,
                        "worst_purifier": max(order, key=lambda p: counts.get(p, 0)),
                        "surviving": worst / none if none > 0 else float("nan")})
    return records


def purification_section(df: pd.DataFrame, group: Sequence[str], unit: Sequence[str], measure: str,
                         fmt: Callable[[float], str], meaning: str) -> list[str]:
    """The summary's purification section (Markdown lines; none without purified rows): the table of
    :func:`purification_table`, ``fmt`` formatting the measure, ``meaning`` saying what it is."""
    if "purifier" not in df or set(df["purifier"].fillna("none")) <= {"none"}:
        return []
    records = purification_table(df, group, unit, measure)
    suite = list(records[0]["purifiers"])

    def cell(value: float) -> str:
        return "n/a" if math.isnan(value) else fmt(value)

    rows = [[*(str(r[g]) for g in group), *(cell(r["purifiers"][p]) for p in suite), cell(r["suite_mean"]),
             cell(r["worst_case"]), r["worst_purifier"],
             "n/a" if math.isnan(r["surviving"]) else f"{100 * r['surviving']:.0f}%"] for r in records]
    header = [*group, *suite, "suite mean", "worst case", "attacker's choice", "surviving"]
    return ["", "## Purification", "",
            f"{meaning}, on the file as downloaded (none) and after each purifier the attacker may run before the "
            "edit (evaluation/purifiers.py); suite mean: over the purifiers. Worst case: for each photo, the "
            "purifier (or none) that left the attacker the best edit, averaged over photos; attacker's choice: the "
            "most frequent one. surviving = worst case / none: the share of the protection that survives an "
            "attacker who purifies.", "", _table(header, rows)]


def write_report(rows: list[dict], grids: dict[str, np.ndarray], output_dir: str | os.PathLike,
                 methods: Sequence[str], notes: Sequence[str] = (), settings: dict | None = None) -> dict[str, Path]:
    """Write results.parquet, summary.md and grids/*.png under ``output_dir``; return their paths."""
    out = Path(output_dir)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    transforms = list(dict.fromkeys(df["transform"]))
    order = ["photo", "variant", "method", "view", "seed", "transform"]
    df = df.sort_values(order, kind="stable").reset_index(drop=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    paths = {"parquet": out / "results.parquet", "summary": out / "summary.md"}
    write_local(paths["parquet"], buf.getvalue())
    write_local(paths["summary"], summary_markdown(df, methods, notes, settings, transforms).encode())
    for name, pixels in grids.items():
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        write_local(out / "grids" / f"{name}.png", png.getvalue())
    logger.info("wrote %d rows, summary and %d grids to %s", len(df), len(grids), out)
    return paths
