"""Batch-wise augmentation on uint8 image tensors, on whatever device the batch lives on.

Four recipes:

- ``cifar32``: padded random crop (zero padding 4) and horizontal flip, at the stored size.
- ``cifar32_strong``: ``cifar32``, then one TrivialAugment operation per image (``trivial_augment``)
  and RandomErasing (p 0.25), for ViTs trained from scratch at 32x32.
- ``none``: no augmentation (resize and normalise only): ablations, and runs that must see exactly
  the same inputs (a torchrun run against one process).
- ``rrc224``: the paper's RandomResizedCrop to ``image_size`` (scale 0.08-1, ratio 3/4-4/3),
  horizontal flip and RandomErasing (p 0.25, per-pixel noise, after normalisation), as in DeiT.

Any recipe may add Hide-and-Seek (``hide_patches``): random patches of the model's grid set to the
dataset mean, as the faithfulness measure masks them. Evaluation resizes to ``image_size`` (bilinear)
and normalises. Mixup and CutMix (``Mixup``) mix labels too, so the training loop applies them after
the transform.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

RECIPES = ('cifar32', 'cifar32_strong', 'rrc224', 'none')


def normalize(images: torch.Tensor, mean: tuple | torch.Tensor, std: tuple | torch.Tensor) -> torch.Tensor:
    """Normalise float images in [0, 1] per channel (mean and std as tuples, or tensors on the images' device)."""
    mean_t = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
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


def mask_patches(inputs: torch.Tensor, masked: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``inputs`` with the masked patches set to 0, the normalisation's mean.

    Args:
        inputs: Normalised images (batch, channels, H, W), H and W multiples of the grid's.
        masked: (batch, rows * cols) booleans, True where a patch is masked.
        grid: (rows, cols) of the model's patches.
    """
    rows, cols = grid
    height, width = inputs.shape[-2:]
    if height % rows or width % cols:
        raise ValueError(f'a {height}x{width} image does not split into a {rows}x{cols} grid of patches')
    keep = (~masked).view(-1, 1, rows, cols).to(inputs.dtype)
    keep = keep.repeat_interleave(height // rows, dim=2).repeat_interleave(width // cols, dim=3)
    return inputs * keep


def hide_patches(inputs: torch.Tensor, grid: tuple[int, int], most: float, generator: torch.Generator) -> torch.Tensor:
    """Hide-and-Seek (Singh & Lee, 2017) on the model's patch grid: each image hides each patch with a
    probability drawn per image from [0, ``most``], set to the mean as ``mask_patches`` does. A model
    trained so meets masked images in training: masking a patch then removes what it shows, not
    what the model never saw (the deletion measure's shift of distribution, Hooker et al. 2019).

    Args:
        inputs: Normalised images (batch, channels, H, W).
        grid: (rows, cols) of the model's patches.
        most: Largest share of patches an image hides, in [0, 1].
        generator: The augmentation's random stream.
    """
    batch, patches = inputs.shape[0], grid[0] * grid[1]
    share = torch.rand(batch, 1, device=inputs.device, generator=generator) * most
    masked = torch.rand(batch, patches, device=inputs.device, generator=generator) < share
    return mask_patches(inputs, masked, grid)


# TrivialAugment (Müller & Hutter, 2021) over RandAugment's operations and ranges (torchvision's
# RandAugment at its strongest bin): each image gets one operation, at a strength drawn uniformly.
_MAX_SHEAR = 0.3  # shear factor
_MAX_TRANSLATE = 150 / 331  # fraction of the image side
_MAX_ROTATE = 30.0  # degrees
_MAX_ENHANCE = 0.9  # brightness, colour, contrast, sharpness factors in [0.1, 1.9]
_MAX_POSTERIZE_CUT = 4  # bits removed, leaving 4 to 8
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's RGB-to-grayscale weights


def _blend(images: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``degenerate`` at factor 0, the image at 1, extrapolated beyond; clamped to [0, 1]."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (images - degenerate)).clamp(0, 1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.split(1, dim=1)
    return _GRAY[0] * red + _GRAY[1] * green + _GRAY[2] * blue


def _brightness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images), 1 + _MAX_ENHANCE * magnitude)


def _color(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    return _blend(images, _grayscale(images), 1 + _MAX_ENHANCE * magnitude)


def _contrast(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, 1 + _MAX_ENHANCE * magnitude)


def _sharpness(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """PIL's sharpness: blend with a 3x3 smoothing of the image whose border pixels are kept."""
    channels = images.shape[1]
    kernel = torch.ones(channels, 1, 3, 3, device=images.device, dtype=images.dtype)
    kernel[:, :, 1, 1] = 5  # built on the device: a tensor copied from the host would sync a GPU stream
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(images, kernel / 13, groups=channels)
    return _blend(images, smooth, 1 + _MAX_ENHANCE * magnitude)


def _posterize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Keep 8 - round(4 |m|) bits, as torchvision's posterize of float images."""
    levels = 2 ** (8 - (magnitude.abs() * _MAX_POSTERIZE_CUT).round()).view(-1, 1, 1, 1)
    return torch.minimum((images * levels).floor(), levels - 1) / levels


def _solarize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above a threshold that falls from 1 to 0 with |m|."""
    threshold = (1 - magnitude.abs()).view(-1, 1, 1, 1)
    return torch.where(images >= threshold, 1 - images, images)


def _autocontrast(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to [0, 1]; a flat channel stays as it is."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), high - low)
    return ((images - torch.where(flat, torch.zeros_like(low), low)) / scale).clamp(0, 1)


def _equalize(images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """PIL's (and torchvision's) histogram equalisation of each channel, on 256 levels."""
    batch, channels, height, width = images.shape
    levels = (images * 255).round().long().flatten(2)
    histogram = torch.zeros(batch, channels, 256, device=images.device, dtype=torch.long)
    histogram.scatter_add_(-1, levels, torch.ones_like(levels))
    cumulative = histogram.cumsum(-1)
    brightest = histogram.gather(-1, cumulative.argmax(-1, keepdim=True))  # count of the top level present
    step = (height * width - brightest) // 255
    lut = ((cumulative[..., :-1] + step // 2) // step.clamp(min=1)).clamp(0, 255)
    lut = F.pad(lut, (1, 0))  # level 0 stays 0
    equalized = lut.gather(-1, levels).view_as(images).to(images.dtype) / 255
    return torch.where((step > 0).view(batch, channels, 1, 1), equalized, images)  # PIL leaves a flat channel


_GEOMETRIC_OPS = ('shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate')
_PHOTOMETRIC_OPS = {'brightness': _brightness, 'color': _color, 'contrast': _contrast, 'sharpness': _sharpness,
                    'posterize': _posterize, 'solarize': _solarize, 'autocontrast': _autocontrast,
                    'equalize': _equalize}
TRIVIAL_OPS = ('identity', *_GEOMETRIC_OPS, *_PHOTOMETRIC_OPS)


def _affine(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """The geometric operations, all through one ``affine_grid``/``grid_sample`` (bilinear, zero fill),
    about the image centre; images given another operation come back untouched."""
    batch, _, height, width = images.shape

    def amount(name: str, scale: float) -> torch.Tensor:
        return (ops == TRIVIAL_OPS.index(name)).to(magnitudes.dtype) * magnitudes * scale

    angle = amount('rotate', math.radians(_MAX_ROTATE))
    shear_x, shear_y = amount('shear_x', _MAX_SHEAR), amount('shear_y', _MAX_SHEAR)
    # Output pixel -> input pixel, in pixels about the centre. One operation per image, so the
    # rotation and the shears are never combined and summing them is exact.
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = angle.cos()
    theta[:, 0, 1] = (shear_x - angle.sin()) * height / width  # affine_grid works in [-1, 1] per axis
    theta[:, 1, 0] = (shear_y + angle.sin()) * width / height
    theta[:, 1, 1] = angle.cos()
    theta[:, 0, 2] = -2 * amount('translate_x', _MAX_TRANSLATE)  # content moves by m * 150/331 of the side
    theta[:, 1, 2] = -2 * amount('translate_y', _MAX_TRANSLATE)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    geometric = (ops >= 1) & (ops <= len(_GEOMETRIC_OPS))  # they follow identity in TRIVIAL_OPS
    return torch.where(geometric.view(-1, 1, 1, 1), warped, images)


def trivial_ops(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Apply to each image its own operation of ``TRIVIAL_OPS`` at its own magnitude.

    Every operation runs on the whole batch and each image keeps the result of its own: no loop
    over images and no host sync (boolean indexing would wait for the GPU); at 32x32 an operation
    is a few elementwise passes.

    Args:
        images: RGB float images in [0, 1] (N, 3, H, W).
        ops: Index into ``TRIVIAL_OPS`` per image (N,).
        magnitudes: Strength per image in [-1, 1]; the sign sets the direction of the signed
            operations, posterize and solarize use |m|, identity, autocontrast and equalize none.
    """
    out = _affine(images, ops, magnitudes)
    for name, op in _PHOTOMETRIC_OPS.items():
        chosen = (ops == TRIVIAL_OPS.index(name)).view(-1, 1, 1, 1)
        out = torch.where(chosen, op(images, magnitudes), out)
    return out


def trivial_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One operation of ``TRIVIAL_OPS`` per image, drawn uniformly, at a strength |m| uniform in [0, 1]
    with a random sign (TrivialAugment's uniform magnitude, continuous instead of 31 bins)."""
    batch, device = images.shape[0], images.device
    ops = torch.randint(0, len(TRIVIAL_OPS), (batch,), device=device, generator=generator)
    magnitudes = torch.rand(batch, device=device, generator=generator) * 2 - 1
    return trivial_ops(images, ops, magnitudes)


class Mixup:
    """timm's Mixup and CutMix in its default 'batch' mode, on normalised batches.

    Per batch, with probability ``prob``: mixup (lambda ~ Beta(mixup, mixup)) or a CutMix box
    (lambda ~ Beta(cutmix, cutmix), then corrected to the box's exact area), each half the time
    when both are on; every image is mixed with the batch's reverse. Targets are the same mix of
    label-smoothed one-hot vectors (smoothing is folded in here, so the loss must not add its own).
    The per-batch draws come from a CPU numpy generator: no host-device sync per step.

    Args:
        mixup: Beta alpha of mixup; 0 turns it off.
        cutmix: Beta alpha of CutMix; 0 turns it off.
        num_classes: Width of the targets.
        label_smoothing: Smoothing of the one-hot targets.
        prob: Share of batches mixed; the others get plain smoothed targets.
        switch_prob: Chance of CutMix rather than mixup when both are on.
        seed: Seed of the generator.
    """

    def __init__(self, mixup: float, cutmix: float, num_classes: int, label_smoothing: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5, seed: int = 0) -> None:
        self.mixup, self.cutmix, self.num_classes = mixup, cutmix, num_classes
        self.label_smoothing, self.prob, self.switch_prob = label_smoothing, prob, switch_prob
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and their (N, classes) float targets."""
        lam = 1.0
        if (self.mixup > 0 or self.cutmix > 0) and self.rng.random() < self.prob:
            use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < self.switch_prob)
            alpha = self.cutmix if use_cutmix else self.mixup
            lam = float(self.rng.beta(alpha, alpha))
            if use_cutmix:
                images, lam = self._cutmix(images, lam)
            else:
                images = images * lam + images.flip(0) * (1 - lam)
        return images, self.targets(labels, lam)

    def _cutmix(self, images: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """Paste a box of the reversed batch; the box (timm's ``rand_bbox``) may be clipped at the border."""
        height, width = images.shape[-2:]
        ratio = math.sqrt(1 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        centre_y, centre_x = int(self.rng.integers(0, height)), int(self.rng.integers(0, width))
        top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
        left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
        images = images.clone()
        images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
        return images, 1 - float((bottom - top) * (right - left)) / (height * width)

    def targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        """lam * smoothed one-hot(labels) + (1 - lam) * the same for the reversed batch."""
        off = self.label_smoothing / self.num_classes
        one_hot = torch.full((len(labels), self.num_classes), off, device=labels.device)
        one_hot.scatter_(1, labels.view(-1, 1), 1 - self.label_smoothing + off)  # F.one_hot checks labels: a sync
        return one_hot * lam + one_hot.flip(0) * (1 - lam)


class BatchTransform:
    """Turns uint8 batches into normalised float batches, augmented when training.

    Args:
        recipe: One of ``RECIPES``.
        image_size: Model input size.
        mean: Normalisation mean.
        std: Normalisation std.
        seed: Seed of the augmentation generator (per rank).
        device: Device of the batches (the generator lives there).
        hide: Largest share of patches Hide-and-Seek hides in a training image; 0: off.
        grid: The model's (rows, cols) of patches, needed when ``hide`` is on.
    """

    def __init__(self, recipe: str, image_size: int, mean: tuple, std: tuple, seed: int,
                 device: torch.device | str = 'cpu', hide: float = 0.0, grid: tuple[int, int] | None = None) -> None:
        if recipe not in RECIPES:
            raise ValueError(f'unknown augmentation recipe {recipe!r}: choose one of {RECIPES}')
        if not 0 <= hide <= 1 or (hide and grid is None):
            raise ValueError(f'hiding patches needs a share in [0, 1] and the model\'s patch grid, got {hide}, {grid}')
        self.recipe, self.image_size, self.hide, self.grid = recipe, image_size, hide, grid
        # Made once on the batches' device: a tensor copied from the host each step would sync a GPU stream.
        self.mean, self.std = (torch.tensor(values, device=device) for values in (mean, std))
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def train(self, images: torch.Tensor) -> torch.Tensor:
        """Augment and normalise a training batch."""
        if self.recipe == 'none':
            return self.eval(images)
        x = images.float() / 255.0
        if self.recipe == 'rrc224':
            x = random_resized_crop_flip(x, self.image_size, generator=self.generator)
        else:
            x = random_crop_flip(resize(x, self.image_size), padding=4, generator=self.generator)
        if self.recipe == 'cifar32_strong':
            x = trivial_augment(x, generator=self.generator)
        x = normalize(x, self.mean, self.std)
        if self.hide:
            x = hide_patches(x, self.grid, self.hide, self.generator)
        if self.recipe in ('rrc224', 'cifar32_strong'):
            x = random_erasing(x, generator=self.generator)
        return x

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise an evaluation batch."""
        return normalize(resize(images.float() / 255.0, self.image_size), self.mean, self.std)
