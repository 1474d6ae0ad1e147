"""The paper's baselines as objectives for the one PGD loop (:func:`danp_pipeline.protect.pgd.pgd`).

Every method shares the loop, the budget γ (``eps``), the step α (``step_size``), the iteration
count N (``steps``), the timesteps 𝒯 and the per-image seeds; only the objective differs. Each
objective's terms are *minimized*, like DANP's.

=============  ===================================================  =================================================
name           source                                               objective here (minimized), settings
=============  ===================================================  =================================================
``pge``        PhotoGuard encoder attack. Salman et al., "Raising   ‖E(x) − E(grey)‖² (VAE posterior mean, mid-grey
               the Cost of Malicious AI-Powered Image Editing",     0.5 target image). PhotoGuard's demo notebook
               ICML 2023 (github.com/MadryLab/photoguard).          targets the zero latent with ε=0.1 on [−1,1].
``pgd-e2e``    PhotoGuard diffusion attack, same paper.             ‖D(edit(x)) − grey‖²: a differentiable edit of
                                                                    ``E2E_STEPS`` = 4 DDIM (η=0) steps with the
                                                                    editor's classifier-free guidance (7.5; image
                                                                    guidance 1.5 for InstructPix2Pix), backprop
                                                                    through UNet and VAE decoder, fresh seeded noise
                                                                    each iteration. SD img2img starts at
                                                                    ``strength``·T. PhotoGuard used 4 steps too.
``sa``         Lo et al., "Distraction is All You Need: Memory-     ‖Att ⊙ M‖²: cross-attention suppressed inside a
               Efficient Image Immunization against Diffusion-      fixed mask M (Kapur threshold of the clean
               Based Image Editing", CVPR 2024.                     photo's attention; the paper's mask is given by
                                                                    the user). Att as DANP: attn2, content tokens,
                                                                    |𝒯| timesteps.
``advdm``      Liang et al., "Adversarial Example Does Good:        −‖ε − ε_θ(z_t, t, c)‖²: the diffusion training
               Preventing Painting Imitation from Diffusion Models  loss maximized (Mist's "semantic" loss), over 𝒯
               via Adversarial Examples", ICML 2023.                with seeded noise.
``mist``       Liang & Wu, "Mist: Towards Improved Adversarial      advdm + textural ‖E(x)·s − E(grey)·s‖² (Mist's
               Examples for Diffusion Models", arXiv 2305.12683.    target is its own pattern image); the two terms
                                                                    are balanced by the shared ``balance`` rule.
``sds``        Xue et al., "Toward Effective Protection against     SDS(−): gradient *descent* on the diffusion loss
               Diffusion Based Mimicry through Score Distillation", with the score-distillation gradient
               ICLR 2024.                                           √ᾱ_t(ε_θ(z_t) − ε) (UNet Jacobian skipped, UNet
                                                                    run without grad); ``sds_mse`` is logged.
``random``     —                                                    uniform noise in ±γ, no PGD (Immunizer.perturb).
=============  ===================================================  =================================================

DANP ablations are not objectives but configurations (:data:`danp_pipeline.config.EVAL_METHODS`): ``danp-no-daa``
(use_daa=False; starts from the ``random`` baseline's δ, because NBA alone is flat at δ = 0), ``danp-no-nba``
(use_nba=False), ``danp-fixed-mask`` (mask="fixed"), ``danp-focused`` (token_reduction="focused": DAA's map
from the prompt's words whose attention localizes, not from every content word).
"""

from __future__ import annotations

import logging

import torch

from ..config import AttackConfig
from .danp import DanpObjective, DiffusionObjective
from .diffusion import (
    Sampler,
    add_noise,
    attack_strength,
    condition_of,
    encode_mean,
    encode_photos,
    encode_prompts,
    latents_and_condition,
    loss_scale,
    predict_noise,
    unconditional_embeds,
)
from .models import EditorBundle
from .pgd import Objective

logger = logging.getLogger(__name__)

GREY = 0.5            # target image of PGE, PGD-e2e and Mist's textural term
E2E_STEPS = 4         # denoising steps of PhotoGuard's differentiable edit
GUIDANCE = 7.5        # the editors' default text guidance
IMAGE_GUIDANCE = 1.5  # InstructPix2Pix's default image guidance


def build_objective(method: str, bundle: EditorBundle, cfg: AttackConfig, prompts: list[list[str]],
                    seeds: list[int], x0: torch.Tensor) -> Objective:
    """The objective of ``method`` (DANP or a baseline) for photos x0 [B,3,h,w] with per-image prompts and seeds."""
    if method not in OBJECTIVES:
        raise ValueError(f"method {method!r} has no objective; expected one of {list(OBJECTIVES)}")
    return OBJECTIVES[method](bundle, cfg, prompts, seeds, x0)


def _grey_mean(bundle: EditorBundle, x0: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encode_mean(bundle, torch.full_like(x0[:1], GREY))


class PixelObjective:
    """Objectives whose per-image losses are differentiable functions of the photos: one autograd per term."""

    weights: dict[str, float]

    def __init__(self, bundle: EditorBundle, cfg: AttackConfig, prompts: list[list[str]], seeds: list[int]) -> None:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompt lists for {len(seeds)} images")
        self.bundle, self.cfg = bundle, cfg
        self.scale = loss_scale(bundle, cfg)
        self.iteration = 0                           # gradients() calls so far

    def losses(self, x: torch.Tensor, iteration: int) -> dict[str, torch.Tensor]:
        """Per-image losses [B] keyed by the names in ``weights``, at iteration ``iteration`` (0-based)."""
        raise NotImplementedError

    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = x.detach().requires_grad_(True)
        try:
            losses = self.losses(x, self.iteration)
        finally:
            self.iteration += 1
        names = list(self.weights)
        grads = {}
        for j, name in enumerate(names):
            (g,) = torch.autograd.grad(losses[name].sum() * self.scale, x, retain_graph=j < len(names) - 1)
            grads[name] = g.float() / self.scale
        return grads, {name: value.detach().float() for name, value in losses.items()}


class EncoderAttack(PixelObjective):
    """PhotoGuard encoder attack: pull the VAE latent of the photo toward that of a grey image."""

    def __init__(self, bundle, cfg, prompts, seeds, x0) -> None:
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {"pge": 1.0}
        self.target = _grey_mean(bundle, x0)

    def losses(self, x, iteration):
        mean = encode_mean(self.bundle, x)
        return {"pge": (mean - self.target).pow(2).flatten(1).mean(1)}


class DiffusionAttack(PixelObjective):
    """PhotoGuard diffusion attack: a few-step differentiable edit whose output is pulled toward grey."""

    def __init__(self, bundle, cfg, prompts, seeds, x0, steps: int = E2E_STEPS) -> None:
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {"pgd_e2e": 1.0}
        self.steps = steps
        self.sampler = Sampler(bundle, cfg, encode_prompts(bundle, prompts, cfg.token_reduction), seeds,
                               per_timestep=False)
        self.uncond = unconditional_embeds(bundle)

    def losses(self, x, iteration):
        mean = encode_mean(self.bundle, x)
        draw = self.sampler.draw(iteration, tuple(mean.shape[1:]))
        z, cond = latents_and_condition(self.bundle, encode_photos(self.bundle, x, draw.masks, mean), draw.masks)
        prompts, pairs = draw.prompts, draw.prompts.image_index
        latents = few_step_edit(self.bundle, z[pairs], condition_of(cond, pairs), prompts.embeds,
                                self.uncond, draw.noise, self.steps, attack_strength(self.bundle, self.cfg))
        decoded = self.bundle.vae.decode((latents / self.bundle.vae.config.scaling_factor).to(self.bundle.dtype)).sample
        image = (decoded.float() + 1) / 2
        per_pair = (image - GREY).pow(2).flatten(1).mean(1) * prompts.pair_weight
        return {"pgd_e2e": torch.zeros(len(prompts.counts), device=x.device).index_add(0, pairs, per_pair)}


def few_step_edit(bundle: EditorBundle, z: torch.Tensor, cond: torch.Tensor | None, embeds: torch.Tensor,
                  uncond: torch.Tensor, noise: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """Differentiable DDIM (η=0) edit with classifier-free guidance; returns the final latents [P,4,h,w].

    InstructPix2Pix kinds start from pure noise and condition on the image latents (3-way guidance, as
    their pipelines); img2img kinds start from z noised to strength·T (2-way guidance); inpainting starts
    from pure noise at strength 1 (else as img2img) with its mask and masked-image latent ``cond`` in both
    branches of its 2-way guidance, as its pipeline.
    """
    abar = bundle.scheduler.alphas_cumprod.to(z.device, torch.float32)
    three_way = bundle.spec.condition == "latent"
    from_noise = three_way or (bundle.spec.condition == "masked" and strength >= 1)
    top = bundle.num_train_timesteps - 1 if from_noise else max(int(strength * bundle.num_train_timesteps) - 1, 0)
    ts = torch.linspace(top, 0, steps + 1)[:-1].round().long().tolist()
    start = torch.full((len(z),), ts[0], device=z.device, dtype=torch.long)
    latents = noise if from_noise else add_noise(bundle, z, noise, start)
    n = len(z)
    unc = uncond.expand(n, -1, -1)
    for i, t in enumerate(ts):
        if three_way:
            sample_cond = torch.cat([cond, cond, torch.zeros_like(cond)])
            eps = predict_noise(bundle, latents.repeat(3, 1, 1, 1), torch.full((3 * n,), t, device=z.device),
                                torch.cat([embeds, unc, unc]), sample_cond)
            e_text, e_img, e_unc = eps.chunk(3)
            eps = e_unc + GUIDANCE * (e_text - e_img) + IMAGE_GUIDANCE * (e_img - e_unc)
        else:
            eps = predict_noise(bundle, latents.repeat(2, 1, 1, 1), torch.full((2 * n,), t, device=z.device),
                                torch.cat([embeds, unc]), None if cond is None else cond.repeat(2, 1, 1, 1))
            e_text, e_unc = eps.chunk(2)
            eps = e_unc + GUIDANCE * (e_text - e_unc)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=z.device)
        x0_pred = (latents - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        latents = a_prev.sqrt() * x0_pred + (1 - a_prev).sqrt() * eps
    return latents


class AttentionDistraction(DanpObjective):
    """SA: suppress the prompt's cross-attention inside a fixed mask taken from the clean photo."""

    def __init__(self, bundle, cfg, prompts, seeds, x0) -> None:
        super().__init__(bundle, cfg.replace(mask="fixed", use_daa=True, use_nba=False), prompts, seeds, x0)
        self.weights = {"sa": 1.0}

    def chunk_losses(self, z, cond, t, noise, chunk):
        att, _ = self._attention(add_noise(self.bundle, z, noise, t), cond, t, chunk.prompts, chunk.k)
        inside = (att * self.chunk_masks(chunk)).pow(2).flatten(1).sum(1)
        return {"sa": inside}, {"att_total": att.detach().pow(2).flatten(1).sum(1)}


class NoiseLossAttack(DiffusionObjective):
    """AdvDM: maximize the diffusion loss; with ``mist`` also pull E(x) toward a grey image's latent."""

    def __init__(self, bundle, cfg, prompts, seeds, x0) -> None:
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {"advdm": 1.0}
        if cfg.method == "mist":
            self.weights["textural"] = 1.0
            self.target = _grey_mean(bundle, x0) * bundle.vae.config.scaling_factor

    def chunk_losses(self, z, cond, t, noise, chunk):
        eps = predict_noise(self.bundle, add_noise(self.bundle, z, noise, t), t, chunk.repeat(chunk.prompts.embeds),
                            cond)
        losses = {"advdm": -(eps - noise).pow(2).flatten(1).sum(1)}
        if "textural" in self.weights:
            losses["textural"] = (z - self.target).pow(2).flatten(1).sum(1)
        return losses, {}


class ScoreDistillation(DiffusionObjective):
    """SDS(−): descend the diffusion loss along the score-distillation gradient √ᾱ_t(ε_θ − ε)."""

    def __init__(self, bundle, cfg, prompts, seeds, x0) -> None:
        super().__init__(bundle, cfg, prompts, seeds)
        self.weights = {"sds": 1.0}

    def chunk_losses(self, z, cond, t, noise, chunk):
        z_t = add_noise(self.bundle, z, noise, t)
        with torch.no_grad():
            residual = predict_noise(self.bundle, z_t, t, chunk.repeat(chunk.prompts.embeds),
                                     None if cond is None else cond.detach()) - noise
        # ∂/∂z of <residual, z_t> is √ᾱ_t · residual: the SDS gradient, without the UNet Jacobian.
        surrogate = (residual * z_t).flatten(1).sum(1)
        return {"sds": surrogate}, {"sds_mse": residual.pow(2).flatten(1).sum(1)}


#: The objective of every method in config.METHODS that runs the PGD loop ("random" draws noise once).
OBJECTIVES: dict[str, type] = {
    "danp": DanpObjective, "pge": EncoderAttack, "pgd-e2e": DiffusionAttack, "sa": AttentionDistraction,
    "advdm": NoiseLossAttack, "mist": NoiseLossAttack, "sds": ScoreDistillation,
}
