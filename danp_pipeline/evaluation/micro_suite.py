"""``danp-protect micro-bench OUT``: protection efficacy with ground truth, on trained micro-editors.

A micro edit world knows the correct edit of every held-out scene, so the question
"does the protection stop the edit?" has a measured answer: the edit of the clean photo succeeds
(the named object takes the asked colour or shape, or disappears, and the rest stays) or not, and the
same for the edit of the protected photo. Two worlds (``world``, micro/worlds.py): the flat 64x64 one
(micro/world.py; editors micro-ip2p and micro-ip2p-b) and the textured 128x128 one (micro/textures.py; the
SD-like proxy editors proxy-ip2p and proxy-ip2p-b, square scenes only; proxy-inpaint, an SD inpainting editor held
out for transfer). Every method protects each scene against the first editor (by default the world's first, whose
object words attend to their objects), or the first ``ensemble`` editors at once, and its instruction at the same
budget; the attacker then edits with each editor's real diffusers pipeline (an inpainting editor repaints the box
drawn around the edit, world.edit_region) in three settings:

- ``own``: the protected editor, the instruction protected against;
- ``unseen``: the protected editor, the same edit in a held-out wording (never protected against);
- transfer: another, independently trained editor (the world's second), the instruction protected against.

With ``budgets`` (``--eps 2/255,4/255,…``) every method runs at every budget, each with its profile's step at
that budget; the summary then adds each method's edit success and fidelity per budget and ε₅₀, the budget at
which protected success falls to half of clean success (evaluation/budget_curves.py).

Results are reported on held-out scenes. ``split="train"`` runs the same benchmark on training scenes, where
the "unseen" wording is the edit's other training wording: a development set on which a method or a preset
is chosen before it is measured once on the held-out scenes and wordings.

With ``view="attacker"`` the scene is a full-size photo (``size_variants``: 4× the editor's size,
square or at 3:2, 16:9, 4:5, or smaller than the editor) protected at full size and resized by the
attacker (Pillow Lanczos, long side = the editor's size, aspect kept, centred crop to the VAE factor)
before the edit; the ground truth is the same scene drawn in that copy's frame. In the textured world the
full-size photo is the 128x128 scene upscaled 4x (Pillow Lanczos) and the ground truth stays the 128x128
scene. In the editor view the same frame's scene is protected at the editor's size (the reference the
attacker's view is measured against). ``transforms`` adds a JPEG re-encoding of the protected file first,
``purifiers`` what the attacker may run on the downloaded file before every editor's edit (purifiers.py). The
micro-editors are small proxies trained in this project, not Stable Diffusion: their numbers rank
methods on a known task, they do not promise how a method does against a real editor.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from ..config import MICRO_EDITORS_DIR, MicroSuiteConfig, method_config, micro_edit_config
from ..micro import world, worlds
from ..micro.worlds import EditWorld
from ..protect.immunizer import Immunizer
from ..protect.models import load_editor
from ..protect.views import editor_size
from .attacker import attackers_copy, variant_shape
from .budget_curves import as_levels, curve_markdown
from .editing import Editor
from .metrics import psnr, ssim
from .objective_probe import ObjectiveProbe
from .purifiers import attackers_input, build_suite
from .report import amplify, purification_section, unpurified

logger = logging.getLogger(__name__)


@dataclass
class Case:
    """One held-out scene and edit, in the training wording and in a held-out wording, at one size variant:
    the full-size photo's (height, width) and the frame of the attacker's copy of it."""

    index: int
    own: world.EditSample
    unseen: world.EditSample
    variant: str = "4x-1:1"
    full_shape: tuple[int, int] = (world.SIZE * 4, world.SIZE * 4)
    frame: world.Frame = world.SQUARE


def variant_frame(variant: str, edit_world: EditWorld = worlds.WORLDS["flat"]
                  ) -> tuple[tuple[int, int], world.Frame]:
    """The full-size photo's (height, width) for ``variant`` and the frame of the attacker's copy of it:
    long side = the editor's size, aspect kept, centred crop to the editors' VAE factor."""
    if variant not in edit_world.size_variants:
        raise ValueError(f"size variant {variant!r} is not drawn in the {edit_world.name} world, which has "
                         f"{', '.join(edit_world.size_variants)} only")
    shape = variant_shape(variant, edit_world.size)
    resized, crop = editor_size(*shape, edit_world.size, edit_world.latent_factor)
    return shape, world.Frame.centred(*resized, crop)


def cases(config: MicroSuiteConfig) -> list[Case]:
    """Scenes of ``config.split``, one edit each (kinds balanced); the same edit in a training wording and in an
    unseen one; every scene at every size variant (variant-major: case index = variant's position × scenes +
    scene's)."""
    edit_world, out = worlds.get(config.world), []
    for variant in config.size_variants:
        shape, frame = variant_frame(variant, edit_world)
        own = edit_world.make_split(config.split, config.scenes, config.scene_seed, "train", frame)
        if config.split == "train":      # development: the other training wording stands in for an unseen one
            unseen = [world.reworded(sample) for sample in own]
        else:
            unseen = edit_world.make_split("heldout", config.scenes, config.scene_seed, "heldout", frame)
        for a, b in zip(own, unseen):
            if (a.scene_seed, a.kind, a.source_object, a.target_object) != (b.scene_seed, b.kind, b.source_object,
                                                                            b.target_object):
                raise RuntimeError("the world drew different edits for the two wordings of one scene")
        out += [Case(len(out) + i, a, b, variant, shape, frame) for i, (a, b) in enumerate(zip(own, unseen))]
    return out


def trained_world(editor: str) -> str | None:
    """The world an editor (a name or a directory) was trained on, as its training.json records it (flat when it
    names none: editors trained before the textured world); None without a record (tiny test editors)."""
    path = Path(editor) if Path(editor).is_dir() else MICRO_EDITORS_DIR / editor
    record = path / "training.json"
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get("config", {}).get("world", "flat")


def check_world(config: MicroSuiteConfig) -> EditWorld:
    """The config's world, once the attack works at its size (the suite protects and edits at the world's size)
    and every editor with a training record was trained on it."""
    edit_world = worlds.get(config.world)
    if config.attack.resolution != edit_world.size:   # budgets differ from attack in eps and step size only
        raise ValueError(f"attack.resolution must be the {edit_world.name} world's size {edit_world.size}, got "
                         f"{config.attack.resolution}")
    for editor in config.editors:
        trained = trained_world(editor)
        if trained not in (None, edit_world.name):
            raise ValueError(f"editor {editor!r} is trained on the {trained} world, not on world={edit_world.name!r}")
    return edit_world


class MicroSuite:
    """Loads the editors once; ``suite(case)`` -> (rows, grid rows) for every method, setting and seed."""

    def __init__(self, config: MicroSuiteConfig) -> None:
        self.config = config
        self.world = check_world(config)
        self.bundles = {name: load_editor(name, device=config.device) for name in config.editors}
        self.editors = {name: Editor(bundle, micro_edit_config(name)) for name, bundle in self.bundles.items()}
        for name, bundle in self.bundles.items():
            if self.world.latent_factor % bundle.vae_scale_factor:
                raise ValueError(f"editor {name!r} needs sides that are multiples of {bundle.vae_scale_factor}; the "
                                 f"{self.world.name} world's frames are multiples of {self.world.latent_factor}")
        self.protected_editor = config.editors[0]
        bundle = self.bundles[self.protected_editor]
        protected = [self.bundles[name] for name in config.editors[: config.ensemble]]
        self.protected_name = "+".join(config.editors[: config.ensemble])
        # every method at every budget, method-major
        self.immunizers = {(m, attack.eps): Immunizer(protected, method_config(m, attack))
                           for m in config.methods for attack in config.attacks}
        self.probe = ObjectiveProbe(bundle, config.attack)
        self.purifiers = build_suite(config.purifiers, config.purify, self.protected_editor, self.bundles,
                                     self.world.size, device=config.device, edit_config=micro_edit_config)

    def settings(self, case: Case) -> list[tuple[str, str, world.EditSample]]:
        """(attack editor, prompt set, sample) triples the attacker plays."""
        first = self.protected_editor
        return [(first, "own", case.own), (first, "unseen", case.unseen),
                *((name, "own", case.own) for name in self.config.editors[1:])]

    def edit(self, editor_name: str, photo: np.ndarray, sample: world.EditSample, seed: int) -> np.ndarray:
        """The attacker's edit of ``photo``; an inpainting editor repaints the box drawn around the edit."""
        mask = world.edit_region(sample) if self.bundles[editor_name].spec.condition == "masked" else None
        return self.editors[editor_name](photo, sample.instruction, seed, mask=mask)

    def photo(self, case: Case) -> np.ndarray:
        """The file the owner protects: the scene at the editor's size, or at full size (attacker view)."""
        if self.config.view == "attacker":
            return self.world.photo(case.own.scene_seed, case.full_shape, case.frame)
        return case.own.source

    def protected_against(self, case: Case) -> list[str]:
        """The instructions the photo is protected against (``protect_set``); the attacker's own comes first."""
        if self.config.protect_set == "kinds":
            return self.world.edits_of_object(case.own, case.frame)
        return [case.own.instruction]

    def seen(self, pixels: np.ndarray, transform: str) -> np.ndarray:
        """What the editor gets from a file (the attacker's resize and JPEG in the attacker view)."""
        if self.config.view == "attacker" or transform != "none":
            return attackers_copy(pixels, self.world.size, self.world.latent_factor, "lanczos", transform)
        return pixels

    def __call__(self, case: Case) -> tuple[list[dict], list[list[np.ndarray]]]:
        cfg = self.config
        full = self.photo(case)
        clean_seen = self.seen(full, "none")
        clean: dict[tuple[str, str, int], tuple[np.ndarray, bool]] = {}
        for editor_name, prompt_set, sample in self.settings(case):
            for seed in cfg.seeds:
                edit = self.edit(editor_name, clean_seen, sample, seed)
                clean[(editor_name, prompt_set, seed)] = (edit, self.world.edit_success(edit, sample))
        rows, panels = [], []
        for (method, eps), immunizer in self.immunizers.items():
            start = time.perf_counter()
            result = immunizer.protect([full], prompts=[self.protected_against(case)], seeds=[cfg.attack.seed])[0]
            seconds = time.perf_counter() - start
            base = {"world": cfg.world, "split": cfg.split, "scene": case.own.scene_seed, "case": case.index,
                    "kind": case.own.kind, "method": method, "eps": eps, "step_size": immunizer.config.step_size,
                    "editor": self.protected_name, "view": cfg.view,
                    "variant": case.variant, "protected_against": len(self.protected_against(case)),
                    "photo_size": f"{full.shape[1]}x{full.shape[0]}", "seconds": seconds,
                    "fidelity_psnr": psnr(full, result.pixels), "linf_levels": result.linf_levels}
            for transform, purifier in product(cfg.transforms, self.purifiers.values()):
                seen = attackers_input(result.pixels, transform, purifier, self.seen, cfg.purify.seed)
                # DANP's terms on the protected editor's copy against the clean copy (the edits' reference)
                objective = self.probe(clean_seen, seen, [case.own.instruction])
                for editor_name, prompt_set, sample in self.settings(case):
                    for seed in cfg.seeds:
                        edit = self.edit(editor_name, seen, sample, seed)
                        clean_edit, clean_ok = clean[(editor_name, prompt_set, seed)]
                        rows.append({**base, "attack_editor": editor_name, "prompt_set": prompt_set,
                                     "transform": transform, "purifier": purifier.name, "seed": seed,
                                     "instruction": sample.instruction,
                                     **objective,
                                     "edit_success_clean": clean_ok,
                                     "edit_success_protected": self.world.edit_success(edit, sample),
                                     "edits_psnr": psnr(clean_edit, edit), "edits_ssim": ssim(clean_edit, edit),
                                     "target_psnr_clean": psnr(sample.target, clean_edit),
                                     "target_psnr_protected": psnr(sample.target, edit)})
                        if (transform, purifier.name, editor_name, prompt_set, seed) == (
                                "none", "none", self.protected_editor, "own", cfg.seeds[0]):
                            levels = immunizer.config.linf_levels_bound
                            panels.append([clean_seen, seen, amplify(clean_seen, seen, levels), clean_edit, edit,
                                           case.own.target])
            logger.info("scene %d (%s, %s) / %s at %s: %.1fs", case.own.scene_seed, case.own.kind, case.variant,
                        method, as_levels(eps), seconds)
        return rows, panels


# -- the report ------------------------------------------------------------------------------------

GROUP = ["method", "eps", "editor", "variant", "attack_editor", "prompt_set", "transform"]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a success rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _mean_ci(values) -> str:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if values.size == 0:
        return "n/a"
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0
    return f"{values.mean():.2f} ± {half:.2f}"


def _rate(flags) -> str:
    flags = np.asarray(flags, dtype=bool)
    lo, hi = wilson(int(flags.sum()), flags.size)
    return f"{100 * flags.mean():.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def edit_deviation(edits_psnr) -> float:
    """Mean squared difference between the clean and the protected edit (images in [0, 1]), from their PSNRs."""
    return float((10 ** (-np.asarray(edits_psnr, dtype=float) / 10)).mean())


def summary_table(df) -> list[dict]:
    """One record per (method, budget, editor, size variant, attack editor, prompt set, transform), the method
    order kept."""
    records = []
    for key, sub in df.groupby(GROUP, sort=False):
        clean, protected = sub["edit_success_clean"].to_numpy(bool), sub["edit_success_protected"].to_numpy(bool)
        once = sub.drop_duplicates(["case"])
        records.append({**dict(zip(GROUP, key)), "n": len(sub),
                        "edit_success_clean": _rate(clean), "edit_success_protected": _rate(protected),
                        "success_reduction": f"{100 * (clean.mean() - protected.mean()):.0f} pts",
                        "edits_psnr": _mean_ci(sub["edits_psnr"]), "edits_ssim": _mean_ci(sub["edits_ssim"]),
                        "target_psnr_protected": _mean_ci(sub["target_psnr_protected"]),
                        "nba": _mean_ci(once["nba"]) if "nba" in once else "n/a",
                        "fidelity_psnr": _mean_ci(once["fidelity_psnr"]), "seconds": _mean_ci(once["seconds"])})
    return records


def summary_markdown(df, settings: dict) -> str:
    records = summary_table(unpurified(df))
    world_name = settings.get("world", "flat")
    header = ["method", "budget", "size", "attack editor", "prompts", "transform", "n", "edit success clean",
              "edit success protected", "reduction", "PSNR edits↓", "SSIM edits↓", "PSNR to target",
              "NBA on the copy↓", "fidelity PSNR", "s/photo"]
    lines = ["# Micro benchmark: protection against trained micro-editors, with ground truth", "",
             "The micro-editors are small InstructPix2Pix- or SD-inpainting-architecture editors trained in this "
             f"project on a procedural world ({world_name}); they are a proxy for Stable Diffusion editors, not a "
             "substitute. "
             f"Edit success follows {worlds.get(world_name).rule}'s rule (the named object takes the asked "
             "colour/shape or disappears, the rest stays). Rates: % [95 % Wilson interval]; means ± 95 % interval "
             "over scenes × edit seeds. PSNR/SSIM edits compare the edit of the protected photo with the edit of "
             "the clean photo (lower: the protection moved the edit more). NBA on the copy: DANP's noise term on "
             "the protected editor's copy of the protected photo against the clean copy, one fixed draw "
             "(evaluation/objective_probe.py; "
             "more negative: more of the objective reached the editor).", "",
             *(f"Protected against: {name}" + (" (an ensemble: one perturbation, the mean of their objectives)."
                                               if "+" in name else ".") for name in df["editor"].unique()), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        lines.append("| " + " | ".join(str(v) for v in (
            r["method"], as_levels(r["eps"]), r["variant"], r["attack_editor"], r["prompt_set"], r["transform"], r["n"],
            r["edit_success_clean"], r["edit_success_protected"], r["success_reduction"], r["edits_psnr"],
            r["edits_ssim"], r["target_psnr_protected"], r["nba"], r["fidelity_psnr"], r["seconds"])) + " |")
    lines.append("")
    if df["eps"].nunique() > 1:
        lines += curve_markdown(unpurified(df))
    drop = df.assign(success_drop=df["edit_success_clean"].astype(float) - df["edit_success_protected"].astype(float),
                     eps=df["eps"].map(as_levels))   # the budget as the main table prints it
    lines += purification_section(drop, GROUP, ["case"], "success_drop", lambda v: f"{100 * v:.0f} pts",
                                  "Reduction of the edit success (clean − protected) in points, over scenes × seeds")
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=2, sort_keys=True, default=str), "```",
              "", "Grids (`grids/case-<n>.png`): one row per method and budget; columns: photo | protected (as the "
              "editor gets it) | amplified δ | edit of clean | edit of protected | ground-truth target.", ""]
    return "\n".join(lines)


def write_report(rows: list[dict], grids: dict[str, list[list[np.ndarray]]], output_dir, settings: dict) -> dict:
    import io

    import pandas as pd
    from PIL import Image

    from ..storage import write_local

    out = Path(output_dir)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    paths = {"parquet": out / "results.parquet", "summary": out / "summary.md"}
    write_local(paths["parquet"], buf.getvalue())
    write_local(paths["summary"], summary_markdown(df, settings).encode())
    for name, panels in grids.items():
        picture = np.concatenate([np.concatenate(row, axis=1) for row in panels], axis=0)
        png = io.BytesIO()
        Image.fromarray(picture).resize((picture.shape[1] * 2, picture.shape[0] * 2), Image.Resampling.NEAREST
                                        ).save(png, format="PNG")
        write_local(out / "grids" / f"{name}.png", png.getvalue())
    logger.info("micro benchmark: %d rows, summary and %d grids in %s", len(df), len(grids), out)
    return paths


def run(config: MicroSuiteConfig, output_dir) -> dict:
    """Evaluate every case (on ``config.workers`` Ray actors when > 1, one torch thread each) and write the
    report; the rows are the same whichever worker ran which case."""
    check_world(config)
    todo = cases(config)
    workers = min(config.workers, len(todo))
    if workers == 1:
        suite = MicroSuite(config)
        results = [suite(case) for case in todo]
    else:
        from . import workers as pool

        with pool.ray_session():
            results = pool.run_on_workers(MicroSuite, (config,), todo, workers=workers, threads=1, label="case",
                                          num_cpus=pool.cpus_per_worker(workers),
                                          num_gpus=pool.gpus_per_worker(config.device, workers))
    rows, grids = [], {}
    for case, (case_rows, panels) in zip(todo, results):
        rows += case_rows
        grids[f"case-{case.index}"] = panels
    return write_report(rows, grids, output_dir, config.settings())
