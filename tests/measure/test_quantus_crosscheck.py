"""Our deletion curve against the field's library: Quantus's Region Perturbation (Samek et al. 2016) with
patch-shaped regions, removed most relevant first and filled with the normalisation's mean (0), computes the
same curve as ``perturbation_curves`` with the ``mean`` protocol, to float rounding."""
from __future__ import annotations

import numpy as np
import quantus  # a test requirement (requirements-test.txt), not the app's
import timm
import torch

from advit.measure.faithfulness import perturbation_curves
from conftest import TINY


def test_our_mean_fill_deletion_curve_equals_quantus_region_perturbation():
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch4_32', **TINY).eval()
    inputs, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 3, 5, 7, 9])
    maps = torch.rand(5, 1, 64)  # distinct values: one order, however ties would be broken
    ours = perturbation_curves(model, inputs, labels, maps, ['map'], fractions=tuple(k / 64 for k in range(65)),
                               modes=('deletion',), orders=('map',), protocol='mean')
    pixels = maps[:, 0].view(5, 1, 8, 8).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    metric = quantus.RegionPerturbation(patch_size=4, order='morf', regions_evaluation=64, normalise=False,
                                        perturb_baseline=0.0, disable_warnings=True)
    decreases = np.asarray(metric(model=model, x_batch=inputs.numpy(), y_batch=labels.numpy(),
                                  a_batch=pixels.numpy(), device='cpu', softmax=True, channel_first=True))
    with torch.no_grad():
        whole = model(inputs).softmax(dim=-1)[torch.arange(5), labels].numpy()
    # Quantus records, after each region, the true class's probability lost since the whole image; ours the
    # probability itself, averaged over the images: p_k = mean(p_0 - loss_k).
    theirs = np.concatenate([[whole.mean()], (whole[:, None] - decreases).mean(axis=0)])
    np.testing.assert_allclose(ours.curve('probability', 'deletion', 'map', 'map'), theirs, atol=1e-5)
    assert not np.allclose(theirs, theirs[0]), 'the curve moves: the comparison could fail'
