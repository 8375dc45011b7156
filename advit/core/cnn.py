"""A CIFAR-native convolutional network, registered with timm: a teacher for the ViT teacher.

DeiT showed that a convnet teacher gives a ViT the inductive bias it lacks when data are few, and a
small convnet learns CIFAR-10 in a few epochs where a ViT from scratch needs hundreds. timm's CNNs
are ImageNet-shaped (a stride-4 stem leaves a 32x32 image a 1x1 map at the end), so this is the
network of airbench94 (Jordan, 2024: 94% on CIFAR-10 in 10 epochs), without its training tricks
(its first layer a learnt 3x3 convolution rather than a frozen whitening 2x2 one; no lookahead, no
test-time flips): three groups of two 3x3 convolutions with a 2x2 max-pool after the first, batch
norm and GELU, widths 64, 256, 256, then a global max-pool and a linear head. It trains with the
project's loop like any timm CNN (``--method vit``, ``--drop-path 0``), then teaches a ViT by DeiT
distillation (``deit_hard``, ``deit_soft``).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .models import CIFAR10_MEAN, CIFAR10_STD


class ConvGroup(nn.Sequential):
    """A 3x3 convolution, a 2x2 max-pool, then a second 3x3 convolution, each with batch norm and GELU."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__(
            nn.Conv2d(width_in, width_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(width_out), nn.GELU(),
            nn.Conv2d(width_out, width_out, 3, padding=1, bias=False), nn.BatchNorm2d(width_out), nn.GELU())


class CifarConvNet(nn.Module):
    """Args:
        num_classes: Size of the classification head (0: none, the pooled features are returned).
        widths: Channels of the stem and of each group.
        in_chans: Input channels.
        drop_path_rate: Taken for the training loop's sake, which gives every model one; this network
            has no residual paths, so only 0 is accepted.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (24, 64, 256, 256), in_chans: int = 3,
                 drop_path_rate: float = 0., **kwargs: Any) -> None:
        super().__init__()
        if drop_path_rate:
            raise ValueError(f'{type(self).__name__} has no residual paths to drop: its drop_path_rate '
                             f'(advit train\'s --drop-path) must be 0, not {drop_path_rate:g}')
        if kwargs:
            raise TypeError(f'unexpected arguments: {", ".join(sorted(kwargs))}')
        self.num_features = widths[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.GELU())
        self.stages = nn.Sequential(*(ConvGroup(a, b) for a, b in zip(widths, widths[1:])))
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.amax(dim=(2, 3))  # global max-pool, as airbench's: the strongest response anywhere
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    'cnn_airbench_32': dict(url='', num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0,
                            interpolation='bilinear', mean=CIFAR10_MEAN, std=CIFAR10_STD,
                            first_conv='stem.0', classifier='head'),
})


@register_model
def cnn_airbench_32(pretrained: bool = False, **kwargs: Any) -> CifarConvNet:
    """airbench94's network for 32x32 inputs: widths 64, 256, 256 after a 24-channel stem (2.0M params)."""
    return build_model_with_cfg(CifarConvNet, 'cnn_airbench_32', pretrained, **kwargs)
