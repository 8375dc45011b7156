"""scripts/flip_averaging.py: test-time flips measured on held-out training images."""
from __future__ import annotations

import sys

import torch

from advit.core.data import ImageSet
from advit.measure.evaluate import checkpoint_probs
from conftest import REPO

sys.path.insert(0, str(REPO / 'scripts'))
from flip_averaging import flip_record  # noqa: E402  (a script, not part of the package)

SHIPPED_VIT = REPO / 'checkpoints' / 'vit.safetensors'


def test_flips_are_mirror_images_and_the_plain_top1_is_the_evaluations(cifar):
    """On images that are their own mirror image, averaging in the flipped copy changes no prediction (a flip
    along any other axis would); on real held-out images the plain top-1 is the project's evaluation's."""
    held = cifar['train'].holdout(5000)[1]
    real = ImageSet(held.images[:512], held.labels[:512], held.classes)
    left = real.images[..., :16]
    mirrored = ImageSet(torch.cat([left, left.flip(-1)], dim=-1), real.labels, real.classes)
    symmetric = flip_record(SHIPPED_VIT, mirrored)
    assert symmetric['val_top1'] == symmetric['val_top1_flips'] and symmetric['images'] == 512
    upside_down = ImageSet(mirrored.images.flip(-2), real.labels, real.classes)
    assert flip_record(SHIPPED_VIT, upside_down)['val_top1'] != symmetric['val_top1']  # the check can fail
    record = flip_record(SHIPPED_VIT, real)
    probs, _ = checkpoint_probs(SHIPPED_VIT, real)
    assert record['val_top1'] == round(100.0 * (probs.argmax(-1) == real.labels).double().mean().item(), 2)
    assert record['machine']
