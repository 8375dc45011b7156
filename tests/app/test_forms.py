"""The view forms' requests (forms.py): each value checked as it enters, taken in the type the views use, and a
value outside the page's range refused in words, never rounded or clipped."""
from __future__ import annotations

import pytest

from advit.app.forms import DISCARD, HEADS, KEEP, MAX_INDEX, OPACITY, AttentionRequest, ProbeRequest, RolloutRequest
from advit.core.checks import RequestError
from advit.measure.removal import PROTOCOLS


def test_an_attention_request_takes_what_a_client_sends_as_the_numbers_the_views_use():
    """Some clients send numbers as text or a whole number as a float: taken, as int where the view indexes."""
    request = AttentionRequest('image.png', 'teacher', 'student', 'head', head='2', opacity='0.25', layer=3.0)
    assert (request.head, request.opacity, request.layer) == (2, 0.25, 3)
    assert type(request.head) is int and type(request.layer) is int and type(request.opacity) is float
    assert all(AttentionRequest(protocol=protocol).protocol == protocol for protocol in PROTOCOLS)


@pytest.mark.parametrize('values, message', [
    (dict(head=HEADS[1] + 1), f'head must be between {HEADS[0]} and {HEADS[1]}, got {HEADS[1] + 1}'),
    (dict(head=-1), 'head must be between'),
    (dict(head=1.5), 'head must be a whole number, got 1.5'),
    (dict(head=True), 'head must be a number, got True'),
    (dict(opacity=OPACITY[1] + 0.5), 'heatmap opacity must be between'),
    (dict(opacity=float('nan')), 'heatmap opacity must be a finite number, got nan'),
    (dict(layer=0), 'layer must be between 1 and'),
    (dict(layer=MAX_INDEX + 1), 'layer must be between 1 and'),
    (dict(layer='two'), "layer must be a number, got 'two'"),
])
def test_an_attention_request_out_of_the_forms_range_is_refused_in_words(values, message):
    with pytest.raises(RequestError, match=message):
        AttentionRequest('image.png', 'teacher', 'student', **values)


def test_an_unknown_removal_protocol_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=f'unknown removal protocol .*choose one of {", ".join(PROTOCOLS)}'):
        AttentionRequest(protocol='grey')


def test_the_rollout_settings_keep_to_the_sliders_range():
    request = RolloutRequest('max', '0.5', KEEP[0])
    assert (request.fusion, request.discard, request.keep) == ('max', 0.5, KEEP[0])
    for values, message in ((dict(discard=DISCARD[1] + 0.01), 'rollout discard ratio must be between'),
                            (dict(discard=-0.1), 'rollout discard ratio must be between'),
                            (dict(keep=KEEP[0] / 2), 'mask share must be between'),
                            (dict(keep=float('inf')), 'mask share must be a finite number')):
        with pytest.raises(RequestError, match=message):
            RolloutRequest(**values)


def test_a_probe_request_reads_an_empty_student_as_none_and_counts_evaluations_from_the_last():
    assert ProbeRequest(student='').student is None and ProbeRequest(student='vit').student == 'vit'
    request = ProbeRequest(evaluation='-1', image=4.0)
    assert (request.evaluation, request.image) == (-1, 4) and type(request.image) is int
    for values, message in ((dict(evaluation=-2), 'evaluation must be between -1 and'),
                            (dict(image=-1), 'probe image must be between 0 and'),
                            (dict(image=0.5), 'probe image must be a whole number'),
                            (dict(opacity=-0.1), 'heatmap opacity must be between')):
        with pytest.raises(RequestError, match=message):
            ProbeRequest(**values)
