"""The attention distances the loss, the probe and the app share (``alignment.attention_gap``), against values
worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from advit.core.alignment import attention_gap, layer_mapping

STUDENT = torch.tensor([0.5, 0.25, 0.25])
TEACHER = torch.tensor([0.25, 0.25, 0.5])


def test_attention_gap_by_hand():
    assert attention_gap(STUDENT, TEACHER, 'l1').item() == pytest.approx(0.25 + 0 + 0.25)
    assert attention_gap(STUDENT, TEACHER, 'l2').item() == pytest.approx(0.0625 + 0 + 0.0625)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.25) + 0.5 * math.log(0.5 / 0.25)
    assert attention_gap(STUDENT, TEACHER, 'kl').item() == pytest.approx(kl)


@pytest.mark.parametrize('tau', [1.0, 2.0])
def test_kl_paper_by_hand_and_it_flattens(tau):
    def softmax(values):
        exps = [math.exp(v / tau) for v in values]
        return [e / sum(exps) for e in exps]
    p_t, p_s = softmax(TEACHER.tolist()), softmax(STUDENT.tolist())
    expected = tau * tau * sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    assert attention_gap(STUDENT, TEACHER, 'kl_paper', tau).item() == pytest.approx(expected, rel=1e-5)
    # The softmax of a distribution is nearly uniform: the paper's KL is far smaller than the true one.
    assert attention_gap(STUDENT, TEACHER, 'kl_paper', 1.0) < attention_gap(STUDENT, TEACHER, 'kl') / 5


def test_attention_gap_is_zero_for_equal_maps_and_keeps_leading_dims():
    maps = torch.softmax(torch.randn(4, 3, 2, 10), dim=-1)
    for kind in ('l1', 'l2', 'kl', 'kl_paper'):
        gap = attention_gap(maps, maps.clone(), kind)
        assert gap.shape == (4, 3, 2)
        torch.testing.assert_close(gap, torch.zeros(4, 3, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='unknown attention distance'):
        attention_gap(maps, maps, 'cosine')


def test_the_uniform_layer_map_meets_the_last_teacher_layer_and_an_explicit_one_is_checked():
    assert layer_mapping(6, 12) == [1, 3, 5, 7, 9, 11] and layer_mapping(4, 4) == [0, 1, 2, 3]
    assert layer_mapping(2, 4, [0, 3]) == [0, 3]
    with pytest.raises(ValueError, match='layer map has 1 entries'):
        layer_mapping(2, 4, [0])
    with pytest.raises(ValueError, match='outside the teacher'):
        layer_mapping(2, 4, [0, 4])
