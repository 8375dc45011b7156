"""The benchmark scripts run through at tiny scale, so that the GPU machine's scarce minutes never
meet a broken script: every ratio and the loss check come out, and the two routes agree."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from advit.core.models import create_model, model_image_size
from conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
from measure import matmul_ceiling, utilisation, vit_forward_flops  # noqa: E402  (the benchmarks' shared readings)


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
         '--group', 'vit,advit_l1', '--group-steps', '10', '--parts', 'bare,mfu,teacher,dtype,eval,group,relevance',
         '--relevance-group', 'vit',
         '--json', str(tmp_path / 'cpu.json')], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'cpu.json').read_text())
    for ratio in ('ours_over_bare', 'train_bf16_over_fp32', 'group_over_separate'):
        assert report[ratio] > 0, ratio
    assert report['group_methods'] == ['vit', 'advit_l1'] and set(report['separate_images_per_s']) == {'vit', 'advit_l1'}
    assert all(set(times) == {'bf16', 'fp32'} for key, times in report.items() if key.startswith('one_image_'))
    assert 'group / separate' in result.stdout
    assert report['mfu'] is None or 0 < report['mfu'] <= 1, 'an MFU above 100% is never a result'
    assert set(report['teacher']['levers_over_plain']) == {'patch_drop_0.25', 'batch_256'}
    assert report['teacher']['bare_channels_last_over_contiguous'] > 0
    assert report['relevance_group'] == ['vit', 'advit_relevance']
    assert set(report['relevance_ratios']) == {'group_with_over_l2_instead', 'group_with_over_without',
                                               'relevance_alone_over_l1_alone'}
    assert all(ratio > 0 for ratio in report['relevance_ratios'].values())


def test_an_mfu_above_one_is_refused_as_a_measurement_error_and_the_ceiling_is_a_real_rate():
    assert utilisation(50.0, 100.0) == 0.5
    assert utilisation(116.0, 100.0) is None, 'achieved above the ceiling: the ceiling was mismeasured'
    assert utilisation(0.0, 100.0) is None
    ceiling = matmul_ceiling(64, 64, 64, torch.float32, repeats=3)
    assert 1e6 < ceiling < 1e15, 'FLOP/s of a real matmul on this machine'


@pytest.mark.parametrize('name, args', [
    ('vit_tiny_patch4_32', {}),
    ('deit_tiny_distilled_patch4_32', dict(depth=2)),  # two heads, two prefix tokens
    ('vit_small_patch16_224', dict(img_size=384, depth=2)),  # 577 tokens: attention grows as tokens^2
])
def test_vit_forward_flops_equal_torch_flop_counter(name, args):
    """The shape-derived count equals PyTorch's count of the matmuls actually run (unfused attention,
    whose products FlopCounterMode sees; the CPU's fused attention kernel it does not count)."""
    model = create_model(name, **args).eval()
    for block in model.blocks:
        block.attn.fused_attn = False
    size = model_image_size(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(2, 3, size, size))
    assert counter.get_total_flops() == 2 * vit_forward_flops(model)


@pytest.mark.slow
def test_faithfulness_protocols_benchmark_times_every_protocol(tmp_path, cifar_archive, cifar):
    result = subprocess.run(
        [sys.executable, 'benchmarks/faithfulness_protocols.py', '--data', str(cifar_archive), '--repeats', '1',
         '--images', '16', '--json', str(tmp_path / 'protocols.json')], cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / 'protocols.json').read_text())
    for key in ('app_view_s', 'dataset_s'):
        assert set(report[key]) == {'mean', 'drop', 'blur'} and all(t > 0 for t in report[key].values())
    assert report['dataset_over_mean']['mean'] == 1.0
