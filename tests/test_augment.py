"""Batch-wise augmentation on real CIFAR-10 images."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advit.augment import BatchTransform, random_crop_flip, random_erasing, random_resized_crop_flip
from advit.models import CIFAR10_MEAN, CIFAR10_STD


@pytest.fixture(scope='module')
def images(cifar) -> torch.Tensor:
    """32 real uint8 test images (N, 3, 32, 32)."""
    return cifar['test'].images[:32].clone()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unnormalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


# --- BatchTransform --------------------------------------------------------------------------------

def test_cifar32_keeps_shape_and_augments(images):
    transform = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0)
    out = transform.train(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    plain = transform.eval(images)
    changed = [(out[i] - plain[i]).abs().max() > 1e-4 for i in range(len(images))]
    assert sum(changed) >= len(images) // 2  # most images moved (1/162 chance each of staying put)
    # Each output is a shifted (by at most 4, zero-filled) copy of its image, maybe flipped.
    x = unnormalize(out)
    padded = F.pad(images.float() / 255, (4,) * 4)
    for i in range(len(images)):
        candidates = [padded[i, :, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
        candidates += [c.flip(-1) for c in candidates]
        assert min((x[i] - c).abs().max() for c in candidates) < 1e-5, i


def test_cifar32_resizes_to_image_size(images):
    out = BatchTransform('cifar32', 48, CIFAR10_MEAN, CIFAR10_STD, seed=0).train(images[:4])
    assert out.shape == (4, 3, 48, 48)


def test_same_seed_same_output_other_seed_other(images):
    for recipe, size in (('cifar32', 32), ('rrc224', 64)):
        def run(seed):
            transform = BatchTransform(recipe, size, CIFAR10_MEAN, CIFAR10_STD, seed=seed)
            return transform.train(images), transform.train(images)
        a1, a2 = run(0)
        b1, b2 = run(0)
        c1, _ = run(1)
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        assert not torch.equal(a1, c1)
        assert not torch.equal(a1, a2)  # the generator advances between batches


def test_rrc224_output_size(images):
    transform = BatchTransform('rrc224', 224, CIFAR10_MEAN, CIFAR10_STD, seed=0)
    out = transform.train(images[:8])
    assert out.shape == (8, 3, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert transform.eval(images[:8]).shape == (8, 3, 224, 224)


def test_unknown_recipe():
    with pytest.raises(ValueError, match='recipe'):
        BatchTransform('autoaugment', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0)


# --- random_crop_flip ------------------------------------------------------------------------------

def test_crop_without_padding_is_identity_or_flip(images):
    x = images.float()
    out = random_crop_flip(x, padding=0, generator=generator(0))
    flipped = []
    for i in range(len(x)):
        same, mirrored = torch.equal(out[i], x[i]), torch.equal(out[i], x[i].flip(-1))
        assert same or mirrored, i
        flipped.append(mirrored and not same)
    assert 0 < sum(flipped) < len(x)  # both happen in a batch of 32


def test_crop_with_padding_uses_every_offset(images):
    x = torch.ones(2000, 1, 6, 6)
    out = random_crop_flip(x, padding=2, generator=generator(0))
    # The zero border shows how far each crop moved: rows/columns of zeros on one side.
    zero_rows = (out.sum(dim=(1, 3)) == 0)
    top = zero_rows[:, :3].sum(1) - zero_rows[:, 3:].sum(1)  # offset - padding, in -2..2
    assert set(top.tolist()) == {-2, -1, 0, 1, 2}
    assert out.sum(dim=(1, 2, 3)).min() >= 16  # a crop moved by at most 2 keeps at least 4x4 of the image


# --- random_resized_crop_flip ----------------------------------------------------------------------

def test_full_square_crop_is_a_resize_or_its_flip(images):
    x = images[:16].float() / 255
    for size in (32, 64, 224):
        out = random_resized_crop_flip(x, size, generator(size), scale=(1.0, 1.0), ratio=(1.0, 1.0))
        resized = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
        kinds = []
        for i in range(len(x)):
            plain = (out[i] - resized[i]).abs().max().item()
            mirrored = (out[i] - resized[i].flip(-1)).abs().max().item()
            assert min(plain, mirrored) < 1e-4, (size, i, plain, mirrored)
            kinds.append(plain < mirrored)
        assert 0 < sum(kinds) < len(x)


@pytest.mark.parametrize('scale, ratio', [(0.25, 1.0), (0.25, 4.0), (0.5, 0.5), (0.09, 1.0)])
def test_crop_area_and_aspect_ratio(scale, ratio):
    """On linear ramps bilinear sampling is exact: the output's slope is (crop size / output size)."""
    height, width, size = 40, 40, 20
    rows = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    x = torch.stack([rows, cols, torch.zeros(height, width)]).expand(16, 3, height, width).contiguous()
    out = random_resized_crop_flip(x, size, generator(0), scale=(scale, scale), ratio=(ratio, ratio))
    inner = slice(2, size - 2)  # away from the image border, where sampling clamps
    # Per image; a crop reaching outside the image would flatten the ramp there and lower the slope.
    crop_h = out[:, 0, 1:, :].sub(out[:, 0, :-1, :])[:, inner, inner].abs().mean(dim=(1, 2)) * size
    crop_w = out[:, 1, :, 1:].sub(out[:, 1, :, :-1])[:, inner, inner].abs().mean(dim=(1, 2)) * size
    area = scale * height * width
    assert torch.allclose(crop_w, torch.full_like(crop_w, (area * ratio) ** 0.5), rtol=1e-3)
    assert torch.allclose(crop_h, torch.full_like(crop_h, (area / ratio) ** 0.5), rtol=1e-3)
    # The crops are placed at random.
    centres = out[:, :2, size // 2, size // 2]  # (row, column) sampled at the output's centre
    assert len({tuple(round(v, 3) for v in c) for c in centres.tolist()}) > 8


# --- random_erasing --------------------------------------------------------------------------------

def test_erasing_with_probability_one_changes_one_rectangle(images):
    x = images.float() / 255
    out = random_erasing(x, generator(0), probability=1.0)
    height, width = x.shape[-2:]
    for i in range(len(x)):
        changed = (out[i] != x[i]).any(dim=0)
        rows = changed.any(dim=1).nonzero().flatten()
        cols = changed.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols), i
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = torch.zeros_like(changed)
        box[top:bottom, left:right] = True
        assert torch.equal(changed, box), i  # exactly one filled rectangle, the rest untouched
        assert torch.equal(out[i][:, ~changed], x[i][:, ~changed])
        area = (bottom - top) * (right - left)
        assert area <= height * width / 3 * 1.3 + 2 * (height + width)  # at most a third, give or take rounding
    # The fill is standard normal noise (the scale of normalised images).
    filled = torch.cat([out[i][:, (out[i] != x[i]).any(dim=0)].flatten() for i in range(len(x))])
    assert abs(filled.mean().item()) < 0.1 and abs(filled.std().item() - 1) < 0.1


def test_erasing_with_probability_zero_changes_nothing(images):
    x = images.float() / 255
    assert torch.equal(random_erasing(x, generator(0), probability=0.0), x)


def test_erasing_probability_is_per_image():
    x = torch.zeros(400, 3, 16, 16)
    out = random_erasing(x, generator(0), probability=0.25)
    erased = (out != 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.15 < erased < 0.35


# --- evaluation transform --------------------------------------------------------------------------

def test_eval_is_deterministic_and_inverts_to_the_image(images):
    a = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0)
    b = BatchTransform('rrc224', 32, CIFAR10_MEAN, CIFAR10_STD, seed=7)
    a.train(images)  # advancing the augmentation generator does not touch evaluation
    out = a.eval(images)
    assert torch.equal(out, a.eval(images)) and torch.equal(out, b.eval(images))
    assert torch.allclose(unnormalize(out), images.float() / 255, atol=1e-6)


@pytest.mark.parametrize('size', [32, 224])
def test_eval_normalises_with_the_given_mean_and_std(size):
    mean, std = (0.2, 0.5, 0.7), (0.1, 0.25, 0.5)
    value = 153  # 0.6 after scaling to [0, 1]
    constant = torch.full((2, 3, 32, 32), value, dtype=torch.uint8)
    out = BatchTransform('cifar32', size, mean, std, seed=0).eval(constant)
    assert out.shape == (2, 3, size, size)
    for channel in range(3):
        expected = (value / 255 - mean[channel]) / std[channel]
        assert out[:, channel].mean().item() == pytest.approx(expected, abs=1e-5)
        assert out[:, channel].std().item() < 1e-5
