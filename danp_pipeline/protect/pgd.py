"""The PGD loop of Algorithm 1, the one loop every method uses (docs/method.md, Eq. 13).

An objective (:class:`Objective`: DANP's in protect/danp.py, the baselines' in protect/baselines.py)
turns the current protected photos into per-term gradients; :func:`pgd` weights the terms
(:class:`Balancer`, the one balancing rule), takes the sign step and projects onto the L∞ ball and the
valid pixel range.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import AttackConfig

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
