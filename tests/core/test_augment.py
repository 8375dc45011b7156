"""Batch-wise augmentation on real CIFAR-10 images."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from timm.data.mixup import mixup_target
from torchvision.transforms import InterpolationMode

from advit.core.augment import (TRIVIAL_OPS, BatchTransform, Mixup, hide_patches, random_crop_flip, random_erasing,
                           random_resized_crop_flip, trivial_augment, trivial_ops)
from advit.core.models import CIFAR10_MEAN, CIFAR10_STD


@pytest.fixture(scope='module')
def images(cifar) -> torch.Tensor:
    """32 real uint8 test images (N, 3, 32, 32)."""
    return cifar['test'].images[:32].clone()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unnormalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


# --- Hide-and-Seek ---------------------------------------------------------------------------------

def test_hidden_patches_are_whole_grid_cells_at_the_mean_in_a_share_up_to_the_most(images):
    inputs = BatchTransform('none', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0).eval(images)
    hidden = hide_patches(inputs, (8, 8), 0.6, generator(1))
    cells = (hidden - inputs).abs().view(32, 3, 8, 4, 8, 4).amax(dim=(1, 3, 5)) > 0  # changed cells
    zero = hidden.view(32, 3, 8, 4, 8, 4).abs().amax(dim=(1, 3, 5)) == 0
    assert torch.equal(cells | zero, zero)  # a changed cell is entirely the mean (0 once normalised)
    kept = (hidden == inputs).view(32, 3, 8, 4, 8, 4).all(dim=1).all(dim=2).all(dim=3)
    assert torch.equal(kept | zero, torch.ones_like(kept))  # each cell is kept whole or hidden whole
    shares = zero.flatten(1).float().mean(1)
    assert shares.max() <= 0.6 + 0.2 and shares.min() < 0.15 and shares.max() > 0.3  # drawn per image
    assert torch.equal(hide_patches(inputs, (8, 8), 0.0, generator(1)), inputs)


def test_a_transform_hides_patches_only_when_asked_and_needs_the_grid(images):
    plain = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=3).train(images)
    hiding = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=3, hide=0.5, grid=(8, 8)).train(images)
    assert not torch.equal(plain, hiding)
    cells = lambda x: x.view(32, 3, 8, 4, 8, 4).abs().amax(dim=(1, 3, 5)) == 0  # noqa: E731
    assert cells(hiding).sum() > cells(plain).sum() + 32
    with pytest.raises(ValueError, match="patch grid"):
        BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=3, hide=0.5)
    with pytest.raises(ValueError, match=r'share in \[0, 1\]'):
        BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=3, hide=2.0, grid=(8, 8))


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
    for recipe, size in (('cifar32', 32), ('cifar32_strong', 32), ('rrc224', 64)):
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


# --- cifar32_strong: TrivialAugment ---------------------------------------------------------------

def _shear(axis: int):
    """torchvision's bilinear shear about the centre (its TrivialAugment shears about the corner: a shift more)."""
    def apply(image: torch.Tensor, m: float) -> torch.Tensor:
        shear = [0.0, 0.0]
        shear[axis] = math.degrees(math.atan(0.3 * m))
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=InterpolationMode.BILINEAR)
    return apply


# torchvision's functional ops, one image and one magnitude m in [-1, 1] at a time, at RandAugment's ranges.
REFERENCES = {
    'identity': lambda image, m: image,
    'brightness': lambda image, m: TF.adjust_brightness(image, 1 + 0.9 * m),
    'color': lambda image, m: TF.adjust_saturation(image, 1 + 0.9 * m),
    'contrast': lambda image, m: TF.adjust_contrast(image, 1 + 0.9 * m),
    'sharpness': lambda image, m: TF.adjust_sharpness(image, 1 + 0.9 * m),
    'posterize': lambda image, m: TF.posterize(image, 8 - round(4 * abs(m))),
    'solarize': lambda image, m: TF.solarize(image, 1 - abs(m)),
    'autocontrast': lambda image, m: TF.autocontrast(image),
    'equalize': lambda image, m: TF.equalize(image),
    'rotate': lambda image, m: TF.rotate(image, 30 * m, InterpolationMode.BILINEAR),
    'shear_x': _shear(0),
    'shear_y': _shear(1),
}


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_each_trivial_op_matches_torchvision(images, name):
    x = images[:16].float() / 255
    magnitudes = torch.linspace(-1, 1, len(x))
    out = trivial_ops(x, torch.full((len(x),), TRIVIAL_OPS.index(name)), magnitudes)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    for i in range(len(x)):
        expected = REFERENCES[name](x[i], magnitudes[i].item())
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0, msg=f'{name}, image {i}')
    if name == 'identity':
        assert torch.equal(out, x)
    elif name not in ('autocontrast', 'equalize'):  # no magnitude; an image may already be stretched
        assert not torch.equal(out[0], x[0])  # at full strength it changes the image: the check is not vacuous


@pytest.mark.parametrize('name, axis', [('translate_x', -1), ('translate_y', -2)])
@pytest.mark.parametrize('pixels', [5, -3])
def test_translation_moves_by_its_magnitude_and_fills_black(images, name, axis, pixels):
    x = images[:4].float() / 255
    magnitude = pixels / (32 * 150 / 331)  # the strongest translation is 150/331 of the side
    out = trivial_ops(x, torch.full((4,), TRIVIAL_OPS.index(name)), torch.full((4,), magnitude))
    shifted = torch.zeros_like(x)
    if axis == -1:
        shifted[..., max(pixels, 0):32 + min(pixels, 0)] = x[..., max(-pixels, 0):32 - max(pixels, 0)]
    else:
        shifted[..., max(pixels, 0):32 + min(pixels, 0), :] = x[..., max(-pixels, 0):32 - max(pixels, 0), :]
    torch.testing.assert_close(out, shifted, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_op_and_magnitude(images):
    """The batched ops agree with the same op applied to each image alone: no image sees another's."""
    x = images[:28].float() / 255
    ops = torch.arange(28) % len(TRIVIAL_OPS)
    magnitudes = torch.linspace(-1, 1, 28)
    out = trivial_ops(x, ops, magnitudes)
    for i in range(len(x)):
        alone = trivial_ops(x[i:i + 1], ops[i:i + 1], magnitudes[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone, atol=1e-6, rtol=0, msg=TRIVIAL_OPS[ops[i]])


def test_trivial_augment_draws_per_image_and_is_seeded(images):
    same = images[:1].expand(512, -1, -1, -1).float() / 255  # one image, 512 times
    out = trivial_augment(same, generator(0))
    assert out.shape == same.shape and out.min() >= 0 and out.max() <= 1
    distinct = {tuple(row) for row in out.flatten(1)[:, ::7].tolist()}
    # Only identity, autocontrast and equalize give the same output for every copy (3 of 14 ops).
    assert len(distinct) > 512 * 0.6
    unchanged = (out == same).flatten(1).all(dim=1).float().mean().item()
    assert 0.02 < unchanged < 0.25  # identity (1/14), plus ops that leave this image as it is
    torch.testing.assert_close(out, trivial_augment(same, generator(0)), atol=0, rtol=0)
    assert not torch.equal(out, trivial_augment(same, generator(1)))


def test_cifar32_strong_keeps_cifar32_then_augments_and_erases(images):
    strong = BatchTransform('cifar32_strong', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0)
    out = strong.train(images)
    assert out.shape == images.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    plain = BatchTransform('cifar32', 32, CIFAR10_MEAN, CIFAR10_STD, seed=0).train(images)
    assert not torch.equal(out, plain)
    # The same generator stream drives the crop first: the crop and flip are cifar32's.
    g = generator(0)
    cropped = random_crop_flip(images.float() / 255, padding=4, generator=g)
    expected = random_erasing(
        (trivial_augment(cropped, g) - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), g)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- Mixup / CutMix ---------------------------------------------------------------------------------

LABELS = torch.arange(8)  # reversed, every image meets another class


def _lam(targets: torch.Tensor, smoothing: float = 0.1, classes: int = 10) -> torch.Tensor:
    """The mixing weight of each row, read back from its own class's target."""
    return (targets[torch.arange(len(targets)), LABELS] - smoothing / classes) / (1 - smoothing)


def test_mixup_mixes_images_as_its_targets_say():
    x = torch.randn(8, 3, 32, 32)
    mixer = Mixup(mixup=0.8, cutmix=0.0, num_classes=10, label_smoothing=0.1, seed=0)
    lams = []
    for _ in range(20):
        out, targets = mixer(x, LABELS)
        assert targets.shape == (8, 10) and (targets >= 0).all()
        torch.testing.assert_close(targets.sum(-1), torch.ones(8))
        lam = _lam(targets)
        assert torch.allclose(lam, lam[0])  # one weight per batch
        torch.testing.assert_close(out, lam[0] * x + (1 - lam[0]) * x.flip(0))
        torch.testing.assert_close(targets, mixup_target(LABELS, 10, lam[0].item(), 0.1))  # timm's targets
        lams.append(lam[0].item())
    assert 0 < min(lams) and max(lams) < 1 and len(set(lams)) == 20


def test_cutmix_pastes_one_box_whose_area_sets_the_targets():
    x = torch.randn(8, 3, 32, 32)
    mixer = Mixup(mixup=0.0, cutmix=1.0, num_classes=10, label_smoothing=0.1, seed=1)
    for _ in range(20):
        out, targets = mixer(x, LABELS)
        torch.testing.assert_close(targets.sum(-1), torch.ones(8))
        pasted = (out != x).any(dim=1)  # (8, 32, 32): where the reversed batch shows
        assert torch.equal(out[:, :, pasted[0]], x.flip(0)[:, :, pasted[0]])
        assert all(torch.equal(pasted[i], pasted[0]) for i in range(8))  # one box for the batch
        rows, cols = pasted[0].any(1).nonzero().flatten(), pasted[0].any(0).nonzero().flatten()
        if len(rows):
            box = torch.zeros(32, 32, dtype=torch.bool)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert torch.equal(pasted[0], box)
        lam = _lam(targets)
        torch.testing.assert_close(lam, torch.full((8,), 1 - pasted[0].float().mean().item()))


def test_both_switch_per_batch_and_prob_zero_leaves_images():
    x = torch.randn(8, 3, 32, 32)
    mixer = Mixup(mixup=0.8, cutmix=1.0, num_classes=10, label_smoothing=0.1, seed=2)
    kinds = []
    for _ in range(200):
        out, _ = mixer(x, LABELS)
        changed = (out != x).any(dim=1)[0].float().mean().item()
        kinds.append('mixup' if changed == 1.0 else 'cutmix')
    assert 0.35 < kinds.count('cutmix') / 200 < 0.65
    off = Mixup(mixup=0.8, cutmix=1.0, num_classes=10, label_smoothing=0.1, prob=0.0, seed=2)
    out, targets = off(x, LABELS)
    assert torch.equal(out, x)
    torch.testing.assert_close(targets, mixup_target(LABELS, 10, 1.0, 0.1))  # smoothed one-hot


def test_mixup_is_seeded():
    x = torch.randn(8, 3, 32, 32)
    a = [Mixup(0.8, 1.0, 10, seed=3)(x, LABELS) for _ in range(2)]
    b = Mixup(0.8, 1.0, 10, seed=4)(x, LABELS)
    assert torch.equal(a[0][0], a[1][0]) and torch.equal(a[0][1], a[1][1])
    assert not torch.equal(a[0][1], b[1])
