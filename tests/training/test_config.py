"""The run configuration's fields each declare their role once; every reader of config.json asks that."""
from __future__ import annotations

from dataclasses import fields

import pytest

from advit.results.bundle import export_bundle  # noqa: F401  (the bundle reads roles too: it must import)
from advit.results.report import NOT_SETTINGS
from advit.training.run_folder import RECORD_KEYS
from advit.results.seeds import NOT_RECIPE
from advit.training.train import ROLES, TrainConfig, fields_with_role, setting


def test_every_field_declares_one_known_role():
    assert all(f.metadata['role'] in ROLES for f in fields(TrainConfig))
    assert fields_with_role(*ROLES) == {f.name for f in fields(TrainConfig)}
    assert fields_with_role('output') == {'out'} and fields_with_role('seed') == {'seed'}
    assert {'lr', 'model', 'batch_size', 'recipe', 'epochs'} <= fields_with_role('recipe')
    with pytest.raises(ValueError, match='unknown role'):
        setting(0, 'a field', role='colour')
    with pytest.raises(ValueError, match='unknown roles'):
        fields_with_role('colour')


def test_the_report_and_the_seeds_recipe_read_the_same_declarations():
    """What never changes learning is left out of both; the seeds' recipe leaves out more (what each
    student and each seed's script give), never less."""
    runtime = fields_with_role('runtime')
    assert {'device', 'attn_path', 'compile', 'log_every', 'eval_batch_size', 'cache_dir'} <= runtime
    assert runtime | {'out', 'seed'} | RECORD_KEYS == NOT_SETTINGS
    assert NOT_SETTINGS < NOT_RECIPE
    assert {'method', 'teacher', 'data', 'steps', 'time_budget'} <= NOT_RECIPE - NOT_SETTINGS
    assert not NOT_RECIPE & fields_with_role('recipe'), 'a field that shapes learning is in every recipe'
