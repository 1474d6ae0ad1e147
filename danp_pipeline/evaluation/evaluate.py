"""``danp-protect eval``: how well each protection holds against the editor, and what it costs.

For every (photo, instruction) pair and every method: protect the photo (same budget and PGD
step count for all methods), then play the attacker — edit the clean and the protected photo
with the real editing pipeline, same prompt and seed, for several seeds — and measure

- efficacy, edit(protected) vs edit(clean): PSNR↓ SSIM↓ FSIM↓ VIFp↓ LPIPS↑;
- fidelity, protected vs original: PSNR↑ SSIM↑ L∞ in 8-bit levels;
- robustness: the efficacy again after the protected photo is JPEG-compressed, resized down and
  up, or blurred before the edit;
- purification: the efficacy again after each purifier the attacker may run on the downloaded file
  (``purifiers``; purifiers.py), and under the attacker's best choice per photo;
- cost: seconds and peak memory (CUDA max allocated on GPU, peak RSS on CPU) per photo and method.

Two views. ``editor`` (default): photos are first resized to the editor's size (``--resolution``),
protected and edited at that size. ``attacker``: each photo becomes full-size variants (4× the
editor's size at 3:2, 16:9, 4:5, and one smaller than it; attacker.py), each is protected at full
size, and the attacker's copy (JPEG at full size, Pillow resize with each of the attacker's filters,
centred crop to the VAE multiple) is what gets edited — beside the ``own-size`` reference that
protects the attacker's resized copy directly, so the report shows how much of the protection
survives the attacker's path. Rows also carry ``edit_mse`` (the edit deviation) and ``nba``/``daa``
(DANP's objective on the attacker's copy, one fixed draw). The report is written by
:mod:`danp_pipeline.evaluation.report`; ``jobs/evaluate.py`` runs the same :class:`Evaluator` as Ray
actors.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import EvalConfig, method_config, validate_prompts
from ..imaging.codec import decode_image, working_size
from ..protect.immunizer import Immunizer
from ..protect.models import load_editor
from .attacker import TRANSFORMS, attackers_copy, size_variants
from .editing import Editor
from .memory import MEANING, peak_memory
from .metrics import LPIPS, MetricUnavailable, compare, psnr, ssim
from .objective_probe import ObjectiveProbe
from .purifiers import Purifier, attackers_input, build_suite
from .report import amplify, grid, write_report

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIFP_MIN_SIDE = 64


@dataclass
class Pair:
    """One photo (uint8 HxWx3; at the editor's size in the ``editor`` view, full size in the
    ``attacker`` view) and the instruction the attacker edits with."""

    name: str
    rgb: np.ndarray
    prompt: str


def load_pairs(source: str | Path, prompts: tuple[str, ...] = (), resolution: int | None = 512,
               multiple: int = 64) -> list[Pair]:
    """Pairs from a folder of photos (each × every prompt) or a JSON/JSONL/CSV file of (photo, instruction);
    photos resized to the working size, or kept at full size with ``resolution=None``."""
    source = Path(source)
    if source.is_dir():
        if not prompts:
            raise ValueError(f"input {str(source)!r} is a folder: give the edit instruction(s) with --prompt")
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
        entries = [(f.relative_to(source), p) for f in files for p in validate_prompts(prompts)]
        root = source
    elif source.is_file():
        entries, root = _read_pairs_file(source), source.parent
    else:
        raise ValueError(f"input {str(source)!r} is neither a folder of photos nor a pairs file")
    if not entries:
        raise ValueError(f"no (photo, instruction) pairs found in {str(source)!r}")
    pairs, seen = [], set()
    for path, prompt in entries:
        path = path if path.is_absolute() else root / path
        img = decode_image(path.read_bytes())
        size = (img.width, img.height) if resolution is None else working_size(img.width, img.height, resolution,
                                                                                 multiple)
        rgb = img.rgb if (img.width, img.height) == size else \
            np.asarray(Image.fromarray(img.rgb).resize(size, Image.Resampling.LANCZOS))
        stem = str(path.relative_to(root) if path.is_relative_to(root) else path.name)
        name = "".join(c if c.isalnum() or c in "-." else "_" for c in stem.rsplit(".", 1)[0])
        unique, k = name, 1
        while unique in seen:
            unique, k = f"{name}-{k}", k + 1
        seen.add(unique)
        pairs.append(Pair(unique, rgb, prompt))
    return pairs


def _read_pairs_file(path: Path) -> list[tuple[Path, str]]:
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        records = list(csv.DictReader(io.StringIO(text)))
    elif path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.suffix.lower() == ".json":
        data = json.loads(text)
        records = [{"photo": k, "instruction": v} for k, v in data.items()] if isinstance(data, dict) else data
    else:
        raise ValueError(f"pairs file {str(path)!r} must be .json, .jsonl or .csv")
    entries = []
    for i, rec in enumerate(records):
        photo = rec.get("photo") or rec.get("image") if isinstance(rec, dict) else None
        instruction = (rec.get("instruction") or rec.get("prompt")) if isinstance(rec, dict) else None
        if not photo or not instruction:
            raise ValueError(f"pair {i} of {str(path)!r} needs 'photo' and 'instruction' fields, got {rec!r}")
        for prompt in ([instruction] if isinstance(instruction, str) else instruction):
            entries.append((Path(photo), validate_prompts([prompt])[0]))
    return entries


def lpips_problem(weights_path: str | None) -> str | None:
    """Why LPIPS cannot be computed, or None when its weights load."""
    try:
        LPIPS(weights_path, device="cpu")
    except (MetricUnavailable, ValueError) as exc:
        return str(exc)
    return None


class Evaluator:
    """Loads the editor once; ``evaluator(pair)`` -> (name, rows, grids) for every method and seed."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.bundle = load_editor(config.model, config.revision, device=config.device,
                                  precision=config.attack.precision)
        self.editor = Editor(self.bundle, config.edit)
        self.immunizers = {m: Immunizer(self.bundle, method_config(m, config.attack)) for m in config.methods}
        self.probe = ObjectiveProbe(self.bundle, config.attack)
        self.purifiers = build_suite(config.purifiers, config.purify, config.model, {config.model: self.bundle},
                                     config.attack.resolution, device=config.device,
                                     precision=config.attack.precision)

    def __call__(self, pair: Pair) -> tuple[str, list[dict], dict[str, np.ndarray]]:
        if self.config.view == "attacker":
            photos = size_variants(pair.rgb, self.config.attack.resolution, self.config.size_variants)
            views = ("own-size", *self.config.attacker_filters)
        else:
            photos, views = {"editor-size": pair.rgb}, ("none",)
        rows, grids = [], {}
        for variant, full in photos.items():
            variant_rows, grids[f"{pair.name}@{variant}" if len(photos) > 1 else pair.name] = \
                self._evaluate(pair, variant, full, views)
            rows += variant_rows
        return pair.name, rows, grids

    def seen(self, pixels: np.ndarray, view: str, transform: str, purifier: Purifier | None = None) -> np.ndarray:
        """What the editor gets: ``none`` = the photo as is (the ``editor`` view); ``own-size`` = a photo
        already at the editor's size; else the attacker's copy resized with the Pillow filter ``view``;
        ``purifier`` run by the attacker on the way (purifiers.attackers_input)."""
        if purifier is not None:
            return attackers_input(pixels, transform, purifier, lambda file, t: self.seen(file, view, t),
                                   self.config.purify.seed)
        if view == "none":
            return TRANSFORMS[transform](pixels)
        return attackers_copy(pixels, self.config.attack.resolution, self.bundle.vae_scale_factor,
                              "lanczos" if view == "own-size" else view, transform)

    def _evaluate(self, pair: Pair, variant: str, full: np.ndarray,
                  views: tuple[str, ...]) -> tuple[list[dict], np.ndarray]:
        cfg, seeds = self.config, self.config.seeds
        clean_seen = {view: self.seen(full, view, "none") for view in views}
        clean = {(view, s): self.editor(clean_seen[view], pair.prompt, s) for view in views for s in seeds}
        prompts = list(cfg.protect_prompts) or [pair.prompt]
        rows, panels = [], []
        for method, immunizer in self.immunizers.items():
            with peak_memory(self.bundle.device) as mem:
                start = time.perf_counter()
                protected = immunizer.protect([full], prompts=prompts, seeds=[cfg.attack.seed])[0]
                seconds = time.perf_counter() - start
            files = {view: protected.pixels for view in views}
            if "own-size" in views:   # the reference: the attacker's resized copy, protected at its own size
                files["own-size"] = immunizer.protect([clean_seen["own-size"]], prompts=prompts,
                                                      seeds=[cfg.attack.seed])[0].pixels
            base = {"photo": pair.name, "prompt": pair.prompt, "method": method, "variant": variant,
                    "width": full.shape[1], "height": full.shape[0],
                    "fidelity_psnr": psnr(full, protected.pixels), "fidelity_ssim": ssim(full, protected.pixels),
                    "linf_levels": protected.linf_levels, "seconds": seconds, "peak_mem_mb": mem.mib,
                    "memory_kind": mem.kind, "loss_first": protected.loss_first, "loss_last": protected.loss_last,
                    "model": self.bundle.model_id, "editor_kind": self.bundle.kind}
            panel = None
            for view in views:
                for name, purifier in product(cfg.transforms, self.purifiers.values()):
                    seen = self.seen(files[view], view, name, purifier)
                    probe = self.probe(clean_seen[view], seen, prompts)
                    for seed in seeds:
                        edit = self.editor(seen, pair.prompt, seed)
                        reference = clean[(view, seed)]
                        scores = compare(reference, edit, _metrics_for(edit), lpips_weights_path=cfg.lpips_weights)
                        mse = float(np.mean(((edit.astype(np.float32) - reference) / 255.0) ** 2))
                        rows.append({**base, "view": view, "seed": seed, "transform": name,
                                     "purifier": purifier.name, **scores, "edit_mse": mse, **probe})
                        if panel is None and (name, purifier.name) == ("none", "none") and view != "own-size":
                            levels = immunizer.config.linf_levels_bound
                            panel = [clean_seen[view], seen, amplify(clean_seen[view], seen, levels),
                                     reference, edit]
            panels.append(panel)
            logger.info("%s %s / %s: %.1fs, fidelity %.2f dB", pair.name, variant, method, seconds,
                        base["fidelity_psnr"])
        return rows, grid(panels)


def _metrics_for(image: np.ndarray) -> tuple[str, ...]:
    """VIFp needs 64 px on the short side (4 scales); smaller editor copies get the others."""
    small = min(image.shape[:2]) < VIFP_MIN_SIDE
    return tuple(m for m in ("psnr", "ssim", "fsim", "vifp", "lpips") if not (small and m == "vifp"))


def write_results(config: EvalConfig, results: list[tuple[str, list[dict], dict[str, np.ndarray]]],
                  output_dir: str | Path) -> dict[str, Path]:
    """Write the report of every evaluated pair; notes say what could not be measured."""
    rows = [row for _, pair_rows, _ in results for row in pair_rows]
    notes = []
    problem = lpips_problem(config.lpips_weights)
    if problem:
        notes.append(f"LPIPS was not computed (column empty, n/a above): {problem}")
    for kind in sorted({row["memory_kind"] for row in rows}):
        notes.append(f"peak MiB = {MEANING.get(kind, kind)} during the protection")
    notes.append("s/photo = wall time of the protection alone; the first method of each worker includes warm-up")
    grids = {name: g for _, _, pair_grids in results for name, g in pair_grids.items()}
    return write_report(rows, grids, output_dir, config.methods, notes, config.settings())


def run(config: EvalConfig, pairs: list[Pair], output_dir: str | Path) -> dict[str, Path]:
    """Evaluate every pair in this process and write the report."""
    evaluator = Evaluator(config)
    return write_results(config, [evaluator(p) for p in pairs], output_dir)
