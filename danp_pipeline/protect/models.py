"""Load a frozen text-guided editor into an :class:`EditorBundle`.

Five editor kinds (config.EDITOR_KINDS): ``ip2p`` (InstructPix2Pix-style, 8-channel UNet input [z_t, E_img(x)]),
``sd`` (Stable Diffusion v1.x used as img2img / SDEdit, 4-channel UNet), ``sdxl`` and ``sdxl-ip2p`` (the same
two with SDXL's two text encoders, pooled text embedding and added time ids), and ``sd-inpaint`` (Stable
Diffusion inpainting, 9-channel UNet input [z_t, mask, E(masked photo)]). Real checkpoints load from a
diffusers repo id or a local directory, safetensors only and without remote code; the kind is read from the
UNet. ``tiny-<kind>`` are random editors built from small configs with an offline tokenizer, for tests and
the demo; :func:`full_size_editor` builds the published architectures with random weights, for ``bench``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import is_accelerate_available
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..config import EDITOR_KINDS, MICRO_EDITORS_DIR, MICRO_MODELS, PROXY_MODELS, TINY_MODELS, EditorKind
from .devices import pick_device, resolve_dtype

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).parent.parent / "assets"
TINY_TOKENIZER_DIR = ASSETS / "tiny_clip_tokenizer"
MICRO_DIR = MICRO_EDITORS_DIR
CROSS_ATTENTION_SHARPNESS = 4.0
#: SDXL's added time ids: original size (2), crop's top-left corner (2), target size (2).
SDXL_TIME_IDS = 6


@dataclass
class EditorBundle:
    """The frozen parts of an editor that the attack and the attacker's edit need. SDXL kinds also hold the
    second text encoder (with projection: its pooled output conditions the UNet) and its tokenizer."""

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
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    force_zeros_for_empty_prompt: bool = True   # SDXL pipelines: the unconditional text embedding is zeros

    @property
    def spec(self) -> EditorKind:
        return EDITOR_KINDS[self.kind]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """The weights: VAE, UNet and the text encoder(s)."""
        second = () if self.text_encoder_2 is None else (self.text_encoder_2,)
        return (self.vae, self.unet, self.text_encoder, *second)

    def freeze(self) -> "EditorBundle":
        for module in self.modules:
            module.eval()
            module.requires_grad_(False)
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "EditorBundle":
        self.device = torch.device(device)
        self.dtype = dtype or self.dtype
        for module in self.modules:
            module.to(self.device)
            if module.dtype != self.dtype:
                module.to(self.dtype)
        return self

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a diffusers-layout directory (safetensors) that :func:`load_editor` reads back."""
        path = Path(path)
        names = ("vae", "unet", "text_encoder") + (("text_encoder_2",) if self.text_encoder_2 is not None else ())
        for name in names:
            getattr(self, name).save_pretrained(path / name, safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        if self.tokenizer_2 is not None:
            self.tokenizer_2.save_pretrained(path / "tokenizer_2")
        self.scheduler.save_pretrained(path / "scheduler")
        index = {"_class_name": self.spec.pipeline, "_diffusers_version": _diffusers_version()}
        if self.spec.xl:
            index["force_zeros_for_empty_prompt"] = self.force_zeros_for_empty_prompt
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
    # diffusers' fast loading path needs accelerate; without it, ask for the plain path outright
    # instead of a warning per model in every actor's log.
    low_memory = {"low_cpu_mem_usage": is_accelerate_available()}
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", **common, **low_memory)
        kind = editor_kind(model_id, unet)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", **common, **low_memory)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", revision=revision)
        scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", revision=revision)
        xl = {}
        if EDITOR_KINDS[kind].xl:
            xl = {"text_encoder_2": CLIPTextModelWithProjection.from_pretrained(model_id, subfolder="text_encoder_2",
                                                                               **common),
                  "tokenizer_2": CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer_2", revision=revision),
                  "force_zeros_for_empty_prompt": _xl_options(model_id, revision)}
    except (OSError, RuntimeError) as exc:  # missing files / no safetensors / mismatched weights
        raise ValueError(f"cannot load editor {model_id!r} (revision {revision!r}) as safetensors: {exc}") from exc
    resolved = revision or (_local_revision(local) if local.is_dir() else "main")
    bundle = EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kind, model_id, resolved,
                          torch.device("cpu"), torch.float32, **xl)
    if bundle.spec.xl:
        check_xl_conditioning(bundle)
    return bundle


def editor_kind(model_id: str, unet: UNet2DConditionModel) -> str:
    """The kind of an editor, from its UNet: input channels, and SDXL's added text-time embedding."""
    channels, xl = unet.config.in_channels, unet.config.addition_embed_type == "text_time"
    for name, spec in EDITOR_KINDS.items():
        if (spec.unet_channels, spec.xl) == (channels, xl):
            return name
    supported = ", ".join(f"{spec.unet_channels}{' (SDXL)' if spec.xl else ''} for {spec.pipeline}"
                          for spec in EDITOR_KINDS.values())
    raise ValueError(f"model {model_id!r} has a{'n SDXL' if xl else ''} UNet with {channels} input channels; "
                     f"supported: {supported}")


def _xl_options(model_id: str, revision: str | None) -> bool:
    """The SDXL pipeline's settings in model_index.json that change what its UNet sees: the unconditional
    text embedding zeroed (``force_zeros_for_empty_prompt``, default True, as the pipelines). Refiners'
    aesthetic-score time ids and CosXL's scaled image latents are not supported."""
    try:
        index = DiffusionPipeline.load_config(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        raise OSError(f"no readable model_index.json: {exc}") from exc
    for option in ("requires_aesthetics_score", "is_cosxl_edit"):
        if index.get(option):
            raise ValueError(f"model {model_id!r} sets {option}=True in its model_index.json: not supported")
    return bool(index.get("force_zeros_for_empty_prompt", True))


def check_xl_conditioning(bundle: EditorBundle) -> None:
    """An SDXL UNet's added embedding must take the pooled text embedding and six time ids, and its
    cross-attention the two encoders' states side by side; ValueError naming the model otherwise."""
    config, pooled = bundle.unet.config, bundle.text_encoder_2.config.projection_dim
    expected = config.addition_time_embed_dim * SDXL_TIME_IDS + pooled
    if config.projection_class_embeddings_input_dim != expected:
        raise ValueError(f"model {bundle.model_id!r}: its UNet's added embedding takes "
                         f"{config.projection_class_embeddings_input_dim} values, not the {expected} of a pooled "
                         f"text embedding ({pooled}) and {SDXL_TIME_IDS} time ids (an aesthetic-score refiner?)")
    states = bundle.text_encoder.config.hidden_size + bundle.text_encoder_2.config.hidden_size
    if config.cross_attention_dim != states or pooled > states:
        raise ValueError(f"model {bundle.model_id!r}: its UNet's cross-attention width {config.cross_attention_dim} "
                         f"is not the two text encoders' {states} (or the pooled {pooled} exceeds it)")


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
    """A random editor of the given kind built from small configs (latent factor 8, like SD). SDXL kinds get
    SDXL's layout in small: no attention in the first block, two text encoders side by side (32 + 32 wide),
    a pooled embedding and added time ids."""
    spec = _kind_spec(kind)
    torch.manual_seed(seed)
    if spec.xl:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=spec.unet_channels, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * SDXL_TIME_IDS + 32,
        )
    else:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=spec.unet_channels,
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
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length, projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    xl = {}
    if spec.xl:
        torch.manual_seed(seed + 3)
        xl = {"text_encoder_2": CLIPTextModelWithProjection(text_config),
              "tokenizer_2": CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)}
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    name = f"tiny-{kind}"
    return EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kind, name, f"random-seed{seed}",
                        torch.device("cpu"), torch.float32, **xl)


def full_size_editor(kind: str, seed: int = 0, device: torch.device | str = "cpu") -> EditorBundle:
    """A random editor with the published full-size architecture, for timing without a download.

    UNet, VAE and text encoder follow Stable Diffusion v1.5's configs (CLIP ViT-L/14 text encoder);
    ``ip2p`` differs only by its 8-channel UNet input, as InstructPix2Pix, and ``sd-inpaint`` by its 9
    channels, as SD 1.5 inpainting. ``sdxl`` follows SDXL base 1.0 (UNet, VAE, CLIP ViT-L/14 and OpenCLIP
    ViT-bigG/14 text encoders); ``sdxl-ip2p`` is it with an 8-channel input at 768² (sample size 96), as
    diffusers' SDXL InstructPix2Pix. The tokenizer is the tiny offline one: it changes token ids, not the
    cost. Modules are built directly on ``device``.
    """
    spec = _kind_spec(kind)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    tokens = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, "vocab_size": 49408, "max_position_embeddings": 77}
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            hidden_act="quick_gelu", projection_dim=768, **tokens)
    xl = {}
    with torch.device(device):
        torch.manual_seed(seed)
        if spec.xl:
            unet = UNet2DConditionModel(
                sample_size=96 if spec.condition == "latent" else 128, in_channels=spec.unet_channels,
                out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, norm_num_groups=32, addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=256 * SDXL_TIME_IDS + 1280,
            )
        else:
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=spec.unet_channels, out_channels=4,
                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                attention_head_dim=8, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            layers_per_block=2, norm_num_groups=32, sample_size=1024 if spec.xl else 512,
            scaling_factor=0.13025 if spec.xl else 0.18215, force_upcast=spec.xl,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(clip_l)
        if spec.xl:
            big_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                   num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **tokens)
            xl = {"text_encoder_2": CLIPTextModelWithProjection(big_g), "tokenizer_2": tokenizer}
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    name = {"sd": "sd15-arch", "ip2p": "ip2p-arch"}.get(kind, f"{kind}-arch")
    return EditorBundle(vae, unet, text_encoder, tokenizer, scheduler, kind, name, f"random-seed{seed}",
                        torch.device(device), torch.float32, **xl)


def _kind_spec(kind: str) -> EditorKind:
    if kind not in EDITOR_KINDS:
        raise ValueError(f"unknown editor kind {kind!r}; expected one of {list(EDITOR_KINDS)}")
    return EDITOR_KINDS[kind]


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
