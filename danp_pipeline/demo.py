"""``danp-protect demo``: the whole pipeline, offline, on the bundled sample photos with a tiny editor.

Copies the samples to ``DIR/originals``, runs the same Ray job as ``danp-protect run`` into
``DIR/protected`` and reports, per photo, the measured L∞ distance and PSNR of the protection.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .config import AttackConfig, PipelineConfig

logger = logging.getLogger(__name__)

SAMPLES = Path(__file__).parent / "assets" / "samples"
DEMO_DIR = "danp-demo-output"
DEMO_STEPS = 20          # PGD iterations (the paper uses 100)
DEMO_TIMESTEPS = 4       # timesteps per iteration (the paper uses 10)
DEMO_RESOLUTION = 128    # working resolution (the paper uses 512)
DEMO_PROMPTS = ("put her in a prison cell", "make it look like a painting")


def sample_photos() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def run_demo(directory: str | Path = DEMO_DIR, *, model: str = "tiny-ip2p", steps: int = DEMO_STEPS,
             timesteps: int = DEMO_TIMESTEPS, resolution: int = DEMO_RESOLUTION) -> int:
    """Protect the bundled samples under ``directory``; 0 when every photo was protected."""
    from .job.pipeline import run
    from .manifest.output import Output

    root = Path(directory).resolve()
    originals = root / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    for path in sample_photos():
        shutil.copyfile(path, originals / path.name)
    attack = AttackConfig(steps=steps, num_timesteps=timesteps, resolution=resolution)
    cfg = PipelineConfig(input_uri=str(originals), output_uri=str(root / "protected"), model=model,
                         attack=attack, prompts=DEMO_PROMPTS)
    summary = run(cfg)
    output = Output.open(cfg.output_uri)
    rows = output.current_rows()
    for row in sorted(rows, key=lambda r: r["source_uri"]):
        if row["status"] == "ok":
            logger.info("%-40s L∞ %d levels (bound %d)  PSNR %.2f dB  loss %.4g -> %.4g",
                        Path(row["source_uri"]).name, row["linf_levels"], attack.linf_levels_bound,
                        row["psnr_db"], row["loss_first"], row["loss_last"])
        else:
            logger.warning("%s: %s", row["source_uri"], row["error"])
    logger.info("demo done: %d protected, %d errors. Originals: %s  Protected photos: %s  Manifest: %s  Report: %s",
                summary.ok, summary.errors, originals, output.images_dir, output.manifest_dir, summary.report_uri)
    return 0 if summary.errors == 0 else 1
