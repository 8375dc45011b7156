"""The app's parts as a Studio wires them, computed without a browser: a Studio over empty folders. Each part's own
views are tested beside it: test_offer.py, test_attention_views.py, test_compare_views.py, test_probe_views.py,
test_about.py, test_scrubber.py."""
from __future__ import annotations

import pytest

from advit.app.forms import AttentionRequest
from advit.app.offer import Defaults, StudioError
from advit.app.studio import Studio
from conftest import REPO

EXAMPLE = str(REPO / 'assets' / 'examples' / 'dog_5000.png')


def test_empty_studio_says_how_to_get_models(tmp_path, cifar_archive):
    empty = Studio([tmp_path / 'checkpoints'], tmp_path / 'runs', cifar_archive)
    assert empty.offer.choices() == []
    assert 'No usable models found' in empty.offer.problems() and 'advit train' in empty.offer.problems()
    assert empty.offer.defaults() == Defaults(teacher=None, student=None, compare_a=None, compare_b=None)
    with pytest.raises(StudioError, match='choose a teacher'):
        empty.attention.view(AttentionRequest(EXAMPLE, None, None))
