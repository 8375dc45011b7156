"""Models: the CIFAR-native ViTs registered with timm, their distilled twins, and local pretrained weights."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from advit.core.models import (CIFAR10_MEAN, CIFAR10_STD, create_model, is_distilled, is_vit_name, model_image_size,
                          model_normalization, patch_grid)
from conftest import TINY

# The standard ViT widths and head counts (Dosovitskiy et al.; DeiT for Tiny).
SIZES = {'tiny': (192, 3), 'small': (384, 6), 'base': (768, 12)}
HEAD_KEYS = ('head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias')


@pytest.mark.parametrize('size', list(SIZES))
@pytest.mark.parametrize('distilled', [False, True])
def test_registered_cifar_models(size, distilled, x):
    name = f'deit_{size}_distilled_patch4_32' if distilled else f'vit_{size}_patch4_32'
    assert timm.is_model(name)
    model = timm.create_model(name, depth=1).eval()  # one block keeps base cheap; width is the size's own
    embed_dim, heads = SIZES[size]
    assert isinstance(model, VisionTransformerDistilled if distilled else VisionTransformer)
    assert is_distilled(model) == distilled
    assert model.embed_dim == embed_dim and model.blocks[0].attn.num_heads == heads
    assert patch_grid(model) == (8, 8) and model_image_size(model) == 32
    prefix = 2 if distilled else 1
    assert model.num_prefix_tokens == prefix
    assert model.pos_embed.shape == (1, 64 + prefix, embed_dim)
    with torch.no_grad():
        tokens = model.forward_features(x)
        logits = model(x)
    assert tokens.shape == (2, 64 + prefix, embed_dim)
    assert logits.shape == (2, 10)
    assert model_normalization(model) == (CIFAR10_MEAN, CIFAR10_STD)


def test_default_depth_is_twelve():
    model = timm.create_model('vit_tiny_patch4_32', embed_dim=48)  # narrow, to build fast
    assert len(model.blocks) == 12 and model.head.out_features == 10


def test_architecture_arguments_pass_through(x):
    model = timm.create_model('vit_tiny_patch4_32', num_classes=7, img_size=48, **TINY)
    assert len(model.blocks) == TINY['depth'] and model.embed_dim == TINY['embed_dim']
    assert patch_grid(model) == (12, 12) and model_image_size(model) == 48
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 7)


def test_distilled_model_two_heads_in_training_and_their_average_in_eval(x):
    torch.manual_seed(0)
    model = timm.create_model('deit_tiny_distilled_patch4_32', **TINY)  # no dropout, no drop path: deterministic
    model.set_distilled_training(True)
    model.train()
    with torch.no_grad():
        cls_logits, dist_logits = model(x)
        model.eval()
        averaged = model(x)
        tokens = model.forward_features(x)
    assert cls_logits.shape == dist_logits.shape == averaged.shape == (2, 10)
    assert not torch.allclose(cls_logits, dist_logits)  # two separate heads on two separate tokens
    assert torch.allclose(cls_logits, model.head(tokens[:, 0]), atol=1e-6)
    assert torch.allclose(dist_logits, model.head_dist(tokens[:, 1]), atol=1e-6)
    assert torch.allclose(averaged, (cls_logits + dist_logits) / 2, atol=1e-6)


def test_create_model_rejects_unknown_names():
    for name in ('vit_no_such_model_patch4_32', 'no_such_model.some_tag'):
        with pytest.raises(ValueError, match='unknown model'):
            create_model(name)


def test_create_model_fresh_head_size(x):
    model = create_model('vit_tiny_patch4_32', num_classes=3, **TINY)
    assert model(x).shape == (2, 3)
    distilled = create_model('deit_tiny_distilled_patch4_32', num_classes=4, **TINY).eval()
    assert distilled.head.out_features == distilled.head_dist.out_features == 4


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@pytest.mark.parametrize('name', ['vit_tiny_patch4_32', 'deit_tiny_distilled_patch4_32'])
def test_pretrained_file_loads_local_weights(tmp_path, suffix, name):
    torch.manual_seed(1)
    source = timm.create_model(name, **TINY)
    saved = {key: value.clone() for key, value in source.state_dict().items()}
    path = tmp_path / f'weights{suffix}'
    if suffix == '.safetensors':
        save_file(saved, str(path))
    else:
        torch.save(saved, path)
    torch.manual_seed(2)  # another init, so loaded weights cannot match by accident
    fresh = create_model(name, num_classes=10, **TINY)
    torch.manual_seed(2)
    built = create_model(name, pretrained_file=path, num_classes=10, **TINY)
    state = built.state_dict()
    assert set(state) == set(saved)
    body = [key for key in saved if key not in HEAD_KEYS]
    assert len(body) > 20
    for key in body:
        assert torch.equal(state[key], saved[key]), key
        if saved[key].numel() > 1 and key.endswith('weight') and saved[key].std() > 0:
            assert not torch.equal(fresh.state_dict()[key], saved[key]), key
    # Another head size: the body still comes from the file, the head is new and of that size.
    five = create_model(name, pretrained_file=path, num_classes=5, **TINY)
    assert five.head.out_features == 5
    for key in body:
        assert torch.equal(five.state_dict()[key], saved[key]), key


def test_pretrained_file_with_another_head_size_gets_a_fresh_head(tmp_path):
    source = timm.create_model('vit_tiny_patch4_32', num_classes=100, **TINY)  # e.g. trained on CIFAR-100
    path = tmp_path / 'cifar100.safetensors'
    save_file(source.state_dict(), str(path))
    built = create_model('vit_tiny_patch4_32', pretrained_file=path, num_classes=10, **TINY)
    assert built.head.out_features == 10
    assert torch.equal(built.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_missing_pretrained_file(tmp_path):
    missing = tmp_path / 'absent.safetensors'
    with pytest.raises(FileNotFoundError) as info:
        create_model('vit_tiny_patch4_32', pretrained_file=missing, **TINY)
    assert str(missing) in str(info.value)


def test_image_size_goes_to_vits_only_and_bad_arguments_are_value_errors():
    assert is_vit_name('vit_small_patch16_224.augreg_in21k_ft_in1k') and is_vit_name('vit_tiny_patch4_32')
    assert is_vit_name('deit_tiny_distilled_patch16_224') and not is_vit_name('resnet10t')
    assert create_model('vit_tiny_patch16_224', img_size=32, depth=1).patch_embed.img_size == (32, 32)
    cnn = create_model('resnet10t', img_size=32)  # a CNN takes any size: the argument is not its to take
    assert cnn.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match='cannot build resnet10t'):
        create_model('resnet10t', depth=3)
