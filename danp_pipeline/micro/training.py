"""Train a micro InstructPix2Pix editor on the micro edit world, from scratch, on CPU.

Two worlds (``EditorConfig.world``): the flat 64x64 one (micro-ip2p, micro-ip2p-b: VAE factor 4) and the
textured 128x128 one (proxy-ip2p, proxy-ip2p-b: VAE factor 8 into 4 channels, as Stable Diffusion's, so the
latents are 16x16 in both and the UNet costs the same).

A third kind for the textured world, ``--variant proxy-inpaint``: a Stable Diffusion inpainting editor (9-channel
UNet [z_t, m, E(x ⊙ (1 − m))], m the box an attacker draws around the edit, saved as
``StableDiffusionInpaintPipeline``), held out from every choice to measure transfer to another kind of editor.

Stages (all real diffusers / transformers classes):

1. ``AutoencoderKL`` trained as a plain autoencoder (MSE + L1 + small KL) on random
   factor-aligned crops of world images (64x64 -> 4x16x16 latent; textured: 128x128 -> 4x16x16).
   ``scaling_factor`` is set to 1 / std of the latents afterwards.
2. The training edits are encoded once with the frozen VAE: source latents are
   ``E(x).mode()`` without scaling (as ``StableDiffusionInstructPix2PixPipeline.prepare_image_latents``),
   target latents are ``E(y).mode() * scaling_factor``.
3. ``UNet2DConditionModel`` (in_channels=8: [z_t, E(x)], cross-attention blocks) and a small
   ``CLIPTextModel`` trained jointly with v- (or epsilon-) prediction under ``DDPMScheduler`` (1000 steps,
   scaled_linear 0.00085-0.012). Text (-> "") and image (-> zeros) conditioning are dropped
   independently for classifier-free guidance. An EMA of both is kept and saved.
   ``attention_loss`` > 0 adds an auxiliary term that puts the named object's words' cross-attention
   on the object's mask (what SD's attention does by itself after web-scale training; see
   :class:`EditorConfig`).

The result is saved with ``StableDiffusionInstructPix2PixPipeline.save_pretrained`` (safetensors)
plus ``training.json`` (config, seeds, times on the work clock -- CPU seconds per torch thread, so that
a shared machine does not shorten a budget -- and the wall time, sha256 of every weight file).

Usage: ``danp-protect train-editor OUT [--variant a|b|proxy|proxy-b] [--quick] [--vae-from DIR]
[--checkpoint-dir DIR --resume]``; the shipped editors live under ``danp_pipeline/assets/editors/<name>/``
(``micro-ip2p``, ``micro-ip2p-b``). A run longer than a working session checkpoints (``checkpoint_every_s``)
into ``--checkpoint-dir``, a loadable editor plus ``resume/`` (see :mod:`.resume`), and the same command with
``--resume`` continues from it: proxy-ip2p trains with
``danp-protect train-editor .scratch/proxy-run --variant proxy --checkpoint-dir benchmarks/checkpoints/proxy-ip2p
--resume``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from fsspec.implementations.local import LocalFileSystem
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .. import storage
from ..protect.attention import AttentionStore, capture_cross_attention
from . import resume, textures, world
from .tokenizer import build_tokenizer, check_single_tokens

logger = logging.getLogger(__name__)

WORLDS = {"flat": world, "textured": textures}


def work_clock() -> float:
    """Seconds of work: this process's CPU time over its torch threads, i.e. the wall time the run takes on
    as many dedicated cores. Budgets and recorded times use it, so that a run on a machine shared with other
    jobs trains as far as one on an idle machine (its wall time is recorded too)."""
    return time.process_time() / max(torch.get_num_threads(), 1)


@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # 3 levels -> latent factor 4
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 3000
    batch: int = 32
    crop: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    n_scenes: int = 4000
    seed: int = 0
    # Fold the per-channel latent mean into quant_conv / post_quant_conv (exact re-parametrisation),
    # so diffusion starts from noise around the data mean. Recommended for the next run (see README).
    center_latents: bool = False


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    norm_num_groups: int = 16


@dataclass
class TextConfig:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_length: int = 16


@dataclass
class EditorConfig:
    name: str = "micro-ip2p"
    seed: int = 0
    data_seed: int = 0
    n_train_scenes: int = 6000  # each scene gets one edit of every kind
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    p_drop_text: float = 0.08
    p_drop_image: float = 0.08
    checkpoint_every: int = 500
    checkpoint_every_s: float = 0.0  # >0: also checkpoint (resumable) every that many seconds
    record_scenes: int = 200  # held-out scenes of the VAE's reconstruction record
    time_budget_s: float = 0.0  # >0: the LR schedule follows elapsed time (work_clock) and training stops at the budget
    # "v_prediction": the UNet predicts v = sqrt(abar) eps - sqrt(1-abar) z0, so near t = T its error is not
    # amplified 1/sqrt(abar_T) ~ 15x into the x0 estimate (epsilon-trained micro editors drifted in colour).
    prediction_type: str = "v_prediction"
    # Weight of the auxiliary loss (1 - share of the object words' cross-attention inside the object's mask).
    # Stable Diffusion's object words attend to their objects (Prompt-to-Prompt, DAAM) as an emergent effect of
    # web-scale training; the micro-editor trained without it spread that attention evenly (6.2 % inside an
    # object covering 6.2 %), so DANP's attention term had nothing to aim at. 0 turns it off (micro-ip2p-b).
    attention_loss: float = 0.1
    # "flat": the 64x64 micro world (micro/world.py); "textured": the 128x128 textured world (micro/textures.py).
    world: str = "flat"
    # "ip2p": InstructPix2Pix ([z_t, E(x)], per scene); "sd-inpaint": Stable Diffusion inpainting ([z_t, m,
    # E(x ⊙ (1 − m))], per edit, m the box an attacker draws around the edit: world.edit_region), saved as
    # StableDiffusionInpaintPipeline. The prompt is the instruction in both.
    kind: str = "ip2p"
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)


def quick(cfg: EditorConfig) -> EditorConfig:
    """A few-minute variant for smoke tests."""
    cfg = copy.deepcopy(cfg)
    cfg.n_train_scenes, cfg.steps, cfg.batch, cfg.checkpoint_every = 300, 60, 16, 10**9
    cfg.vae.steps, cfg.vae.n_scenes = 100, 300
    if cfg.world == "textured":  # 128x128 images: about ten times the flat world's cost per image
        cfg.n_train_scenes, cfg.steps, cfg.batch, cfg.record_scenes = 12, 4, 8, 4
        cfg.vae.steps, cfg.vae.n_scenes, cfg.vae.batch = 4, 12, 2
    return cfg


def variant_b(cfg: EditorConfig) -> EditorConfig:
    """Independent second editor: other seeds, other widths."""
    cfg = copy.deepcopy(cfg)
    cfg.name, cfg.seed, cfg.data_seed = "micro-ip2p-b", 1, 1
    cfg.attention_loss = 0.0  # shipped as first trained: without attention supervision
    cfg.unet = UNetConfig(block_out_channels=(32, 48, 64), cross_attention_dim=48, attention_head_dim=8,
                          norm_num_groups=16)
    cfg.text = TextConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    cfg.vae.seed = 1
    return cfg


def variant_proxy(cfg: EditorConfig) -> EditorConfig:
    """The SD-like proxy editor: the textured 128x128 world, a VAE that downsamples 8x into 4 channels
    (16x16 latents, so the UNet costs what micro-ip2p's does), trained within 2 h on 2 cores."""
    cfg = copy.deepcopy(cfg)
    cfg.name, cfg.world = "proxy-ip2p", "textured"
    cfg.n_train_scenes = 4000
    # KL weight 1e-4, not 1e-6: on training scenes PGD on the encoder at 8/255 moved its latents 0.47 latent
    # standard deviations against 0.25 at 1e-6, random noise 0.026 against 0.014, for 24.2 dB instead of 25.1
    # (benchmarks/results/proxy_design.md): the editor must be movable by an attack and not by noise, as SD's is.
    cfg.vae = VAEConfig(block_out_channels=(16, 32, 64, 64), crop=64, batch=16, steps=1500, n_scenes=3000,
                        kl_weight=1e-4, center_latents=True)
    # Whole run within 2 h: data ~2 min, VAE ~13 min, encoding ~4 min, UNet 95 min. Resumable checkpoints
    # every 12 minutes (a session may end before the run does).
    cfg.steps, cfg.time_budget_s = 100_000, 5700.0
    cfg.checkpoint_every, cfg.checkpoint_every_s = 10**9, 720.0
    return cfg


def variant_proxy_b(cfg: EditorConfig) -> EditorConfig:
    """The proxy's transfer editor: other seeds and widths (as micro-ip2p-b is to micro-ip2p)."""
    cfg = variant_proxy(cfg)
    b = variant_b(EditorConfig())
    cfg.name, cfg.seed, cfg.data_seed = "proxy-ip2p-b", 1, 1
    cfg.unet, cfg.text = b.unet, b.text
    cfg.vae.seed = 1
    cfg.vae.block_out_channels = (16, 32, 48, 64)
    return cfg


def variant_proxy_inpaint(cfg: EditorConfig) -> EditorConfig:
    """A held-out editor of another kind for the proxy world: SD inpainting (9-channel UNet, the photo reaches it
    only outside the attacker's box), its own seeds and VAE. Used to measure transfer, never to choose anything;
    one hour of UNet training (the ip2p proxies had 95 minutes)."""
    cfg = variant_proxy(cfg)
    cfg.name, cfg.kind, cfg.seed, cfg.data_seed = "proxy-inpaint", "sd-inpaint", 2, 2
    cfg.vae.seed = 2
    cfg.p_drop_image = 0.0   # inpainting is guided by text only: the masked photo is always given
    cfg.time_budget_s = 3600.0
    return cfg


VARIANTS = {"a": lambda c: c, "b": variant_b, "proxy": variant_proxy, "proxy-b": variant_proxy_b,
            "proxy-inpaint": variant_proxy_inpaint}


# ----------------------------------------------------------------------------- data


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWx3 -> float Nx3xHxW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass
class TrainingEdits:
    """The training set: every scene once, every edit as (scene index, target, instruction, object)."""

    scenes: np.ndarray  # uint8 [S, 64, 64, 3]
    targets: np.ndarray  # uint8 [N, 64, 64, 3]
    index: np.ndarray  # int [N]: the edit's scene
    texts: list[str]
    object_masks: np.ndarray  # bool [N, 64, 64]: the named (source) object
    object_tokens: np.ndarray  # int [N, 2]: token positions of the object's colour and shape (BOS is token 0)
    regions: np.ndarray  # bool [N, 64, 64]: the box an attacker draws around the edit (world.edit_region)


def object_token_positions(instruction: str, obj: world.WorldObject) -> tuple[int, int]:
    """Token positions of the named object's "<colour> <shape>" in ``instruction`` as the world's
    tokenizer encodes it: one token per word, after BOS."""
    words = instruction.split()
    for i in range(len(words) - 1):
        if words[i] == obj.color and words[i + 1] == obj.shape:
            return i + 1, i + 2
    raise ValueError(f"instruction {instruction!r} does not name {obj.name!r}")


def share_inside(att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each attention map's mass [..., h, w] that falls inside ``mask`` (same grid)."""
    return (att * mask).sum(dim=(-2, -1)) / att.sum(dim=(-2, -1))


def world_module(name: str):
    """The edit world an editor is trained on: "flat" (micro/world.py, 64x64) or "textured"
    (micro/textures.py, 128x128)."""
    if name not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {name!r}")
    return WORLDS[name]


def heldout_images(world_name: str, n: int = 200) -> np.ndarray:
    """The first ``n`` held-out scenes of a world (the VAE's reconstruction record)."""
    lo = world.SCENE_SEED_RANGES["heldout"][0]
    return np.stack([world_module(world_name).render_scene(s).image for s in range(lo, lo + n)])


def training_edits(n_scenes: int, seed: int, world_name: str = "flat") -> TrainingEdits:
    """One edit of every kind for ``n_scenes`` train scenes, train wordings only."""
    w = world_module(world_name)
    lo, hi = world.SCENE_SEED_RANGES["train"]
    rng = np.random.default_rng([seed, 101])
    seeds = rng.choice(hi - lo, size=n_scenes, replace=False) + lo
    scenes, targets, index, texts, masks, tokens, regions = [], [], [], [], [], [], []
    for si, s in enumerate(seeds):
        scene = w.render_scene(int(s))
        scenes.append(scene.image)
        for kind in world.EDIT_KINDS:
            smp = w.sample_edit(scene, np.random.default_rng([int(s), seed, 17, len(kind)]), "train", kind)
            targets.append(smp.target)
            index.append(si)
            texts.append(smp.instruction)
            masks.append(smp.source_mask)
            tokens.append(object_token_positions(smp.instruction, smp.source_object))
            regions.append(world.edit_region(smp))
    return TrainingEdits(np.stack(scenes), np.stack(targets), np.array(index), texts, np.stack(masks),
                         np.array(tokens), np.stack(regions))


# ----------------------------------------------------------------------------- VAE


def make_vae(c: VAEConfig, sample_size: int = world.SIZE) -> AutoencoderKL:
    n = len(c.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=c.block_out_channels,
        layers_per_block=c.layers_per_block,
        latent_channels=c.latent_channels,
        norm_num_groups=c.norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=False,  # fully convolutional: crops train the full-size model
    )


def train_vae(c: VAEConfig, images: np.ndarray, log_every: int = 250) -> AutoencoderKL:
    """Train the autoencoder on random crops (aligned to the latent factor) of ``images``."""
    torch.manual_seed(c.seed)
    size = images.shape[1]
    vae = make_vae(c, size)
    factor = 2 ** (len(c.block_out_channels) - 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=c.lr, weight_decay=0.0)
    data = to_tensor(images)
    g = torch.Generator().manual_seed(c.seed)
    t0 = work_clock()
    for step in range(c.steps):
        lr = c.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / c.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(data), (c.batch,), generator=g)
        ox, oy = (torch.randint(0, (size - c.crop) // factor + 1, (2,), generator=g) * factor).tolist()
        x = data[idx, :, oy : oy + c.crop, ox : ox + c.crop]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + c.l1_weight * (rec - x).abs().mean() + c.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == c.steps - 1:
            logger.info("vae step %d loss %.5f lr %.2e (%.0fs)", step, loss.item(), lr, work_clock() - t0)
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_mode(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """``E(x).mode()`` (unscaled) of uint8 images."""
    return torch.cat([vae.encode(to_tensor(images[i : i + batch])).latent_dist.mode()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def inpainting_conditions(vae: AutoencoderKL, scenes: np.ndarray, index: np.ndarray, regions: np.ndarray,
                          batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``StableDiffusionInpaintPipeline`` puts beside z_t for each edit: the mask at the latent grid
    (nearest) and the scaled latents of the photo with the mask's pixels set to 0 (mid-grey), as the posterior's
    mean [N, 1 + C, h, w] and standard deviation (0 for the mask): the pipeline samples them."""
    sf, factor = vae.config.scaling_factor, 2 ** (len(vae.config.block_out_channels) - 1)
    grid = (scenes.shape[1] // factor, scenes.shape[2] // factor)
    means, stds = [], []
    for i in range(0, len(index), batch):
        m = torch.from_numpy(regions[i : i + batch]).float()[:, None]
        post = vae.encode(to_tensor(scenes[index[i : i + batch]]) * (m < 0.5)).latent_dist
        m = F.interpolate(m, size=grid)
        means.append(torch.cat([m, post.mean * sf], dim=1))
        stds.append(torch.cat([torch.zeros_like(m), post.std * sf], dim=1))
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def center_vae_latents(vae: AutoencoderKL, mean: torch.Tensor) -> None:
    """Make the posterior mean zero-centred without changing reconstructions.

    ``quant_conv`` outputs [mean, logvar]; its mean-channel bias is lowered by ``mean``. The
    1x1 ``post_quant_conv`` computes ``W z + b``; with ``z' = z - mean`` the bias becomes
    ``b + W mean`` so ``decode(z')`` equals the old ``decode(z)``.
    """
    c = mean.numel()
    vae.quant_conv.bias[:c] -= mean
    w = vae.post_quant_conv.weight[:, :, 0, 0]
    vae.post_quant_conv.bias += w @ mean


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: np.ndarray) -> float:
    """Mean PSNR (dB) of decode(mode(encode(x))) against x, on uint8 images."""
    out = []
    for i in range(0, len(images), 128):
        rec = vae.decode(vae.encode(to_tensor(images[i : i + 128])).latent_dist.mode()).sample
        rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        out += [world.psnr(a, b) for a, b in zip(rec_u8, images[i : i + 128])]
    return float(np.mean(out))


# ----------------------------------------------------------------------------- UNet + text encoder


def make_unet(c: UNetConfig, latent_channels: int, sample_size: int = world.SIZE // 4,
              condition_channels: int | None = None) -> UNet2DConditionModel:
    """The denoiser: [z_t, condition] in (``condition_channels``, default ``latent_channels``: InstructPix2Pix's
    E(x); 1 + latent_channels: inpainting's mask and masked-photo latents), the noise or velocity out."""
    n = len(c.block_out_channels)
    extra = latent_channels if condition_channels is None else condition_channels
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels + extra,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=c.block_out_channels,
        layers_per_block=c.layers_per_block,
        cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=c.attention_head_dim,
        norm_num_groups=c.norm_num_groups,
    )


def make_text_encoder(c: TextConfig, tok: CLIPTokenizer, projection_dim: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_length,
        projection_dim=projection_dim,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg)


def make_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, prediction_type=prediction_type,
    )


def tokenize(tok: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Padded ids exactly as the pipeline's ``encode_prompt`` builds them."""
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def train_denoiser(
    cfg: EditorConfig,
    tok: CLIPTokenizer,
    src_lat: torch.Tensor,
    tgt_lat: torch.Tensor,
    index: torch.Tensor,
    ids: torch.Tensor,
    checkpoint: "callable | None" = None,
    object_masks: torch.Tensor | None = None,
    object_tokens: torch.Tensor | None = None,
    resume_from: str | Path | None = None,
    cond_std: torch.Tensor | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel, list[float], list[float], float]:
    """Joint epsilon- or v-prediction training of UNet and text encoder.

    Edit ``i`` denoises ``tgt_lat[i]`` given ``src_lat[index[i]]`` beside z_t: InstructPix2Pix's E(x) per scene,
    or inpainting's mask and masked-photo latents per edit; with ``cond_std`` (same rows) the condition is drawn
    from that posterior at every step, as the inpainting pipeline draws it.

    ``checkpoint(state)`` (a :class:`resume.DenoiserState`) is called every ``cfg.checkpoint_every`` steps
    and, with ``cfg.checkpoint_every_s`` > 0, every that many seconds; ``resume_from``: a folder written by
    :func:`resume.save`, to continue from (its elapsed time counts against ``cfg.time_budget_s``).

    Returns the EMA copies, the denoising loss of every step and (with the attention loss) the object
    words' attention share inside the object at every step, and the training's wall time (all runs).

    With ``cfg.attention_loss > 0``, ``object_masks`` [N, h, w] (the named object at the latent grid) and
    ``object_tokens`` [N, k] (its words' token positions) add ``cfg.attention_loss * (1 - share)``, where
    share is the fraction of the words' cross-attention (mean over heads and ``attn2`` layers, as DANP reads
    it) that falls inside the mask; samples whose text was dropped are left out."""
    torch.manual_seed(cfg.seed)
    unet = make_unet(cfg.unet, tgt_lat.shape[1], tgt_lat.shape[-1], src_lat.shape[1])
    text = make_text_encoder(cfg.text, tok, cfg.unet.cross_attention_dim)
    if cfg.text.hidden_size != cfg.unet.cross_attention_dim:
        raise ValueError(
            f"text.hidden_size ({cfg.text.hidden_size}) must equal unet.cross_attention_dim "
            f"({cfg.unet.cross_attention_dim})"
        )
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    supervise = cfg.attention_loss > 0
    if supervise and (object_masks is None or object_tokens is None):
        raise ValueError("attention_loss > 0 needs object_masks and object_tokens")
    store = AttentionStore()
    capture = capture_cross_attention(unet, store) if supervise else contextlib.nullcontext()
    sched = make_scheduler(cfg.prediction_type)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    empty = tokenize(tok, [""])[0]
    g = torch.Generator().manual_seed(cfg.seed)
    state = resume.DenoiserState(unet, text, ema_unet, ema_text, opt, g)
    if resume_from is not None:
        resume.load(resume_from, state)
        logger.info("resumed from %s at step %d (%.0fs done)", resume_from, state.step, state.elapsed_s)
    losses, attention_shares = state.losses, state.attention_shares
    t0 = work_clock() - state.elapsed_s
    last_checkpoint = time.time()  # checkpoints follow the wall clock: they are there to survive a session

    def batch_loss(gen: torch.Generator) -> tuple[torch.Tensor, float]:
        """The training loss of one batch drawn from ``gen`` (records the attention share when supervised),
        and its denoising part."""
        b = torch.randint(len(tgt_lat), (cfg.batch,), generator=gen)
        z0 = tgt_lat[b]
        cond = src_lat[index[b]].clone()
        tids = ids[b].clone()
        drop_t = torch.rand(cfg.batch, generator=gen) < cfg.p_drop_text
        drop_i = torch.rand(cfg.batch, generator=gen) < cfg.p_drop_image
        tids[drop_t] = empty
        cond[drop_i] = 0.0
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        if cond_std is not None:
            cond = cond + cond_std[index[b]] * torch.randn(cond.shape, generator=gen) * ~drop_i[:, None, None, None]
        zt = sched.add_noise(z0, noise, t)
        emb = text(tids)[0]
        if supervise:
            weights = torch.zeros(tids.shape)
            weights.scatter_(1, object_tokens[b], 1.0 / object_tokens.shape[1])
            store.begin(tuple(zt.shape[-2:]), weights)
        pred = unet(torch.cat([zt, cond], dim=1), t, encoder_hidden_states=emb).sample
        target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(z0, noise, t)
        loss = F.mse_loss(pred, target)
        denoise_loss = loss.item()
        if supervise:
            share = share_inside(store.aggregate(), object_masks[b])[~drop_t]   # text-dropped samples left out
            share = share.mean() if share.numel() else loss.new_ones(())
            attention_shares.append(float(share.detach()))
            loss = loss + cfg.attention_loss * (1.0 - share)
        return loss, denoise_loss

    with capture:
        if state.moments_missing:  # rebuild AdamW's moments at lr 0 (weights unchanged), on batches of their own
            rebuild, n_shares = torch.Generator().manual_seed(cfg.seed + state.step), len(attention_shares)
            for group in opt.param_groups:
                group["lr"] = 0.0
            for _ in range(resume.MOMENT_STEPS):
                opt.zero_grad(set_to_none=True)
                batch_loss(rebuild)[0].backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            del attention_shares[n_shares:]
            logger.info("optimizer moments rebuilt over %d batches", resume.MOMENT_STEPS)
        for step in range(state.step, cfg.steps):
            prog = step / max(cfg.steps - 1, 1)
            if cfg.time_budget_s > 0:
                elapsed = work_clock() - t0
                if elapsed >= cfg.time_budget_s:
                    logger.info("time budget reached after %d steps", step)
                    break
                prog = max(prog, elapsed / cfg.time_budget_s)
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
            lr *= cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog))
            for group in opt.param_groups:
                group["lr"] = lr
            loss, denoise_loss = batch_loss(g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            _ema_update(ema_unet, unet, decay)
            _ema_update(ema_text, text, decay)
            losses.append(denoise_loss)
            if step % 50 == 0 or step == cfg.steps - 1:
                logger.info(
                    "unet step %d loss %.4f (avg50 %.4f) lr %.2e (%.0fs)%s",
                    step, denoise_loss, float(np.mean(losses[-50:])), lr, work_clock() - t0,
                    f" object-word attention inside the object {100 * np.mean(attention_shares[-50:]):.1f}%"
                    if attention_shares else "",
                )
            due = (step + 1) % cfg.checkpoint_every == 0 or (
                cfg.checkpoint_every_s > 0 and time.time() - last_checkpoint >= cfg.checkpoint_every_s)
            if checkpoint is not None and due and step + 1 < cfg.steps:
                state.step, state.elapsed_s = step + 1, work_clock() - t0
                checkpoint(state)
                last_checkpoint = time.time()
    return ema_unet.eval(), ema_text.eval(), losses, attention_shares, work_clock() - t0


# ----------------------------------------------------------------------------- saving


def sha256(path: Path) -> str:
    return storage.sha256_file(LocalFileSystem(), str(path))


def save_editor(
    out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text: CLIPTextModel, tok: CLIPTokenizer, info: dict,
    prediction_type: str = "epsilon", kind: str = "ip2p",
) -> dict:
    """Save in diffusers layout via the real pipeline of ``kind`` (``save_pretrained``), plus training.json."""
    pipeline = {"ip2p": StableDiffusionInstructPix2PixPipeline, "sd-inpaint": StableDiffusionInpaintPipeline}
    if kind not in pipeline:
        raise ValueError(f"kind must be one of {list(pipeline)}, got {kind!r}")
    pipe = pipeline[kind](
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=make_scheduler(prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # Also keep the slow-tokenizer source files (vocab.json + merges.txt) next to tokenizer.json.
    for name in ("vocab.json", "merges.txt"):
        src = Path(tok.name_or_path) / name
        if src.exists():
            (out / "tokenizer" / name).write_bytes(src.read_bytes())
    weights = sorted(out.rglob("*.safetensors"))
    info = dict(info)
    info["weights"] = {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in weights}
    info["weights_total_bytes"] = sum(p.stat().st_size for p in weights)
    (out / "training.json").write_text(json.dumps(info, indent=2))
    return info


def _fixed(config: dict) -> dict:
    """The parts of a config that a resumed run must share with its checkpoint (not its length or schedule)."""
    budget = ("steps", "time_budget_s", "checkpoint_every", "checkpoint_every_s")
    return {k: v for k, v in config.items() if k not in budget}


def train(cfg: EditorConfig, out: str | Path, *, vae_from: str | None = None, vae_train_s: float = 0.0,
          checkpoint_dir: str | Path | None = None, resume_run: bool = False) -> dict:
    """Train an editor of ``cfg`` into ``out/editor`` (diffusers layout + training.json); returns its info.

    ``vae_from``: a saved AutoencoderKL to reuse (``vae_train_s``: the wall time it took to train).
    ``checkpoint_dir`` (default ``out/checkpoint``): where the resumable checkpoint goes, replaced whole each
    time: the frozen VAE (``vae/``) plus ``resume/`` (:mod:`.resume`: bf16 weights and EMA, under 10 MB in all).
    ``resume_run``: continue from that checkpoint (its VAE, weights, step and time spent; the optimizer's
    moments are rebuilt) if it holds one."""
    wall0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckdir = Path(checkpoint_dir) if checkpoint_dir else out / "checkpoint"
    resuming = resume_run and resume.exists(ckdir / "resume")
    logger.info("config %s", json.dumps(dataclasses.asdict(cfg)))
    times: dict[str, float] = {}
    earlier: dict = resume.read_extra(ckdir / "resume") if resuming else {}
    if resuming and _fixed(earlier.get("config", {})) != _fixed(json.loads(json.dumps(dataclasses.asdict(cfg)))):
        raise ValueError(f"the checkpoint in {ckdir} was trained with another config: {earlier.get('config')}")

    tok = build_tokenizer(world.vocabulary(), out / "_tokenizer_src", model_max_length=cfg.text.max_length)
    assert not check_single_tokens(tok, world.vocabulary())

    t = work_clock()
    edits = training_edits(cfg.n_train_scenes, cfg.data_seed, cfg.world)
    scenes, targets, index, texts = edits.scenes, edits.targets, edits.index, edits.texts
    times["data_s"] = work_clock() - t
    logger.info("data: %d scenes, %d edits (%.0fs)", len(scenes), len(targets), times["data_s"])

    t = work_clock()
    if resuming:  # the checkpoint's VAE is final: centred and scaled
        vae = AutoencoderKL.from_pretrained(ckdir / "vae").eval().requires_grad_(False)
    elif vae_from:
        vae = AutoencoderKL.from_pretrained(vae_from).eval().requires_grad_(False)
        times["vae_train_s"] = vae_train_s  # trained by an earlier run; its time is carried over
    else:
        vae_imgs = np.concatenate([scenes[: cfg.vae.n_scenes], targets[: cfg.vae.n_scenes]])
        vae = train_vae(cfg.vae, vae_imgs)
        times["vae_train_s"] = work_clock() - t
        vae.save_pretrained(out / "vae_stage")  # kept so a later failure does not lose it
    vae_psnr = reconstruction_psnr(vae, heldout_images(cfg.world, cfg.record_scenes))
    logger.info("VAE recon PSNR on %d held-out scenes: %.2f dB", cfg.record_scenes, vae_psnr)

    t = work_clock()
    cache = Path(vae_from or out / "vae_stage") / f"latents_scenes{cfg.n_train_scenes}_seed{cfg.data_seed}.safetensors"
    if vae_from and cache.exists() and not resuming:
        lat = load_file(cache)
        src_lat, tgt_lat = lat["source"], lat["target"]
    else:
        src_lat = encode_mode(vae, scenes)
        tgt_lat = encode_mode(vae, targets)
    if cfg.vae.center_latents and not resuming:  # also applies to a reused VAE: the cache holds its raw modes
        mean = src_lat.mean(dim=(0, 2, 3))
        center_vae_latents(vae, mean)
        src_lat = src_lat - mean[None, :, None, None]
        tgt_lat = tgt_lat - mean[None, :, None, None]
        logger.info("latents centred by %s", mean.tolist())
    if not resuming and (not vae_from or cfg.vae.center_latents):
        vae.register_to_config(scaling_factor=float(1.0 / src_lat.std()))
    if not vae_from and not resuming:
        vae.save_pretrained(out / "vae_stage")
    if not resuming and not cache.exists() and not cfg.vae.center_latents:  # raw modes, for reuse of this VAE
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"source": src_lat.contiguous(), "target": tgt_lat.contiguous()}, cache)
    sf = vae.config.scaling_factor
    tgt_lat = tgt_lat * sf
    if cfg.kind == "sd-inpaint":   # per edit: the mask and the masked photo (the pipeline's, after scaling)
        cond_lat, cond_std = inpainting_conditions(vae, scenes, index, edits.regions)
        cond_index = np.arange(len(targets))
    else:
        cond_lat, cond_std, cond_index = src_lat, None, index
    times["encode_s"] = work_clock() - t
    logger.info("latents encoded (%.0fs), scaling_factor %.4f", times["encode_s"], sf)
    ids = tokenize(tok, texts)
    for key, value in earlier.get("times_s", {}).items():  # a resumed run adds its own data and encoding time
        if key != "unet_train_s":
            times[key] = times.get(key, 0.0) + value

    base_info = {"config": dataclasses.asdict(cfg), "vae_recon_psnr_heldout": vae_psnr,
                 "vae_from": earlier.get("vae_from", vae_from), "resumed": earlier.get("resumed", 0) + resuming}

    def checkpoint(state: resume.DenoiserState) -> None:
        tmp = ckdir.with_name(ckdir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        extra = {**base_info, "step": state.step, "times_s": {**times, "unet_train_s": state.elapsed_s},
                 "wall_s": earlier.get("wall_s", 0.0) + time.time() - wall0}
        vae.save_pretrained(tmp / "vae", safe_serialization=True)  # frozen: the one copy a resumed run reads
        resume.save(tmp / "resume", state, extra)
        resume.replace_dir(tmp, ckdir)
        logger.info("checkpoint at step %d (%.0fs of UNet training) in %s", state.step, state.elapsed_s, ckdir)

    grid = tuple(src_lat.shape[-2:])
    masks = F.interpolate(torch.from_numpy(edits.object_masks).float()[:, None], size=grid, mode="area")[:, 0]
    unet, text, losses, shares, unet_s = train_denoiser(
        cfg, tok, cond_lat, tgt_lat, torch.from_numpy(cond_index), ids, checkpoint,
        object_masks=masks, object_tokens=torch.from_numpy(edits.object_tokens).long(),
        resume_from=ckdir / "resume" if resuming else None, cond_std=cond_std,
    )
    times["unet_train_s"] = unet_s
    info = {
        **base_info,
        "data_seed": cfg.data_seed,
        "unet_steps_done": len(losses),
        "times_s": times,
        "total_train_s": sum(times.values()),
        "clock": "work_clock: CPU seconds / torch threads",
        "wall_s": earlier.get("wall_s", 0.0) + time.time() - wall0,
        "torch_threads": torch.get_num_threads(),
        "loss_last100": float(np.mean(losses[-100:])) if losses else float("nan"),
        "loss_curve_every50": [float(np.mean(losses[i : i + 50])) for i in range(0, len(losses), 50)],
    }
    if shares:
        info["object_attention_share_last100"] = float(np.mean(shares[-100:]))
        info["object_attention_share_every50"] = [float(np.mean(shares[i : i + 50])) for i in range(0, len(shares), 50)]
    return save_editor(out / "editor", vae, unet, text, tok, info, cfg.prediction_type, cfg.kind)
