"""Where a micro-editor's cross-attention looks, against the world's ground-truth object masks.

The maps are the ones DANP optimizes (protect/attention.py: every ``attn2`` layer, reduced over heads,
upsampled, averaged over layers), captured on a source photo noised to chosen timesteps, for either
explicit token positions (e.g. the named object's words) or a DANP ``token_reduction``. Used by
benchmarks/micro_attention.py and the efficacy tests; training has its own loop (micro/training.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..protect.attention import AttentionStore, capture_cross_attention, token_weights
from ..protect.diffusion import (
    add_noise,
    encode_mean,
    latents_and_condition,
    predict_noise,
)
from ..protect.models import EditorBundle
from ..protect.threshold import kapur_mask


def word_weights(length: int, positions: list[int]) -> torch.Tensor:
    """Token weights [1, length]: equal over ``positions`` (BOS is 0), zero elsewhere."""
    w = torch.zeros(1, length)
    w[0, positions] = 1.0 / len(positions)
    return w


@torch.no_grad()
def attention_maps(bundle: EditorBundle, instruction: str, source: np.ndarray, tokens: list[int] | str,
                   timesteps: list[int], seed: int) -> torch.Tensor:
    """Cross-attention maps [len(timesteps), h, w] of ``instruction`` on ``source`` (uint8 HxWx3):
    of the tokens at positions ``tokens``, or weighted as DANP's DAA weighs them when ``tokens`` is a
    ``token_reduction`` ("content", "all", "focused"). One noise draw per timestep from ``seed``."""
    tok = bundle.tokenizer(instruction, padding="max_length", max_length=bundle.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
    embeds = bundle.text_encoder(tok.input_ids.to(bundle.device))[0]
    weights = (token_weights(tok.attention_mask, tokens) if isinstance(tokens, str)
               else word_weights(tok.input_ids.shape[1], tokens)).to(bundle.device)
    x = torch.from_numpy(source).permute(2, 0, 1)[None].float().to(bundle.device) / 255
    z, cond = latents_and_condition(bundle, encode_mean(bundle, x))
    store, maps = AttentionStore(focused=tokens == "focused"), []
    gen = torch.Generator().manual_seed(seed)
    with capture_cross_attention(bundle.unet, store):
        for t_value in timesteps:
            t = torch.tensor([t_value], device=bundle.device)
            z_t = add_noise(bundle, z, torch.randn(z.shape, generator=gen).to(bundle.device), t)
            store.begin(tuple(z.shape[-2:]), weights)
            predict_noise(bundle, z_t, t, embeds, cond)
            maps.append(store.aggregate())
    return torch.cat(maps)


def mask_overlap(maps: torch.Tensor, object_mask: torch.Tensor) -> dict[str, float]:
    """DAA's Kapur mask of each map [T, h, w] against the object's mask [h, w] (area fractions on the
    same grid; > 0.5 counts as object): mean IoU, precision, recall and the mask's area share."""
    daa = kapur_mask(maps)
    obj = (object_mask > 0.5).float().expand_as(daa)
    inter = (daa * obj).sum(dim=(-2, -1))
    union = ((daa + obj) > 0).float().sum(dim=(-2, -1))
    return {"iou": float((inter / union.clamp(min=1)).mean()),
            "precision": float((inter / daa.sum(dim=(-2, -1)).clamp(min=1)).mean()),
            "recall": float((inter / obj.sum(dim=(-2, -1)).clamp(min=1)).mean()),
            "mask_area": float(daa.mean())}
