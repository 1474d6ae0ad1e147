"""Kapur maximum-entropy threshold and the dynamic mask (DANP_SPEC.md, Eq. 7-10).

Each map is min-max normalized to [0,1] and put in ``bins`` equal bins (bin k holds values in
[k/L, (k+1)/L), the top bin also holds 1). Splitting after bin k gives class 0 = bins 0..k and
class 1 = bins k+1..L-1; Kapur chooses the k that maximizes H₀(k) + H₁(k), the entropies of the
two classes' renormalized histograms. The mask is 1 on class 1 (text-relevant region).

Degenerate maps are defined, never NaN: a split whose class is empty is not eligible; a map with
no eligible split (constant, or all values in one bin) gets an all-zero mask and threshold 1.0.
Ties between splits go to the smallest k.
"""

from __future__ import annotations

import torch


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each map of a batch [B, ...] to [0,1]; a constant map becomes all zeros."""
    flat = maps.detach().float().flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    norm = torch.where(span > 0, (flat - lo) / span.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(flat))
    return norm.reshape(maps.shape)


def bin_indices(norm: torch.Tensor, bins: int) -> torch.Tensor:
    return (norm * bins).floor().clamp(0, bins - 1).long()


def kapur_split(maps: torch.Tensor, bins: int = 128) -> torch.Tensor:
    """For each map in [B, ...], the Kapur split bin k* (class 1 = bins > k*); -1 when none exists."""
    if maps.ndim < 2:
        raise ValueError(f"maps must be a batch [B, ...] with at least 2 dims, got shape {tuple(maps.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    idx = bin_indices(normalize(maps), bins).flatten(1)
    hist = torch.zeros(idx.shape[0], bins, dtype=torch.float64, device=maps.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    p = hist / hist.sum(dim=1, keepdim=True)
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))

    # Splits k = 0..L-2: class 0 = bins 0..k.
    p0 = p.cumsum(dim=1)[:, :-1]
    s0 = plogp.cumsum(dim=1)[:, :-1]
    p1 = 1.0 - p0
    s1 = plogp.sum(dim=1, keepdim=True) - s0
    # H = -Σ (p/P) log(p/P) = log P - (1/P) Σ p log p, for a non-empty class.
    valid = (p0 > 1e-12) & (p1 > 1e-12)
    h0 = torch.log(p0.clamp(min=1e-300)) - s0 / p0.clamp(min=1e-300)
    h1 = torch.log(p1.clamp(min=1e-300)) - s1 / p1.clamp(min=1e-300)
    total = torch.where(valid, h0 + h1, torch.full_like(h0, -torch.inf))
    best = total.argmax(dim=1)
    has_split = valid.any(dim=1)
    return torch.where(has_split, best, torch.full_like(best, -1))


def kapur_threshold(maps: torch.Tensor, bins: int = 128) -> torch.Tensor:
    """τ* on the normalized scale, per map: the upper edge (k*+1)/L of the chosen split; 1.0 if none."""
    k = kapur_split(maps, bins)
    return torch.where(k >= 0, (k + 1).float() / bins, torch.ones_like(k, dtype=torch.float32))


def kapur_mask(maps: torch.Tensor, bins: int = 128) -> torch.Tensor:
    """M = 𝟙(N(Att) > τ*) as float32 with the shape of ``maps``; carries no gradient."""
    k = kapur_split(maps, bins)
    idx = bin_indices(normalize(maps), bins)
    k = k.view(-1, *([1] * (maps.ndim - 1)))
    return ((idx > k) & (k >= 0)).float()
