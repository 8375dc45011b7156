"""Rollout, per-head maps, prefix shares and mass masks, against references computed by hand."""
from __future__ import annotations

import pytest
import torch

import advit  # noqa: F401  (registers the CIFAR models)
from advit.capture import ClsAttentionCapture
from advit.rollout import full_attention, head_maps, mass_mask, prefix_share, rollout
from attention_reference import explicit_cls_attention
from conftest import TINY, tiny_vit

# Two layers, one head, [CLS] + 2 patches: rows of the attention by hand.
A1 = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
A2 = torch.tensor([[0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.4, 0.4, 0.2]])


def by_hand(*layers: torch.Tensor) -> torch.Tensor:
    """(A + I) / 2 per layer, rows renormalised, multiplied from the first up; the [CLS] row's patches."""
    result = torch.eye(3)
    for a in layers:
        mixed = (a + torch.eye(3)) / 2
        result = (mixed / mixed.sum(-1, keepdim=True)) @ result
    row = result[0, 1:]
    return row / row.sum()


def test_rollout_is_the_product_of_the_mixed_layers():
    attention = torch.stack([A1, A2])[None, :, None]  # (batch 1, layers 2, heads 1, 3, 3)
    torch.testing.assert_close(rollout(attention, 1)[0], by_hand(A1, A2))
    # The numbers: the [CLS] row of ((A2 + I) / 2) @ ((A1 + I) / 2) is 0.6 (0.75, 0.15, 0.1) + 0.1 (0.1, 0.8,
    # 0.1) + 0.3 (0.05, 0.05, 0.9) = (0.475, 0.185, 0.34); its patches, renormalised.
    torch.testing.assert_close(rollout(attention, 1)[0], torch.tensor([0.185, 0.34]) / 0.525)


def test_head_fusion_and_discard_ratio():
    other = torch.tensor([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [0.3, 0.3, 0.4]])
    attention = torch.stack([torch.stack([A1, other]), torch.stack([A2, A2])])[None]  # 2 heads
    torch.testing.assert_close(rollout(attention, 1, 'max')[0], by_hand(torch.maximum(A1, other), A2))
    torch.testing.assert_close(rollout(attention, 1, 'min')[0], by_hand(torch.minimum(A1, other), A2))
    # Discarding 1/3 of 9 entries: the 3 smallest of each fused matrix, never [CLS]->[CLS].
    single = torch.stack([A1, A2])[None, :, None]
    expected = rollout(single, 1, 'mean', 1 / 3)
    flat = A1.flatten().clone()
    flat[0] = float('inf')
    drop1 = flat.topk(3, largest=False).indices
    flat = A2.flatten().clone()
    flat[0] = float('inf')
    drop2 = flat.topk(3, largest=False).indices
    kept1, kept2 = A1.flatten().clone(), A2.flatten().clone()
    kept1[drop1], kept2[drop2] = 0, 0
    mixed = [(k.view(3, 3) + torch.eye(3)) / 2 for k in (kept1, kept2)]
    mixed = [m / m.sum(-1, keepdim=True) for m in mixed]
    row = (mixed[1] @ mixed[0])[0, 1:]
    torch.testing.assert_close(expected[0], row / row.sum())
    with pytest.raises(ValueError, match='discard ratio'):
        rollout(single, 1, 'mean', 1.0)
    with pytest.raises(ValueError, match='unknown rollout head fusion'):
        rollout(single, 1, 'median')


def test_full_attention_matches_the_capture_and_gives_heads_and_prefix_shares():
    model = tiny_vit(0, 'deit_tiny_distilled_patch4_32')  # two prefix tokens
    images = torch.randn(2, 3, 32, 32)
    attention = full_attention(model, images)
    assert attention.shape == (2, TINY['depth'], TINY['num_heads'], 66, 66)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    torch.testing.assert_close(attention[:, :, :, 0, 2:] / attention[:, :, :, 0, 2:].sum(-1, keepdim=True),
                               explicit_cls_attention(model, images), atol=1e-5, rtol=0)
    torch.testing.assert_close(head_maps(attention, 2), explicit_cls_attention(model, images)[:, -1], atol=1e-5,
                               rtol=0)
    with ClsAttentionCapture(model, 'raw') as capture, torch.no_grad():
        model(images)
        raw = capture.pop()
    torch.testing.assert_close(prefix_share(attention, 2), 1 - raw.sum(-1).mean(-1), atol=1e-5, rtol=0)


def test_mass_mask_keeps_the_fewest_patches_holding_the_share():
    maps = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert mass_mask(maps, 0.6).tolist() == [[False, True, False, True], [True, True, True, False]]
    assert mass_mask(maps, 0.5).tolist() == [[False, True, False, False], [True, True, False, False]]
    assert mass_mask(maps, 1.0).all()
    with pytest.raises(ValueError, match='kept share'):
        mass_mask(maps, 0.0)
