"""``danp-protect demo``: the whole pipeline, offline, on the bundled sample photos with a tiny editor.

Copies the samples to ``DIR/originals``, runs the same Ray job as ``danp-protect run`` into
``DIR/protected`` and reports, per photo, the measured L∞ distance and PSNR of the protection.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from .config import AttackConfig, PipelineConfig

logger = logging.getLogger(__name__)

SAMPLES = Path(__file__).parent / "assets" / "samples"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="danp-demo-output", help="where originals/ and protected/ go")
    parser.add_argument("--model", default="tiny-ip2p", help="editor (default: the tiny random InstructPix2Pix)")
    parser.add_argument("--steps", type=int, default=20, help="PGD iterations (the paper uses 100)")
    parser.add_argument("--timesteps", type=int, default=4, help="timesteps per iteration (the paper uses 10)")
    parser.add_argument("--resolution", type=int, default=128, help="working resolution (the paper uses 512)")


def sample_photos() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def main(args: argparse.Namespace) -> int:
    from . import storage
    from .pipeline import run
    from .provenance import MANIFEST_DIR, read_manifest, winners

    root = Path(args.dir).resolve()
    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    for path in sample_photos():
        shutil.copyfile(path, originals / path.name)
    attack = AttackConfig(steps=args.steps, num_timesteps=args.timesteps, resolution=args.resolution).validate()
    cfg = PipelineConfig(input_uri=str(originals), output_uri=str(root / "protected"), model=args.model,
                         attack=attack, prompts=("put her in a prison cell", "make it look like a painting"))
    summary = run(cfg.validate())
    fs, out_root = storage.filesystem(cfg.output_uri)
    rows = winners(read_manifest(fs, storage.join(out_root, MANIFEST_DIR))).to_pylist()
    for row in sorted(rows, key=lambda r: r["source_uri"]):
        if row["status"] == "ok":
            logger.info("%-40s L∞ %d levels (bound %d)  PSNR %.2f dB  loss %.4g -> %.4g",
                        Path(row["source_uri"]).name, row["linf_levels"], attack.linf_levels_bound,
                        row["psnr_db"], row["loss_first"], row["loss_last"])
        else:
            logger.warning("%s: %s", row["source_uri"], row["error"])
    logger.info("demo done: %d protected, %d errors. Originals: %s  Protected photos: %s  Manifest: %s",
                summary.ok, summary.errors, originals, root / "protected" / "images", root / "protected" / "manifest")
    return 0 if summary.errors == 0 else 1
