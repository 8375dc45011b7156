"""Gradient-weighted attention's pieces: the score whose gradient weighs it, the rollout, and maps as distributions."""
from __future__ import annotations

import pytest
import torch

from advit.core.relevance import as_distribution, attention_gradients, class_score, layer_relevance, relevance_rollout
from conftest import tiny_vit


def test_the_score_is_the_target_logit_or_the_target_weighted_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert class_score(logits, torch.tensor([0, 2])) == 1.0 + 6.0
    assert class_score(logits, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])) == 1.5 + 6.0
    assert class_score(logits, None) == 3.0 + 6.0  # the predicted classes
    with pytest.raises(ValueError, match='do not match'):
        class_score(logits, torch.ones(2, 4))


def test_a_map_with_no_mass_is_uniform_and_the_others_sum_to_one():
    rows = as_distribution(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]]))
    torch.testing.assert_close(rows, torch.tensor([[0.25] * 4, [0.25, 0.75, 0.0, 0.0]]))


def test_layer_maps_and_the_rollout_come_from_one_forward_and_backward():
    model, images = tiny_vit(0, depth=3), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gradients = attention_gradients(model, images, torch.tensor([1, 2]))
    assert len(gradients.weighted) == 3 and all(w.min() >= 0 for w in gradients.weighted)
    assert all(p.grad is None for p in model.parameters()), 'the weights get no gradient'
    layers = layer_relevance(gradients.weighted, 1)
    rolled = layer_relevance(gradients.weighted, 1, 'rollout_last')
    torch.testing.assert_close(layers[:, :2], rolled[:, :2])
    torch.testing.assert_close(rolled[:, -1], relevance_rollout(gradients.weighted, 1))
    torch.testing.assert_close(rolled.sum(-1), torch.ones(2, 3))
    with pytest.raises(ValueError, match='unknown relevance target'):
        layer_relevance(gradients.weighted, 1, 'first')
