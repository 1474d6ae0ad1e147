import math

import pytest
import torch

from danp_pipeline.protect.threshold import (
    kapur_mask,
    kapur_split,
    kapur_threshold,
    normalize,
)


def brute_force_split(values: list[float], bins: int) -> int:
    """Kapur's split by the definition: loop over every k, entropies of the two renormalized classes."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return -1
    idx = [min(int(math.floor((v - lo) / (hi - lo) * bins)), bins - 1) for v in values]
    hist = [0] * bins
    for i in idx:
        hist[i] += 1
    p = [h / len(values) for h in hist]
    best, best_k = -math.inf, -1
    for k in range(bins - 1):
        p0 = sum(p[: k + 1])
        p1 = 1 - p0
        if p0 <= 1e-12 or p1 <= 1e-12:
            continue
        h0 = -sum(q / p0 * math.log(q / p0) for q in p[: k + 1] if q > 0)
        h1 = -sum(q / p1 * math.log(q / p1) for q in p[k + 1:] if q > 0)
        if h0 + h1 > best + 1e-12:
            best, best_k = h0 + h1, k
    return best_k


@pytest.mark.parametrize("bins", [4, 16, 128])
def test_kapur_matches_brute_force_on_random_maps(bins):
    gen = torch.Generator().manual_seed(bins)
    maps = torch.cat([
        torch.rand(4, 12, 12, generator=gen, dtype=torch.float64),
        torch.rand(4, 12, 12, generator=gen, dtype=torch.float64) ** 3,              # skewed
        torch.randn(4, 12, 12, generator=gen, dtype=torch.float64).exp(),            # long tail
    ])
    got = kapur_split(maps, bins)
    want = [brute_force_split(m.flatten().tolist(), bins) for m in maps]
    assert got.tolist() == want
    mask = kapur_mask(maps, bins)
    norm = normalize(maps)
    for m, n, k in zip(mask, norm, want):
        expected = (torch.floor(n * bins).clamp(max=bins - 1) > k).double()
        assert torch.equal(m.double(), expected)


def test_bimodal_map_is_split_between_the_modes():
    gen = torch.Generator().manual_seed(0)
    att = 0.1 + 0.02 * torch.rand(1, 16, 16, generator=gen)
    att[0, 4:10, 5:12] = 0.8 + 0.02 * torch.rand(6, 7, generator=gen)
    mask = kapur_mask(att, 128)
    assert mask[0, 4:10, 5:12].sum().item() == 42
    assert mask.sum().item() == 42
    tau = kapur_threshold(att, 128)
    assert 0.02 < tau.item() < 0.98


@pytest.mark.parametrize("maps", [
    torch.full((2, 8, 8), 0.37),                       # constant
    torch.zeros(1, 1, 1),                              # a single pixel
    torch.tensor([[[0.0, 1.0]]]),                      # tiny, two values
    torch.nn.functional.one_hot(torch.tensor([5]), 16).float().view(1, 4, 4),  # one-hot
])
def test_degenerate_maps_give_a_defined_mask(maps):
    mask = kapur_mask(maps, 128)
    tau = kapur_threshold(maps, 128)
    assert mask.shape == maps.shape
    assert torch.isfinite(mask).all() and torch.isfinite(tau).all()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_degenerate_cases_have_the_documented_values():
    constant = kapur_mask(torch.full((1, 8, 8), 2.0), 128)
    assert constant.sum().item() == 0                 # no eligible split -> all zeros
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 3.0
    mask = kapur_mask(one_hot, 128)
    assert mask.sum().item() == 1 and mask[0, 1, 2].item() == 1   # the hot pixel is its own class
    two = kapur_mask(torch.tensor([[[0.0, 1.0]]]), 128)
    assert two.tolist() == [[[0.0, 1.0]]]


def test_mask_carries_no_gradient_and_bad_arguments_are_refused():
    att = torch.rand(2, 6, 6, requires_grad=True)
    assert not kapur_mask(att, 128).requires_grad
    with pytest.raises(ValueError, match="bins"):
        kapur_split(att, 1)
    with pytest.raises(ValueError, match="batch"):
        kapur_split(torch.rand(5), 8)
