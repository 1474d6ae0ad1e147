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
edit and every metric see the same pixels. The report is written by :mod:`danp_pipeline.report`;
``jobs/evaluate.py`` runs the same :class:`Evaluator` as Ray actors.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from .baselines import EVAL_METHODS, method_config
from .config import AttackConfig, validate_prompts
from .editing import SCHEDULERS, EditConfig, Editor
from .immunizer import Immunizer
from .imageio import decode_image, working_size
from .metrics import LPIPS, MetricUnavailable, compare, psnr, ssim
from .models import load_editor
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


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: the editor, the methods, the shared attack budget and the attacker's edit."""

    model: str = "tiny-ip2p"
    revision: str | None = None
    methods: tuple[str, ...] = tuple(EVAL_METHODS)
    attack: AttackConfig = field(default_factory=AttackConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    transforms: tuple[str, ...] = tuple(TRANSFORMS)
    protect_prompts: tuple[str, ...] = ()   # protect against these instead of each pair's own instruction
    lpips_weights: str | None = None
    device: str | None = None

    def validate(self) -> "EvalConfig":
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        for m in self.methods:
            method_config(m, self.attack)
        self.edit.validate()
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        unknown = [t for t in self.transforms if t not in TRANSFORMS]
        if unknown or "none" not in self.transforms:
            raise ValueError(f"transforms must include 'none' and come from {list(TRANSFORMS)}, got {list(self.transforms)}")
        if self.protect_prompts:
            validate_prompts(self.protect_prompts)
        return self

    def settings(self) -> dict:
        return dataclasses.asdict(self)


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


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Measure the peak memory of a block: CUDA max allocated, or the process's peak RSS on CPU."""
    info: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield info
        info.update(mb=torch.cuda.max_memory_allocated(device) / 2**20, kind="cuda_max_allocated")
        return
    try:  # Linux: writing 5 to clear_refs resets VmHWM, the peak RSS, to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        kind = "rss_peak"
    except OSError:
        kind = "rss_peak_since_start"
    yield info
    info.update(mb=_rss_peak_mb(), kind=kind)


def _rss_peak_mb() -> float:
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


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
        device = torch.device(config.device) if config.device else None
        self.bundle = load_editor(config.model, config.revision, device=device, precision=config.attack.precision)
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
                    "linf_levels": protected.linf_levels, "seconds": seconds, "peak_mem_mb": mem["mb"],
                    "memory_kind": mem["kind"], "loss_first": protected.loss_first, "loss_last": protected.loss_last,
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
    meaning = {"cuda_max_allocated": "CUDA memory allocated by torch at its peak during the protection",
               "rss_peak": "peak resident memory of the whole process during the protection (editor included)",
               "rss_peak_since_start": "peak resident memory of the process since it started (no per-photo reset)"}
    for kind in sorted({row["memory_kind"] for row in rows}):
        notes.append(f"peak MiB = {meaning.get(kind, kind)}")
    notes.append("s/photo = wall time of the protection alone; the first method of each worker includes warm-up")
    return write_report(rows, {name: g for name, _, g in results}, output_dir, config.methods, notes,
                        config.settings())


def run(config: EvalConfig, pairs: list[Pair], output_dir: str | Path) -> dict[str, Path]:
    """Evaluate every pair in this process and write the report."""
    evaluator = Evaluator(config)
    return write_results(config, [evaluator(p) for p in pairs], output_dir)


def _csv_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    from .cli import add_attack_options

    parser.add_argument("input", metavar="INPUT", help="folder of photos (with --prompt) or a JSON/JSONL/CSV "
                        "file of {photo, instruction} pairs, photo paths relative to the file")
    parser.add_argument("output", metavar="OUTPUT", help="folder for results.parquet, summary.md and grids/")
    parser.add_argument("--model", default="tiny-ip2p", help="diffusers repo id, local dir, tiny-ip2p or tiny-sd")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--prompt", action="append", default=[], help="instruction for a folder INPUT (repeatable)")
    parser.add_argument("--protect-prompt", action="append", default=[],
                        help="protect against these instead of each pair's own instruction (unseen-prompt setting)")
    parser.add_argument("--methods", type=_csv_list(str), default=tuple(EVAL_METHODS),
                        help=f"comma-separated (default: all of {','.join(EVAL_METHODS)})")
    parser.add_argument("--seeds", type=_csv_list(int), default=(0, 1, 2), help="edit seeds (default 0,1,2)")
    parser.add_argument("--transforms", type=_csv_list(str), default=tuple(TRANSFORMS),
                        help=f"robustness transforms (default: all of {','.join(TRANSFORMS)})")
    e = EditConfig()
    g = parser.add_argument_group("the attacker's edit")
    g.add_argument("--editor-steps", type=int, default=None, help="inference steps (default: the pipeline's)")
    g.add_argument("--guidance-scale", type=float, default=e.guidance_scale)
    g.add_argument("--image-guidance-scale", type=float, default=e.image_guidance_scale, help="InstructPix2Pix")
    g.add_argument("--strength", type=float, default=e.strength, help="SD img2img strength")
    g.add_argument("--scheduler", choices=SCHEDULERS, default=e.scheduler)
    parser.add_argument("--lpips-weights", default=None, help="local safetensors file of LPIPS weights "
                        "(default: $DANP_LPIPS_WEIGHTS); without it LPIPS is reported as unavailable")
    add_attack_options(parser)


def from_args(args: argparse.Namespace) -> tuple[EvalConfig, list[Pair]]:
    from .cli import attack_config

    if args.method != "danp":
        logger.warning("--method is ignored by eval; use --methods (got --method %s)", args.method)
        args.method = "danp"
    attack = attack_config(args)
    edit = EditConfig(steps=args.editor_steps, guidance_scale=args.guidance_scale,
                      image_guidance_scale=args.image_guidance_scale, strength=args.strength,
                      scheduler=args.scheduler).validate()
    config = EvalConfig(model=args.model, revision=args.revision, methods=tuple(args.methods), attack=attack,
                        edit=edit, seeds=tuple(args.seeds), transforms=tuple(args.transforms),
                        protect_prompts=tuple(args.protect_prompt), lpips_weights=args.lpips_weights,
                        device=args.device).validate()
    pairs = load_pairs(args.input, tuple(args.prompt), attack.resolution, attack.resolution_multiple)
    logger.info("evaluating %d pair(s) × %d method(s) × %d seed(s): %s", len(pairs), len(config.methods),
                len(config.seeds), json.dumps(config.settings(), sort_keys=True, default=str))
    return config, pairs


def main(args: argparse.Namespace) -> int:
    config, pairs = from_args(args)
    paths = run(config, pairs, args.output)
    logger.info("report: %s (table), %s (summary)", paths["parquet"], paths["summary"])
    return 0
