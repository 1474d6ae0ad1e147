"""Cross-attention capture (DANP_SPEC.md, Eq. 3-4).

A processor installed on every ``attn2`` layer computes the attention softmax explicitly
(``attn.get_attention_scores``), reduces it over heads and text tokens right away, and hands the
per-layer map to an :class:`AttentionStore`. ``attn1`` keeps its fused kernel; the UNet itself is
never edited, and :func:`capture_cross_attention` restores the original processors on exit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

logger = logging.getLogger(__name__)


class AttentionStore:
    """Collects one reduced map per ``attn2`` call during a UNet forward.

    Before each forward, :meth:`begin` is told the latent grid (h, w) and per-sample token weights
    [B, T] (summing to 1 over tokens). Each layer's softmax [B·heads, h_l·w_l, T] becomes a map
    [B, h_l, w_l]: mean over heads, weighted sum over tokens.

    ``focused=True`` (``token_reduction="focused"``) keeps one map per weighted token instead and
    reduces in :meth:`aggregate`: only the tokens whose layer-averaged map is at least as concentrated
    as their prompt's average weighted token (entropy at or below the mean) are kept, with equal weights.
    Words that name something in the picture localize; instruction words ("make", "the") spread out
    and would blur the mask (benchmarks/micro_attention.py measures both).
    """

    def __init__(self, focused: bool = False) -> None:
        self.maps: list[torch.Tensor] = []
        self.latent_hw: tuple[int, int] | None = None
        self.token_weights: torch.Tensor | None = None
        self.recording = False
        self.focused = focused
        self.kept_tokens: torch.Tensor | None = None

    def begin(self, latent_hw: tuple[int, int], token_weights: torch.Tensor) -> None:
        self.maps = []
        self.latent_hw = latent_hw
        self.token_weights = token_weights
        self.recording = True
        if self.focused:   # the tokens weighted in any sample: their maps are kept one by one
            self.kept_tokens = (token_weights > 0).any(dim=0).nonzero()[:, 0]

    def add(self, probs: torch.Tensor, heads: int) -> None:
        if self.latent_hw is None or self.token_weights is None:
            raise RuntimeError("AttentionStore.begin() must be called before the UNet forward")
        batch = self.token_weights.shape[0]
        n_query, n_tokens = probs.shape[-2:]
        grid = _grid(self.latent_hw, n_query)
        probs = probs.reshape(batch, heads, n_query, n_tokens).mean(dim=1)
        if self.focused:   # [B, K, h, w] for the K kept tokens
            layer_map = probs[:, :, self.kept_tokens].transpose(1, 2).reshape(batch, -1, *grid)
        else:
            weights = self.token_weights.to(probs.dtype)[:, :, None]
            layer_map = torch.bmm(probs, weights).reshape(batch, *grid)
        if self.recording:  # not during activation recomputation (gradient checkpointing) after aggregate()
            self.maps.append(layer_map)

    def aggregate(self, mode: str = "bilinear") -> torch.Tensor:
        """Att = (1/L) Σ_l Up(A_l) on the largest captured grid, as float32 [B, H, W]. Ends recording."""
        self.recording = False
        if not self.maps:
            raise RuntimeError("no cross-attention was captured: is the processor installed on attn2?")
        size = max((m.shape[-2:] for m in self.maps), key=lambda s: s[0] * s[1])
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        if not self.focused:
            ups = [F.interpolate(m[:, None].float(), size=tuple(size), mode=mode, **kwargs)[:, 0] for m in self.maps]
            return torch.stack(ups).mean(dim=0)
        ups = [F.interpolate(m.float(), size=tuple(size), mode=mode, **kwargs) for m in self.maps]
        per_token = torch.stack(ups).mean(dim=0)                       # [B, K, H, W]
        weights = focused_weights(per_token.detach(), self.token_weights[:, self.kept_tokens].float())
        return torch.einsum("bkhw,bk->bhw", per_token, weights)


def focused_weights(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Equal weights [B, K] over the tokens (weight > 0) whose map [B, K, H, W] has an entropy at or
    below the mean entropy of that sample's weighted tokens; the most concentrated map always stays."""
    p = per_token.flatten(2).clamp(min=0)
    p = p / p.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    entropy = -(p * torch.log(p.clamp(min=1e-30))).sum(dim=-1)                          # [B, K]
    active = weights > 0
    mean = (entropy * active).sum(dim=1, keepdim=True) / active.sum(dim=1, keepdim=True).clamp(min=1)
    keep = active & (entropy <= mean + 1e-6)
    fallback = torch.zeros_like(keep)
    fallback[torch.arange(len(keep)), entropy.masked_fill(~active, torch.inf).argmin(dim=1)] = True
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, fallback & active)
    return keep.float() / keep.float().sum(dim=1, keepdim=True).clamp(min=1)


def _grid(latent_hw: tuple[int, int], n_query: int) -> tuple[int, int]:
    """The (h, w) grid of a layer's queries: the latent downsampled by 2^k, sides rounded up as the
    UNet's strided convolutions round them (any aspect ratio, odd sizes too)."""
    h, w = latent_hw
    factor = 1
    while factor <= max(h, w):
        grid = (-(-h // factor), -(-w // factor))
        if grid[0] * grid[1] == n_query:
            return grid
        factor *= 2
    raise RuntimeError(f"cannot place {n_query} attention queries on a grid of latent {h}x{w}")


class CrossAttentionCaptureProcessor:
    """Attention processor for ``attn2``: standard attention with an explicit softmax that is recorded
    (or, with ``store=None``, only computed: the same arithmetic as a capturing pass)."""

    def __init__(self, store: AttentionStore | None) -> None:
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("cross-attention capture supports transformer attn2 layers only")
        if encoder_hidden_states is None:
            raise ValueError("attn2 was called without encoder_hidden_states: not a cross-attention layer")
        residual = hidden_states
        batch, seq_len, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))

        probs = attn.get_attention_scores(query, key, attention_mask)
        if self.store is not None:
            self.store.add(probs, attn.heads)

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def capture_cross_attention(unet: UNet2DConditionModel,
                            store: AttentionStore | None) -> Iterator[AttentionStore | None]:
    """Install the capture processor on every ``attn2`` layer; restore the originals on exit.

    With ``store=None`` nothing is recorded: a pass that must match a capturing pass bit for bit
    (the clean branch of NBA) runs the same explicit softmax instead of the fused kernel."""
    original = dict(unet.attn_processors)
    processors = {
        name: CrossAttentionCaptureProcessor(store) if name.endswith("attn2.processor") else proc
        for name, proc in original.items()
    }
    n_cross = sum(name.endswith("attn2.processor") for name in original)
    if n_cross == 0:
        raise ValueError("this UNet has no attn2 (cross-attention) layers to capture")
    unet.set_attn_processor(processors)
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def token_weights(attention_mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample weights over the 77 text positions that sum to 1.

    ``content``: the prompt's own tokens (no BOS, EOS or padding); a prompt that tokenizes to
    nothing falls back to ``all``. ``all``: uniform over every position. ``focused`` starts from the
    content weights; the store narrows them per map (:class:`AttentionStore`).
    """
    batch, length = attention_mask.shape
    uniform = torch.full((batch, length), 1.0 / length)
    if reduction == "all":
        return uniform
    content = attention_mask.clone().float()
    content[:, 0] = 0  # BOS
    last = attention_mask.sum(dim=1).long() - 1  # EOS: the last attended position
    content[torch.arange(batch), last.clamp(min=0)] = 0
    counts = content.sum(dim=1, keepdim=True)
    return torch.where(counts > 0, content / counts.clamp(min=1), uniform)
