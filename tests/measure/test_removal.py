"""The removal protocols of the faithfulness measure: each removes what it says, and dropping tokens equals an
independent computation, timm's own attention with the dropped patches' keys masked in every layer."""
from __future__ import annotations

import pytest
import timm
import torch

from advit.core.augment import mask_patches
from advit.core.models import patch_grid
from advit.measure.faithfulness import FaithfulnessCurves, perturbation_curves
from advit.measure.removal import PROTOCOLS, blur_patches, removed_logits
from conftest import TINY


def vit(name: str = 'vit_tiny_patch4_32', **args) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **dict(TINY, **args)).eval()


def masks(batch: int, patches: int, counts: list[int]) -> torch.Tensor:
    """A random mask per image, removing ``counts[i % len(counts)]`` patches of image i."""
    generator = torch.Generator().manual_seed(1)
    masked = torch.zeros(batch, patches, dtype=torch.bool)
    for i in range(batch):
        masked[i, torch.randperm(patches, generator=generator)[:counts[i % len(counts)]]] = True
    return masked


def attention_masked_logits(model: torch.nn.Module, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The reference: every token attends to the prefix tokens and the kept patches only (the dropped patches'
    keys at -inf in every layer's softmax), through timm's own forward_features."""
    prefix = model.num_prefix_tokens
    keys = torch.cat([torch.zeros(len(masked), prefix, dtype=torch.bool), masked], dim=1)
    bias = torch.zeros(len(masked), 1, keys.shape[1], keys.shape[1])
    bias.masked_fill_(keys[:, None, None, :], float('-inf'))
    return model.forward_head(model.forward_features(inputs, attn_mask=bias))


@pytest.mark.parametrize('name, args', [('vit_tiny_patch4_32', {}),
                                        ('deit_tiny_distilled_patch4_32', {}),  # two prefix tokens, two heads
                                        ('vit_tiny_patch4_32', dict(reg_tokens=2))])  # registers
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'explicit'])
def test_dropping_tokens_equals_masking_their_keys_in_every_layer(name, args, fused):
    model = vit(name, **args)
    for block in model.blocks:
        block.attn.fused_attn = fused
    inputs = torch.randn(6, 3, 32, 32)
    masked = masks(6, 64, [0, 16, 40])  # three counts in one batch: each its own forward
    with torch.no_grad():
        dropped = removed_logits(model, inputs, masked, patch_grid(model), 'drop')
        expected = attention_masked_logits(model, inputs, masked)
    torch.testing.assert_close(dropped, expected, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        whole = model(inputs)
        assert torch.allclose(removed_logits(model, inputs, masks(6, 64, [0]), patch_grid(model), 'drop'), whole,
                              atol=1e-5)


def test_every_protocol_leaves_an_image_with_nothing_removed_as_it_is():
    model = vit()
    inputs = torch.randn(3, 3, 32, 32)
    nothing = torch.zeros(3, 64, dtype=torch.bool)
    with torch.no_grad():
        whole = model(inputs)
        for protocol in PROTOCOLS:
            torch.testing.assert_close(removed_logits(model, inputs, nothing, (8, 8), protocol), whole,
                                       atol=1e-5, rtol=1e-4)


def test_the_fills_touch_only_the_removed_patches():
    inputs = torch.randn(2, 3, 32, 32)
    masked = masks(2, 64, [20])
    kept = ~masked.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3).expand_as(inputs)
    blurred, grey = blur_patches(inputs, masked, (8, 8)), mask_patches(inputs, masked, (8, 8))
    assert torch.equal(blurred[kept], inputs[kept]) and torch.equal(grey[kept], inputs[kept])
    assert (grey[~kept] == 0).all()  # the normalisation's mean
    assert not torch.equal(blurred[~kept], inputs[~kept]) and (blurred[~kept] != 0).any()
    smooth = torch.ones(2, 3, 32, 32) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(blur_patches(smooth, masked, (8, 8)), smooth)  # a flat image blurs to itself


def test_protocols_are_refused_in_words_where_they_cannot_apply():
    with pytest.raises(ValueError, match='unknown removal protocol'):
        removed_logits(vit(), torch.randn(1, 3, 32, 32), torch.zeros(1, 64, dtype=torch.bool), (8, 8), 'noise')
    cnn = timm.create_model('resnet10t', num_classes=10).eval()
    with pytest.raises(ValueError, match='no token sequence to drop'):
        removed_logits(cnn, torch.randn(1, 3, 32, 32), torch.zeros(1, 64, dtype=torch.bool), (8, 8), 'drop')


def test_curves_name_their_protocol_and_older_curves_read_as_the_mean_fill():
    model = vit()
    inputs, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    maps = torch.rand(4, 1, 64)
    curves = {protocol: perturbation_curves(model, inputs, labels, maps, ['m'], protocol=protocol)
              for protocol in PROTOCOLS}
    for protocol, measured in curves.items():
        assert measured.protocol == protocol and measured.summary()['protocol'] == protocol
        assert FaithfulnessCurves.from_dict(measured.as_dict()).protocol == protocol
    assert not torch.equal(torch.tensor(curves['drop'].probability), torch.tensor(curves['mean'].probability))
    older = curves['mean'].as_dict()
    del older['protocol']
    assert FaithfulnessCurves.from_dict(older).protocol == 'mean'


def test_the_relevance_gain_is_least_relevant_first_minus_most_relevant_first():
    model = vit()
    curves = perturbation_curves(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.rand(4, 2, 64),
                                 ['a', 'b'], protocol='drop')
    for source in ('a', 'b'):
        least = curves.area('probability', 'deletion', source, 'reversed')
        most = curves.area('probability', 'deletion', source, 'map')
        assert curves.relevance_gain(source) == pytest.approx(least - most)
        assert curves.summary()['sources'][source]['relevance_gain'] == pytest.approx(least - most)
    quarter_only = perturbation_curves(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.rand(2, 1, 64),
                                       ['a'], fractions=(0, 0.25), modes=('deletion',), orders=('map', 'random'))
    assert quarter_only.relevance_gain('a') is None
