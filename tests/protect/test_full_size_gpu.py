"""The full-size InstructPix2Pix architecture (random weights, no download, as ``bench --arch ip2p``) on CUDA
in bf16: two PGD iterations of DANP at 512² on one photo through the Immunizer. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from helpers import as_batch, photo

from danp_pipeline.config import DEFAULT_PROMPTS, AttackConfig
from danp_pipeline.protect.immunizer import Immunizer
from danp_pipeline.protect.models import full_size_editor


@pytest.mark.gpu
def test_full_size_ip2p_runs_danp_at_512_in_bf16_on_cuda():
    cfg = AttackConfig(method="danp", steps=2, num_timesteps=2, resolution=512)
    device = torch.device("cuda")
    editor = full_size_editor("ip2p", seed=0, device=device).to(device, torch.bfloat16).freeze()
    x0 = as_batch(photo("astronaut", (512, 512)))
    out = Immunizer(editor, cfg).perturb(x0, [[DEFAULT_PROMPTS[0]]], [0])
    total = out.total()
    assert total is not None and total.shape == (cfg.steps, 1)
    assert torch.isfinite(total).all(), total
    assert out.delta.shape == x0.shape
    assert 0 < out.delta.abs().max().item() <= cfg.eps + 1e-6
