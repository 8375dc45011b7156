"""What crosses to and from a client: numbers checked in words, text without server paths."""
from __future__ import annotations

import math

import pytest

from advit.core.checks import RequestError, number, redacted, shown_value
from advit.core.models import check_architecture_args


@pytest.mark.parametrize('value, whole, expected', [(0.5, False, 0.5), ('0.25', False, 0.25), (3, True, 3),
                                                     (3.0, True, 3), ('7', True, 7), (0, False, 0.0)])
def test_numbers_in_range_are_taken_as_they_are(value, whole, expected):
    taken = number(value, 'x', 0, 10, whole)
    assert taken == expected and type(taken) is (int if whole else float)


@pytest.mark.parametrize('value, whole, message', [
    (math.nan, False, 'x must be a finite number, got nan'), (math.inf, False, 'x must be a finite number, got inf'),
    (-math.inf, True, 'x must be a finite number, got -inf'), ('NaN', False, 'x must be a finite number, got nan'),
    (2.5, True, 'x must be a whole number, got 2.5'), (11, False, 'x must be between 0 and 10, got 11'),
    (-1e-9, False, 'x must be between 0 and 10, got -1e-09'), (1e300, True, 'x must be between 0 and 10, got 1e+300'),
    ('warm', False, "x must be a number, got 'warm'"), (None, False, 'x must be a number, got None'),
    (True, True, 'x must be a number, got True'), ([1], False, 'x must be a number, got [1]'),
])
def test_other_values_are_refused_with_the_rule(value, whole, message):
    with pytest.raises(RequestError) as refused:
        number(value, 'x', 0, 10, whole)
    assert str(refused.value) == message


def test_a_huge_whole_number_and_one_sided_ranges_are_refused_in_words():
    """JSON's integers are unbounded: one with 400 digits is quoted, not turned into an OverflowError; a range
    open on one side says the side it has."""
    with pytest.raises(RequestError, match=r'x is too large a number \(over 1e308\), got 1000.*\(401 characters\)'):
        number(10**400, 'x', 0, math.inf)
    with pytest.raises(RequestError, match='x must be at least 0, got -1'):
        number(-1, 'x', 0, math.inf)
    with pytest.raises(RequestError, match='x must be at most 3, got 5'):
        number(5, 'x', -math.inf, 3)


def test_a_typed_value_from_a_file_is_held_to_its_type_a_clients_is_read():
    """A client may send '3' or 3.0 for 3; a file its writer typed (a checkpoint's metadata, a config) may not."""
    assert number('3', 'x', 0, 10, whole=True) == 3 and number(3.0, 'x', 0, 10, whole=True) == 3
    with pytest.raises(RequestError, match="^x must be a number, got the text '3'$"):
        number('3', 'x', 0, 10, typed=True)
    with pytest.raises(RequestError, match='^x must be a whole number, got 3.0$'):
        number(3.0, 'x', 0, 10, whole=True, typed=True)
    assert number(3, 'x', 0, 10, whole=True, typed=True) == 3 and number(2.5, 'x', 0, 10, typed=True) == 2.5
    with pytest.raises(RequestError, match='^x must be between 0 and 10, got 11$'):
        number(11, 'x', 0, 10, whole=True, typed=True)


def test_a_long_value_is_quoted_not_echoed():
    assert shown_value('a' * 100_000) == "'" + 'a' * 59 + '... (100002 characters)'
    assert shown_value('short') == "'short'"


def test_architecture_arguments_are_bounded_before_anything_is_built():
    check_architecture_args(dict(depth=12, embed_dim=768, num_heads=12, drop_path_rate=0.1))
    for args, message in ((dict(depth=10_000), 'depth must be between 1 and 64, got 10000'),
                          (dict(embed_dim=1.5), 'embed_dim must be a whole number'),
                          (dict(mlp_ratio=math.nan), 'mlp_ratio must be a finite number'),
                          (dict(drop_path_rate=2), 'drop_path_rate must be between 0 and 1'),
                          (dict(checkpoint_path='/etc/passwd'), 'not an architecture argument: ')):
        with pytest.raises(ValueError, match=message):
            check_architecture_args(args)


def test_text_for_a_client_names_no_server_folder():
    names = {'/srv/app/runs': 'runs', '/srv/app': '.'}
    assert redacted('/srv/app/runs/x/best.safetensors and /srv/app/checkpoints/t.safetensors', names) == \
        'runs/x/best.safetensors and ./checkpoints/t.safetensors'
    assert redacted('$ /opt/venv/bin/python3 -m advit train', {}) == '$ .../python3 -m advit train'
    assert redacted('File "/usr/lib/python3.11/site-packages/torch/nn/module.py", line 3', {}) == \
        'File ".../module.py", line 3'
    kept = 'https://huggingface.co/timm/vit, runs/a/b, 1/2, a /config route, 50/50'
    assert redacted(kept, {}) == kept
