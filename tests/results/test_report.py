"""advit report: Table 1 with mean and spread over seeds, Table 2 per class, from real tiny runs."""
from __future__ import annotations

import csv
import json
import statistics

import pytest

from advit.cli import main
from advit.results.paper import PAPER_TOP1
from advit.results.report import ReportError, load_run, table1
from conftest import tiny_flags

# Tests that train runs first (their fixtures) are marked slow: `make test`; the rest run in `make check`.


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_flags, teacher_checkpoint):
    folder = tmp_path_factory.mktemp('runs')
    for name, method, seed, lr in (('vit-0', 'vit', 0, 1e-3), ('vit-1', 'vit', 1, 1e-3), ('deit-0', 'deit_hard', 0, 1e-3),
                                   ('vit-lr', 'vit', 0, 5e-3)):
        teacher = [] if method == 'vit' else ['--teacher', str(teacher_checkpoint)]
        assert main(['train', '--method', method, '--seed', str(seed), '--lr', str(lr), '--steps', '2',
                     '--out', str(folder / name), *teacher, *data_flags, *tiny_flags()]) == 0
    return folder


def evaluation(run) -> dict:
    return json.loads((run / 'best.eval.json').read_text())


@pytest.mark.slow
def test_table1_mean_and_spread_over_seeds_match_the_runs(runs, tmp_path, capsys):
    assert main(['report', *(str(runs / n) for n in ('vit-0', 'vit-1', 'deit-0')), '--out', str(tmp_path),
                 '--compare', str(runs / 'vit-0'), str(runs / 'deit-0')]) == 0
    rows = {row['method']: row for row in csv.DictReader(open(tmp_path / 'table1.csv'))}
    scores = [evaluation(runs / n)['top1'] for n in ('vit-0', 'vit-1')]
    assert scores[0] != scores[1], 'two seeds should differ for the spread to mean something'
    assert float(rows['vit']['top1_mean']) == pytest.approx(statistics.fmean(scores))
    assert float(rows['vit']['top1_std']) == pytest.approx(statistics.stdev(scores))
    assert rows['vit']['seeds'] == '0,1' and rows['vit']['family'] == 'ViT' and rows['vit']['loss'] == 'CE'
    assert float(rows['deit_hard']['top1_mean']) == pytest.approx(evaluation(runs / 'deit-0')['top1'])
    assert float(rows['deit_hard']['top1_std']) == 0.0 and rows['deit_hard']['loss'] == 'CE + hard KD'
    assert 'depth=2' in rows['vit']['model']
    assert '| ViT |' in capsys.readouterr().out

    per_class = list(csv.DictReader(open(tmp_path / 'table2.csv')))
    a, b = evaluation(runs / 'vit-0')['per_class'], evaluation(runs / 'deit-0')['per_class']
    assert [row['class'] for row in per_class] == list(a)
    for row in per_class:
        assert float(row['a']) == pytest.approx(a[row['class']]) and float(row['b']) == pytest.approx(b[row['class']])
        assert float(row['b_minus_a']) == pytest.approx(b[row['class']] - a[row['class']])
    assert (tmp_path / 'per_class.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| airplane |' in (tmp_path / 'table2.md').read_text()


@pytest.mark.slow
def test_runs_that_differ_in_more_than_the_seed_are_their_own_rows(runs, tmp_path):
    """vit-0 and vit-1 are seed repeats; vit-lr has another learning rate: never averaged with them."""
    assert main(['report', *(str(runs / n) for n in ('vit-0', 'vit-1', 'vit-lr')), '--out', str(tmp_path)]) == 0
    rows = sorted(csv.DictReader(open(tmp_path / 'table1.csv')), key=lambda row: row['setting'])
    assert [(row['method'], row['seeds'], row['setting']) for row in rows] == \
        [('vit', '0,1', 'lr=0.001'), ('vit', '0', 'lr=0.005')]
    scores = {n: evaluation(runs / n)['top1'] for n in ('vit-0', 'vit-1', 'vit-lr')}
    assert float(rows[0]['top1_mean']) == pytest.approx((scores['vit-0'] + scores['vit-1']) / 2)
    assert float(rows[1]['top1_mean']) == pytest.approx(scores['vit-lr']) and float(rows[1]['top1_std']) == 0.0
    assert '| lr=0.005 |' in (tmp_path / 'table1.md').read_text()


@pytest.mark.slow
def test_a_single_run_has_no_spread(runs):
    rows = table1([load_run(runs / 'vit-0')])
    assert rows[0]['params_m'] > 0 and rows[0]['top1_std'] == 0.0


def test_a_folder_without_an_evaluated_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(ReportError, match='no evaluated best checkpoint'):
        load_run(tmp_path)
    assert main(['report', str(tmp_path), '--out', str(tmp_path / 'out')]) == 2
    assert 'no evaluated best checkpoint' in capsys.readouterr().err


@pytest.mark.slow
def test_the_papers_numbers_come_labelled_with_their_setting(runs, tmp_path):
    assert main(['report', str(runs / 'vit-0'), '--out', str(tmp_path), '--paper']) == 0
    rows = list(csv.DictReader(open(tmp_path / 'table1.csv')))
    paper = [row for row in rows if row['setting'].startswith('paper: CIFAR-10 at 224')]
    assert len(paper) == sum(len(scores) for scores in PAPER_TOP1.values())
    l1_tiny = next(row for row in paper if row['model'] == 'ViT-Tiny' and row['method'] == 'advit_l1')
    assert float(l1_tiny['top1_mean']) == PAPER_TOP1['ViT-Tiny']['advit_l1']
