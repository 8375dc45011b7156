"""The checkpoint bundle: scripts/train_bundle.sh end to end at tiny scale on the real CIFAR-10 archive,
the export (fp16 weights, evaluations, model card, size limit) and the app's catalog loading the result."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from advit.about import PAPER_TEACHER_TOP1, PAPER_TOP1
from advit.augment import BatchTransform
from advit.bundle import STUDENTS, TEACHER
from advit.catalog import ModelCache, discover
from advit.checkpoint import read_metadata
from advit.cli import main
from advit.presets import preset
from advit.train import TrainConfig, validate
from conftest import REPO, tiny_flags

NAMES = (TEACHER, *STUDENTS)
SCRIPT = REPO / 'scripts' / 'train_bundle.sh'


def run_script(runs: Path, out: Path, data: Path, **settings: str) -> tuple[subprocess.CompletedProcess, float]:
    """The script at tiny scale: two steps of 64 images per run (the first at learning rate 0), tiny ViTs,
    evaluation on 64 test images; ``settings`` are more of its environment variables."""
    extra = ['--subset', '128', '--test-subset', '64', '--batch-size', '64', '--steps', '2', '--device', 'cpu',
             '--log-every', '1', *tiny_flags()]
    env = dict(os.environ, RUNS=str(runs), DATA=str(data), PYTHON=sys.executable, EXTRA=' '.join(extra), **settings)
    started = time.time()
    result = subprocess.run(['bash', str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, time.time() - started


@pytest.fixture(scope='module')
def bundle(tmp_path_factory, cifar_archive, cifar) -> tuple[Path, Path, str]:
    """(runs, bundle folder, script output) of one tiny run of the whole script (``cifar`` warms the cache)."""
    folder = tmp_path_factory.mktemp('bundle')
    result, seconds = run_script(folder / 'runs', folder / 'checkpoints', cifar_archive)
    print(f'tiny train_bundle.sh: {seconds:.1f}s wall')
    return folder / 'runs', folder / 'checkpoints', result.stdout


def top1(path: Path) -> float:
    return json.loads(path.read_text())['top1']


def best_attention_run(runs: Path) -> str:
    """The ADViT run of highest top-1 (the first in the script's order on a tie)."""
    attention = [name for name in NAMES if name.startswith('advit_')]
    return max(attention, key=lambda name: top1(runs / name / 'best.eval.json'))


def test_the_script_trains_every_run_in_order_and_exports_what_fits(bundle):
    runs, out, stdout = bundle
    commands = [line.split('\t') for line in (runs / 'commands.tsv').read_text().splitlines()]
    assert [name for name, _, _ in commands] == list(NAMES)  # teacher first, students by priority
    assert all(float(wall) > 0 for _, wall, _ in commands) and 'all done in' in stdout
    for name, _, command in commands:
        assert f'--out {runs / name}' in command and (runs / name / 'train.log').is_file()
        assert f'run folder: {runs / name}' in (runs / f'{name}.log').read_text()
        assert ('--teacher' in command) == (name not in (TEACHER, 'vit'))

    shipped = {TEACHER, 'vit', 'deit_hard', best_attention_run(runs)}
    assert {path.stem for path in out.glob('*.safetensors')} == shipped
    for name in NAMES:
        metrics = json.loads((out / f'{name}.eval.json').read_text())
        saved = np.load(out / f'{name}.predictions.npz')
        assert metrics['count'] == len(saved['labels']) == 64
        assert metrics['top1'] == pytest.approx(float((saved['preds'] == saved['labels']).mean() * 100))
        if name in shipped:  # evaluated as shipped: fp16 weights, the accuracy in their metadata
            with safe_open(str(out / f'{name}.safetensors'), framework='pt') as f:
                assert f.get_slice('head.weight').get_dtype() == 'F16'
            assert read_metadata(out / f'{name}.safetensors')['test_top1'] == metrics['top1']
            assert metrics['checkpoint'] == str(out / f'{name}.safetensors')
        else:  # the run's own evaluation
            assert metrics == json.loads((runs / name / 'best.eval.json').read_text())


def test_the_app_catalog_finds_and_loads_the_bundle(bundle, cifar):
    _, out, _ = bundle
    entries = discover([out], None)
    checkpoints = [entry for entry in entries if entry.key.endswith('.safetensors')]
    assert {Path(entry.key).stem for entry in checkpoints} == {path.stem for path in out.glob('*.safetensors')}
    assert all(entry.usable and entry.is_vit for entry in checkpoints), [e.problem for e in checkpoints]
    cache = ModelCache()
    images = cifar['test'].images[:4]
    for entry in checkpoints:
        model, meta = cache.get(entry.key)
        transform = BatchTransform('cifar32', meta['image_size'], meta['mean'], meta['std'], seed=0)
        with torch.no_grad():
            logits = model(transform.eval(images))
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
        assert next(model.parameters()).dtype == torch.float32  # fp16 on disk, float32 to run


def test_the_model_card_has_both_tables_beside_the_papers(bundle):
    runs, out, _ = bundle
    card = (out / 'README.md').read_text()
    table1 = card.split('## Table 1')[1].split('## Table 2')[0]
    for name in NAMES:
        row = next(line for line in table1.splitlines() if line.startswith(f'| {name} |'))
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        assert cells[4] == f'{top1(out / f"{name}.eval.json"):.2f}'
        paper = PAPER_TEACHER_TOP1 if name == TEACHER else PAPER_TOP1['ViT-Tiny'].get(name)
        assert cells[5] == (f'{paper:.2f}' if paper is not None else '–')  # advit_kl is not in the paper
        assert cells[9] == ('yes' if (out / f'{name}.safetensors').is_file() else 'no (evaluation only)')
    best = best_attention_run(runs)
    table2 = card.split('## Table 2')[1].split('## How it was made')[0]
    assert f'| class | deit_hard (%) | {best} (%) | difference |' in table2
    a, b = (json.loads((out / f'{name}.eval.json').read_text())['per_class'] for name in ('deit_hard', best))
    for name in a:
        row = next(line for line in table2.splitlines() if line.startswith(f'| {name} |'))
        values = [cell.strip() for cell in row.strip('|').split('|')[1:]]
        expected = [a[name], b[name], None if a[name] is None or b[name] is None else b[name] - a[name]]
        assert values == [f'{v:.2f}' if v is not None else '–' for v in expected]
    assert '224x224' in card and 'from scratch at 32x32' in card
    assert "The students' settings (`config.json`) are the same apart from the method and teacher" in card
    assert f'Made on **cpu** with torch {torch.__version__}' in card
    for name, wall, command in (line.split('\t') for line in (runs / 'commands.tsv').read_text().splitlines()):
        assert f'| {name} | {wall} | `{command.strip()}` |' in card


def test_an_export_over_the_size_limit_is_refused_without_a_card(bundle, tmp_path, capsys):
    runs, out, _ = bundle
    size = sum(path.stat().st_size for path in out.iterdir())
    assert size < 80e6
    assert main(['bundle', str(runs), '--out', str(tmp_path), '--max-mb', str(size / 2e6)]) == 2
    err = capsys.readouterr().err
    assert 'over its' in err and 'teacher.safetensors' in err
    assert not (tmp_path / 'README.md').exists()


def test_a_second_run_keeps_finished_runs_and_drops_weights_no_longer_shipped(bundle, tmp_path, cifar_archive):
    runs, out, _ = bundle
    shutil.copytree(runs, tmp_path / 'runs')
    shutil.copytree(out, tmp_path / 'checkpoints')
    unshipped = next(name for name in NAMES if not (out / f'{name}.safetensors').is_file())
    shutil.copyfile(out / 'vit.safetensors', tmp_path / 'checkpoints' / f'{unshipped}.safetensors')  # stale
    result, _ = run_script(tmp_path / 'runs', tmp_path / 'checkpoints', cifar_archive)
    assert result.stdout.count('finished earlier, kept') == len(NAMES)
    assert (tmp_path / 'runs' / 'commands.tsv').read_text() == (runs / 'commands.tsv').read_text()
    assert not (tmp_path / 'checkpoints' / f'{unshipped}.safetensors').exists()
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == sorted(p.name for p in out.iterdir())


def test_the_bundle_presets_share_one_recipe_and_are_valid(cifar_archive):
    teacher, student = preset('bundle-teacher'), preset('bundle-student')
    validate(TrainConfig.from_dict(dict(teacher, data=str(cifar_archive))))
    validate(TrainConfig.from_dict(dict(student, method='advit_l1', teacher='t.safetensors', data=str(cifar_archive))))
    assert (teacher['model'], student['model']) == ('vit_small_patch4_32', 'vit_tiny_patch4_32')
    shared = ('recipe', 'mixup', 'cutmix', 'mix_prob', 'label_smoothing', 'batch_size', 'lr', 'weight_decay')
    assert all(teacher.get(key) == student.get(key) for key in shared)
    assert student['recipe'] == 'cifar32_strong' and student['mixup'] > 0 and student['cutmix'] > 0
    assert 'method' not in student  # the script gives each student its method


def test_unfinished_runs_are_left_out_the_best_advit_is_shipped_unequal_settings_are_said(bundle, tmp_path):
    from advit.bundle import export_bundle
    runs, _, _ = bundle
    shutil.copytree(runs, tmp_path / 'runs')
    status = tmp_path / 'runs' / 'advit_kl_paper' / 'status.json'
    status.write_text(json.dumps(dict(json.loads(status.read_text()), state='running')))  # as if cut short
    config = tmp_path / 'runs' / 'advit_l1' / 'config.json'
    config.write_text(json.dumps(dict(json.loads(config.read_text()), lr=0.5)))
    best = next(name for name in ('advit_l2', 'advit_kl') if name != best_attention_run(runs))
    evaluation = tmp_path / 'runs' / best / 'best.eval.json'
    evaluation.write_text(json.dumps(dict(json.loads(evaluation.read_text()), top1=99.0)))  # now the best ADViT
    export_bundle(tmp_path / 'runs', tmp_path / 'out', device='cpu')
    assert not list((tmp_path / 'out').glob('advit_kl_paper.*'))
    assert {path.stem for path in (tmp_path / 'out').glob('*.safetensors')} == {TEACHER, 'vit', 'deit_hard', best}
    assert len(list((tmp_path / 'out').glob('*.eval.json'))) == len(NAMES) - 1
    card = (tmp_path / 'out' / 'README.md').read_text()
    table1 = card.split('## Table 1')[1].split('## Table 2')[0]
    assert 'Not finished, so not in the bundle: `advit_kl_paper`.' in table1 and '| advit_kl_paper |' not in table1
    assert "The students' settings differ in lr: they are not compared like for like." in card
    assert f'| class | deit_hard (%) | {best} (%) | difference |' in card


def test_students_train_in_parallel_groups_to_the_same_bundle(tmp_path, cifar_archive, cifar):
    """PARALLEL=3: the three students of a group are all launched before any ends, the next group
    after all three end; each keeps its steps, and the export is whole."""
    runs, out = tmp_path / 'runs', tmp_path / 'checkpoints'
    result, _ = run_script(runs, out, cifar_archive, PARALLEL='3')
    events = [(line.split(':')[0][3:], 'end' if line.endswith('s wall') else 'start')
              for line in result.stdout.splitlines() if line.startswith('== ') and 'all done' not in line]
    position = {event: index for index, event in enumerate(events)}
    first, second = STUDENTS[:3], STUDENTS[3:]
    assert max(position[name, 'start'] for name in first) < min(position[name, 'end'] for name in first)
    assert max(position[name, 'end'] for name in first) < min(position[name, 'start'] for name in second)
    assert max(position[name, 'start'] for name in second) < min(position[name, 'end'] for name in second)
    names = [line.split('\t')[0] for line in (runs / 'commands.tsv').read_text().splitlines()]
    assert names[0] == TEACHER and sorted(names[1:]) == sorted(STUDENTS)
    for name in STUDENTS:
        status = json.loads((runs / name / 'status.json').read_text())
        assert status['state'] == 'finished' and status['step'] == 2
    assert (out / 'README.md').is_file() and len(list(out.glob('*.eval.json'))) == len(NAMES)
