"""The checkpoint bundle: scripts/train_bundle.sh end to end at tiny scale on the real CIFAR-10 archive,
the export (fp16 weights, evaluations, model card, size limit) and the app's catalog loading the result."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from advit.results.paper import PAPER_TEACHER_TOP1, PAPER_TOP1
from advit.core.augment import BatchTransform
from advit.results.bundle import SEEDS_HEADING, STUDENTS, TEACHER
from advit.core.machine import machine
from advit.app.catalog import ModelCache, discover
from advit.core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from advit.cli import main
from advit.measure.verdicts import HEADLINE_PROTOCOL, evaluation_key, headline
from advit.results.seeds import NOT_RECIPE
from advit.training.run_folder import read_sessions
from advit.training.train import TrainConfig
from conftest import QUICK_BUNDLE, REPO, tiny_flags

HEADLINE = evaluation_key(HEADLINE_PROTOCOL)  # where an evaluation file keeps the headline protocol's curves
pytestmark = pytest.mark.slow  # runs scripts/train_bundle.sh and train_seeds.sh: `make test`, not `make check`

NAMES = (TEACHER, *STUDENTS)
SCRIPT = REPO / 'scripts' / 'train_bundle.sh'


def run_script(runs: Path, out: Path, data: Path, **settings: str) -> tuple[subprocess.CompletedProcess, float]:
    """The script at tiny scale: two steps of 64 images per run (the first at learning rate 0), tiny ViTs,
    evaluation on 64 test images; ``settings`` are more of its environment variables."""
    extra = ['--subset', '128', '--val-size', '64', '--test-subset', '64', '--batch-size', '64', '--steps', '2',
             '--device', 'cpu', '--log-every', '1', *tiny_flags()]
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
    """The ADViT run of highest validation top-1 (the first in the script's order on a tie)."""
    attention = [name for name in NAMES if name.startswith('advit_')]
    return max(attention, key=lambda name: read_metadata(runs / name / 'best.safetensors')['val_top1'])


def test_the_script_trains_every_run_in_order_and_exports_what_fits(bundle):
    runs, out, stdout = bundle
    commands = [line.split('\t') for line in (runs / 'commands.tsv').read_text().splitlines()]
    assert [name for name, _, _ in commands] == ['teacher', 'students']  # the students in one process
    assert all(float(wall) > 0 for _, wall, _ in commands) and 'all done in' in stdout
    (_, _, teacher_command), (_, _, students_command) = commands
    assert f'--out {runs / TEACHER}' in teacher_command and '--teacher' not in teacher_command
    arguments = shlex.split(students_command)  # as the shell runs it (printf %q escapes the commas)
    assert arguments[arguments.index('--methods') + 1] == ','.join(STUDENTS)
    assert arguments[arguments.index('--teacher') + 1] == str(runs / TEACHER / 'best.safetensors')
    for name in NAMES:
        log = (runs / f'{"teacher" if name == TEACHER else "students"}.log').read_text()
        assert f'run folder: {runs / name}' in log and (runs / name / 'train.log').is_file()
    groups = {json.dumps(json.loads((runs / name / 'config.json').read_text())['group']) for name in STUDENTS}
    assert groups == {json.dumps(list(STUDENTS))}
    for name in STUDENTS:  # each student's attention gap to the teacher, at its evaluation
        assert (out / f'{name}.probe.npz').read_bytes() == (runs / name / 'attention_probe.npz').read_bytes()

    shipped = set(NAMES)  # small models: every run's weights fit
    assert {path.stem for path in out.glob('*.safetensors')} == shipped
    for name in NAMES:
        metrics = json.loads((out / f'{name}.eval.json').read_text())
        saved = np.load(out / f'{name}.predictions.npz')
        assert metrics['count'] == len(saved['labels']) == 64
        assert metrics['top1'] == pytest.approx(float((saved['preds'] == saved['labels']).mean() * 100))
        # Evaluated as shipped: the fp16 file's own evaluation, the one record of its test figures.
        with safe_open(str(out / f'{name}.safetensors'), framework='pt') as f:
            assert f.get_slice('head.weight').get_dtype() == 'F16'
        assert 'test_top1' not in read_metadata(out / f'{name}.safetensors')
        assert metrics['checkpoint'] == str(out / f'{name}.safetensors')
    # A student names its teacher as shipped beside it, not by the run folder it was trained from (nor vit none).
    teachers = {read_metadata(out / f'{name}.safetensors').get('teacher') for name in STUDENTS}
    assert teachers == {None, 'teacher.safetensors'}
    assert read_metadata(out / 'vit.safetensors').get('teacher') is None


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
    lines = [line for line in table1.splitlines() if line.startswith('|')]
    titles = [cell.strip() for cell in lines[0].strip('|').split('|')]
    for name in NAMES:
        row = next(line for line in lines if line.startswith(f'| {name} |'))
        cells = dict(zip(titles, (cell.strip() for cell in row.strip('|').split('|'))))
        assert cells['val top-1 (%)'] == f'{read_metadata(runs / name / "best.safetensors")["val_top1"]:.2f}'
        assert cells['test top-1 (%)'] == f'{top1(out / f"{name}.eval.json"):.2f}'
        drops = headline(json.loads((out / f'{name}.eval.json').read_text()))
        for source in ('last layer', 'rollout', 'gradient rollout'):  # the fixture measures faithfulness
            assert cells[f'faithfulness, {source} (pts)'] == f"{drops[source]['quarter_drop']:.2f}"
        paper = PAPER_TEACHER_TOP1 if name == TEACHER else PAPER_TOP1['ViT-Tiny'].get(name)
        assert cells['paper top-1 (%)'] == (f'{paper:.2f}' if paper is not None else '–')  # advit_kl is not in it
        shipped = (out / f'{name}.safetensors').is_file()
        assert cells['weights shipped'] == ('yes' if shipped else 'no (evaluation only)')
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
    assert 'trained together in one process on the very same batches' in card
    # Where the runs trained, from their config.json (every run here: this machine, once).
    assert f'Trained on **{machine()}** with torch {torch.__version__}' in card and 'cores' in machine()
    assert '64 training images are held out' in card
    goals = card.split('Goals set for this bundle (recipe `bundle`), on the test set:')[1].split('\n\n')[1]
    teacher_top1 = top1(out / 'teacher.eval.json')
    assert f"- teacher test top-1 at least 85%: {teacher_top1:.2f}%, " \
           f"**{'reached' if teacher_top1 >= 85 else 'not reached'}**" in goals
    teacher_drops = headline(json.loads((out / 'teacher.eval.json').read_text()))
    faithful = [source for source, entry in teacher_drops.items() if entry['quarter_drop'] >= 10]
    assert f"last layer {teacher_drops['last layer']['quarter_drop']:+.1f}" in goals
    assert (f"**reached** by {', '.join(faithful)}" if faithful else '**not reached** by any map') in goals
    ours, deit = (headline(json.loads((out / f'{name}.eval.json').read_text()))['gradient rollout']['quarter_drop']
                  for name in (best, 'deit_hard'))
    compared = goals.split('gradient rollout: ')[-1]
    assert compared.startswith(f'`{best}` {ours:+.1f}') and \
        ('(as faithful or more)' if ours >= deit else '(**less faithful**)') in compared
    for name, wall, command in (line.split('\t') for line in (runs / 'commands.tsv').read_text().splitlines()):
        assert f'| {name} | {wall} | `{command.strip()}` |' in card


def test_advit_faithfulness_measures_shipped_files_and_brings_the_card_up_to_date(bundle, tmp_path, cifar_archive,
                                                                                    capsys):
    """`advit faithfulness CKPTS --card BUNDLE` on a bundle measured before: each evaluation file gets the curves
    of the images asked for (every other key kept), Table 1's faithfulness columns and the faithfulness
    section follow them, and the rest of the card is kept as written."""
    _, out, _ = bundle
    shipped = tmp_path / 'checkpoints'
    shutil.copytree(out, shipped)
    before = {path.name: json.loads(path.read_text()) for path in shipped.glob('*.eval.json')}
    card = (shipped / 'README.md').read_text()
    checkpoints = sorted(str(path) for path in shipped.glob('*.safetensors'))
    assert main(['faithfulness', *checkpoints, '--data', str(cifar_archive), '--images', '32', '--card',
                 str(shipped)]) == 0
    printed = capsys.readouterr().out
    assert printed.count('quarter drop (points)') == len(checkpoints) and 'gradient rollout' in printed
    for name, old in before.items():
        new = json.loads((shipped / name).read_text())
        assert new[HEADLINE]['count'] == 32 and new[HEADLINE]['sources'][-1] == 'gradient rollout'
        assert {key: value for key, value in new.items() if key != HEADLINE} == \
            {key: value for key, value in old.items() if key != HEADLINE}
    refreshed = (shipped / 'README.md').read_text()
    assert refreshed.split('## Table 1')[0] == card.split('## Table 1')[0]
    assert refreshed.split('## Table 2')[1] == card.split('## Table 2')[1]
    teacher = headline(json.loads((shipped / 'teacher.eval.json').read_text()))
    row = next(line for line in refreshed.split('## Table 1')[1].splitlines() if line.startswith('| teacher |'))
    assert f"| {teacher['gradient rollout']['quarter_drop']:.2f} |" in row
    assert 'gradient rollout (pts)' in refreshed.split('## Faithfulness of the maps')[1]

    # Another protocol goes beside the headline one, which it leaves as it was.
    headline_curves = {name: json.loads((shipped / name).read_text())[HEADLINE] for name in before}
    assert main(['faithfulness', checkpoints[0], '--data', str(cifar_archive), '--images', '16', '--protocol',
                 'mean']) == 0
    assert 'mean removal' in capsys.readouterr().out
    measured = json.loads(Path(checkpoints[0]).with_suffix('.eval.json').read_text())
    assert measured['faithfulness']['protocol'] == 'mean' and measured['faithfulness']['count'] == 16
    assert measured[HEADLINE] == headline_curves[Path(checkpoints[0]).with_suffix('.eval.json').name]
    with pytest.raises(SystemExit) as refused:
        main(['faithfulness', checkpoints[0], '--protocol', 'grey'])
    assert refused.value.code == 2 and "invalid choice: 'grey'" in capsys.readouterr().err


def test_an_export_over_the_size_limit_is_refused_without_a_card(bundle, tmp_path, capsys):
    runs, out, _ = bundle
    size = sum(path.stat().st_size for path in out.iterdir())
    assert size < 80e6
    assert main(['bundle', str(runs), '--out', str(tmp_path), '--max-mb', str(size / 2e6)]) == 2
    err = capsys.readouterr().err
    assert 'over its' in err and 'teacher.safetensors' in err
    assert not (tmp_path / 'README.md').exists()


def test_a_second_run_keeps_finished_runs(bundle, tmp_path, cifar_archive):
    runs, out, _ = bundle
    shutil.copytree(runs, tmp_path / 'runs')
    shutil.copytree(out, tmp_path / 'checkpoints')
    result, _ = run_script(tmp_path / 'runs', tmp_path / 'checkpoints', cifar_archive)
    assert result.stdout.count('finished earlier, kept') == 2  # the teacher and the students
    assert (tmp_path / 'runs' / 'commands.tsv').read_text() == (runs / 'commands.tsv').read_text()
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == sorted(p.name for p in out.iterdir())


def test_weights_that_do_not_all_fit_ship_the_most_wanted_and_drop_the_rest(bundle, tmp_path):
    from advit.results.bundle import SHIP_ALL_SHARE, _fp16_bytes, export_bundle
    runs, out, _ = bundle
    shutil.copytree(out, tmp_path / 'checkpoints')  # an earlier export that shipped every run
    everything = sum(_fp16_bytes(runs / name / 'best.safetensors') for name in NAMES)
    # Just under the share that ships every run, with room for the evaluations, probes, recipe and card.
    export_bundle(runs, tmp_path / 'checkpoints', max_mb=0.99 * everything / SHIP_ALL_SHARE / 1e6, device='cpu')
    shipped = {TEACHER, 'vit', 'deit_hard', best_attention_run(runs)}
    assert {path.stem for path in (tmp_path / 'checkpoints').glob('*.safetensors')} == shipped
    for name in set(NAMES) - shipped:  # the run's own evaluation instead of the stale weights
        evaluation = tmp_path / 'checkpoints' / f'{name}.eval.json'
        assert json.loads(evaluation.read_text()) == json.loads((runs / name / 'best.eval.json').read_text())


def test_a_bundle_that_replaces_another_keeps_it_whole_and_says_so_on_its_card(bundle, tmp_path):
    """`advit bundle --earlier`: the shipped (quick) bundle kept whole in the new one's EARLIER/, its seeds the card's
    evidence over seeds and its figures the card's history, all within the size limit."""
    from advit.results.bundle import CARD, EARLIER
    runs, _, _ = bundle
    out = tmp_path / 'long'
    assert main(['bundle', str(runs), '--out', str(out), '--device', 'cpu', '--earlier', str(QUICK_BUNDLE)]) == 0
    assert (out / EARLIER / CARD).read_bytes() == (QUICK_BUNDLE / CARD).read_bytes()
    card = (out / CARD).read_text()
    assert '## History: the bundle before this one' in card and f'kept in `{EARLIER}/`' in card
    assert card.index(SEEDS_HEADING) < card.index('## History')
    size = sum(path.stat().st_size for path in out.rglob('*') if path.is_file())
    assert size > sum(path.stat().st_size for path in QUICK_BUNDLE.rglob('*') if path.is_file())
    same = tmp_path / 'same'
    shutil.copytree(out / EARLIER, same)
    assert main(['bundle', str(runs), '--out', str(same), '--device', 'cpu', '--earlier', str(same)]) == 2
    assert sorted(same.rglob('*')) == [same / path.relative_to(out / EARLIER) for path in sorted((out / EARLIER).rglob('*'))]


def test_unfinished_runs_are_left_out_the_best_advit_is_shipped_unequal_settings_are_said(bundle, tmp_path):
    from advit.results.bundle import export_bundle
    runs, _, _ = bundle
    shutil.copytree(runs, tmp_path / 'runs')
    status = tmp_path / 'runs' / 'advit_kl_paper' / 'status.json'
    status.write_text(json.dumps(dict(json.loads(status.read_text()), state='running')))  # as if cut short
    config = tmp_path / 'runs' / 'advit_l1' / 'config.json'
    config.write_text(json.dumps(dict(json.loads(config.read_text()), lr=0.5)))
    best = next(name for name in ('advit_l2', 'advit_kl') if name != best_attention_run(runs))
    checkpoint = tmp_path / 'runs' / best / 'best.safetensors'
    loaded = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, loaded.model, dict(loaded.meta, val_top1=99.0))  # now the best ADViT, on validation
    evaluation = tmp_path / 'runs' / best_attention_run(runs) / 'best.eval.json'
    evaluation.write_text(json.dumps(dict(json.loads(evaluation.read_text()), top1=100.0)))  # the test set: ignored
    export_bundle(tmp_path / 'runs', tmp_path / 'out', device='cpu')
    assert not list((tmp_path / 'out').glob('advit_kl_paper.*'))
    assert {path.stem for path in (tmp_path / 'out').glob('*.safetensors')} == set(NAMES) - {'advit_kl_paper'}
    assert len(list((tmp_path / 'out').glob('*.eval.json'))) == len(NAMES) - 1
    card = (tmp_path / 'out' / 'README.md').read_text()
    table1 = card.split('## Table 1')[1].split('## Table 2')[0]
    assert 'Not finished, so not in the bundle: `advit_kl_paper`.' in table1 and '| advit_kl_paper |' not in table1
    assert "The students' settings differ in lr: they are not compared like for like." in card
    assert not (tmp_path / 'out' / 'students.recipe.json').exists() and 'students.recipe.json' not in card
    assert f'| class | deit_hard (%) | {best} (%) | difference |' in card


def test_the_sweep_records_each_model_at_its_budget(tmp_path, cifar_archive, cifar):
    """scripts/cpu_sweep.py at tiny scale: a line per entry with its settings, speed and both top-1s,
    which the model card then lists."""
    entries = [f'vit_mini4_convstem_32:steps=2,subset=128,val_size=64,test_subset=64,batch_size=64,{tiny}'
               for tiny in ('model_args={"depth":1}', 'model_args={"depth":2}')]
    result = subprocess.run([sys.executable, 'scripts/cpu_sweep.py', '--seconds', '60', '--out', str(tmp_path),
                             '--data', str(cifar_archive), *entries], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / 'sweep.jsonl').read_text().splitlines()]
    assert [r['settings']['model_args'] for r in records] == [{'depth': 1}, {'depth': 2}]
    assert all(r['seconds'] == 60 and r['images_per_s'] > 0 and 0 <= r['test_top1'] <= 100 for r in records)
    assert [sorted(r['val_faithfulness']) for r in records] == [['gradient rollout', 'layer 1', 'rollout'],
                                                                ['gradient rollout', 'layer 1', 'layer 2', 'rollout']]
    from advit.results.bundle import _sweep_table
    table = _sweep_table(records)
    assert table.count('| vit_mini4_convstem_32 |') == 2 and 'val quarter drop, last layer (pts)' in table
    last = records[1]['val_faithfulness']['layer 2']
    assert f"| {records[1]['best_val_top1']:.2f} | {last:.2f} |" in table  # the last layer's drop beside top-1
    # Each run's length as it was counted: these two in steps, their unused 60-second budget not shown as one.
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in table.splitlines()[2:]]
    titles = [cell.strip() for cell in table.splitlines()[0].strip('|').split('|')]
    assert [row[titles.index('budget')] for row in rows] == ['2 steps', '2 steps']
    assert [row[titles.index('wall (s)')] for row in rows] == [f"{r['wall_s']:.2f}" for r in records]
    assert all('steps=' not in row[titles.index('settings')] for row in rows)


def test_the_sweep_section_counts_each_run_as_it_ran_and_cites_the_reasoning_beside_it():
    """The long bundle's probes ran by steps, the quick bundle's sweep mostly by wall time: each row says which."""
    from advit.results.bundle import _sweep_section
    for name, notes in (('long-bundle-probes-cpu', 'benchmarks/results/long-bundle-probes-cpu.md'),
                        ('bundle-sweep-cpu', None)):
        records = [json.loads(line) for line in (REPO / 'benchmarks' / 'results' / f'{name}.jsonl').read_text().splitlines()]
        section = _sweep_section(records, notes)
        lines = [line for line in section.splitlines() if line.startswith('|')]
        titles = [cell.strip() for cell in lines[0].strip('|').split('|')]
        budgets = [[cell.strip() for cell in line.strip('|').split('|')][titles.index('budget')] for line in lines[2:]]
        assert budgets == [f"{r['settings']['steps']} steps" if r['settings'].get('steps') else f"{r['seconds']:g} s"
                           for r in records]
        assert (f'`{notes}`' in section) if notes else 'and why' not in section
    assert (REPO / 'benchmarks' / 'results' / 'long-bundle-probes-cpu.md').is_file()


def test_further_seeds_train_the_students_the_bundle_has_and_no_others(bundle, tmp_path, cifar_archive):
    """STUDENTS unset: a seed trains the students the bundle has evaluated (the long bundle has five of the seven
    methods), not every method the project knows."""
    _, out, _ = bundle
    shipped = tmp_path / 'checkpoints'
    shutil.copytree(out, shipped)
    kept = ['vit', 'advit_l1']
    for name in set(STUDENTS) - set(kept):
        for path in shipped.glob(f'{name}.*'):
            path.unlink()
    runs = tmp_path / 'seeds'
    extra = ['--subset', '128', '--val-size', '64', '--test-subset', '64', '--batch-size', '64',
             '--device', 'cpu', '--log-every', '1', *tiny_flags()]
    env = {key: value for key, value in os.environ.items() if key != 'STUDENTS'}
    env.update(OUT=str(shipped), RUNS=str(runs), DATA=str(cifar_archive), PYTHON=sys.executable, EXTRA=' '.join(extra))
    result = subprocess.run(['bash', str(REPO / 'scripts' / 'train_seeds.sh'), '1'], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(path.name for path in (runs / 'seed1').iterdir() if path.is_dir()) == sorted(kept)
    assert sorted(p.name for p in (shipped / 'seeds' / 'seed1').iterdir()) == sorted(
        [f'{name}.eval.json' for name in kept] + ['seed.json'])


def test_a_method_the_bundle_lacks_joins_it_at_its_own_seed_and_its_tables_at_further_seeds(bundle, tmp_path,
                                                                                            cifar_archive):
    """STUDENTS=advit_relevance scripts/train_seeds.sh 0 1 on a bundle without that student (as the shipped one was
    before the method existed): seed 0 trained with the bundle's recipe and steps on its teacher and shipped in it,
    weights too, evaluated as shipped, with a Table 1 row saying how it was trained; seed 1 joins the tables over
    seeds; a seed 0 of a student the bundle has, refused before any training."""
    _, out, _ = bundle
    shipped = tmp_path / 'checkpoints'
    shutil.copytree(out, shipped)
    for path in shipped.glob('advit_relevance.*'):
        path.unlink()
    card = (shipped / 'README.md').read_text()
    (shipped / 'README.md').write_text('\n'.join(line for line in card.split('\n') if not line.startswith('| advit_relevance |')))
    runs = tmp_path / 'seeds'
    extra = ['--subset', '128', '--val-size', '64', '--test-subset', '64', '--batch-size', '64',
             '--device', 'cpu', '--log-every', '1', *tiny_flags()]
    env = dict(os.environ, OUT=str(shipped), RUNS=str(runs), DATA=str(cifar_archive), PYTHON=sys.executable,
               EXTRA=' '.join(extra), STUDENTS='advit_relevance')
    script = REPO / 'scripts' / 'train_seeds.sh'
    refused = subprocess.run(['bash', str(script), '0'], env=dict(env, STUDENTS='vit advit_relevance'),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "seed 0 is the bundle's own and it has vit" in refused.stderr
    result = subprocess.run(['bash', str(script), '0', '1'], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'advit_relevance shipped in the bundle' in result.stdout
    loaded = load_checkpoint(shipped / 'advit_relevance.safetensors')
    assert loaded.meta['method'] == 'advit_relevance' and loaded.meta['teacher'] == 'teacher.safetensors'
    assert loaded.meta['relevance_target'] == TrainConfig().relevance_target == 'rollout_last'
    shipped_evaluation = json.loads((shipped / 'advit_relevance.eval.json').read_text())
    assert shipped_evaluation['checkpoint'].endswith('advit_relevance.safetensors')  # the fp16 file's own figures
    assert (shipped / 'advit_relevance.probe.npz').is_file() and (shipped / 'advit_relevance.predictions.npz').is_file()
    assert sorted(p.name for p in (shipped / 'seeds' / 'seed1').iterdir()) == ['advit_relevance.eval.json', 'seed.json']
    card = (shipped / 'README.md').read_text()
    table1 = card.split('## Table 1')[1].split('\n## ')[0]
    row = next(line for line in table1.splitlines() if line.startswith('| advit_relevance |'))
    assert f"| {top1(shipped / 'advit_relevance.eval.json'):.2f} |" in row and row.endswith('| yes |')
    assert '`advit_relevance` joined the bundle later' in table1
    section = card.split(SEEDS_HEADING)[1].split('\n## ')[0]
    assert '- seed 1: ' in section and '`advit_relevance` alone in' in section
    assert next(line for line in section.splitlines() if line.startswith('| advit_relevance |')).split('|')[2].strip() == '0,1'
    again = subprocess.run(['bash', str(script), '0'], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "it has advit_relevance" in again.stderr


def test_further_seeds_replay_the_recipe_and_join_tables_1_and_2_by_their_evaluations(bundle, tmp_path, cifar_archive):
    """scripts/train_seeds.sh 1 2 at tiny scale on the bundle's shipped teacher: each seed's students trained
    together with --seed N, only their evaluations added to the bundle (seeds/seed<N>/NAME.eval.json, no
    weights), with the students' settings the bundle recorded; the card's Tables 1 and 2 over seeds given as
    mean and standard deviation over the three seeds, checked against the files; the bundle's own seed, a
    bundle without its recipe, and unfinished or mixed runs refused in words."""
    runs_dir, out, _ = bundle
    shipped = tmp_path / 'checkpoints'
    shutil.copytree(out, shipped)
    runs = tmp_path / 'seeds'
    extra = ['--subset', '128', '--val-size', '64', '--test-subset', '64', '--batch-size', '64',
             '--device', 'cpu', '--log-every', '1', *tiny_flags()]
    env = dict(os.environ, OUT=str(shipped), RUNS=str(runs), DATA=str(cifar_archive), PYTHON=sys.executable,
               EXTRA=' '.join(extra))
    script = REPO / 'scripts' / 'train_seeds.sh'
    refused = subprocess.run(['bash', str(script), '0'], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "seed 0 is the bundle's own and it has vit" in refused.stderr
    assert not runs.exists()
    # The seeds replay the students' settings the bundle recorded (advit bundle wrote them from their configs),
    # whatever the presets say now: a learning rate set in the record reaches every seed's students.
    recipe_path = shipped / 'students.recipe.json'
    recipe = json.loads(recipe_path.read_text())
    assert "`students.recipe.json` holds the students' shared settings and the number of steps they trained" in \
        (shipped / 'README.md').read_text()
    for method in STUDENTS:
        config = json.loads((runs_dir / method / 'config.json').read_text())
        trained = json.loads((runs_dir / method / 'status.json').read_text())['step']
        assert recipe == dict({key: value for key, value in config.items() if key not in NOT_RECIPE}, steps=trained)
    recipe_path.unlink()
    refused = subprocess.run(['bash', str(script), '1'], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and 'students.recipe.json not found' in refused.stderr and not runs.exists()
    recipe_path.write_text(json.dumps(dict(recipe, lr=1.234e-3)))
    result = subprocess.run(['bash', str(script), '1', '2'], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for seed in (1, 2):
        arguments = shlex.split((runs / 'commands.tsv').read_text().splitlines()[seed - 1].split('\t')[2])
        assert arguments[arguments.index('--seed') + 1] == str(seed)
        assert arguments[arguments.index('--teacher') + 1] == str(shipped / 'teacher.safetensors')
        for method in STUDENTS:
            config = json.loads((runs / f'seed{seed}' / method / 'config.json').read_text())
            assert config['lr'] == 1.234e-3 and config['steps'] == recipe['steps']  # no --steps given: the record's
        folder = shipped / 'seeds' / f'seed{seed}'
        assert sorted(path.name for path in folder.iterdir()) == sorted([f'{name}.eval.json' for name in STUDENTS] + ['seed.json'])
    assert not list((shipped / 'seeds').rglob('*.safetensors'))

    card = (shipped / 'README.md').read_text()
    section = card.split(SEEDS_HEADING)[1].split('\n## ')[0]
    lines = [line for line in section.splitlines() if line.startswith('|')]
    titles = [cell.strip() for cell in lines[0].strip('|').split('|')]
    for name in STUDENTS:
        files = [shipped / f'{name}.eval.json'] + [shipped / 'seeds' / f'seed{seed}' / f'{name}.eval.json'
                                                   for seed in (1, 2)]
        values = [top1(path) for path in files]
        row = next(line for line in lines if line.startswith(f'| {name} |'))
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        at = titles.index('test top-1 (%)')
        assert cells[titles.index('seeds')] == '0,1,2' and titles[at + 1] == '± std'
        assert cells[at:at + 2] == [f'{np.mean(values):.2f}', f'{np.std(values, ddof=1):.2f}']
    assert '- `advit_l1` - `deit_hard`: ' in section and ('exceeds the spread' in section or 'within the spread' in section)
    # Table 2 over seeds: the pair of the card's Table 2 (DeiT and the best ADViT student on validation), per class.
    best = re.search(r'best ADViT student \(`(\w+)`', card.split('## Table 2: per class')[1]).group(1)
    assert f'the best ADViT student (`{best}`, chosen on validation)' in section
    classes = json.loads((shipped / 'deit_hard.eval.json').read_text())['per_class']
    for name in classes:
        scores = [json.loads(path.read_text())['per_class'][name] for path in
                  [shipped / f'{best}.eval.json'] + [shipped / 'seeds' / f'seed{seed}' / f'{best}.eval.json' for seed in (1, 2)]]
        scores = [score for score in scores if score is not None]  # None: no test image of the class in a subset
        row = next(line for line in section.splitlines() if line.startswith(f'| {name} |'))
        assert [cell.strip() for cell in row.strip('|').split('|')][3] == (f'{np.mean(scores):.2f}' if scores else '–')

    # Refused: a seed run folder whose students are not finished; the card is left as it was.
    unfinished = tmp_path / 'unfinished'
    shutil.copytree(runs / 'seed1', unfinished)
    (unfinished / 'vit' / 'status.json').write_text(json.dumps({'state': 'running'}))
    assert main(['seeds', str(unfinished), '--card', str(shipped)]) == 2
    assert (shipped / 'README.md').read_text() == card


def test_a_second_start_leaves_a_bundle_in_training_to_the_process_that_holds_it(tmp_path, cifar_archive):
    """The long bundle is started in the first minute of every session: a start while it still trains
    (its RUNS/.lock held) must say so and leave it alone, not train a second copy beside it."""
    runs = tmp_path / 'runs'
    runs.mkdir()
    with open(runs / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result, _ = run_script(runs, tmp_path / 'out', cifar_archive, BUNDLE='long-bundle')
    assert 'being trained by another process' in result.stdout
    assert sorted(path.name for path in runs.iterdir()) == ['.lock'], 'nothing trained, nothing written'


def test_the_long_bundle_trains_its_five_students_and_records_each_sitting(tmp_path, cifar_archive):
    runs, out = tmp_path / 'runs', tmp_path / 'checkpoints'
    result, _ = run_script(runs, out, cifar_archive, BUNDLE='long-bundle')
    assert '--preset long-bundle-teacher' in result.stdout and '--time-budget' not in result.stdout
    trained = {path.name for path in runs.iterdir() if (path / 'status.json').is_file()}
    assert trained == {TEACHER, 'vit', 'deit_hard', 'advit_l1', 'advit_kl', 'advit_relevance'}
    for name in trained:
        [sitting] = read_sessions(runs / name)
        assert sitting['machine'] == machine() and (sitting['first_step'], sitting['last_step']) == (0, 2)
    card = (out / 'README.md').read_text()
    assert (out / f'{TEACHER}.safetensors').is_file() and "Each run's sittings" in card
    assert f'| {TEACHER} | 1 | {machine()} |' in card and '| 0-2 |' in card, 'the card names each sitting'
    # The quick bundle it replaces (kept inside the shipped one, EARLIER's default) is kept whole beside it, said in its card.
    assert (out / 'quick' / 'README.md').read_bytes() == (QUICK_BUNDLE / 'README.md').read_bytes()
    assert '## History: the bundle before this one' in card
    # Its recipe's goals, and the short runs that chose its teacher with the reasoning beside them.
    assert 'Goals set for this bundle (recipe `long-bundle`)' in card and 'at least 88%' in card
    assert '`benchmarks/results/long-bundle-probes-cpu.md`' in card and '| 1800 steps |' in card


def test_the_students_wait_for_a_teacher_stopped_short(tmp_path, cifar_archive):
    """A session's end cancels the long teacher (SIGTERM saves its last checkpoint and `advit train` exits cleanly):
    the script must not go on to teach students from it, and says so."""
    runs = tmp_path / 'runs'
    (runs / TEACHER).mkdir(parents=True)
    (runs / TEACHER / 'status.json').write_text(json.dumps({'state': 'cancelled', 'step': 1}))
    (runs / TEACHER / 'last.safetensors').write_bytes(b'')
    # `advit train` as a cancelled run leaves it: it exits 0 and the teacher's status still says cancelled.
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\n[ "$1" = "-m" ] && exit 0\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, RUNS=str(runs), DATA=str(cifar_archive), PYTHON=str(python), BUNDLE='long-bundle')
    result = subprocess.run(['bash', str(SCRIPT), str(tmp_path / 'out')], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 3 and 'teacher not finished' in result.stdout, result.stdout[-2000:]
    assert not any((runs / name).exists() for name in STUDENTS), 'no student started from an unfinished teacher'
