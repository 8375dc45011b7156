"""Batch-wise augmentation on uint8 image tensors, on whatever device the batch lives on.

Two recipes:

- ``cifar32``: padded random crop (zero padding 4) and horizontal flip, at the stored size.
- ``rrc224``: the paper's RandomResizedCrop to ``image_size`` (scale 0.08-1, ratio 3/4-4/3),
  horizontal flip and RandomErasing (p 0.25, per-pixel noise, after normalisation), as in DeiT.

Evaluation resizes to ``image_size`` (bilinear) and normalises.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RECIPES = ('cifar32', 'rrc224')


def normalize(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Normalise float images in [0, 1] per channel."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images to ``size`` x ``size`` (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False,
                         antialias=images.shape[-1] > size)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image at its own size, and a random horizontal flip."""
    batch, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(height, device=device)
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = torch.where(flip[:, None], cols.flip(-1), cols) + left[:, None]
    batch_index = torch.arange(batch, device=device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return crops.permute(0, 3, 1, 2)


def random_resized_crop_flip(
        images: torch.Tensor,
        size: int,
        generator: torch.Generator,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop and horizontal flip of float images, batched through one ``grid_sample``.

    Like torchvision, a crop of area fraction in ``scale`` and aspect ratio in ``ratio``; a crop
    that does not fit is clamped to the image instead of redrawn.
    """
    batch, _, height, width = images.shape
    device = images.device
    area = torch.empty(batch, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                           generator=generator)
    aspect = log_ratio.exp() * height / width  # wanted width/height in pixels, as a fraction ratio
    crop_w = (area * aspect).sqrt().clamp(max=1.0)  # fraction of the image width
    crop_h = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(batch, device=device, generator=generator) * 2 - 1) * (1 - crop_w)
    centre_y = (torch.rand(batch, device=device, generator=generator) * 2 - 1) * (1 - crop_h)
    flip = torch.where(torch.rand(batch, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = crop_w * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)


def random_erasing(
        images: torch.Tensor,
        generator: torch.Generator,
        probability: float = 0.25,
        scale: tuple[float, float] = (0.02, 1 / 3),
        ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """timm's RandomErasing in 'pixel' mode: a random rectangle filled with normal noise."""
    batch, channels, height, width = images.shape
    device = images.device
    area = torch.empty(batch, device=device).uniform_(*scale, generator=generator) * height * width
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                           generator=generator)
    erase_h = (area * log_ratio.exp()).sqrt().round().clamp(1, height)
    erase_w = (area / log_ratio.exp()).sqrt().round().clamp(1, width)
    top = (torch.rand(batch, device=device, generator=generator) * (height - erase_h + 1)).floor()
    left = (torch.rand(batch, device=device, generator=generator) * (width - erase_w + 1)).floor()
    apply = torch.rand(batch, device=device, generator=generator) < probability
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + erase_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + erase_w).view(-1, 1, 1)) & apply.view(-1, 1, 1))
    noise = torch.randn(images.shape, device=device, generator=generator, dtype=images.dtype)
    return torch.where(inside[:, None], noise, images)


class BatchTransform:
    """Turns uint8 batches into normalised float batches, augmented when training.

    Args:
        recipe: ``'cifar32'`` or ``'rrc224'``.
        image_size: Model input size.
        mean: Normalisation mean.
        std: Normalisation std.
        seed: Seed of the augmentation generator (per rank).
        device: Device of the batches (the generator lives there).
    """

    def __init__(self, recipe: str, image_size: int, mean: tuple, std: tuple, seed: int,
                 device: torch.device | str = 'cpu') -> None:
        if recipe not in RECIPES:
            raise ValueError(f'unknown augmentation recipe {recipe!r}: choose one of {RECIPES}')
        self.recipe, self.image_size = recipe, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def train(self, images: torch.Tensor) -> torch.Tensor:
        """Augment and normalise a training batch."""
        x = images.float() / 255.0
        if self.recipe == 'cifar32':
            x = random_crop_flip(resize(x, self.image_size), padding=4, generator=self.generator)
        else:
            x = random_resized_crop_flip(x, self.image_size, generator=self.generator)
        x = normalize(x, self.mean, self.std)
        if self.recipe == 'rrc224':
            x = random_erasing(x, generator=self.generator)
        return x

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise an evaluation batch."""
        return normalize(resize(images.float() / 255.0, self.image_size), self.mean, self.std)
