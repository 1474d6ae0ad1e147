"""Load a frozen text-guided editor into an :class:`EditorBundle`.

Two editor kinds: ``ip2p`` (InstructPix2Pix-style, 8-channel UNet input [z_t, E_img(x)]) and ``sd``
(Stable Diffusion v1.x used as img2img / SDEdit, 4-channel UNet). Real checkpoints load from a
diffusers repo id or a local directory, safetensors only and without remote code. ``tiny-ip2p`` and
``tiny-sd`` are random editors built from small configs with an offline tokenizer, for tests and
the demo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..config import EDITOR_KINDS, MICRO_EDITORS_DIR, MICRO_MODELS, PROXY_MODELS, TINY_MODELS
from .devices import pick_device, resolve_dtype

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).parent.parent / "assets"
TINY_TOKENIZER_DIR = ASSETS / "tiny_clip_tokenizer"
MICRO_DIR = MICRO_EDITORS_DIR
CROSS_ATTENTION_SHARPNESS = 4.0


@dataclass
class EditorBundle:
    """The frozen parts of an editor that the attack and the attacker's edit need."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    kind: str
    model_id: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> "EditorBundle":
        for module in (self.vae, self.unet, self.text_encoder):
            module.eval()
            module.requires_grad_(False)
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "EditorBundle":
        self.device = torch.device(device)
        self.dtype = dtype or self.dtype
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(self.device)
            if module.dtype != self.dtype:
                module.to(self.dtype)
        return self

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a diffusers-layout directory (safetensors) that :func:`load_editor` reads back."""
        path = Path(path)
        for name in ("vae", "unet", "text_encoder"):
            getattr(self, name).save_pretrained(path / name, safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        index = {"_class_name": _pipeline_class(self.kind), "_diffusers_version": _diffusers_version()}
        (path / "model_index.json").write_text(json.dumps(index, indent=2))


def load_editor(
    model_id: str,
    revision: str | None = None,
    *,
    device: torch.device | str | None = None,
    precision: str = "auto",
    seed: int = 0,
) -> EditorBundle:
    """Load an editor by diffusers repo id, local directory, or tiny test name; returns it frozen."""
    device = pick_device(device)
    dtype = resolve_dtype(precision, device)
    if model_id in TINY_MODELS:
        bundle = tiny_editor(TINY_MODELS[model_id], seed=seed)
    elif model_id in MICRO_MODELS or model_id in PROXY_MODELS:
        bundle = micro_editor(model_id)
    else:
        bundle = _load_diffusers(model_id, revision)
    bundle.to(device, dtype).freeze()
    logger.info("loaded editor %s (kind=%s, revision=%s) on %s as %s",
                bundle.model_id, bundle.kind, bundle.revision, device, dtype)
    return bundle


def _load_diffusers(model_id: str, revision: str | None) -> EditorBundle:
    local = Path(model_id)
    if not local.is_dir() and (model_id.startswith((".", "/", "~")) or model_id.count("/") != 1):
        raise ValueError(f"model {model_id!r} is neither an existing directory nor a repo id of the form owner/name")
    common = {"revision": revision, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", revision=revision)
        scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", revision=revision)
    except (OSError, RuntimeError) as exc:  # missing files / no safetensors / mismatched weights
        raise ValueError(f"cannot load editor {model_id!r} (revision {revision!r}) as safetensors: {exc}") from exc
    in_channels = unet.config.in_channels
    kinds = {8: "ip2p", 4: "sd"}
    if in_channels not in kinds:
        raise ValueError(f"model {model_id!r} has a UNet with {in_channels} input channels; "
                         "supported: 8 (InstructPix2Pix) and 4 (Stable Diffusion img2img)")
    resolved = revision or (_local_revision(local) if local.is_dir() else "main")
    return EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kinds[in_channels],
                        model_id, resolved, torch.device("cpu"), torch.float32)


def micro_editor(name: str) -> EditorBundle:
    """A trained micro-editor shipped with the package (assets/editors/<name>/, diffusers layout, safetensors),
    loaded through the ordinary local-directory path; its revision is the weights' recorded SHA-256."""
    path = MICRO_DIR / name
    if not (path / "model_index.json").is_file():
        raise ValueError(f"micro-editor {name!r} is not installed: {path} has no model_index.json "
                         "(train it with `danp-protect train-editor`)")
    bundle = _load_diffusers(str(path), None)
    bundle.model_id = name
    training = path / "training.json"
    if training.is_file():
        weights = json.loads(training.read_text()).get("weights", {})     # {file: {"sha256": ..., "bytes": ...}}
        digests = {file: entry["sha256"] for file, entry in weights.items()}
        combined = hashlib.sha256("".join(f"{k}:{v}" for k, v in sorted(digests.items())).encode()).hexdigest()
        bundle.revision = f"sha256-{combined[:16]}"
    return bundle


def _local_revision(path: Path) -> str:
    """A content fingerprint of a local model directory: names and sizes of its weight and config files."""
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.suffix in (".safetensors", ".json", ".txt"):
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
    return "local-" + digest.hexdigest()[:16]


def tiny_editor(kind: str, seed: int = 0) -> EditorBundle:
    """A random editor of the given kind built from small configs (latent factor 8, like SD)."""
    if kind not in EDITOR_KINDS:
        raise ValueError(f"unknown editor kind {kind!r}; expected one of {list(EDITOR_KINDS)}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8 if kind == "ip2p" else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    # Trained editors attend sharply to a few tokens per region; at default init the softmax over 77
    # tokens is nearly uniform and the attention map is flat noise. Scaling the query/key projections
    # of attn2 gives the random editor peaked, spatially varying cross-attention like a real one.
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_q.weight.mul_(CROSS_ATTENTION_SHARPNESS)
                module.to_k.weight.mul_(CROSS_ATTENTION_SHARPNESS)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
    ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    name = f"tiny-{kind}"
    return EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kind, name, f"random-seed{seed}",
                        torch.device("cpu"), torch.float32)


def full_size_editor(kind: str, seed: int = 0, device: torch.device | str = "cpu") -> EditorBundle:
    """A random editor with the published full-size architecture, for timing without a download.

    UNet, VAE and text encoder follow Stable Diffusion v1.5's configs (CLIP ViT-L/14 text encoder);
    ``ip2p`` differs only by its 8-channel UNet input, as InstructPix2Pix. The tokenizer is the tiny
    offline one: it changes token ids, not the cost. Modules are built directly on ``device``.
    """
    if kind not in EDITOR_KINDS:
        raise ValueError(f"unknown editor kind {kind!r}; expected one of {list(EDITOR_KINDS)}")
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=8 if kind == "ip2p" else 4, out_channels=4,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    name = "sd15-arch" if kind == "sd" else "ip2p-arch"
    return EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kind, name, f"random-seed{seed}",
                        torch.device(device), torch.float32)


def _pipeline_class(kind: str) -> str:
    return "StableDiffusionInstructPix2PixPipeline" if kind == "ip2p" else "StableDiffusionImg2ImgPipeline"


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
