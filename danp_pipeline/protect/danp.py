"""The PGD loop of Algorithm 1 and the DANP objective (DAA + NBA), DANP_SPEC.md Eq. 11-13.

:func:`pgd` is the one loop every method uses. An objective turns the current protected photos
into per-term gradients; the loop balances the terms, takes the sign step and projects onto the
L∞ ball and the valid pixel range. :class:`DiffusionObjective` holds what every UNet-based
objective shares (timesteps, noise, chunking, one VAE backward per term); :class:`DanpObjective`
adds the DANP losses.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import AttackConfig
from .attention import AttentionStore, capture_cross_attention
from .diffusion import (
    PromptBatch,
    add_noise,
    attack_strength,
    attack_timesteps,
    draw_prompts,
    encode_mean,
    encode_prompts,
    fast_path_setup,
    latents_and_condition,
    loss_scale,
    predict_noise,
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


def combine(grads: dict[str, torch.Tensor], weights: dict[str, float], balance: str, *,
            reuse: bool = False) -> torch.Tensor:
    """Σ_term weight·g_term; with ``grad`` balance each g_term is scaled to unit L1 norm per image
    (a term whose gradient is all zero adds nothing). ``reuse``: the first gradient becomes the sum (it
    is overwritten; one full-size tensor fewer for large photos); otherwise the inputs are kept.
    A :data:`COMBINED` gradient (the terms already weighted inside one backward) has weight 1."""
    total = None
    for name, g in grads.items():
        weight = 1.0 if name == COMBINED else weights[name]
        if balance == "grad":
            norm = g.abs().flatten(1).sum(dim=1)
            scale = torch.where(norm > 0, weight / norm.clamp(min=1e-30), torch.zeros_like(norm))
        else:
            scale = torch.full((len(g),), float(weight), device=g.device)
        scale = scale.view(-1, *([1] * (g.ndim - 1)))
        if total is None:
            total = g.float().mul_(scale) if reuse else g.float() * scale
        else:
            total.addcmul_(g, scale)
    return total


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
    x = torch.empty_like(x0)                   # x0 + δ, in place: full-size photos cost a few copies only
    for it in range(cfg.steps):
        alpha = step_size(cfg, it)
        torch.add(x0, delta, out=x).clamp_(0, 1)
        grads, values = objective.gradients(x)
        for name, value in values.items():
            result.history.setdefault(name, []).append(value.detach().cpu())
        g = tie_channels(combine(grads, objective.weights, cfg.balance, reuse=True), gray)
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
    """Shared machinery: per iteration, one VAE encode, |𝒯| × pairs UNet passes in chunks, per-term
    gradients accumulated at the VAE latent, then one VAE backward per term.

    Subclasses implement :meth:`chunk_losses`, returning per-pair losses for one chunk.
    """

    weights: dict[str, float]

    def __init__(self, bundle: EditorBundle, cfg: AttackConfig, prompts: list[list[str]], seeds: list[int]) -> None:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompt lists for {len(seeds)} images")
        self.bundle, self.cfg = bundle, cfg
        self.all_prompts: PromptBatch = encode_prompts(bundle, prompts, cfg.token_reduction)
        self.prompts = self.all_prompts              # this iteration's pairs (``prompt_subset``: a random m per image)
        self.pair_ids = torch.arange(sum(self.all_prompts.counts))   # host: this iteration's pairs in all_prompts
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.strength = attack_strength(bundle, cfg)
        self.scale = loss_scale(bundle, cfg)
        self.fixed_timesteps = attack_timesteps(bundle.num_train_timesteps, cfg.num_timesteps, self.strength, "centres")
        self.per_iteration = cfg.timestep_subset or cfg.num_timesteps      # timesteps drawn per iteration (m)
        self.pair_images = torch.tensor([i for i, c in enumerate(self.prompts.counts) for _ in range(c)])  # host
        self.iteration = 0
        self.single_backward = False                 # this iteration: one backward of the weighted terms
        self.fixed_noise: list[torch.Tensor] | None = None                 # noise="fixed": one draw per image
        self.bins: torch.Tensor | None = None        # [B, m]: the |𝒯| bins this iteration's timesteps come from
        self.chunk_bins: torch.Tensor | None = None  # [k·P]: the bin of each entry of the chunk being computed
        self.term_norms: dict[str, torch.Tensor] = {}  # balance_every > 1: last measured L1 norm per term, [B]

    # -- per-iteration sampling ------------------------------------------------------------
    def sample(self, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [B, m] and noise [m, P, C, h, w] (m = ``timestep_subset`` or |𝒯|), per-image generators.

        With ``prompt_subset`` each image first draws which of its prompts this iteration uses (``self.prompts``,
        P pairs). Each image draws its timesteps (one per bin, or the bin centres), then with
        ``timestep_subset`` a random m of the |𝒯| bins, then noise for every bin and every one of its prompts
        (the chosen ones are kept); ``noise="fixed"`` draws the noise on the first call only. The chosen bins
        are kept in ``self.bins``."""
        n, m = self.cfg.num_timesteps, self.per_iteration
        self.prompts, self.pair_ids = draw_prompts(self.all_prompts, self.cfg.prompt_subset, self.generators)
        self.pair_images = torch.tensor([i for i, c in enumerate(self.prompts.counts) for _ in range(c)])   # host
        ts, bins = [], []
        for gen in self.generators:
            if self.cfg.timesteps == "random":
                ts.append(attack_timesteps(self.bundle.num_train_timesteps, n, self.strength, "random", gen))
            else:
                ts.append(self.fixed_timesteps)
            bins.append(torch.randperm(n, generator=gen)[:m].sort().values if m < n else torch.arange(n))
        counts = self.all_prompts.counts
        if self.fixed_noise is None or self.cfg.noise == "fresh":
            noises = [torch.randn((n, count, *latent_shape), generator=gen)
                      for gen, count in zip(self.generators, counts)]
            if self.cfg.noise == "fixed":
                self.fixed_noise = noises
        else:
            noises = self.fixed_noise
        self.bins = torch.stack(bins)                                                         # [B, m], host
        timesteps = torch.stack([t[b] for t, b in zip(ts, bins)]).to(self.bundle.device)     # [B, m]
        noise = torch.cat([nz[b] for nz, b in zip(noises, bins)], dim=1)[:, self.pair_ids]       # [m, P, C, h, w]
        noise = noise.to(self.bundle.device)
        return timesteps, noise

    def chunks(self) -> Iterator[list[int]]:
        """Timestep indices per UNet call: one at a time on the reference path; on the fast path
        ``timestep_batch``, or (0) the fewest equal calls of at most ``max_unet_batch`` samples."""
        n = self.per_iteration
        if self.cfg.path == "reference":
            size = 1
        elif self.cfg.timestep_batch:
            size = self.cfg.timestep_batch
        else:
            calls = max(1, math.ceil(n * len(self.prompts.image_index) / self.cfg.max_unet_batch))
            size = math.ceil(n / calls)
        for start in range(0, n, size):
            yield list(range(start, min(n, start + size)))

    # -- gradients -------------------------------------------------------------------------
    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-term ∂term/∂x and per-image loss values; ``cfg.path`` picks the implementation.

        Both paths draw the same timesteps and noise and compute the same sums; they differ in
        floating-point summation order only.
        """
        set_memory_format(self.bundle, self.cfg.path == "fast" and self.cfg.channels_last)
        self.single_backward = self._single_backward()
        try:
            if self.cfg.path == "reference":
                self.prepare()
                return self._reference_gradients(x)
            with fast_path_setup(self.bundle, self.cfg):
                self.prepare()
                return self._fast_gradients(x)
        finally:
            self.iteration += 1

    def _single_backward(self) -> bool:
        """``balance_every`` > 1: one backward of the weighted terms, except every k-th iteration (and while a
        term's norm is unknown or zero, e.g. NBA at δ = 0), when each term is backpropagated alone and its
        L1 norm per image measured for the weights of the iterations in between."""
        k, names = self.cfg.balance_every, list(self.weights)
        if k == 1 or len(names) < 2 or self.iteration % k == 0:
            return False
        return all(name in self.term_norms and _all_positive(self.term_norms[name]) for name in names)

    def prepare(self) -> None:
        """Computed once, on the first gradients() call, in the same memory layout and compiled modules
        as the protected branch (what a subclass derives from the clean photo)."""

    def _reference_gradients(self, x: torch.Tensor):
        """Algorithm 1 literally: for each timestep encode x, run the UNet, backpropagate each term to x."""
        x = x.detach().requires_grad_(True)
        factor = self.bundle.vae_scale_factor
        shape = (self.bundle.vae.config.latent_channels, x.shape[-2] // factor, x.shape[-1] // factor)
        timesteps, noise = self.sample(shape)
        grads: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        for chunk in self.chunks():
            losses, extras, weight = self._chunk(encode_mean(self.bundle, x), timesteps, noise, chunk)
            self._accumulate(grads, losses, weight * self.scale, x)
            self._record(values, {**losses, **extras}, weight, len(chunk))
        return self._complete(grads, x), values

    def _fast_gradients(self, x: torch.Tensor):
        """One VAE encode per iteration, ``timestep_batch`` timesteps per UNet call, per-term gradients
        accumulated at the VAE latent, then one VAE backward per term. With ``vae_recompute`` the encoder
        runs without a graph first and again for the backward (Mist v2's two passes): its activations
        are not held while the UNet runs."""
        x = x.detach().requires_grad_(True)
        with torch.set_grad_enabled(not self.cfg.vae_recompute):
            mean = encode_mean(self.bundle, x)
        mean_leaf = mean.detach().requires_grad_(True)
        timesteps, noise = self.sample(tuple(mean.shape[1:]))
        latent_grads: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        for chunk in self.chunks():
            losses, extras, weight = self._chunk(mean_leaf, timesteps, noise, chunk)
            with self.backward_context():
                self._accumulate(latent_grads, losses, weight * self.scale, mean_leaf)
            self._record(values, {**losses, **extras}, weight, len(chunk))
        names = [name for name in (COMBINED, *self.weights) if name in latent_grads]
        if names and self.cfg.vae_recompute:
            mean = encode_mean(self.bundle, x)
        grads = {}
        for j, name in enumerate(names):
            (grads[name],) = torch.autograd.grad(mean, x, latent_grads[name], retain_graph=j < len(names) - 1)
        return self._complete(grads, x), values

    def _chunk(self, mean: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
               chunk: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Losses of one UNet call over the timesteps in ``chunk`` × every (image, prompt) pair, chunk-major."""
        k, pairs = len(chunk), self.prompts.image_index
        z, cond = latents_and_condition(self.bundle, mean)
        t = timesteps[pairs][:, chunk].T.reshape(-1)                             # [k·P], chunk-major
        eps = noise[chunk].reshape(k * len(pairs), *z.shape[1:])
        z_rep = z[pairs].repeat(k, 1, 1, 1)
        cond_rep = None if cond is None else cond[pairs].repeat(k, 1, 1, 1)
        self.chunk_bins = self.bins[self.pair_images][:, chunk].T.reshape(-1)     # [k·P], chunk-major, host
        losses, extras = self.chunk_losses(z_rep, cond_rep, t, eps, k)
        weight = (self.prompts.pair_weight / self.per_iteration).repeat(k)
        return losses, extras, weight

    def _accumulate(self, grads: dict[str, torch.Tensor], losses: dict[str, torch.Tensor], weight: torch.Tensor,
                    wrt: torch.Tensor) -> None:
        """grads[term] += ∂(Σ weight·loss_term)/∂wrt, one backward per term through the shared forward; or,
        on a single-backward iteration, grads[COMBINED] += ∂(Σ_term w_term·Σ weight·loss_term)/∂wrt with
        w_term = weight_term / (last L1 norm of the term's gradient) per image (``balance="grad"``)."""
        if self.single_backward:
            k = len(weight) // len(self.prompts.image_index)
            total = 0
            for name, value in losses.items():
                w = torch.full_like(self.term_norms[name], float(self.weights[name]))
                if self.cfg.balance == "grad":
                    w = w / self.term_norms[name]
                total = total + value * weight * self.pair_tensor(w[self.prompts.image_index], k)
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
                k: int) -> None:
        """values[name] += per-image weighted sum of a chunk's per-pair values."""
        index = self.prompts.image_index.repeat(k)
        for name, value in terms.items():
            per_image = torch.zeros(len(self.generators), device=value.device).index_add_(
                0, index, (value.detach() * weight).float())
            values[name] = values[name] + per_image if name in values else per_image

    def _complete(self, grads: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """float32 gradient per term of ``weights``, the loss scale taken out; zero for a term that does not
        depend on the photo (e.g. NBA at δ = 0 is flat). A single-backward iteration returns {COMBINED: g};
        an iteration that backpropagated every term records their L1 norms for ``balance_every``."""
        if self.single_backward:
            return {COMBINED: grads[COMBINED].float() / self.scale if COMBINED in grads
                    else torch.zeros_like(x, dtype=torch.float32)}
        out = {name: grads[name].float() / self.scale if name in grads else torch.zeros_like(x, dtype=torch.float32)
               for name in self.weights}
        if self.cfg.balance_every > 1:
            self.term_norms = {name: g.abs().flatten(1).sum(1) for name, g in out.items()}
        return out

    def backward_context(self) -> contextlib.AbstractContextManager:
        """Entered around the fast path's backward passes through the UNet (see DanpObjective)."""
        return contextlib.nullcontext()

    def chunk_losses(self, z: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor,
                     k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-pair losses [k·P] keyed by the names in ``weights``, and detached diagnostics to log."""
        raise NotImplementedError

    def pair_tensor(self, value: torch.Tensor, k: int) -> torch.Tensor:
        """Repeat a per-pair tensor [P, ...] for a chunk of k timesteps (chunk-major)."""
        return value.repeat(k, *([1] * (value.ndim - 1)))


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
        self.clean_cache: dict[int, torch.Tensor] = {}   # noise="fixed": bin·P + pair (in all_prompts) -> clean ε_θ

    @torch.no_grad()
    def prepare(self) -> None:
        """The clean branch's latents (and the fixed masks) once, encoded exactly as the protected branch
        encodes: same layout (channels_last), same modules, so that NBA is exactly 0 at δ = 0."""
        if self.clean_z is not None:
            return
        self.clean_z, self.clean_cond = latents_and_condition(self.bundle, encode_mean(self.bundle, self.x0))
        if self.cfg.mask == "fixed" and self.cfg.use_daa:
            self.fixed_masks = self._clean_masks()

    def _attention(self, z_t, cond, t, k) -> tuple[torch.Tensor, torch.Tensor]:
        self.store.begin(tuple(z_t.shape[-2:]), self.pair_tensor(self.prompts.token_weights, k))
        with capture_cross_attention(self.bundle.unet, self.store):
            eps_pred = predict_noise(self.bundle, z_t, t, self.pair_tensor(self.prompts.embeds, k), cond)
        return self.store.aggregate(self.cfg.upsample), eps_pred

    def backward_context(self) -> contextlib.AbstractContextManager:
        """Under gradient checkpointing the backward recomputes attn2 forwards: they must run the same
        capture processor (the store does not record them)."""
        if self.cfg.gradient_checkpointing:
            return capture_cross_attention(self.bundle.unet, self.store)
        return contextlib.nullcontext()

    @torch.no_grad()
    def _clean_masks(self) -> torch.Tensor:
        """Masks from the clean photo's attention averaged over the centre timesteps, one per pair."""
        pairs = self.prompts.image_index
        maps = 0
        for t_value in self.fixed_timesteps.tolist():
            gen = torch.Generator().manual_seed(self.cfg.seed)
            z = self.clean_z[pairs]
            noise = torch.randn(z.shape, generator=gen).to(z.device)
            t = torch.full((len(pairs),), t_value, device=z.device)
            cond = None if self.clean_cond is None else self.clean_cond[pairs]
            att, _ = self._attention(add_noise(self.bundle, z, noise, t), cond, t, 1)
            maps = maps + att
        return kapur_mask(maps, self.cfg.threshold_bins)

    @torch.no_grad()
    def _clean_prediction(self, t: torch.Tensor, noise: torch.Tensor, k: int) -> torch.Tensor:
        """ε_θ of the clean photo's z_t for a chunk (Eq. 12's target), with the same attn2 arithmetic as the
        protected branch so that NBA is exactly 0 at δ = 0. With ``noise="fixed"`` each (bin, pair) is
        predicted once and reused in every later iteration."""
        pairs = self.prompts.image_index

        def predict(idx) -> torch.Tensor:
            z0_t = add_noise(self.bundle, self.clean_z[pairs].repeat(k, 1, 1, 1)[idx], noise[idx], t[idx])
            cond0 = None if self.clean_cond is None else self.clean_cond[pairs].repeat(k, 1, 1, 1)[idx]
            return predict_noise(self.bundle, z0_t, t[idx], self.pair_tensor(self.prompts.embeds, k)[idx], cond0)

        with capture_cross_attention(self.bundle.unet, None):
            if self.cfg.noise != "fixed":
                return predict(slice(None))
            slots = (self.chunk_bins * sum(self.all_prompts.counts) + self.pair_ids.repeat(k)).tolist()
            missing = [i for i, slot in enumerate(slots) if slot not in self.clean_cache]
            if missing:
                for i, value in zip(missing, predict(torch.tensor(missing, device=t.device))):
                    self.clean_cache[slots[i]] = value
            return torch.stack([self.clean_cache[slot] for slot in slots])

    def chunk_losses(self, z, cond, t, noise, k):
        z_t = add_noise(self.bundle, z, noise, t)
        att, eps_adv = self._attention(z_t, cond, t, k)
        losses: dict[str, torch.Tensor] = {}
        extras: dict[str, torch.Tensor] = {}
        if self.cfg.use_daa:
            mask = self.pair_tensor(self.fixed_masks[self.pair_ids.to(self.fixed_masks.device)], k) \
                if self.fixed_masks is not None else \
                kapur_mask(att.detach(), self.cfg.threshold_bins)
            inside = (att * mask).pow(2).flatten(1).sum(1)
            outside = (att * (1 - mask)).pow(2).flatten(1).sum(1)
            losses["daa"] = inside - self.cfg.lambda_daa * outside
            extras["att_inside"], extras["att_outside"] = inside.detach(), outside.detach()
        if self.cfg.use_nba:
            if self.cfg.nba_target == "clean":
                target = self._clean_prediction(t, noise, k)
            else:
                target = noise
            losses["nba"] = -(target - eps_adv).pow(2).flatten(1).sum(1)
        return losses, extras
