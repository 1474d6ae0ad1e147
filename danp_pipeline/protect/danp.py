"""The DANP objective (DAA + NBA, docs/method.md Eq. 11-12) for the one PGD loop (protect/pgd.py).

An objective turns the current protected photos into per-term gradients. :class:`DiffusionObjective`
holds what every UNet-based objective shares (one :class:`~.diffusion.Sampler` draw of prompts, timesteps and
noise per iteration, chunking, one VAE backward per term); :class:`DanpObjective` adds the DANP losses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator

import torch

from ..config import AttackConfig
from .attention import AttentionStore, capture_cross_attention
from .diffusion import (
    Chunk,
    Draw,
    PromptBatch,
    Sampler,
    add_noise,
    condition_of,
    encode_mean,
    encode_photos,
    encode_prompts,
    fast_path_setup,
    latents_and_condition,
    loss_scale,
    predict_noise,
    repeat_pairs,
    set_memory_format,
)
from .models import EditorBundle
from .pgd import COMBINED, Balancer
from .threshold import kapur_mask

logger = logging.getLogger(__name__)


class DiffusionObjective:
    """Shared machinery: per iteration, one VAE encode, m × pairs UNet passes in chunks, per-term gradients
    accumulated at the VAE latent, then one VAE backward per term (or one of the balanced terms, see
    :class:`Balancer`). The iteration's prompts, timesteps and noise come from one :class:`Sampler` draw.

    Subclasses implement :meth:`chunk_losses`, returning per-pair losses for one :class:`Chunk`.
    """

    weights: dict[str, float]

    def __init__(self, bundle: EditorBundle, cfg: AttackConfig, prompts: list[list[str]], seeds: list[int]) -> None:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompt lists for {len(seeds)} images")
        self.bundle, self.cfg = bundle, cfg
        self.sampler = Sampler(bundle, cfg, encode_prompts(bundle, prompts, cfg.token_reduction), seeds)
        self.scale = loss_scale(bundle, cfg)
        self.iteration = 0                           # gradients() calls so far: the next draw's iteration

    @functools.cached_property
    def balancer(self) -> Balancer:
        """Built on first use: subclasses set ``weights`` after this class's __init__."""
        return Balancer(self.weights, self.cfg.balance, self.cfg.balance_every)

    def chunks(self, pairs: int) -> Iterator[list[int]]:
        """Indices of the m drawn timesteps per UNet call over ``pairs`` (image, prompt) pairs: one at a time
        on the reference path; on the fast path ``timestep_batch``, or (0) the fewest equal calls of at most
        ``max_unet_batch`` samples."""
        n = self.sampler.per_iteration
        if self.cfg.path == "reference":
            size = 1
        elif self.cfg.timestep_batch:
            size = self.cfg.timestep_batch
        else:
            calls = max(1, math.ceil(n * pairs / self.cfg.max_unet_batch))
            size = math.ceil(n / calls)
        for start in range(0, n, size):
            yield list(range(start, min(n, start + size)))

    # -- gradients -------------------------------------------------------------------------
    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-term ∂term/∂x and per-image loss values; ``cfg.path`` picks the implementation.

        Both paths draw the same timesteps and noise and compute the same sums; they differ in
        floating-point summation order only. On a single-backward iteration (``balance_every`` > 1) the
        gradient is {COMBINED: g}.
        """
        set_memory_format(self.bundle, self.cfg.path == "fast" and self.cfg.channels_last)
        scales = self.balancer.loss_scales() if self.balancer.single_backward(self.iteration) else None
        try:
            if self.cfg.path == "reference":
                self.prepare()
                return self._reference_gradients(x, self.iteration, scales)
            with fast_path_setup(self.bundle, self.cfg):
                self.prepare()
                return self._fast_gradients(x, self.iteration, scales)
        finally:
            self.iteration += 1

    def prepare(self) -> None:
        """Computed once, on the first gradients() call, in the same memory layout and compiled modules
        as the protected branch (what a subclass derives from the clean photo)."""

    def _reference_gradients(self, x: torch.Tensor, iteration: int, scales: dict[str, torch.Tensor] | None):
        """Algorithm 1 literally: for each timestep encode x, run the UNet, backpropagate each term to x."""
        x = x.detach().requires_grad_(True)
        factor = self.bundle.vae_scale_factor
        shape = (self.bundle.vae.config.latent_channels, x.shape[-2] // factor, x.shape[-1] // factor)
        draw = self.sampler.draw(iteration, shape)
        grads: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        for steps in self.chunks(len(draw.prompts.image_index)):
            chunk = Chunk(draw, steps)
            losses, extras, weight = self._chunk(encode_photos(self.bundle, x, draw.masks), chunk)
            self._accumulate(grads, losses, weight * self.scale, x, chunk, scales)
            self._record(values, {**losses, **extras}, weight, chunk)
        return self._complete(grads, x, scales is not None), values

    def _fast_gradients(self, x: torch.Tensor, iteration: int, scales: dict[str, torch.Tensor] | None):
        """One VAE encode per iteration, ``timestep_batch`` timesteps per UNet call, per-term gradients
        accumulated at the VAE latent, then one VAE backward per term. With ``vae_recompute`` the encoder
        runs without a graph first and again for the backward (Mist v2's two passes): its activations
        are not held while the UNet runs."""
        x = x.detach().requires_grad_(True)
        with torch.set_grad_enabled(not self.cfg.vae_recompute):
            mean = encode_mean(self.bundle, x)
            draw = self.sampler.draw(iteration, tuple(mean.shape[1:]))
            mean = encode_photos(self.bundle, x, draw.masks, mean)
        mean_leaf = mean.detach().requires_grad_(True)
        latent_grads: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        for steps in self.chunks(len(draw.prompts.image_index)):
            chunk = Chunk(draw, steps)
            losses, extras, weight = self._chunk(mean_leaf, chunk)
            with self.backward_context():
                self._accumulate(latent_grads, losses, weight * self.scale, mean_leaf, chunk, scales)
            self._record(values, {**losses, **extras}, weight, chunk)
        names = [name for name in (COMBINED, *self.weights) if name in latent_grads]
        if names and self.cfg.vae_recompute:
            mean = encode_photos(self.bundle, x, draw.masks)
        grads = {}
        for j, name in enumerate(names):
            (grads[name],) = torch.autograd.grad(mean, x, latent_grads[name], retain_graph=j < len(names) - 1)
        return self._complete(grads, x, scales is not None), values

    def _chunk(self, mean: torch.Tensor, chunk: Chunk
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Losses of one UNet call over the chunk's timesteps × every (image, prompt) pair, chunk-major."""
        k, pairs = chunk.k, chunk.prompts.image_index
        z, cond = latents_and_condition(self.bundle, mean, chunk.draw.masks)
        t = chunk.draw.timesteps[pairs][:, chunk.steps].T.reshape(-1)                 # [k·P], chunk-major
        eps = chunk.draw.noise[chunk.steps].reshape(k * len(pairs), *z.shape[1:])
        z_rep = z[pairs].repeat(k, 1, 1, 1)
        losses, extras = self.chunk_losses(z_rep, chunk.condition(cond), t, eps, chunk)
        weight = (chunk.prompts.pair_weight / self.sampler.per_iteration).repeat(k)
        return losses, extras, weight

    def _accumulate(self, grads: dict[str, torch.Tensor], losses: dict[str, torch.Tensor], weight: torch.Tensor,
                    wrt: torch.Tensor, chunk: Chunk, scales: dict[str, torch.Tensor] | None) -> None:
        """grads[term] += ∂(Σ weight·loss_term)/∂wrt, one backward per term through the shared forward; or,
        with the balancer's per-image ``scales`` (a single-backward iteration),
        grads[COMBINED] += ∂(Σ_term s_term·Σ weight·loss_term)/∂wrt."""
        if scales is not None:
            total = 0
            for name, value in losses.items():
                total = total + value * weight * chunk.repeat(scales[name][chunk.prompts.image_index])
            (g,) = torch.autograd.grad(total.sum(), wrt, allow_unused=True)
            if g is not None:
                grads[COMBINED] = grads[COMBINED] + g if COMBINED in grads else g
            return
        names = list(losses)
        for j, name in enumerate(names):
            (g,) = torch.autograd.grad((losses[name] * weight).sum(), wrt,
                                       retain_graph=j < len(names) - 1, allow_unused=True)
            if g is not None:
                grads[name] = grads[name] + g if name in grads else g

    def _record(self, values: dict[str, torch.Tensor], terms: dict[str, torch.Tensor], weight: torch.Tensor,
                chunk: Chunk) -> None:
        """values[name] += per-image weighted sum of a chunk's per-pair values."""
        index = chunk.prompts.image_index.repeat(chunk.k)
        for name, value in terms.items():
            per_image = torch.zeros(len(chunk.prompts.counts), device=value.device).index_add_(
                0, index, (value.detach() * weight).float())
            values[name] = values[name] + per_image if name in values else per_image

    def _complete(self, grads: dict[str, torch.Tensor], x: torch.Tensor, single: bool) -> dict[str, torch.Tensor]:
        """float32 gradient per term of ``weights``, the loss scale taken out; zero for a term that does not
        depend on the photo (e.g. NBA at δ = 0 is flat). A ``single``-backward iteration returns {COMBINED: g};
        an iteration that backpropagated every term hands their norms to the balancer."""
        if single:
            return {COMBINED: grads[COMBINED].float() / self.scale if COMBINED in grads
                    else torch.zeros_like(x, dtype=torch.float32)}
        out = {name: grads[name].float() / self.scale if name in grads else torch.zeros_like(x, dtype=torch.float32)
               for name in self.weights}
        self.balancer.measure(out)
        return out

    def backward_context(self) -> contextlib.AbstractContextManager:
        """Entered around the fast path's backward passes through the UNet (see DanpObjective)."""
        return contextlib.nullcontext()

    def chunk_losses(self, z: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor,
                     chunk: Chunk) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-sample losses [k·P] keyed by the names in ``weights``, and detached diagnostics to log."""
        raise NotImplementedError


class DanpObjective(DiffusionObjective):
    """L = L_DAA + λ_nba·L_NBA with the dynamic Kapur mask (Eq. 7-13)."""

    def __init__(self, bundle: EditorBundle, cfg: AttackConfig, prompts: list[list[str]], seeds: list[int],
                 x0: torch.Tensor) -> None:
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {}
        if cfg.use_daa:
            self.weights["daa"] = 1.0
        if cfg.use_nba:
            self.weights["nba"] = cfg.lambda_nba
        self.store = AttentionStore(focused=cfg.token_reduction == "focused")
        self.x0 = x0
        self.clean_z: torch.Tensor | None = None
        self.clean_cond: torch.Tensor | None = None
        self.clean_mean: torch.Tensor | None = None
        self.masked_cond: tuple[torch.Tensor, torch.Tensor] | None = None   # (inpainting masks, their clean cond)
        self.fixed_masks: torch.Tensor | None = None
        self.clean_cache: dict[int, torch.Tensor] = {}   # noise="fixed": bin·P + pair (of all P) -> clean ε_θ

    @torch.no_grad()
    def prepare(self) -> None:
        """The clean branch's latents (and the fixed masks) once, encoded exactly as the protected branch
        encodes: same layout (channels_last), same modules, so that NBA is exactly 0 at δ = 0."""
        if self.clean_z is not None:
            return
        self.clean_mean = encode_mean(self.bundle, self.x0)
        self.clean_z, self.clean_cond = latents_and_condition(self.bundle, self.clean_mean)
        if self.cfg.mask == "fixed" and self.cfg.use_daa:
            self.fixed_masks = self._clean_masks()

    def _attention(self, z_t, cond, t, prompts: PromptBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention maps and ε_θ of k timesteps × the pairs of ``prompts``, chunk-major."""
        self.store.begin(tuple(z_t.shape[-2:]), repeat_pairs(prompts.token_weights, k))
        with capture_cross_attention(self.bundle.unet, self.store):
            eps_pred = predict_noise(self.bundle, z_t, t, repeat_pairs(prompts.embeds, k), cond)
        return self.store.aggregate(self.cfg.upsample), eps_pred

    def chunk_masks(self, chunk: Chunk) -> torch.Tensor:
        """The fixed masks (one per pair of all prompts) of the chunk's samples."""
        return chunk.repeat(self.fixed_masks[chunk.draw.pair_ids.to(self.fixed_masks.device)])

    def backward_context(self) -> contextlib.AbstractContextManager:
        """Under gradient checkpointing the backward recomputes attn2 forwards: they must run the same
        capture processor (the store does not record them)."""
        if self.cfg.gradient_checkpointing:
            return capture_cross_attention(self.bundle.unet, self.store)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _clean_masks(self) -> torch.Tensor:
        """Masks from the clean photo's attention averaged over the centre timesteps, one per pair."""
        prompts = self.sampler.prompts
        pairs = prompts.image_index
        maps = 0
        for t_value in self.sampler.centres.tolist():
            gen = torch.Generator().manual_seed(self.cfg.seed)
            z = self.clean_z[pairs]
            noise = torch.randn(z.shape, generator=gen).to(z.device)
            t = torch.full((len(pairs),), t_value, device=z.device)
            cond = condition_of(self.clean_cond, pairs)      # inpainting: nothing masked
            att, _ = self._attention(add_noise(self.bundle, z, noise, t), cond, t, prompts, 1)
            maps = maps + att
        return kapur_mask(maps, self.cfg.threshold_bins)

    @torch.no_grad()
    def _clean_prediction(self, t: torch.Tensor, noise: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        """ε_θ of the clean photo's z_t for a chunk (Eq. 12's target), with the same attn2 arithmetic as the
        protected branch so that NBA is exactly 0 at δ = 0. With ``noise="fixed"`` each (bin, pair) is
        predicted once and reused in every later iteration."""
        pairs = chunk.prompts.image_index
        cond = chunk.condition(self._clean_condition(chunk.draw))

        def predict(idx) -> torch.Tensor:
            z0_t = add_noise(self.bundle, chunk.repeat(self.clean_z[pairs])[idx], noise[idx], t[idx])
            cond0 = None if cond is None else cond[idx]
            return predict_noise(self.bundle, z0_t, t[idx], chunk.repeat(chunk.prompts.embeds)[idx], cond0)

        with capture_cross_attention(self.bundle.unet, None):
            if self.cfg.noise != "fixed":
                return predict(slice(None))
            slots = (chunk.bins * sum(self.sampler.prompts.counts) + chunk.repeat(chunk.draw.pair_ids)).tolist()
            missing = [i for i, slot in enumerate(slots) if slot not in self.clean_cache]
            if missing:
                for i, value in zip(missing, predict(torch.tensor(missing, device=t.device))):
                    self.clean_cache[slots[i]] = value
            return torch.stack([self.clean_cache[slot] for slot in slots])

    @torch.no_grad()
    def _clean_condition(self, draw: Draw) -> torch.Tensor | None:
        """The clean photo's image conditioning under the draw's inpainting masks (encoded as the protected
        branch's, once per set of masks), else the one of :meth:`prepare`."""
        if draw.masks is None:
            return self.clean_cond
        if self.masked_cond is None or self.masked_cond[0] is not draw.masks:
            mean = encode_photos(self.bundle, self.x0, draw.masks, self.clean_mean)
            self.masked_cond = (draw.masks, latents_and_condition(self.bundle, mean, draw.masks)[1])
        return self.masked_cond[1]

    def chunk_losses(self, z, cond, t, noise, chunk):
        z_t = add_noise(self.bundle, z, noise, t)
        att, eps_adv = self._attention(z_t, cond, t, chunk.prompts, chunk.k)
        losses: dict[str, torch.Tensor] = {}
        extras: dict[str, torch.Tensor] = {}
        if self.cfg.use_daa:
            mask = self.chunk_masks(chunk) if self.fixed_masks is not None else \
                kapur_mask(att.detach(), self.cfg.threshold_bins)
            inside = (att * mask).pow(2).flatten(1).sum(1)
            outside = (att * (1 - mask)).pow(2).flatten(1).sum(1)
            losses["daa"] = inside - self.cfg.lambda_daa * outside
            extras["att_inside"], extras["att_outside"] = inside.detach(), outside.detach()
        if self.cfg.use_nba:
            if self.cfg.nba_target == "clean":
                target = self._clean_prediction(t, noise, chunk)
            else:
                target = noise
            losses["nba"] = -(target - eps_adv).pow(2).flatten(1).sum(1)
        return losses, extras
