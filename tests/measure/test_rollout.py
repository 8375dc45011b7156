"""Rollout, per-head maps, prefix shares and mass masks, against references computed by hand."""
from __future__ import annotations

import pytest
import torch

import advit  # noqa: F401  (registers the CIFAR models)
from advit.core.capture import ClsAttentionCapture
import threading

from advit.core.attention_path import attention_path_of, set_attention_path
from advit.measure.rollout import explain, gradient_rollout, head_maps, mass_mask, prefix_share, rollout
from attention_reference import explicit_cls_attention, full_attention
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


def test_one_explained_forward_gives_the_full_attention_logits_heads_and_prefix_shares():
    model = tiny_vit(0, 'deit_tiny_distilled_patch4_32')  # two prefix tokens
    images = torch.randn(2, 3, 32, 32)
    explained = explain(model, images)
    attention = explained.attention
    torch.testing.assert_close(attention, full_attention(model, images), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(explained.logits, model(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explained.relevance, gradient_rollout(model, images))
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


def chefer_by_hand(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted rollout from a forward written out here: each block's attention output is
    recomputed by hand with a tensor of ones multiplied into its attention, so the class logit's gradient
    with respect to those ones is dy/dA * A, what Chefer et al. weigh each layer by."""
    ones = []

    def explicit(attn, inputs, output):
        x = inputs[0]
        batch, tokens, _ = x.shape
        qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) / attn.head_dim ** 0.5, dim=-1)
        ones.append(torch.ones_like(a, requires_grad=True))
        mixed = ((a * ones[-1]) @ v).transpose(1, 2).reshape(batch, tokens, -1)
        return attn.proj(mixed)

    handles = [block.attn.register_forward_hook(explicit) for block in model.blocks]
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    weights = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), ones)
    tokens = weights[0].shape[-1]
    relevance = torch.eye(tokens).expand(len(images), tokens, tokens)
    for weight in weights:
        relevance = relevance + weight.clamp(min=0).mean(dim=1) @ relevance
    row = relevance[:, 0, model.num_prefix_tokens:]
    return row / row.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize('path', ['fused', 'explicit'])
def test_gradient_rollout_is_chefer_et_al_on_the_attention_the_forward_used(path):
    model = tiny_vit(depth=3, reg_tokens=1)  # a register too: prefix tokens beyond [CLS] are left out
    set_attention_path(model, path)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    predicted = model(images).argmax(dim=-1)
    maps = gradient_rollout(model, images)
    assert maps.shape == (4, 64) and torch.allclose(maps.sum(dim=-1), torch.ones(4))
    torch.testing.assert_close(maps, chefer_by_hand(model, images, predicted), rtol=1e-4, atol=1e-6)
    other = (predicted + 1) % 10  # another class: another explanation
    torch.testing.assert_close(gradient_rollout(model, images, other), chefer_by_hand(model, images, other),
                               rtol=1e-4, atol=1e-6)
    assert not torch.allclose(gradient_rollout(model, images, other), maps)
    assert attention_path_of(model) == path and not any(p.grad is not None for p in model.parameters())


def test_gradient_rollout_in_threads_sharing_a_model_gives_each_its_own():
    model = tiny_vit(depth=2)
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) for seed in range(4)]
    alone = [gradient_rollout(model, images) for images in batches]
    together: dict[int, torch.Tensor] = {}

    def run(index: int) -> None:
        for _ in range(5):
            together[index] = gradient_rollout(model, batches[index])
            model(batches[index])  # a plain forward beside them, on whatever path

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, expected in enumerate(alone):
        torch.testing.assert_close(together[index], expected)
