"""The inpainting masks the protection averages over: the documented distribution, seeded."""

from __future__ import annotations

import torch

from danp_pipeline.protect.inpaint_masks import MASKED_VALUE, draw_masks, mask_out

AREA = (0.1, 0.5)


def test_masks_are_binary_seeded_and_never_empty_or_full():
    masks = draw_masks(torch.Generator().manual_seed(0), 200, 48, 64, AREA)
    again = draw_masks(torch.Generator().manual_seed(0), 200, 48, 64, AREA)
    assert masks.shape == (200, 1, 48, 64) and torch.equal(masks, again)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    share = masks.flatten(1).mean(1)
    assert share.min() > 0 and share.max() < 1
    assert not torch.equal(masks, draw_masks(torch.Generator().manual_seed(1), 200, 48, 64, AREA))


def test_subject_and_background_masks_and_box_and_blob_shapes_all_occur():
    """With the region's area in 20–25 % of the frame, subject masks cover about that (a box exactly, a blob
    about, less where the frame cuts it) and background masks the rest; half are each. A box is its own
    bounding box, a blob is not; half are each. Every region holds its centre, in the middle half."""
    masks = draw_masks(torch.Generator().manual_seed(3), 400, 64, 64, (0.2, 0.25))[:, 0].bool()
    share = masks.flatten(1).float().mean(1)
    subject = share < 0.5
    assert 0.4 < subject.float().mean() < 0.6
    assert share[subject].min() > 0.12 and share[subject].max() < 0.27
    assert share[~subject].min() > 0.73 and share[~subject].max() < 0.88
    regions = torch.where(subject[:, None, None], masks, ~masks)
    bounding = regions.any(2).sum(1) * regions.any(1).sum(1)
    box = regions.flatten(1).sum(1) == bounding
    assert 0.4 < box.float().mean() < 0.6
    assert regions[:, 16:48, 16:48].flatten(1).any(1).all()
    default = draw_masks(torch.Generator().manual_seed(4), 400, 64, 64, AREA).flatten(1).mean(1)
    assert default.min() > 0.05 and default.max() < 0.95 and 0.4 < default.mean() < 0.6


def test_masked_pixels_are_mid_grey_and_the_rest_is_the_photo():
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    masks = draw_masks(torch.Generator().manual_seed(1), 6, 16, 24, AREA).view(2, 3, 1, 16, 24)
    out = mask_out(x, masks).view(2, 3, 3, 16, 24)
    m = masks.expand(-1, -1, 3, -1, -1).bool()
    assert torch.equal(out[m], torch.full_like(out[m], MASKED_VALUE))
    assert torch.equal(out[~m], x[:, None].expand(-1, 3, -1, -1, -1)[~m])
