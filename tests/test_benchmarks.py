"""The benchmark scripts run through at tiny scale, so that the GPU machine's scarce minutes never
meet a broken script: every ratio and the loss check come out, and the two routes agree."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_capture_step_reports_every_ratio_and_an_agreeing_loss_check(tmp_path):
    result = subprocess.run(
        [sys.executable, 'benchmarks/capture_step.py', '--device', 'cpu', '--pair', 'cifar32', '--batch-size', '2',
         '--repeats', '1', '--warmup', '0', '--json', str(tmp_path / 'step.json')],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'step.json').read_text())
    assert set(report['ratios']) == {'ours/deit', 'ours_kl/deit', 'ours/full', 'forward_capture/forward'}
    assert report['loss_check']['ok'] and report['loss_check']['grad_rel_diff'] < 1e-4
    for name in ('deit', 'ours', 'ours_kl', 'full'):
        assert report['variants'][name]['mfu'] > 0, name
    assert not report['variants']['full']['fused_attn'] and report['variants']['ours']['fused_attn']
    assert 'ours/deit' in result.stdout and 'loss check' in result.stdout


def test_gpu_bench_script_parses():
    assert subprocess.run(['bash', '-n', 'scripts/gpu_bench.sh'], cwd=REPO).returncode == 0


@pytest.mark.slow
def test_cpu_train_reports_every_ratio(tmp_path, cifar_archive, cifar):
    """benchmarks/cpu_train.py end to end at tiny scale (no --compile: minutes of compiling on 2 cores)."""
    result = subprocess.run(
        [sys.executable, 'benchmarks/cpu_train.py', '--data', str(cifar_archive), '--batch-size', '32', '--steps', '12',
         '--group', 'vit,advit_l1', '--group-steps', '10', '--parts', 'bare,dtype,eval,group',
         '--json', str(tmp_path / 'cpu.json')], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'cpu.json').read_text())
    for ratio in ('ours_over_bare', 'train_bf16_over_fp32', 'group_over_separate'):
        assert report[ratio] > 0, ratio
    assert report['group_methods'] == ['vit', 'advit_l1'] and set(report['separate_images_per_s']) == {'vit', 'advit_l1'}
    assert all(set(times) == {'bf16', 'fp32'} for key, times in report.items() if key.startswith('one_image_'))
    assert 'group / separate' in result.stdout
