"""Design checks of the proxy editor's VAE, on training scenes only (textured world, 128x128, 8x, 4 channels).

Trains one VAE variant (``--variant``) on textured training scenes and measures, on training-split scenes
the VAE never saw (the validation set; held-out scenes are left to the benchmark):

* reconstruction PSNR (target: the range SD's VAE reaches on photos, about 24-28 dB);
* noise pass-through: uniform noise of +-8/255 on the input; the reconstruction's RMS change over the
  noise's RMS, and the posterior mean's RMS change over the latents' spread (an editor sees latents);
* the encoder's movability: PhotoGuard-style PGD on the encoder alone at 8/255 (20 steps), the same latent
  ratio; a VAE that denoises shows a small ratio for both;
* the ceiling an editor can reach: share of VAE-reconstructed ground-truth edits that pass the success rule,
  and the reconstructed sources' outside-the-edit error.

``--old`` measures the shipped micro-ip2p VAE on the flat 64x64 world the same way. Results are merged into
benchmarks/results/proxy_design.json under the variant's name.

    OMP_NUM_THREADS=1 python benchmarks/proxy_design.py --variant a --steps 1500
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from danp_pipeline.micro import textures, training, world

RESULTS = Path(__file__).parent / "results" / "proxy_design.json"
VAL_SEEDS = range(900_000, 900_064)  # training-split scenes that proxy-ip2p's training set (data seed 0) does not hold
EPS = 8 / 255


def variant_config(name: str) -> training.VAEConfig:
    base = training.variant_proxy(training.EditorConfig()).vae
    variants = {
        "a": dataclass_replace(base, kl_weight=1e-6),
        "b-kl": dataclass_replace(base, kl_weight=1e-4),  # what proxy-ip2p uses
        "c-wide": dataclass_replace(base, block_out_channels=(32, 48, 64, 64)),
    }
    return copy.deepcopy(variants[name])


def dataclass_replace(c, **kw):
    import dataclasses

    return dataclasses.replace(c, **kw)


def to_x(images: np.ndarray) -> torch.Tensor:
    return training.to_tensor(images)


@torch.no_grad()
def noise_pass_through(vae, images: np.ndarray, latent_std: float) -> dict:
    x = to_x(images)
    g = torch.Generator().manual_seed(0)
    n = (torch.rand(x.shape, generator=g) * 2 - 1) * EPS * 2  # +-8/255 in [0,1] units is +-16/255 in [-1,1]
    z, zn = vae.encode(x).latent_dist.mode(), vae.encode(x + n).latent_dist.mode()
    r, rn = vae.decode(z).sample, vae.decode(zn).sample
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    return {"recon_change_over_noise_rms": rms(rn - r) / rms(n),
            "latent_change_over_latent_std": rms(zn - z) / latent_std,
            "recon_change_rms_levels": rms(rn - r) * 127.5, "noise_rms_levels": rms(n) * 127.5}


def encoder_pgd(vae, images: np.ndarray, latent_std: float, steps: int = 20) -> dict:
    """Maximise ||E(x + d).mode() - E(x).mode()|| over ||d||_inf <= 8/255 (in [-1, 1] units: 16/255)."""
    x = to_x(images)
    eps, alpha = 2 * EPS, 2 * EPS / 8
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
    g = torch.Generator().manual_seed(1)
    d = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    for _ in range(steps):
        d.requires_grad_(True)
        loss = (vae.encode(x + d).latent_dist.mode() - z).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, d)
        d = (d.detach() + alpha * grad.sign()).clamp(-eps, eps)
        d = ((x + d).clamp(-1, 1) - x)
    with torch.no_grad():
        zd = vae.encode(x + d).latent_dist.mode()
        rec, recd = vae.decode(z).sample, vae.decode(zd).sample
    return {"pgd_latent_change_over_latent_std": float((zd - z).pow(2).mean().sqrt()) / latent_std,
            "pgd_recon_psnr_vs_clean_recon": float(10 * torch.log10(4 / (recd - rec).pow(2).mean()))}


@torch.no_grad()
def recon(vae, images: np.ndarray) -> np.ndarray:
    out = vae.decode(vae.encode(to_x(images)).latent_dist.mode()).sample
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def measure(vae, w, n_val: int = 64) -> dict:
    images = np.stack([w.render_scene(s).image for s in VAL_SEEDS[:n_val]])
    with torch.no_grad():
        lat = torch.cat([vae.encode(to_x(images[i:i + 32])).latent_dist.mode() for i in range(0, len(images), 32)])
    latent_std = float(lat.std())
    out = {"val_psnr_db": training.reconstruction_psnr(vae, images), "latent_std": latent_std,
           "latent_shape": list(lat.shape[1:])}
    out.update(noise_pass_through(vae, images[:32], latent_std))
    out.update(encoder_pgd(vae, images[:8], latent_std))
    samples = w.make_split("train", 48, seed=77)
    rec_t = recon(vae, np.stack([s.target for s in samples]))
    rec_s = recon(vae, np.stack([s.source for s in samples]))
    out["recon_gt_success"] = float(np.mean([w.edit_success(r, s)[0] for r, s in zip(rec_t, samples)]))
    out["recon_source_outside_mae"] = float(np.mean([w.edit_success(r, s)[1]["outside_mae"]
                                                    for r, s in zip(rec_s, samples)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="a")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--old", action="store_true", help="measure the shipped micro-ip2p VAE on the flat world")
    ap.add_argument("--vae-dir", default=None, help="measure this saved AutoencoderKL (trained by train-editor) "
                    "as --variant on the textured world")
    ap.add_argument("--out", default=".scratch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.old:
        from diffusers import AutoencoderKL

        from danp_pipeline.config import MICRO_EDITORS_DIR

        vae = AutoencoderKL.from_pretrained(MICRO_EDITORS_DIR / "micro-ip2p" / "vae").eval()
        name, result = "old-micro-ip2p-flat", {"world": "flat 64x64", "config": dict(vae.config)}
        result.update(measure(vae, world))
    elif args.vae_dir:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_dir).eval()
        name, result = args.variant, {"world": "textured 128x128", "vae_dir": args.vae_dir, "config": dict(vae.config)}
        result.update(measure(vae, textures))
    else:
        c = variant_config(args.variant)
        if args.steps:
            c.steps = args.steps
        # as train-editor draws them: n_scenes scenes and as many edit targets (the same distribution; the
        # editor's own run draws its scenes for n_train_scenes)
        edits = training.training_edits(c.n_scenes, seed=0, world_name="textured")
        images = np.concatenate([edits.scenes, edits.targets[: c.n_scenes]])
        t0 = time.time()
        vae = training.train_vae(c, images)
        train_s = time.time() - t0
        vae.save_pretrained(Path(args.out) / f"vae_{args.variant}")
        name = args.variant
        result = {"world": "textured 128x128", "config": training.dataclasses.asdict(c), "train_s": train_s,
                  "params": sum(p.numel() for p in vae.parameters())}
        result.update(measure(vae, textures))
    logging.info("%s: %s", name, json.dumps(result, default=str))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    all_results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    all_results[name] = result
    RESULTS.write_text(json.dumps(all_results, indent=2, default=str))


if __name__ == "__main__":
    main()
