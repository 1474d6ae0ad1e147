"""The PGD loop of Algorithm 1 and the DANP objective (DAA + NBA), DANP_SPEC.md Eq. 11-13.

:func:`pgd` is the one loop every method uses. An objective turns the current protected photos
into per-term gradients; the loop weights the terms (:class:`Balancer`, the one balancing rule), takes
the sign step and projects onto the L∞ ball and the valid pixel range. :class:`DiffusionObjective` holds
what every UNet-based objective shares (one :class:`~.diffusion.Sampler` draw of prompts, timesteps and
noise per iteration, chunking, one VAE backward per term); :class:`DanpObjective` adds the DANP losses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import AttackConfig
from .attention import AttentionStore, capture_cross_attention
from .diffusion import (
    Chunk,
    PromptBatch,
    Sampler,
    add_noise,
    encode_mean,
    encode_prompts,
    fast_path_setup,
    latents_and_condition,
    loss_scale,
    predict_noise,
    repeat_pairs,
    set_memory_format,
)
from .models import EditorBundle
from .threshold import kapur_mask

logger = logging.getLogger(__name__)


class Objective(Protocol):
    """What :func:`pgd` needs: per-term gradients w.r.t. the photos, and their loss values."""

    weights: dict[str, float]

    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return ({term: ∂term/∂x [B,3,h,w]}, {term: loss value [B]}) for photos x, to be minimized."""
        ...


@dataclass
class PGDResult:
    delta: torch.Tensor                                    # [B,3,h,w] float32, |δ| ≤ eps
    history: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # term -> per-iteration [B]
    weights: dict[str, float] = field(default_factory=dict)               # term -> weight in the total
    skipped: torch.Tensor | None = None    # [B] iterations whose step was skipped (non-finite gradient)

    def total(self) -> torch.Tensor | None:
        """Weighted total loss L per iteration and image, [N, B]; None when nothing was optimized."""
        if not self.history:
            return None
        return sum(w * torch.stack(self.history[name]) for name, w in self.weights.items())


#: Key of a gradient whose terms were weighted and summed before a single backward (``balance_every`` > 1).
COMBINED = "combined"


def l1_norm(g: torch.Tensor) -> torch.Tensor:
    """‖g‖₁ per image, [B]."""
    return g.abs().flatten(1).sum(dim=1)


class Balancer:
    """The one rule that weights an objective's terms into the gradient PGD steps along: Σ_term s_term·g_term
    with s_term = weight_term / ‖g_term‖₁ per image under ``balance="grad"`` (0 for an all-zero gradient: that
    term adds nothing), s_term = weight_term under ``"raw"``.

    :meth:`combine` applies it to per-term gradients. With ``every`` = k > 1 an objective backpropagates each
    term and measures their norms (:meth:`measure`) only every k-th iteration; in between
    (:meth:`single_backward`) it backpropagates Σ_term s_term·term once, s from the last measured norms
    (:meth:`loss_scales`), and its one :data:`COMBINED` gradient gets weight 1 (unit L1 norm under ``grad``)."""

    def __init__(self, weights: dict[str, float], balance: str, every: int = 1) -> None:
        self.weights, self.balance, self.every = dict(weights), balance, every
        self.norms: dict[str, torch.Tensor] = {}    # every > 1: the last measured L1 norm per term, [B]

    def scale(self, name: str, g: torch.Tensor | None = None, norm: torch.Tensor | None = None) -> torch.Tensor:
        """s_term per image [B], from the term's gradient ``g`` or its measured ``norm``."""
        weight = 1.0 if name == COMBINED else self.weights[name]
        if self.balance != "grad":
            ref = g if norm is None else norm
            return torch.full((len(ref),), float(weight), device=ref.device)
        norm = l1_norm(g) if norm is None else norm
        return torch.where(norm > 0, weight / norm.clamp(min=1e-30), torch.zeros_like(norm))

    def combine(self, grads: dict[str, torch.Tensor], *, reuse: bool = False) -> torch.Tensor:
        """Σ_term s_term·g_term. ``reuse``: the first gradient becomes the sum (it is overwritten; one
        full-size tensor fewer for large photos); otherwise the inputs are kept."""
        total = None
        for name, g in grads.items():
            scale = self.scale(name, g).view(-1, *([1] * (g.ndim - 1)))
            if total is None:
                total = g.float().mul_(scale) if reuse else g.float() * scale
            else:
                total.addcmul_(g, scale)
        return total

    def single_backward(self, iteration: int) -> bool:
        """Whether iteration i (0-based) backpropagates the balanced terms once: never with k = 1 or one term,
        nor on every k-th iteration, nor while a term's norm is unknown or zero (e.g. NBA at δ = 0)."""
        k, names = self.every, list(self.weights)
        if k == 1 or len(names) < 2 or iteration % k == 0:
            return False
        return all(name in self.norms and _all_positive(self.norms[name]) for name in names)

    def loss_scales(self) -> dict[str, torch.Tensor]:
        """s_term per image [B] from the last measured norms, to weight the losses of a single backward."""
        return {name: self.scale(name, norm=self.norms[name]) for name in self.weights}

    def measure(self, grads: dict[str, torch.Tensor]) -> None:
        """Keep each term's L1 norm per image for the single-backward iterations that follow (``every`` > 1)."""
        if self.every > 1:
            self.norms = {name: l1_norm(g) for name, g in grads.items()}


def uniform_delta(x0: torch.Tensor, eps: float, seeds: list[int]) -> torch.Tensor:
    """δ uniform in [−γ, γ] per image from its own seed, kept so that x0 + δ ∈ [0,1]: the ``random``
    baseline, and the PGD start with ``init="uniform"``."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.rand(x0.shape[1:], generator=g) for g in gens]).to(x0.device)
    return (x0 + (2 * noise - 1) * eps).clamp(0, 1) - x0


def pgd(x0: torch.Tensor, objective: Objective, cfg: AttackConfig, seeds: list[int] | None = None,
        gray: torch.Tensor | None = None) -> PGDResult:
    """δ ← clip(δ − α·sign(g), −γ, γ), kept so that x0 + δ ∈ [0,1]; N iterations from δ = 0, or from
    :func:`uniform_delta` with ``init="uniform"`` (needs the per-image ``seeds``).

    ``gray`` [B] bool marks grayscale photos: their δ stays equal across channels inside the loop (the
    gradient is averaged over channels before the sign), so nothing is lost writing one channel.
    A gradient with a NaN or infinite entry skips that image's step (logged and counted in
    ``result.skipped``), instead of making δ NaN.

    NBA is exactly 0 with zero gradient at δ = 0, so an NBA-only objective never leaves a zero start
    (sign(0) = 0): that ablation needs ``init="uniform"``."""
    if cfg.init == "uniform":
        if seeds is None or len(seeds) != len(x0):
            raise ValueError(f"init='uniform' needs one seed per image: got {seeds!r} for {len(x0)} images")
        delta = tie_channels(uniform_delta(x0, cfg.eps, seeds), gray)
    else:
        delta = torch.zeros_like(x0, dtype=torch.float32)
    result = PGDResult(delta, weights=dict(objective.weights), skipped=torch.zeros(len(x0), dtype=torch.int64))
    balancer = Balancer(objective.weights, cfg.balance)
    x = torch.empty_like(x0)                   # x0 + δ, in place: full-size photos cost a few copies only
    for it in range(cfg.steps):
        alpha = step_size(cfg, it)
        torch.add(x0, delta, out=x).clamp_(0, 1)
        grads, values = objective.gradients(x)
        for name, value in values.items():
            result.history.setdefault(name, []).append(value.detach().cpu())
        g = tie_channels(balancer.combine(grads, reuse=True), gray)
        del grads
        finite = torch.isfinite(g).flatten(1).all(dim=1)
        if not bool(finite.all()):
            logger.warning("pgd iteration %d: non-finite gradient for %d of %d image(s); their step is skipped",
                           it + 1, int((~finite).sum()), len(finite))
            g[~finite] = 0
            result.skipped += (~finite).cpu().long()
        delta.sub_(g.sign_(), alpha=alpha).clamp_(-cfg.eps, cfg.eps)
        del g
        torch.add(x0, delta, out=x).clamp_(0, 1)   # keep x0 + δ inside [0, 1]
        torch.sub(x, x0, out=delta)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("pgd iteration %d/%d: %s", it + 1, cfg.steps,
                         ", ".join(f"{k}={v.mean().item():.4g}" for k, v in values.items()))
    result.delta = delta
    return result


def _all_positive(values: torch.Tensor) -> bool:
    """All entries > 0; on the "meta" device (FLOP counting, no values) taken as true."""
    return values.device.type == "meta" or bool((values > 0).all())


def step_size(cfg: AttackConfig, iteration: int) -> float:
    """α of iteration i (0-based): constant, or with ``step_decay="cosine"`` α·½(1 + cos(π·i/N)), so that a
    few iterations with a larger α first cross the budget and then settle."""
    if cfg.step_decay == "cosine":
        return cfg.step_size * 0.5 * (1 + math.cos(math.pi * iteration / cfg.steps))
    return cfg.step_size


def tie_channels(t: torch.Tensor, gray: torch.Tensor | None) -> torch.Tensor:
    """Channel mean broadcast over the channels, for the images marked ``gray``."""
    if gray is None or not bool(gray.any()):
        return t
    tied = t.mean(dim=1, keepdim=True).expand_as(t)
    return torch.where(gray.to(t.device).view(-1, 1, 1, 1), tied, t)


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
            losses, extras, weight = self._chunk(encode_mean(self.bundle, x), chunk)
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
        mean_leaf = mean.detach().requires_grad_(True)
        draw = self.sampler.draw(iteration, tuple(mean.shape[1:]))
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
            mean = encode_mean(self.bundle, x)
        grads = {}
        for j, name in enumerate(names):
            (grads[name],) = torch.autograd.grad(mean, x, latent_grads[name], retain_graph=j < len(names) - 1)
        return self._complete(grads, x, scales is not None), values

    def _chunk(self, mean: torch.Tensor, chunk: Chunk
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Losses of one UNet call over the chunk's timesteps × every (image, prompt) pair, chunk-major."""
        k, pairs = chunk.k, chunk.prompts.image_index
        z, cond = latents_and_condition(self.bundle, mean)
        t = chunk.draw.timesteps[pairs][:, chunk.steps].T.reshape(-1)                 # [k·P], chunk-major
        eps = chunk.draw.noise[chunk.steps].reshape(k * len(pairs), *z.shape[1:])
        z_rep = z[pairs].repeat(k, 1, 1, 1)
        cond_rep = None if cond is None else cond[pairs].repeat(k, 1, 1, 1)
        losses, extras = self.chunk_losses(z_rep, cond_rep, t, eps, chunk)
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
        self.fixed_masks: torch.Tensor | None = None
        self.clean_cache: dict[int, torch.Tensor] = {}   # noise="fixed": bin·P + pair (of all P) -> clean ε_θ

    @torch.no_grad()
    def prepare(self) -> None:
        """The clean branch's latents (and the fixed masks) once, encoded exactly as the protected branch
        encodes: same layout (channels_last), same modules, so that NBA is exactly 0 at δ = 0."""
        if self.clean_z is not None:
            return
        self.clean_z, self.clean_cond = latents_and_condition(self.bundle, encode_mean(self.bundle, self.x0))
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
            cond = None if self.clean_cond is None else self.clean_cond[pairs]
            att, _ = self._attention(add_noise(self.bundle, z, noise, t), cond, t, prompts, 1)
            maps = maps + att
        return kapur_mask(maps, self.cfg.threshold_bins)

    @torch.no_grad()
    def _clean_prediction(self, t: torch.Tensor, noise: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        """ε_θ of the clean photo's z_t for a chunk (Eq. 12's target), with the same attn2 arithmetic as the
        protected branch so that NBA is exactly 0 at δ = 0. With ``noise="fixed"`` each (bin, pair) is
        predicted once and reused in every later iteration."""
        pairs = chunk.prompts.image_index

        def predict(idx) -> torch.Tensor:
            z0_t = add_noise(self.bundle, chunk.repeat(self.clean_z[pairs])[idx], noise[idx], t[idx])
            cond0 = None if self.clean_cond is None else chunk.repeat(self.clean_cond[pairs])[idx]
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
