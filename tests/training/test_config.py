"""The run configuration's fields each declare their role once; every reader of config.json asks that."""
from __future__ import annotations

from dataclasses import fields, replace

import pytest

from advit.results.bundle import export_bundle  # noqa: F401  (the bundle reads roles too: it must import)
from advit.results.report import NOT_SETTINGS
from advit.training.run_folder import RECORD_KEYS
from advit.results.seeds import NOT_RECIPE
from advit.training.train import BOUNDS, ROLES, TrainConfig, TrainingError, check_setting, fields_with_role, setting, validate


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


def test_every_number_of_a_run_declares_its_bounds_and_every_checker_holds_them():
    """One declaration per number (``setting(bounds=...)``): the command line's and the job server's ``validate``
    and the Train form's ``check_setting`` refuse the same values in the same words."""
    numbers = {f.name for f in fields(TrainConfig) if str(f.type).split(' |')[0] in ('int', 'float')}
    assert numbers == set(BOUNDS)
    base = TrainConfig(data='cifar10', steps=10)
    validate(base)  # every default is within its bounds
    for name, (low, high) in BOUNDS.items():
        whole = str(next(f.type for f in fields(TrainConfig) if f.name == name)).startswith('int')
        for outside in (low - 1, high * 2 + 1):
            outside = int(outside) if whole else float(outside)
            with pytest.raises(TrainingError, match=f'^{name} must be between') as refused:
                validate(replace(base, **{name: outside}))
            with pytest.raises(TrainingError) as asked:
                check_setting(name, str(outside))  # a client's numeric string: read, then held to the same bounds
            assert str(asked.value) == str(refused.value)
        assert check_setting(name, low) == low and check_setting(name, high) == high
        with pytest.raises(TrainingError, match=f"^{name} must be a number, got the text '"):
            validate(replace(base, **{name: str(high)}))  # a file's number is a number, not text
        if whole:
            with pytest.raises(TrainingError, match=f'^{name} must be a whole number'):
                validate(replace(base, **{name: float(low)}))
