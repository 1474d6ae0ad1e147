"""A differentiable JPEG round trip (baseline IJG codec, 4:2:0 chroma), for the attacker's view.

Forward it does what a JPEG encoder and decoder do to the pixels: RGB → YCbCr (JFIF), 2×2 chroma
averaging, 8×8 DCT, division by the IJG quantization tables scaled by the quality, rounding, and
back. The rounding passes the gradient straight through (forward: exact rounding; backward:
identity), so the loop sees the codec's real output and a usable gradient. It differs from
libjpeg in the chroma upsampling (bilinear here, "fancy" triangle there) and in float vs integer
DCT, by about one level.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32))


def quant_table(quality: int, chroma: bool) -> torch.Tensor:
    """The IJG table for ``quality`` (1-100), as libjpeg's ``jpeg_set_quality`` scales it."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality!r}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float32)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255).view(8, 8)


@lru_cache(maxsize=1)
def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.float()


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _blocks(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantize [N,H,W] planes (H, W multiples of 8) block by block: DCT, round(coef/Q)·Q, inverse DCT."""
    n, h, w = x.shape
    d = _dct_matrix().to(x.device, x.dtype)
    q = table.to(x.device, x.dtype)
    blocks = x.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)            # [N, h/8, w/8, 8, 8]
    coef = d @ blocks @ d.T
    coef = _round_ste(coef / q) * q
    return (d.T @ coef @ d).transpose(2, 3).reshape(n, h, w)


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """x [B,3,H,W] in [0,1] as it comes back from JPEG at ``quality`` (differentiable, STE rounding)."""
    b, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    p = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255
    r, g, bl = p[:, 0], p[:, 1], p[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl - 128
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    y = _blocks(y, quant_table(quality, False))
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)                      # 4:2:0
    n, _, ch, cw = chroma.shape
    chroma = _blocks(chroma.reshape(n * 2, ch, cw), quant_table(quality, True)).reshape(n, 2, ch, cw)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0], chroma[:, 1]
    y = y + 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return _round_ste(rgb[..., :h, :w].clamp(0, 255)) / 255   # the decoder's 8-bit output
