"""The removal protocols' agreement: Kendall's tau by hand, and the table over a bundle's evaluation files."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from advit.measure.faithfulness import perturbation_curves
from advit.results.agreement import agreement, agreement_markdown, kendall_tau, missing_protocols, protocol_rows
from conftest import TINY


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Pairs (i<j) of [1,2,3] vs [1,3,2]: (1,2)+ (1,3)+ (2,3)-: (2 - 1) / 3.
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # tau-b with a tie in b: x=[1,2,3], y=[1,1,2]: concordant 2, discordant 0, untied pairs 3 and 2.
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / np.sqrt(3 * 2))
    assert kendall_tau([1], [2]) is None and kendall_tau([1, 1], [1, 2]) is None


@pytest.fixture(scope='module')
def evaluations():
    """Two tiny ViTs' evaluation contents under every protocol (real curves of random-weight models)."""
    import timm
    files = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model('vit_tiny_patch4_32', **TINY).eval()
        inputs, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
        maps = torch.rand(6, 4, 64)
        names = ['layer 1', 'layer 2', 'rollout', 'gradient rollout']
        files[f'model{seed}'] = {
            key: perturbation_curves(model, inputs, labels, maps, names, protocol=protocol).as_dict()
            for key, protocol in (('faithfulness', 'mean'), ('faithfulness_drop', 'drop'), ('faithfulness_blur', 'blur'))}
    return files


def test_every_headline_map_of_every_model_under_every_protocol(evaluations):
    rows = protocol_rows(evaluations)
    assert [(row['model'], row['map']) for row in rows] == [
        (model, source) for model in ('model0', 'model1') for source in ('last layer', 'rollout', 'gradient rollout')]
    assert rows[0]['drop']['quarter_drop'] == pytest.approx(
        evaluations['model0']['faithfulness_drop']['summary']['sources']['layer 2']['quarter_drop'])
    assert all(row[p]['verdict'] for row in rows for p in ('mean', 'drop', 'blur'))
    pairs = agreement(rows)
    assert set(pairs) == {'mean vs drop', 'mean vs blur', 'drop vs blur'}
    same = agreement([{**row, 'blur': row['mean']} for row in rows])['mean vs blur']
    assert same['tau_relevance_gain'] == pytest.approx(1.0) and same['same_verdict'] == 1 and not same['differing']
    table = agreement_markdown(evaluations)
    assert table.count('| model0 |') == 3 and 'Kendall tau' in table


def test_a_model_short_of_a_protocol_is_named_not_tabled(evaluations):
    partial = copy.deepcopy(evaluations)
    del partial['model1']['faithfulness_blur']
    assert {row['model'] for row in protocol_rows(partial)} == {'model0'}
    assert missing_protocols(partial) == {'model1': ['blur']}
    assert 'model1 (blur)' in agreement_markdown(partial)
    assert 'No model' in agreement_markdown({'model1': partial['model1']})
