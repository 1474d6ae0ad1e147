import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from danp_pipeline.protect.attention import (
    AttentionStore,
    CrossAttentionCaptureProcessor,
    capture_cross_attention,
    token_weights,
)
from danp_pipeline.protect.diffusion import encode_prompts


def unet_inputs(bundle, batch=2, hw=(8, 12)):
    gen = torch.Generator().manual_seed(0)
    channels = bundle.unet.config.in_channels
    sample = torch.randn(batch, channels, *hw, generator=gen)
    prompts = encode_prompts(bundle, [["put her in a prison cell"], ["make it snow"]][:batch])
    return sample, torch.tensor([50, 700][:batch]), prompts


def test_capture_leaves_the_unet_output_unchanged(tiny_ip2p):
    unet = tiny_ip2p.unet
    sample, t, prompts = unet_inputs(tiny_ip2p)
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=prompts.embeds).sample
        store = AttentionStore()
        store.begin(tuple(sample.shape[-2:]), prompts.token_weights)
        with capture_cross_attention(unet, store):
            captured = unet(sample, t, encoder_hidden_states=prompts.embeds).sample
    assert (plain - captured).abs().max().item() < 1e-5
    n_attn2 = sum(name.endswith("attn2.processor") for name in unet.attn_processors)
    assert len(store.maps) == n_attn2 > 0


def test_only_attn2_is_swapped_and_everything_is_restored(tiny_ip2p):
    unet = tiny_ip2p.unet
    before = dict(unet.attn_processors)
    store = AttentionStore()
    with capture_cross_attention(unet, store):
        during = unet.attn_processors
        for name, proc in during.items():
            if name.endswith("attn2.processor"):
                assert isinstance(proc, CrossAttentionCaptureProcessor)
            else:
                assert isinstance(proc, AttnProcessor2_0)   # self-attention keeps the fused kernel
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)


def test_maps_are_probabilities_reduced_over_heads_and_tokens(tiny_sd):
    sample, t, prompts = unet_inputs(tiny_sd, hw=(8, 12))
    store = AttentionStore()
    # reduction "all": the mean over 77 positions of a softmax over those positions is exactly 1/77
    store.begin((8, 12), token_weights(torch.ones(2, 77, dtype=torch.long), "all"))
    with torch.no_grad(), capture_cross_attention(tiny_sd.unet, store):
        tiny_sd.unet(sample, t, encoder_hidden_states=prompts.embeds)
    grids = {tuple(m.shape[-2:]) for m in store.maps}
    assert grids == {(8, 12), (4, 6)}
    for m in store.maps:
        assert torch.allclose(m, torch.full_like(m, 1 / 77), atol=1e-6)
    att = store.aggregate()
    assert att.shape == (2, 8, 12)


def test_content_tokens_exclude_bos_eos_and_padding(tiny_ip2p):
    tok = tiny_ip2p.tokenizer(["ab", "abcd"], padding="max_length", max_length=77, return_tensors="pt")
    w = token_weights(tok.attention_mask, "content")
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert w[0].nonzero().flatten().tolist() == [1, 2]          # two characters, BOS at 0, EOS at 3
    assert w[1].nonzero().flatten().tolist() == [1, 2, 3, 4]
    empty = token_weights(torch.tensor([[1, 1] + [0] * 75]), "content")   # BOS+EOS only -> uniform fallback
    assert torch.allclose(empty, torch.full((1, 77), 1 / 77))


def test_maps_carry_gradient_to_the_input(tiny_ip2p):
    sample, t, prompts = unet_inputs(tiny_ip2p, batch=1)
    sample.requires_grad_(True)
    store = AttentionStore()
    store.begin(tuple(sample.shape[-2:]), prompts.token_weights)
    with capture_cross_attention(tiny_ip2p.unet, store):
        tiny_ip2p.unet(sample, t, encoder_hidden_states=prompts.embeds)
    store.aggregate().pow(2).sum().backward()
    assert sample.grad is not None and sample.grad.abs().sum() > 0


def test_focused_weights_keep_the_tokens_whose_maps_concentrate():
    from danp_pipeline.protect.attention import focused_weights

    blob = torch.zeros(6, 6)
    blob[1:3, 1:3] = 1.0
    flat = torch.ones(6, 6)
    other_blob = torch.roll(blob, shifts=(3, 3), dims=(0, 1)) + 0.01
    maps = torch.stack([blob + 0.01, flat, other_blob, blob])[None]     # [1, 4 tokens, 6, 6]
    weights = torch.tensor([[0.25, 0.25, 0.25, 0.0]])                   # token 3 is no content token
    assert focused_weights(maps, weights).tolist() == [[0.5, 0.0, 0.5, 0.0]]
    # every map equally spread: all stay; a single content token always stays
    third = torch.full((1, 3), 1 / 3)
    assert torch.allclose(focused_weights(flat.expand(1, 3, 6, 6), third), third)
    assert focused_weights(maps[:, :2], torch.tensor([[0.0, 1.0]])).tolist() == [[0.0, 1.0]]


def test_focused_store_reduces_to_a_weighted_map_with_gradient(tiny_ip2p):
    sample, t, prompts = unet_inputs(tiny_ip2p)
    sample.requires_grad_(True)
    store = AttentionStore(focused=True)
    store.begin(tuple(sample.shape[-2:]), prompts.token_weights)
    with capture_cross_attention(tiny_ip2p.unet, store):
        tiny_ip2p.unet(sample, t, encoder_hidden_states=prompts.embeds)
    att = store.aggregate()
    assert att.shape == (2, *sample.shape[-2:])
    # a convex combination of per-token probability maps: each pixel within [0, 1]
    assert float(att.min()) >= 0 and float(att.max()) <= 1
    att.pow(2).sum().backward()
    assert sample.grad is not None and sample.grad.abs().sum() > 0
