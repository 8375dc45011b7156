"""The faithfulness measure: deletion and insertion curves rank a map by what the model uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from advit.core.alignment import fuse_heads
from advit.core.capture import ClsAttentionCapture
from advit.core.augment import mask_patches
from advit.measure.faithfulness import (FaithfulnessCurves, measure_faithfulness, patch_ranks,
                                        perturbation_curves, source_names)
from advit.measure.verdicts import verdict
from advit.measure.rollout import gradient_rollout, rollout
from attention_reference import full_attention
from conftest import tiny_vit

GRID = (4, 4)
PATCH = 8  # 32x32 images in a 4x4 grid of 8x8 patches


class PatchReader(nn.Module):
    """A classifier whose decision is known: class c is read from patch ``KEY_PATCHES[c]`` alone
    (its mean pixel, scaled), so a map on the key patch is the right one."""
    KEY_PATCHES = (0, 5, 10, 15)

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.grid_size = GRID

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = images.mean(dim=1).unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).mean(dim=(-1, -2))
        return 4.0 * patches.flatten(1)[:, list(self.KEY_PATCHES)]


def known_task(count: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose class's key patch is bright (noise elsewhere), labels, and the right map of each
    (most mass on the key patch, the rest spread at random)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(PatchReader.KEY_PATCHES)
    images = torch.rand(count, 3, 32, 32, generator=generator) - 0.5
    right = torch.rand(count, GRID[0] * GRID[1], generator=generator) * 0.1
    for index, label in enumerate(labels.tolist()):
        key = PatchReader.KEY_PATCHES[label]
        row, col = divmod(key, GRID[1])
        images[index, :, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = 1.5
        right[index, key] = 1.0
    return images, labels, right / right.sum(dim=-1, keepdim=True)


def test_the_right_map_scores_above_a_random_one_and_a_random_one_above_the_reversed_one():
    images, labels, right = known_task()
    model = PatchReader()
    assert (model(images).argmax(dim=-1) == labels).all(), 'the task is solved on whole images'
    curves = perturbation_curves(model, images, labels, right[:, None], ['right'], random_orders=4)
    deletion = {order: curves.area('probability', 'deletion', 'right', order) for order in curves.orders}
    insertion = {order: curves.area('probability', 'insertion', 'right', order) for order in curves.orders}
    assert deletion['map'] < deletion['random'] < deletion['reversed']
    assert insertion['map'] > insertion['random'] > insertion['reversed']
    # Masking the key patch first takes the class away at the first step; a random quarter does so for
    # about a quarter of the images; the reversed map keeps it until the very end.
    accuracy = {order: curves.curve('accuracy', 'deletion', 'right', order) for order in curves.orders}
    assert accuracy['map'][0] == accuracy['random'][0] == accuracy['reversed'][0] == 100
    quarter = curves.fractions.index(0.25)
    assert accuracy['map'][quarter] <= 45 and accuracy['reversed'][-2] == 100
    assert curves.quarter_drop('right') > 40
    # A map on the wrong patches: no better than chance, or worse.
    wrong = curves_for(model, images, labels, 1 - right)
    assert wrong.quarter_drop('map') < 0
    summary = curves.summary()
    assert summary['count'] == 64 and summary['sources']['right']['quarter_drop'] == curves.quarter_drop('right')
    # Its standard error, over the images: of the per-image difference (right or wrong with a random
    # quarter masked, averaged over the 4 orders, minus right or wrong with the map's top quarter masked).
    error = summary['sources']['right']['quarter_drop_se']
    assert 0 < error < 10 and verdict(curves.quarter_drop('right'), error) == 'faithful'

    assert summary['sources']['right']['deletion_auc'] == deletion


def curves_for(model: nn.Module, images, labels, maps) -> FaithfulnessCurves:
    return perturbation_curves(model, images, labels, maps[:, None], ['map'], random_orders=4)


def test_masked_patches_are_set_to_the_mean_and_nothing_else_changes():
    images = torch.randn(2, 3, 32, 32)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, 5] = True  # row 1, col 1
    out = mask_patches(images, masked, GRID)
    assert (out[0, :, 8:16, 8:16] == 0).all()
    keep = torch.ones(2, 3, 32, 32, dtype=torch.bool)
    keep[0, :, 8:16, 8:16] = False
    assert torch.equal(out[keep], images[keep])
    with pytest.raises(ValueError, match='does not split'):
        mask_patches(torch.zeros(1, 3, 30, 30), masked[:1], GRID)


def test_ranks_follow_the_map_and_a_seeded_permutation():
    maps = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    assert patch_ranks(maps, 'map').tolist() == [[3, 0, 2, 1]]
    first = patch_ranks(maps, 'random', torch.Generator().manual_seed(1))
    assert sorted(first[0].tolist()) == [0, 1, 2, 3]
    assert torch.equal(first, patch_ranks(maps, 'random', torch.Generator().manual_seed(1)))
    assert patch_ranks(torch.zeros(1, 4), 'map').tolist() == [[0, 1, 2, 3]], 'ties by patch index'
    with pytest.raises(ValueError, match='unknown order'):
        patch_ranks(maps, 'sideways')


def test_each_distinct_masked_copy_is_run_once():
    images, labels, right = known_task(count=8)
    calls = []

    class Counting(PatchReader):
        def forward(self, images):
            calls.append(len(images))
            return super().forward(images)
    maps = torch.stack([right, right.flip(-1)], dim=1)
    perturbation_curves(Counting(), images, labels, maps, ['a', 'b'], fractions=(0, 0.25, 0.5, 1),
                        random_orders=2, batch_size=1000)
    # Deletion: 2 interior fractions (4 and 8 of 16 patches) x (2 sources x (map, reversed) + 2 random
    # orders) = 12 copies. Insertion of the first k masks what deletion of the first 16 - k of the reversed
    # order masks: at k = 8 the map's and the reversed map's copies are deletion's own, and only the 2
    # reversed random orders are new; at k = 4 (deletion of 12) all 6 are new. With the whole and the
    # empty image, shared by every curve: 12 + 2 + 6 + 2 = 22 copies of the 8 images.
    assert sum(calls) == 22 * 8


def test_every_layer_and_rollout_of_a_real_vit_as_the_loss_and_the_app_take_them():
    model = tiny_vit(0, depth=3)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6)
    curves = measure_faithfulness(model, images, labels, fractions=(0, 0.25, 1), batch_size=5)
    assert curves.sources == source_names(3) == ['layer 1', 'layer 2', 'layer 3', 'rollout', 'gradient rollout']
    assert curves.accuracy.shape == (2, 5, 3, 3)
    # Whole images: every order alike, the model's own accuracy; none left: every order alike too.
    with torch.no_grad():
        probs = model(images).softmax(dim=-1)
    clean_probability = float(probs.gather(1, labels[:, None]).mean())
    assert np.allclose(curves.probability[0, :, :, 0], clean_probability, atol=1e-6)
    assert np.allclose(curves.probability[1, :, :, -1], clean_probability, atol=1e-6)
    assert np.ptp(curves.probability[0, :, :, -1]) < 1e-6 and np.ptp(curves.probability[1, :, :, 0]) < 1e-6
    # The maps ordered are the capture's fused maps and the rollout of the explicit attention: rebuilt
    # here independently, masking layer 2's top quarter gives the probability the curve holds.
    with ClsAttentionCapture(model) as capture, torch.no_grad():
        model(images)
        layer2 = fuse_heads(capture.pop())[:, 1, 0]
    top = layer2.argsort(dim=-1, descending=True)[:, :16]
    masked = torch.zeros(6, 64, dtype=torch.bool).scatter(1, top, True)
    with torch.no_grad():
        expected = model(mask_patches(images, masked, (8, 8))).softmax(-1).gather(1, labels[:, None]).mean()
    assert curves.curve('probability', 'deletion', 'layer 2', 'map')[1] == pytest.approx(float(expected), abs=1e-6)
    flow = rollout(full_attention(model, images), 1)
    top = flow.argsort(dim=-1, descending=True)[:, :16]
    masked = torch.zeros(6, 64, dtype=torch.bool).scatter(1, top, True)
    with torch.no_grad():
        expected = model(mask_patches(images, masked, (8, 8))).softmax(-1).gather(1, labels[:, None]).mean()
    assert curves.curve('probability', 'deletion', 'rollout', 'map')[1] == pytest.approx(float(expected), abs=1e-6)
    # And gradient rollout, for the class each image is predicted (whatever the label read).
    relevance = gradient_rollout(model, images)
    top = relevance.argsort(dim=-1, descending=True)[:, :16]
    masked = torch.zeros(6, 64, dtype=torch.bool).scatter(1, top, True)
    with torch.no_grad():
        expected = model(mask_patches(images, masked, (8, 8))).softmax(-1).gather(1, labels[:, None]).mean()
    assert curves.curve('probability', 'deletion', 'gradient rollout', 'map')[1] == \
        pytest.approx(float(expected), abs=1e-6)
    # Without labels, each image's own predicted class is read: accuracy on whole images is 100%.
    own = measure_faithfulness(model, images, fractions=(0, 0.25, 1))
    assert own.curve('accuracy', 'deletion', 'rollout', 'map')[0] == 100
    assert FaithfulnessCurves.from_dict(curves.as_dict()).summary() == curves.summary()
    # Only the maps asked for (the app's one-image view draws three): the same curves, fewer masked copies.
    some = measure_faithfulness(model, images, labels, fractions=(0, 0.25, 1), batch_size=5,
                                sources=('layer 3', 'gradient rollout'))
    assert some.sources == ['layer 3', 'gradient rollout']
    for source in some.sources:
        assert some.curve('probability', 'deletion', source, 'map') == \
            pytest.approx(curves.curve('probability', 'deletion', source, 'map'), abs=1e-6)
    with pytest.raises(ValueError, match='no map layer 4 in this model: it has layer 1, layer 2, layer 3, rollout'):
        measure_faithfulness(model, images, labels, sources=('layer 4',))


def test_bad_arguments_are_refused():
    images, labels, right = known_task(count=4)
    with pytest.raises(ValueError, match='do not fit'):
        perturbation_curves(PatchReader(), images, labels, right[:, None], ['a', 'b'])
    with pytest.raises(ValueError, match='fractions must rise'):
        perturbation_curves(PatchReader(), images, labels, right[:, None], ['a'], fractions=(0.5, 0.25))
    with pytest.raises(ValueError, match='unknown modes or orders'):
        perturbation_curves(PatchReader(), images, labels, right[:, None], ['a'], modes=('erasure',))


def test_verdicts_follow_the_bar_and_the_noise():
    assert verdict(12.0, 1.0) == 'faithful' and verdict(12.0, 7.0) == 'no better than random'
    assert verdict(3.0, 1.0) == 'weakly faithful' and verdict(3.0, 2.0) == 'no better than random'
    assert verdict(-3.0, 1.0) == 'points away from what the model uses'
    assert verdict(1.5) == 'no better than random' and verdict(2.5) == 'weakly faithful'  # no error known: 2 points
