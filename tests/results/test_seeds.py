"""Table 1 over seeds from evaluation files: means, spreads and the differences said to exceed them."""
from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from advit.app.about import about_markdown
from advit.training.train import TrainConfig, fields_with_role
from advit.results.bundle import bundle_seeds_tables
from advit.core.checkpoint import read_metadata
from advit.core.machine import machine
from advit.training.run_folder import write_config
from advit.measure.verdicts import evaluation_key, headline
from advit.results.seeds import (
    SEED_RECORD,
    SeedError,
    add_seeds,
    collect,
    protocols_table,
    seeds_table,
    seeds_tables,
    students_recipe,
)
from conftest import QUICK_BUNDLE as SHIPPED  # the bundle whose students were trained over seeds


def bundle_with_seeds(folder: Path, top1: dict[str, list[float]]) -> Path:
    """A bundle folder of the shipped students' evaluation files, their test top-1 set to ``top1[method][0]``,
    and seeds 1, 2... with the next values (the rest of each file as shipped)."""
    for method, values in top1.items():
        evaluation = json.loads((SHIPPED / f'{method}.eval.json').read_text())
        for seed, value in enumerate(values):
            target = folder if seed == 0 else folder / 'seeds' / f'seed{seed}'
            target.mkdir(parents=True, exist_ok=True)
            (target / f'{method}.eval.json').write_text(json.dumps(dict(evaluation, top1=value)))
    return folder


def test_means_spreads_and_which_differences_exceed_them(tmp_path):
    top1 = {'vit': [60.0, 61.0, 59.0], 'deit_hard': [64.0, 64.5, 63.5], 'advit_l1': [69.0, 68.0, 70.0],
            'advit_l2': [64.5, 66.0, 63.0]}
    bundle = bundle_with_seeds(tmp_path, top1)
    found = collect(bundle, list(top1))
    assert found['advit_l1'].seeds == [0, 1, 2] and found['advit_l1'].top1 == top1['advit_l1']
    drops = headline(json.loads((SHIPPED / 'advit_l1.eval.json').read_text()))  # the headline protocol's
    assert found['advit_l1'].drops('gradient rollout') == [drops['gradient rollout']['quarter_drop']] * 3
    table = seeds_table(found)
    row = next(line for line in table.splitlines() if line.startswith('| advit_l1 |'))
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    assert cells[1:4] == ['0,1,2', '69.00', f"{statistics.stdev(top1['advit_l1']):.2f}"]
    # 69 - 64 = 5 > 1 + 0.5: exceeds; L2 64.5 - 64 = 0.5 < 1.5 + 0.5: within.
    assert '- `advit_l1` - `deit_hard`: +5.00 points of test top-1, exceeds the spread' in table
    assert '- `advit_l2` - `deit_hard`: +0.50 points of test top-1, within the spread' in table
    about = about_markdown([], bundle)
    assert "The bundle's students over seeds" in about and row in about


def evaluation(top1: float, last: dict[str, float]) -> dict:
    """An evaluation file's contents with the last layer's quarter drop under each protocol in ``last``."""
    def measured(drop: float) -> dict:
        sources = {'layer 1': dict(quarter_drop=0.0), 'layer 2': dict(quarter_drop=drop),
                   'rollout': dict(quarter_drop=1.0), 'gradient rollout': dict(quarter_drop=2.0)}
        return dict(summary=dict(sources=sources))
    return dict(top1=top1, **{evaluation_key(protocol): measured(drop) for protocol, drop in last.items()})


def test_faithfulness_over_seeds_under_every_protocol_and_the_differences_the_goals_ask_about(tmp_path):
    """Each protocol's last-layer drops as mean and spread over the seeds that measured it; advit_relevance
    against deit_hard and advit_l1 per protocol, told from noise by the two spreads added."""
    drops = {'deit_hard': [dict(mean=5.0, drop=2.0, blur=3.0), dict(mean=6.0, drop=2.5, blur=3.5),
                           dict(mean=5.5, drop=3.0)],  # a seed measured before blur existed
             'advit_l1': [dict(mean=4.0, drop=1.0, blur=3.0)] * 3,
             'advit_relevance': [dict(mean=12.0, drop=2.4, blur=9.0), dict(mean=13.0, drop=2.8, blur=10.0),
                                 dict(mean=12.5, drop=2.6, blur=9.5)]}
    for method, seeds in drops.items():
        for seed, last in enumerate(seeds):
            folder = tmp_path if seed == 0 else tmp_path / 'seeds' / f'seed{seed}'
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f'{method}.eval.json').write_text(json.dumps(evaluation(70.0, last)))
    found = collect(tmp_path, list(drops))
    assert found['deit_hard'].drops('last layer', 'blur') == [3.0, 3.5]
    table = protocols_table(found)
    row = table_row(table, 'advit_relevance')
    assert row[1:4] == ['12.50', '0.50', '3'] and row[7:10] == ['2.60', '0.20', '3']
    assert table_row(table, 'deit_hard')[13:16] == ['3.25', '0.35', '2']
    line = next(line for line in table.splitlines() if line.startswith('- `advit_relevance` - `deit_hard`'))
    # mean: 12.5 - 5.5 = 7 > 0.5 + 0.5; drop: 2.6 - 2.5 = 0.1 < 0.2 + 0.5; blur: 9.5 - 3.25 exceeds.
    assert 'mean +7.0 points (exceeds the spread); drop +0.1 points (within the spread); blur +6.2 points ' \
           '(exceeds the spread)' in line
    assert any(line.startswith('- `advit_relevance` - `advit_l1`') for line in table.splitlines())
    assert not any(line.startswith('- `advit_l1` - `advit_l1`') for line in table.splitlines())
    assert 'under every removal protocol' in seeds_tables(tmp_path, list(drops), None)


def table_row(table: str, first: str) -> list[str]:
    return [cell.strip() for cell in next(line for line in table.splitlines()
                                          if line.startswith(f'| {first} |')).strip('|').split('|')]


def test_table2_over_seeds_gives_each_class_of_deit_and_the_best_student_on_validation(tmp_path):
    methods = ('deit_hard', 'advit_l1', 'advit_l2')
    bundle = bundle_with_seeds(tmp_path, {method: [60.0, 61.0, 62.0] for method in methods})
    assert 'Per-class' not in bundle_seeds_tables(bundle, methods)  # no ADViT weights shipped: no best to choose
    val = {}
    for method in ('advit_l1', 'advit_l2'):
        shutil.copyfile(SHIPPED / f'{method}.safetensors', bundle / f'{method}.safetensors')
        val[method] = read_metadata(bundle / f'{method}.safetensors')['val_top1']
    best = max(val, key=val.get)
    per_class = {'deit_hard': {'airplane': [50.0, 52.0, 54.0], 'cat': [40.0, 44.0, 48.0]},
                 best: {'airplane': [60.0, 61.0, 62.0], 'cat': [45.0, 45.0, 45.0]}}
    for method, classes in per_class.items():
        for seed in range(3):
            path = (bundle if seed == 0 else bundle / 'seeds' / f'seed{seed}') / f'{method}.eval.json'
            evaluation = json.loads(path.read_text())
            evaluation['per_class'].update({name: scores[seed] for name, scores in classes.items()})
            path.write_text(json.dumps(evaluation))
    tables = bundle_seeds_tables(bundle, methods)
    assert f'the best ADViT student (`{best}`, chosen on validation)' in tables
    # airplane: 61 - 52 = 9 > 1 + 2 exceeds; cat: 45 - 44 = 1 < 0 + 4 within.
    assert table_row(tables, 'airplane') == ['airplane', '52.00', '2.00', '61.00', '1.00', '9.00', 'yes']
    assert table_row(tables, 'cat') == ['cat', '44.00', '4.00', '45.00', '0.00', '1.00', 'no']
    # Table 1 over seeds and the protocols table (header, rule, three methods each), then Table 2's ten classes.
    assert len([line for line in tables.splitlines() if line.startswith('| ')]) == (2 + 3) * 2 + 2 + 10
    assert '| airplane |' in about_markdown([], bundle)


def test_one_seed_is_not_told_from_noise_and_no_bundle_leaves_the_section_out(tmp_path):
    bundle = bundle_with_seeds(tmp_path, {'deit_hard': [64.0], 'advit_l1': [69.0, 70.0]})
    assert 'the spread is not known' in seeds_table(collect(bundle, ['deit_hard', 'advit_l1']))
    assert 'over seeds' not in about_markdown([], None)


def test_a_seed_folder_of_the_bundles_own_seed_is_refused(tmp_path):
    run = tmp_path / 'seed0'
    (run / 'vit').mkdir(parents=True)
    (run / 'vit' / 'config.json').write_text(json.dumps({'seed': 0}))
    with pytest.raises(SeedError, match="the bundle's own"):
        add_seeds([run], tmp_path / 'bundle', ['vit'])
    (run / 'vit' / 'config.json').write_text(json.dumps({'seed': 3}))
    with pytest.raises(SeedError, match='not finished: vit'):
        add_seeds([run], tmp_path / 'bundle', ['vit'])


def test_the_recipe_is_what_the_students_share_and_students_that_differ_are_refused():
    students = [dict(out=f'runs/x/{method}', method=method, seed=0, lr=2e-3, batch_size=128, versions={'torch': 'x'})
                for method in ('vit', 'advit_l1')]
    recipe = students_recipe(students)
    assert (recipe['lr'], recipe['batch_size']) == (2e-3, 128)
    # The settings a configuration does not name (older files lack newer ones) are their defaults.
    assert set(recipe) == fields_with_role('recipe') and recipe['recipe'] == TrainConfig().recipe
    with pytest.raises(SeedError, match='differ in batch_size, lr'):
        students_recipe([students[0], dict(students[1], lr=1e-3, batch_size=64)])


def test_a_seed_joins_with_its_evaluations_and_how_it_was_trained(tmp_path):
    """``add_seeds`` copies a finished seed's evaluations (no weights) and records its steps, training time and
    machines; the tables say so beside the numbers."""
    methods = ['deit_hard', 'advit_l1']
    run, bundle = tmp_path / 'seed1', bundle_with_seeds(tmp_path / 'bundle', {method: [60.0] for method in methods})
    recipe = json.loads((SHIPPED / 'students.recipe.json').read_text())
    steps = recipe['steps']  # the number the shipped students trained, which advit bundle recorded
    for method, elapsed in zip(methods, (5880.0, 5890.0)):
        student = run / method
        student.mkdir(parents=True)
        (student / 'config.json').write_text(json.dumps(dict(recipe, seed=1, method=method, steps=steps,
                                                             machines=['CPU A, 2 cores', 'CPU B, 2 cores'])))
        (student / 'status.json').write_text(json.dumps({'state': 'finished', 'step': steps, 'elapsed': elapsed}))
        shutil.copyfile(SHIPPED / f'{method}.eval.json', student / 'best.eval.json')
        (student / 'best.safetensors').write_bytes(b'weights stay out')
    # Only a seed trained as the bundle's students were joins: its recorded recipe, and their number of steps.
    with pytest.raises(SeedError, match='records no students\' settings'):
        add_seeds([run], bundle, methods)
    (bundle / 'students.recipe.json').write_text(json.dumps(dict(recipe, lr=recipe['lr'] / 2)))
    with pytest.raises(SeedError, match=re.escape(f"not trained with the bundle's recipe: lr {recipe['lr']:g} "
                                                  f"(the bundle's {recipe['lr'] / 2:g})")):
        add_seeds([run], bundle, methods)
    without_steps = {key: value for key, value in recipe.items() if key != 'steps'}
    (bundle / 'students.recipe.json').write_text(json.dumps(without_steps))
    with pytest.raises(SeedError, match="records no students' settings and steps"):
        add_seeds([run], bundle, methods)
    shutil.copyfile(SHIPPED / 'students.recipe.json', bundle / 'students.recipe.json')
    # A shipped student is the checkpoint chosen on validation, often before the last step: the steps a seed
    # must take are the recorded ones, not its step.
    save_file({'weight': torch.zeros(1)}, str(bundle / 'deit_hard.safetensors'),
              metadata={'advit': json.dumps(dict(read_metadata(SHIPPED / 'deit_hard.safetensors'), step=steps - 241))})
    (run / 'advit_l1' / 'status.json').write_text(json.dumps({'state': 'finished', 'step': 1000, 'elapsed': 1.0}))
    with pytest.raises(SeedError, match=f"trained 1000, {steps} steps, the bundle's students {steps}"):
        add_seeds([run], bundle, methods)
    assert not (bundle / 'seeds' / 'seed1').exists()
    (run / 'advit_l1' / 'status.json').write_text(json.dumps({'state': 'finished', 'step': steps, 'elapsed': 5890.0}))
    written = add_seeds([run], bundle, methods)
    target = bundle / 'seeds' / 'seed1'
    assert sorted(path.name for path in written) == ['advit_l1.eval.json', 'deit_hard.eval.json', SEED_RECORD]
    assert sorted(path.name for path in target.iterdir()) == sorted(path.name for path in written)
    assert json.loads((target / SEED_RECORD).read_text()) == dict(seed=1, steps=steps, trainings=[dict(
        methods=['deit_hard', 'advit_l1'], train_s=5890.0, machines=['CPU A, 2 cores', 'CPU B, 2 cores'])])
    tables = bundle_seeds_tables(bundle, tuple(methods))
    assert f'- seed 1: {steps} steps; `deit_hard`, `advit_l1` together in 98 minutes (evaluations included) on ' \
           'CPU A, 2 cores, then CPU B, 2 cores' in tables
    assert collect(bundle, methods)['advit_l1'].seeds == [0, 1]
    # A student added to the seed later, trained alone, keeps the record of the others' training beside its own.
    later = tmp_path / 'later' / 'seed1'
    shutil.copytree(run / 'advit_l1', later / 'advit_relevance')
    (later / 'advit_relevance' / 'status.json').write_text(json.dumps({'state': 'finished', 'step': steps,
                                                                      'elapsed': 600.0}))
    add_seeds([later], bundle, [*methods, 'advit_relevance'])
    record = json.loads((target / SEED_RECORD).read_text())
    assert [t['methods'] for t in record['trainings']] == [['deit_hard', 'advit_l1'], ['advit_relevance']]
    assert '; `advit_relevance` alone in 10 minutes' in bundle_seeds_tables(bundle, (*methods, 'advit_relevance'))
    # A record written before students were added to seeds names no methods, and still reads.
    (target / SEED_RECORD).write_text(json.dumps(dict(seed=1, steps=steps, train_s=120.0, machines=['CPU A'])))
    assert f'- seed 1: {steps} steps; the students together in 2 minutes' in bundle_seeds_tables(bundle, tuple(methods))
    # Of such a record, students trained again later are said to be: their evaluations are the later training's.
    (target / SEED_RECORD).write_text(json.dumps(dict(seed=1, steps=steps, trainings=[
        dict(methods=None, train_s=120.0, machines=['CPU A']),
        dict(methods=['deit_hard', 'advit_l1', 'advit_relevance'], train_s=600.0, machines=['CPU B'])])))
    assert (f'- seed 1: {steps} steps; `vit`, `advit_l2`, `advit_kl`, `advit_kl_paper` (trained together with '
            '`deit_hard`, `advit_l1`, whose evaluations are of their later training) in 2 minutes (evaluations '
            'included) on CPU A; `deit_hard`, `advit_l1`, `advit_relevance` together in 10 minutes') \
        in bundle_seeds_tables(bundle, tuple(methods))


def test_a_runs_config_names_each_machine_that_trained_it_over_resumes(tmp_path):
    write_config(tmp_path, {'lr': 1e-3}, 1, ['vit'])
    write_config(tmp_path, {'lr': 1e-3}, 1, ['vit'])  # resumed on the same machine: named once
    assert json.loads((tmp_path / 'config.json').read_text())['machines'] == [machine()]
    (tmp_path / 'config.json').write_text(json.dumps({'lr': 1e-3, 'machines': ['an earlier machine']}))
    write_config(tmp_path, {'lr': 1e-3}, 1, ['vit'])  # resumed elsewhere
    assert json.loads((tmp_path / 'config.json').read_text())['machines'] == ['an earlier machine', machine()]
