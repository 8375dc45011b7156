"""The About page (about.py): our models' accuracy and faithfulness beside the paper's results."""
from __future__ import annotations

import json

from advit.app.about import about_markdown
from advit.measure.verdicts import HEADLINE_PROTOCOL, evaluation_key, verdict


def test_each_models_faithfulness_is_shown_beside_its_accuracy(studio, tiny_bundle):
    """The card beside each model list and the About tab carry the quarter drops the evaluation file holds."""
    defaults = studio.offer.defaults()
    entry = studio.offer.find(defaults.student)
    evaluation = json.loads((tiny_bundle / 'advit_l1.eval.json').read_text())
    headline = evaluation[evaluation_key(HEADLINE_PROTOCOL)]  # the card reads the headline protocol's
    sources = headline['summary']['sources']
    assert headline['count'] == 256
    assert list(sources) == ['layer 1', 'layer 2', 'rollout', 'gradient rollout']
    wanted = ('quarter_drop', 'quarter_drop_se')
    assert entry.faithfulness() == {'last layer': {key: sources['layer 2'][key] for key in wanted},
                                    **{name: {key: sources[name][key] for key in wanted}
                                       for name in ('rollout', 'gradient rollout')}}
    drop, error = sources['rollout']['quarter_drop'], sources['rollout']['quarter_drop_se']
    assert error > 0
    words = f'{drop:+.1f} ± {error:.1f} points, {verdict(drop, error)}'
    assert f'rollout: {words}' in studio.offer.describe(defaults.student)
    about = about_markdown(studio.offer.entries())
    assert 'faithfulness, last layer (pts)' in about and 'faithfulness, gradient rollout (pts)' in about
    row = next(line for line in about.splitlines() if 'advit_l1.safetensors' in line)
    assert words in row
