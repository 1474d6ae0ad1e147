"""Budget curves of the micro benchmark: edit success and fidelity at each L∞ budget, and ε₅₀.

ε₅₀ is the budget at which the protected photos' edit success falls to half of the clean photos' success:
found between the two budgets that bracket that level (the first budget at or below it and the one before),
linear in log ε. A curve that is already below half at its smallest budget gives the open bound
``< min``; one that never gets there gives ``> max``. Its 95 % interval is a bootstrap over scenes: scenes
are drawn with replacement (a fixed seed), each draw's rates give one ε₅₀, and the 2.5 and 97.5 percentiles
(nearest rank, so that open bounds stay open) bound it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Bootstrap draws of the scenes and their seed (the interval is the same on every run of the same rows).
RESAMPLES = 1000
SEED = 0
#: The columns a curve is drawn for: one curve per (method, setting), one point per budget.
CURVE = ["method", "editor", "variant", "attack_editor", "prompt_set", "transform"]


def eps50(eps: Sequence[float], clean, protected) -> np.ndarray:
    """ε₅₀ of curves: ``eps`` the budgets (ascending, > 0), ``clean`` the clean success rate of each curve
    (shape ``(...)``), ``protected`` its protected success rate at each budget (``(..., len(eps))``).

    Returns the budget where protected success first reaches half the clean success, interpolated linearly in
    log ε; ``-inf`` when it is already below half at the smallest budget (ε₅₀ < min), ``+inf`` when no
    budget gets there (ε₅₀ > max), NaN when no clean edit succeeds (nothing to stop)."""
    eps = np.asarray(eps, dtype=float)
    if eps.ndim != 1 or eps.size < 1 or (eps <= 0).any() or (np.diff(eps) <= 0).any():
        raise ValueError(f"eps must be positive, ascending budgets, got {eps.tolist()}")
    clean = np.asarray(clean, dtype=float)
    protected = np.asarray(protected, dtype=float)
    if protected.shape != (*clean.shape, eps.size):
        raise ValueError(f"protected must have shape {(*clean.shape, eps.size)}, got {protected.shape}")
    half = clean / 2
    out = np.full(clean.shape, np.inf)
    done = np.zeros(clean.shape, dtype=bool)
    first = protected[..., 0]
    out[first < half] = -np.inf
    out[first == half] = eps[0]
    done |= first <= half
    log_eps = np.log(eps)
    for k in range(1, eps.size):
        hi, lo = protected[..., k], protected[..., k - 1]
        cross = ~done & (hi <= half)
        t = np.divide(lo - half, lo - hi, out=np.ones_like(lo), where=lo != hi)
        out[cross] = np.exp(log_eps[k - 1] + t[cross] * (log_eps[k] - log_eps[k - 1]))
        done |= cross
    out[~(clean > 0)] = np.nan
    return out


def eps50_interval(eps: Sequence[float], clean_hits, clean_n, protected_hits, protected_n,
                   resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """ε₅₀ and its 95 % bootstrap interval over scenes, from per-scene counts: ``clean_hits``/``clean_n``
    (shape ``(scenes,)``) the successful and all clean edits, ``protected_hits``/``protected_n``
    (``(scenes, len(eps))``) the same for the protected photos at each budget. Open bounds are ∓inf."""
    clean_hits, clean_n = np.asarray(clean_hits, float), np.asarray(clean_n, float)
    protected_hits, protected_n = np.asarray(protected_hits, float), np.asarray(protected_n, float)
    point = float(eps50(eps, clean_hits.sum() / clean_n.sum(), protected_hits.sum(0) / protected_n.sum(0)))
    scenes = clean_hits.size
    draws = np.random.default_rng(seed).integers(0, scenes, size=(resamples, scenes))
    weights = np.zeros((resamples, scenes))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = eps50(eps, (weights @ clean_hits) / (weights @ clean_n),
                     (weights @ protected_hits) / (weights @ protected_n))
    boot = np.sort(boot[~np.isnan(boot)])
    if boot.size == 0:
        return point, math.nan, math.nan
    lo = boot[int(math.floor(0.025 * (boot.size - 1)))]
    hi = boot[int(math.ceil(0.975 * (boot.size - 1)))]
    return point, float(lo), float(hi)


def as_levels(eps: float) -> str:
    """A budget on the [0,1] scale in 8-bit levels: ``8/255``."""
    return f"{255 * eps:.3g}/255"


def format_eps50(value: float, eps: Sequence[float]) -> str:
    if math.isnan(value):
        return "n/a"
    if value == -math.inf:
        return f"< {as_levels(min(eps))}"
    if value == math.inf:
        return f"> {as_levels(max(eps))}"
    return as_levels(value)


def curve_table(df) -> list[dict]:
    """One record per curve (CURVE columns, the method order kept): the clean success rate, the protected
    success rate and mean fidelity PSNR at each budget, and ε₅₀ with its interval (numbers and text)."""
    eps = sorted(float(e) for e in df["eps"].unique())
    records = []
    for key, sub in df.groupby(CURVE, sort=False):
        def per_scene(aggfunc: str):
            table = sub.pivot_table(index="case", columns="eps", values="edit_success_protected", aggfunc=aggfunc)
            return table.reindex(columns=eps).fillna(0).to_numpy(float)

        clean = sub.drop_duplicates(["case", "seed"]).groupby("case")["edit_success_clean"].agg(["sum", "count"])
        point, lo, hi = eps50_interval(eps, clean["sum"], clean["count"], per_scene("sum"), per_scene("count"))
        once = sub.drop_duplicates(["case", "eps"])
        records.append({**dict(zip(CURVE, key)), "scenes": len(clean), "eps": eps,
                        "edit_success_clean": float(clean["sum"].sum() / clean["count"].sum()),
                        "edit_success_protected": [float(sub.loc[sub["eps"] == e, "edit_success_protected"].mean())
                                                   for e in eps],
                        "fidelity_psnr": [float(once.loc[once["eps"] == e, "fidelity_psnr"].mean()) for e in eps],
                        "eps50": point, "eps50_low": lo, "eps50_high": hi,
                        "eps50_text": f"{format_eps50(point, eps)} [{format_eps50(lo, eps)}, {format_eps50(hi, eps)}]"})
    return records


def curve_markdown(df) -> list[str]:
    """The summary's budget-curve section (lines)."""
    records = curve_table(df)
    eps = records[0]["eps"]
    header = ["method", "size", "attack editor", "prompts", "transform", "scenes", "edit success clean",
              *(f"{as_levels(e)}: success · PSNR" for e in eps), "ε₅₀ [95 % bootstrap]"]
    lines = ["## Budget curves", "",
             "Edit success of the protected photos and their fidelity PSNR at each budget γ; ε₅₀: the budget at "
             "which protected success falls to half of clean success, interpolated linearly in log γ between the "
             "bracketing budgets (`<` / `>`: not crossed inside the budgets run), with a 95 % bootstrap interval "
             f"over scenes ({RESAMPLES} draws, seed {SEED}).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [f"{100 * s:.0f}% · {p:.1f} dB" for s, p in zip(r["edit_success_protected"], r["fidelity_psnr"])]
        lines.append("| " + " | ".join(str(v) for v in (
            r["method"], r["variant"], r["attack_editor"], r["prompt_set"], r["transform"], r["scenes"],
            f"{100 * r['edit_success_clean']:.0f}%", *cells, r["eps50_text"])) + " |")
    return lines + [""]
