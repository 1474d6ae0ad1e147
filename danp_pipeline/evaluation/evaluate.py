"""``danp-protect eval``: how well each protection holds against the editor, and what it costs.

For every (photo, instruction) pair and every method: protect the photo (same budget and PGD
step count for all methods), then play the attacker — edit the clean and the protected photo
with the real editing pipeline, same prompt and seed, for several seeds — and measure

- efficacy, edit(protected) vs edit(clean): PSNR↓ SSIM↓ FSIM↓ VIFp↓ LPIPS↑;
- fidelity, protected vs original: PSNR↑ SSIM↑ L∞ in 8-bit levels;
- robustness: the efficacy again after the protected photo is JPEG-compressed, resized down and
  up, or blurred before the edit;
- cost: seconds and peak memory (CUDA max allocated on GPU, peak RSS on CPU) per photo and method.

Photos are first resized to the working resolution (``--resolution``), so the protection, the
edit and every metric see the same pixels. The report is written by :mod:`danp_pipeline.evaluation.report`;
``jobs/evaluate.py`` runs the same :class:`Evaluator` as Ray actors.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..config import ROBUSTNESS_TRANSFORMS, EvalConfig, method_config, validate_prompts
from ..imaging.codec import decode_image, working_size
from ..protect.immunizer import Immunizer
from ..protect.models import load_editor
from .editing import Editor
from .memory import MEANING, peak_memory
from .metrics import LPIPS, MetricUnavailable, compare, psnr, ssim
from .report import amplify, grid, write_report

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def transform(pixels: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return transform


def _resize_down_up(pixels: np.ndarray) -> np.ndarray:
    img = Image.fromarray(pixels)
    small = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    return np.asarray(small.resize(img.size, Image.Resampling.BICUBIC))


def _blur(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=1.0)))


#: Robustness transforms applied to the protected photo before the edit ("none": efficacy itself).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda pixels: pixels, "jpeg95": _jpeg(95), "jpeg75": _jpeg(75), "jpeg50": _jpeg(50),
    "resize": _resize_down_up, "blur": _blur,
}
assert tuple(TRANSFORMS) == ROBUSTNESS_TRANSFORMS, "config.ROBUSTNESS_TRANSFORMS names these transforms"


@dataclass
class Pair:
    """One photo at working resolution (uint8 HxWx3) and the instruction the attacker edits with."""

    name: str
    rgb: np.ndarray
    prompt: str


def load_pairs(source: str | Path, prompts: tuple[str, ...] = (), resolution: int = 512,
               multiple: int = 64) -> list[Pair]:
    """Pairs from a folder of photos (each × every prompt) or a JSON/JSONL/CSV file of (photo, instruction)."""
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
        size = working_size(img.width, img.height, resolution, multiple)
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
    """Loads the editor once; ``evaluator(pair)`` -> (rows, grid) for every method and seed."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config.validate()
        self.bundle = load_editor(config.model, config.revision, device=config.device, precision=config.attack.precision)
        self.editor = Editor(self.bundle, config.edit)
        self.immunizers = {m: Immunizer(self.bundle, method_config(m, config.attack)) for m in config.methods}

    def __call__(self, pair: Pair) -> tuple[str, list[dict], np.ndarray]:
        cfg, seeds = self.config, self.config.seeds
        clean = {s: self.editor(pair.rgb, pair.prompt, s) for s in seeds}
        prompts = list(cfg.protect_prompts) or [pair.prompt]
        rows, panels = [], []
        for method, immunizer in self.immunizers.items():
            with peak_memory(self.bundle.device) as mem:
                start = time.perf_counter()
                protected = immunizer.protect([pair.rgb], prompts=prompts, seeds=[cfg.attack.seed])[0]
                seconds = time.perf_counter() - start
            base = {"photo": pair.name, "prompt": pair.prompt, "method": method,
                    "fidelity_psnr": psnr(pair.rgb, protected.pixels), "fidelity_ssim": ssim(pair.rgb, protected.pixels),
                    "linf_levels": protected.linf_levels, "seconds": seconds, "peak_mem_mb": mem.mib,
                    "memory_kind": mem.kind, "loss_first": protected.loss_first, "loss_last": protected.loss_last,
                    "model": self.bundle.model_id, "editor_kind": self.bundle.kind}
            first_edit = None
            for seed in seeds:
                for name in cfg.transforms:
                    edit = self.editor(TRANSFORMS[name](protected.pixels), pair.prompt, seed)
                    first_edit = edit if first_edit is None else first_edit
                    scores = compare(clean[seed], edit, lpips_weights_path=cfg.lpips_weights)
                    rows.append({**base, "seed": seed, "transform": name, **scores})
            levels = immunizer.config.linf_levels_bound
            panels.append([pair.rgb, protected.pixels, amplify(pair.rgb, protected.pixels, levels),
                           clean[seeds[0]], first_edit])
            logger.info("%s / %s: %.1fs, fidelity %.2f dB", pair.name, method, seconds, base["fidelity_psnr"])
        return pair.name, rows, grid(panels)


def write_results(config: EvalConfig, results: list[tuple[str, list[dict], np.ndarray]],
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
    return write_report(rows, {name: g for name, _, g in results}, output_dir, config.methods, notes,
                        config.settings())


def run(config: EvalConfig, pairs: list[Pair], output_dir: str | Path) -> dict[str, Path]:
    """Evaluate every pair in this process and write the report."""
    evaluator = Evaluator(config)
    return write_results(config, [evaluator(p) for p in pairs], output_dir)
