"""Forward passes of a frozen editor that every objective shares, and the objectives' random draws.

Small functions over an :class:`~danp_pipeline.protect.models.EditorBundle`: encode prompts, encode a photo
into latents and the kind's image conditioning (InstructPix2Pix: its latent; inpainting: a mask and the latent of
the photo with that mask applied), noise latents at a timestep, predict noise (with SDXL's pooled text embedding
and time ids), and choose the attack timesteps 𝒯. :class:`Sampler` draws each iteration's prompts, timesteps,
noise and, for inpainting editors, masks (protect/inpaint_masks.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AttackConfig
from .attention import token_weights
from .inpaint_masks import draw_masks, mask_out
from .models import EditorBundle


@dataclass
class PromptBatch:
    """Text conditioning for a flat list of (image, prompt) pairs.

    ``embeds`` holds everything the UNet reads of a prompt, so that objectives index, repeat and concatenate
    it as one tensor: the token states [P, 77, D], and for SDXL editors one more row [P, 78, D] holding the
    pooled embedding of the second text encoder, zero-padded to D (:func:`unet_text_inputs` unpacks it)."""

    embeds: torch.Tensor          # [P, 77, D] (SDXL: [P, 78, D]) in the editor's dtype
    token_weights: torch.Tensor   # [P, 77] float32, each row sums to 1
    image_index: torch.Tensor     # [P] which image of the batch each pair belongs to
    pair_weight: torch.Tensor     # [P] 1 / (number of prompts of that image)
    counts: list[int]             # prompts per image (host-side: no device sync, and works on "meta")


@torch.no_grad()
def encode_prompts(bundle: EditorBundle, prompts: list[list[str]], reduction: str = "content") -> PromptBatch:
    """Encode every image's prompts; pairs are ordered image by image. SDXL editors: the penultimate hidden
    states of both text encoders side by side and the second one's pooled output, as their pipelines do."""
    flat = [p for image_prompts in prompts for p in image_prompts]
    owner = [i for i, image_prompts in enumerate(prompts) for _ in image_prompts]
    weight = [1.0 / len(image_prompts) for image_prompts in prompts for _ in image_prompts]
    tok = _tokenize(bundle.tokenizer, flat)
    if bundle.spec.xl:
        first = bundle.text_encoder(tok.input_ids.to(bundle.device), output_hidden_states=True).hidden_states[-2]
        second = bundle.text_encoder_2(_tokenize(bundle.tokenizer_2, flat).input_ids.to(bundle.device),
                                       output_hidden_states=True)
        states = torch.cat([first, second.hidden_states[-2]], dim=-1)
        pooled = F.pad(second.text_embeds, (0, states.shape[-1] - second.text_embeds.shape[-1]))
        embeds = torch.cat([states, pooled[:, None]], dim=1)
    else:
        embeds = bundle.text_encoder(tok.input_ids.to(bundle.device))[0]
    return PromptBatch(
        embeds=embeds.to(bundle.dtype),
        token_weights=token_weights(tok.attention_mask, reduction).to(bundle.device),
        image_index=torch.tensor(owner, device=bundle.device),
        pair_weight=torch.tensor(weight, device=bundle.device, dtype=torch.float32),
        counts=[len(image_prompts) for image_prompts in prompts],
    )


def _tokenize(tokenizer, prompts: list[str]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")


@torch.no_grad()
def unconditional_embeds(bundle: EditorBundle) -> torch.Tensor:
    """The text conditioning of classifier-free guidance's unconditional branch [1, ...], as the editor's
    pipeline builds it: the empty prompt's, or zeros for SDXL pipelines (``force_zeros_for_empty_prompt``)."""
    embeds = encode_prompts(bundle, [[""]]).embeds
    return torch.zeros_like(embeds) if bundle.spec.xl and bundle.force_zeros_for_empty_prompt else embeds


def unet_text_inputs(bundle: EditorBundle, embeds: torch.Tensor, latent_hw: tuple[int, int]) -> dict:
    """The UNet's text keyword arguments for ``embeds`` (:class:`PromptBatch`) on latents of ``latent_hw``: the
    token states, and for SDXL the pooled embedding and the time ids of an uncropped image of the latents' size
    (original size = target size, crop at (0, 0)), which is what the pipelines pass by default."""
    if not bundle.spec.xl:
        return {"encoder_hidden_states": embeds}
    pooled = bundle.text_encoder_2.config.projection_dim
    h, w = (side * bundle.vae_scale_factor for side in latent_hw)
    time_ids = torch.tensor([h, w, 0, 0, h, w], device=embeds.device, dtype=embeds.dtype)
    return {"encoder_hidden_states": embeds[:, :-1],
            "added_cond_kwargs": {"text_embeds": embeds[:, -1, :pooled], "time_ids": time_ids.expand(len(embeds), -1)}}


def draw_prompts(batch: PromptBatch, m: int, generators: list[torch.Generator]) -> tuple[PromptBatch, torch.Tensor]:
    """A seeded random ``m`` of each image's prompts (one draw from the image's generator) as a batch whose
    pair weights are 1/m per image, and the chosen pairs' indices in ``batch`` (host). With ``m`` = 0, or
    ``m`` at least an image's number of prompts, that image keeps them all and draws nothing."""
    chosen, start = [], 0
    for gen, count in zip(generators, batch.counts):
        pick = torch.randperm(count, generator=gen)[:m].sort().values if 0 < m < count else torch.arange(count)
        chosen.append(pick + start)
        start += count
    ids = torch.cat(chosen)
    if len(ids) == len(batch.image_index):
        return batch, ids
    counts = [len(pick) for pick in chosen]
    index = ids.to(batch.image_index.device)
    weight = torch.tensor([1.0 / c for c in counts for _ in range(c)], device=batch.pair_weight.device,
                          dtype=torch.float32)
    return PromptBatch(embeds=batch.embeds[index], token_weights=batch.token_weights[index],
                       image_index=batch.image_index[index], pair_weight=weight, counts=counts), ids


@dataclass(frozen=True)
class Draw:
    """What one iteration of an objective draws: its (image, prompt) pairs, timesteps and noise."""

    iteration: int
    prompts: PromptBatch              # this iteration's pairs: every prompt, or ``prompt_subset`` per image
    pair_ids: torch.Tensor            # [P] host: those pairs' indices among all pairs
    bins: torch.Tensor | None         # [B, m] host: the |𝒯| bins the timesteps come from (None: an edit's draw)
    timesteps: torch.Tensor | None    # [B, m] on the editor's device
    noise: torch.Tensor               # [m, P, C, h, w] on the editor's device ([P, C, h, w]: an edit's draw)
    masks: torch.Tensor | None = None  # inpainting editors: [B, K, 1, H, W] (1 = repainted); bin i uses mask i mod K

    @property
    def pair_images(self) -> torch.Tensor:
        """[P] host: the image of each pair."""
        return torch.tensor([i for i, c in enumerate(self.prompts.counts) for _ in range(c)])


class Sampler:
    """Every random draw of an objective, from per-image generators seeded with the images' seeds, so that
    a photo's draws depend on its seed and the iteration only (not on its batch). The generators are
    streams: iterations are drawn in order, each once.

    Per iteration each image draws which of its prompts it uses (``prompt_subset``), then its timesteps (one
    per bin, or the bin centres), then with ``timestep_subset`` a random m of the |𝒯| bins, then noise for
    every bin and every one of its prompts (the chosen ones are kept); ``noise="fixed"`` draws the noise in
    the first iteration only. ``per_timestep=False`` (a few-step edit, no timesteps): the prompts, then one
    noise per chosen pair. Inpainting editors then draw each image's masks (``inpaint_masks`` of them, at most
    one per bin; one for a few-step edit; with ``noise="fixed"`` in the first iteration only, so that a bin
    keeps its mask and the clean branch stays reusable)."""

    def __init__(self, bundle: EditorBundle, cfg: AttackConfig, prompts: PromptBatch, seeds: list[int], *,
                 per_timestep: bool = True) -> None:
        self.bundle, self.cfg, self.prompts, self.per_timestep = bundle, cfg, prompts, per_timestep
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.strength = attack_strength(bundle, cfg)
        self.centres = attack_timesteps(bundle.num_train_timesteps, cfg.num_timesteps, self.strength, "centres")
        self.per_iteration = cfg.timestep_subset or cfg.num_timesteps      # timesteps drawn per iteration (m)
        self.next_iteration = 0
        self.fixed_noise: list[torch.Tensor] | None = None                 # noise="fixed": one draw per image
        self.mask_count = 0 if bundle.spec.condition != "masked" else \
            min(cfg.inpaint_masks, cfg.num_timesteps) if per_timestep else 1
        self.fixed_masks: torch.Tensor | None = None

    def draw(self, iteration: int, latent_shape: tuple[int, ...]) -> Draw:
        """Iteration ``iteration``'s draw for latents of shape [C, h, w]."""
        if iteration != self.next_iteration:
            raise ValueError(f"draws come in order: asked for iteration {iteration}, "
                             f"the next one is {self.next_iteration}")
        self.next_iteration += 1
        prompts, pair_ids = draw_prompts(self.prompts, self.cfg.prompt_subset, self.generators)
        if not self.per_timestep:
            noise = torch.cat([torch.randn((c, *latent_shape), generator=gen)
                               for gen, c in zip(self.generators, prompts.counts)])
            return Draw(iteration, prompts, pair_ids, None, None, noise.to(self.bundle.device),
                        self._masks(latent_shape))
        n, m = self.cfg.num_timesteps, self.per_iteration
        ts, bins = [], []
        for gen in self.generators:
            if self.cfg.timesteps == "random":
                ts.append(attack_timesteps(self.bundle.num_train_timesteps, n, self.strength, "random", gen))
            else:
                ts.append(self.centres)
            bins.append(torch.randperm(n, generator=gen)[:m].sort().values if m < n else torch.arange(n))
        if self.fixed_noise is None or self.cfg.noise == "fresh":
            noises = [torch.randn((n, count, *latent_shape), generator=gen)
                      for gen, count in zip(self.generators, self.prompts.counts)]
            if self.cfg.noise == "fixed":
                self.fixed_noise = noises
        else:
            noises = self.fixed_noise
        timesteps = torch.stack([t[b] for t, b in zip(ts, bins)]).to(self.bundle.device)        # [B, m]
        noise = torch.cat([nz[b] for nz, b in zip(noises, bins)], dim=1)[:, pair_ids]            # [m, P, C, h, w]
        if self.fixed_masks is None or self.cfg.noise == "fresh":
            masks = self._masks(latent_shape)
            self.fixed_masks = masks if self.cfg.noise == "fixed" else None
        else:
            masks = self.fixed_masks
        return Draw(iteration, prompts, pair_ids, torch.stack(bins), timesteps, noise.to(self.bundle.device), masks)

    def _masks(self, latent_shape: tuple[int, ...]) -> torch.Tensor | None:
        """Each image's inpainting masks [B, K, 1, H, W] at the photos' size (None: not an inpainting editor)."""
        if not self.mask_count:
            return None
        factor = self.bundle.vae_scale_factor
        height, width = latent_shape[-2] * factor, latent_shape[-1] * factor
        masks = [draw_masks(gen, self.mask_count, height, width, self.cfg.inpaint_mask_area)
                 for gen in self.generators]
        return torch.stack(masks).to(self.bundle.device)


def repeat_pairs(value: torch.Tensor, k: int) -> torch.Tensor:
    """A per-pair tensor [P, ...] repeated for k timesteps, chunk-major [k·P, ...]."""
    return value.repeat(k, *([1] * (value.ndim - 1)))


@dataclass(frozen=True)
class Chunk:
    """One UNet call: the draw's timesteps ``steps`` (indices into its m) × every pair of the draw, chunk-major
    (sample j·P + p is timestep ``steps[j]`` of pair p)."""

    draw: Draw
    steps: list[int]

    @property
    def k(self) -> int:
        return len(self.steps)

    @property
    def prompts(self) -> PromptBatch:
        return self.draw.prompts

    def repeat(self, value: torch.Tensor) -> torch.Tensor:
        """A per-pair tensor [P, ...] for every sample of the chunk, [k·P, ...]."""
        return repeat_pairs(value, self.k)

    @property
    def bins(self) -> torch.Tensor:
        """[k·P] host: the |𝒯| bin of each sample."""
        return self.draw.bins[self.draw.pair_images][:, self.steps].T.reshape(-1)

    def condition(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The image conditioning of every sample [k·P, ...] (:func:`latents_and_condition`): its image's, and for
        per-mask conditionings [B, K, ...] the mask of its timestep bin (bin mod K)."""
        if cond is None:
            return None
        slots = (self.bins % cond.shape[1]).to(cond.device) if cond.ndim > 4 else 0
        return condition_of(cond, self.repeat(self.prompts.image_index), slots)


def encode_mean(bundle: EditorBundle, x: torch.Tensor) -> torch.Tensor:
    """VAE posterior mean (= mode) of photos x in [0,1], unscaled, float32 out."""
    posterior = bundle.vae.encode((2 * x - 1).to(bundle.dtype)).latent_dist
    return posterior.mean.float()


def encode_masked(bundle: EditorBundle, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The VAE means of photos x [B,3,H,W] under each of their masks [B,K,1,H,W] (repainted pixels mid-grey, as the
    inpainting pipeline encodes them), stacked on the channel axis: [B, K·C, h, w]."""
    mean = encode_mean(bundle, mask_out(x, masks))
    return mean.unflatten(0, masks.shape[:2]).flatten(1, 2)


def encode_photos(bundle: EditorBundle, x: torch.Tensor, masks: torch.Tensor | None = None,
                  mean: torch.Tensor | None = None) -> torch.Tensor:
    """What an objective differentiates through: the VAE means of photos x [B, C, h, w], and with inpainting
    masks those of the masked photos after them on the channel axis, [B, C·(1+K), h, w]. ``mean``: the photos'
    own means when already encoded (e.g. to size the draw that picks the masks)."""
    mean = encode_mean(bundle, x) if mean is None else mean
    return mean if masks is None else torch.cat([mean, encode_masked(bundle, x, masks)], dim=1)


def latents_and_condition(bundle: EditorBundle, mean: torch.Tensor, masks: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z = E(x) (mean × scaling factor) and the kind's image conditioning from :func:`encode_photos`' ``mean``:
    InstructPix2Pix kinds E_img(x) [B, C, h, w] (mean, unscaled); inpainting one conditioning per mask [B, K, 1+C,
    h, w]: the mask at the latents' size (nearest, as the pipeline resizes it) and the masked photo's latent
    (scaled). Without ``masks``, one with nothing masked (the photo itself); other kinds None."""
    channels = bundle.vae.config.latent_channels
    z = mean[:, :channels] * bundle.vae.config.scaling_factor
    kind = bundle.spec.condition
    if kind == "latent":
        return z, mean[:, :channels]
    if kind != "masked":
        return z, None
    if masks is None:
        masked, small = z[:, None], torch.zeros((len(z), 1, 1, *z.shape[-2:]), device=z.device)
    else:
        masked = mean[:, channels:].unflatten(1, (masks.shape[1], channels)) * bundle.vae.config.scaling_factor
        small = F.interpolate(masks.flatten(0, 1).float(), size=tuple(z.shape[-2:])).unflatten(0, masks.shape[:2])
    return z, torch.cat([small.to(masked.dtype), masked], dim=2)


def condition_of(cond: torch.Tensor | None, images: torch.Tensor, slots: torch.Tensor | int = 0
                 ) -> torch.Tensor | None:
    """Per-sample image conditioning: ``cond[images]`` of a per-image conditioning [B, ...]; of a per-mask one
    [B, K, ...] the masks ``slots`` (default each image's first)."""
    if cond is None or cond.ndim == 4:
        return None if cond is None else cond[images]
    return cond[images, slots]


def blind_condition(bundle: EditorBundle, z: torch.Tensor) -> torch.Tensor | None:
    """An image conditioning that shows the UNet nothing of the photo, for latents z [B, C, h, w]: zeros for
    InstructPix2Pix kinds (their pipelines' unconditional image), for inpainting everything masked and a
    zero masked-image latent; None for the others."""
    kind = bundle.spec.condition
    if kind == "latent":
        return torch.zeros_like(z)
    if kind == "masked":
        return torch.cat([torch.ones_like(z[:, :1]), torch.zeros_like(z)], dim=1)
    return None


def add_noise(bundle: EditorBundle, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = √ᾱ_t z + √(1−ᾱ_t) ε, per sample t."""
    abar = bundle.scheduler.alphas_cumprod.to(z.device, torch.float32)[t].view(-1, 1, 1, 1)
    return abar.sqrt() * z + (1 - abar).sqrt() * noise


def predict_noise(
    bundle: EditorBundle,
    z_t: torch.Tensor,
    t: torch.Tensor,
    embeds: torch.Tensor,
    condition: torch.Tensor | None,
) -> torch.Tensor:
    """ε_θ(z_t, t, c); with an image conditioning (one per sample) the UNet input is [z_t, condition] on the
    channel axis (InstructPix2Pix: E_img(x); inpainting: mask and masked-image latent). float32 out.

    A v-prediction UNet (``prediction_type="v_prediction"`` in its scheduler config, as the micro-editors
    and SD 2.x) is converted exactly to ε = √ᾱ_t v + √(1−ᾱ_t) z_t, so every objective reads noise.
    """
    sample = z_t if condition is None else torch.cat([z_t, condition], dim=1)
    out = bundle.unet(sample.to(bundle.dtype), t, **unet_text_inputs(bundle, embeds, z_t.shape[-2:])).sample.float()
    kind = bundle.scheduler.config.get("prediction_type", "epsilon")
    if kind == "v_prediction":
        abar = bundle.scheduler.alphas_cumprod.to(out.device, torch.float32)[t].view(-1, 1, 1, 1)
        return abar.sqrt() * out + (1 - abar).sqrt() * z_t.float()
    if kind != "epsilon":
        raise ValueError(f"editor's scheduler prediction_type {kind!r} is not supported (epsilon or v_prediction)")
    return out


def attack_strength(bundle: EditorBundle, cfg: AttackConfig) -> float:
    """The img2img strength the attack's timesteps (and PhotoGuard's edit) cover: the configured one, else
    the editor kind's own (EditorKind.strength): InstructPix2Pix and inpainting edit from pure noise (1.0),
    img2img at SD_EDIT_STRENGTH."""
    if cfg.strength is not None:
        return cfg.strength
    return bundle.spec.strength


def loss_scale(bundle: EditorBundle, cfg: AttackConfig) -> float:
    """Factor on the losses before backward: fp16 gradients of small losses underflow to 0 otherwise."""
    return cfg.fp16_loss_scale if bundle.dtype == torch.float16 else 1.0


def attack_timesteps(
    num_train: int, count: int, strength: float, mode: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """𝒯: centres of ``count`` equal bins over [0, strength·T), or one uniform draw per bin."""
    top = strength * num_train
    width = top / count
    starts = torch.arange(count, dtype=torch.float64) * width
    if mode == "centres":
        t = starts + width / 2
    elif mode == "random":
        t = starts + torch.rand(count, generator=generator, dtype=torch.float64) * width
    else:
        raise ValueError(f"unknown timestep mode {mode!r}; expected 'centres' or 'random'")
    return t.floor().long().clamp(0, num_train - 1)


def set_memory_format(bundle: EditorBundle, channels_last: bool) -> None:
    """Put the UNet and VAE weights in NHWC (``channels_last``) or NCHW layout; a no-op when already so."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in (bundle.unet, bundle.vae):
        conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        if not conv.weight.is_contiguous(memory_format=fmt):
            module.to(memory_format=fmt)


@contextlib.contextmanager
def fast_path_setup(bundle: EditorBundle, cfg: AttackConfig) -> Iterator[None]:
    """Fast-path switches that act on the frozen modules, for the duration of one gradient computation:
    diffusers' gradient checkpointing of UNet and VAE blocks, and a ``torch.compile``d UNet."""
    checkpointed = (bundle.unet, bundle.vae) if cfg.gradient_checkpointing else ()
    for module in checkpointed:
        module.enable_gradient_checkpointing()
    if cfg.compile:
        if getattr(bundle.unet, "_danp_compiled", None) is None:
            bundle.unet._danp_compiled = torch.compile(bundle.unet._call_impl)
        bundle.unet._compiled_call_impl = bundle.unet._danp_compiled
    try:
        yield
    finally:
        for module in checkpointed:
            module.disable_gradient_checkpointing()
        if cfg.compile:
            bundle.unet._compiled_call_impl = None
