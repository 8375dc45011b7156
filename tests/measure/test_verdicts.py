"""How a faithfulness result is read: which maps and protocol the tables show, where a file keeps each protocol,
and the words a quarter drop gets."""
from __future__ import annotations

import pytest

from advit.measure.removal import PROTOCOLS
from advit.measure.verdicts import (
    FAITHFUL_BAR,
    FIRST_PROTOCOL,
    HEADLINE_PROTOCOL,
    describe_drop,
    evaluation_key,
    headline,
    last_layer,
    verdict,
)


def test_a_files_keys_are_fixed_by_the_protocol_whatever_the_headline():
    """Files from before protocols were named hold the mean fill under 'faithfulness': the key stays that
    protocol's, so that choosing another headline never reads old files under the wrong name."""
    assert evaluation_key(FIRST_PROTOCOL) == 'faithfulness' and FIRST_PROTOCOL == 'mean'
    assert {evaluation_key(p) for p in PROTOCOLS} == {'faithfulness', 'faithfulness_drop', 'faithfulness_blur'}
    assert evaluation_key() == evaluation_key(HEADLINE_PROTOCOL) == 'faithfulness_drop'
    with pytest.raises(ValueError, match='removal protocol'):
        evaluation_key('grey')


@pytest.mark.parametrize('drop, error, words', [
    (FAITHFUL_BAR, 1.0, 'faithful'), (5.0, 1.0, 'weakly faithful'), (1.5, 1.0, 'no better than random'),
    (-3.0, 1.0, 'points away from what the model uses'), (12.0, 7.0, 'no better than random'),
    (3.0, None, 'weakly faithful'), (1.0, None, 'no better than random')])
def test_verdicts_tell_a_drop_from_noise_by_its_standard_error(drop, error, words):
    assert verdict(drop, error) == words
    if error is not None:
        assert describe_drop(dict(quarter_drop=drop, quarter_drop_se=error)).endswith(f'points, {words}')


def test_the_headline_reads_the_last_layer_and_both_rollouts_of_the_protocol_asked():
    def measured(last: float) -> dict:
        return dict(summary=dict(sources={'layer 1': dict(quarter_drop=1.0), 'layer 3': dict(quarter_drop=last),
                                          'rollout': dict(quarter_drop=2.0), 'gradient rollout': dict(quarter_drop=3.0)}))
    evaluation = {evaluation_key('mean'): measured(4.0), evaluation_key('drop'): measured(9.0)}
    assert headline(evaluation)['last layer']['quarter_drop'] == 9.0
    assert headline(evaluation, 'mean')['last layer']['quarter_drop'] == 4.0
    assert headline(evaluation, 'blur')['last layer'] == {'quarter_drop': None, 'quarter_drop_se': None}
    assert last_layer(['layer 1', 'layer 3', 'rollout']) == 'layer 3' and last_layer(['rollout']) is None
