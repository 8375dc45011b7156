"""Training through the CLI on the real CIFAR-10 archive: every method, resume after a kill, torchrun, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from advit.core.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from advit.cli import main
from advit.core.losses import METHODS, parse_method
from advit.core.machine import machine
from advit.training.run_folder import AVERAGE_PREFIX, RECORD_KEYS, read_sessions, write_config
from advit.core.weights import model_weights, read_tensors, train_state
from advit.training.train import TrainConfig, lr_at
from conftest import REPO, tiny_flags

pytestmark = pytest.mark.slow  # trains real runs, many in subprocesses: `make test`, not `make check`


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def advit_process(*args: str, **kwargs) -> subprocess.Popen:
    """``python -m advit ...`` as a real process in its own session (so a kill takes its children)."""
    return subprocess.Popen([sys.executable, '-m', 'advit', *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


@pytest.mark.parametrize('method', METHODS)
def test_every_method_trains_two_steps(method, tmp_path, data_flags, teacher_checkpoint):
    out = tmp_path / 'run'
    teacher = [] if method == 'vit' else ['--teacher', str(teacher_checkpoint)]
    assert main(['train', '--method', method, '--steps', '2', '--out', str(out), *teacher, *data_flags,
                 *tiny_flags()]) == 0
    lines = metrics(out)
    train_lines = [line for line in lines if line['event'] == 'train']
    assert [line['step'] for line in train_lines] == [1, 2]
    parsed = parse_method(method)
    for line in train_lines:
        # Two steps from a random init on 10 classes: about ln 10; each step's lr from the schedule at
        # the progress before it (0 at the first: the warm-up starts there).
        assert 1.5 < line['ce'] < 4.0 and line['images_per_s'] > 0
        assert line['lr'] == pytest.approx(lr_at((line['step'] - 1) / 2, TrainConfig()))
        assert ('kd' in line) == (parsed.logit is not None)
        assert ('attn' in line) == (parsed.attention is not None)
    assert [line['step'] for line in lines if line['event'] == 'eval'] == [2]
    loaded = load_checkpoint(out / 'best.safetensors')
    assert loaded.meta['method'] == method and loaded.meta['step'] == 2
    assert loaded.meta['classes'][0] == 'airplane' and len(loaded.meta['classes']) == 10
    assert json.loads((out / 'best.eval.json').read_text())['count'] == 128
    config = json.loads((out / 'config.json').read_text())
    assert config['method'] == method and config['steps'] == 2


def test_deit_with_distillation_token_and_eval_cli(tmp_path, data_flags, teacher_checkpoint, cifar_archive, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--method', 'deit_hard', '--model', 'deit_tiny_distilled_patch4_32', '--steps', '2',
                 '--teacher', str(teacher_checkpoint), '--out', str(out), *data_flags, *tiny_flags()]) == 0
    checkpoint = out / 'best.safetensors'
    assert 'head_dist.weight' in load_checkpoint(checkpoint).model.state_dict()
    capsys.readouterr()
    # The run's own evaluation (128 test images) is not replaced by a look at fewer: refused, the file kept.
    kept = (out / 'best.eval.json').read_bytes()
    assert main(['eval', str(checkpoint), '--data', str(cifar_archive), '--subset', '100']) == 2
    assert 'holds an evaluation on 128 test images' in capsys.readouterr().err
    assert (out / 'best.eval.json').read_bytes() == kept
    assert main(['eval', str(checkpoint), '--data', str(cifar_archive), '--subset', '200']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['count'] == 200
    saved = json.loads((out / 'best.eval.json').read_text())
    assert saved['top1'] == printed['top1'] and len(saved['confusion']) == 10


def test_time_budget_ends_the_run(tmp_path, data_flags):
    out = tmp_path / 'run'
    started = time.time()
    assert main(['train', '--time-budget', '3', '--out', str(out), *data_flags, '--log-every', '5',
                 *tiny_flags()]) == 0
    assert time.time() - started < 60
    steps = [line['step'] for line in metrics(out) if line['event'] == 'train']
    assert steps and steps[-1] >= 2
    assert read_metadata(out / 'last.safetensors')['progress']['elapsed'] >= 3


def test_strong_recipe_with_mixup_and_cutmix_trains(tmp_path, data_flags, teacher_checkpoint, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--method', 'deit_hard+advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '3',
                 '--recipe', 'cifar32_strong', '--mixup', '0.8', '--cutmix', '1.0', '--label-smoothing', '0.1',
                 '--out', str(out), *data_flags, *tiny_flags()]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert [config[key] for key in ('recipe', 'mixup', 'cutmix', 'mix_prob')] == ['cifar32_strong', 0.8, 1.0, 1.0]
    train_lines = [line for line in metrics(out) if line['event'] == 'train']
    assert [line['step'] for line in train_lines] == [1, 2, 3]
    assert all(1.5 < line['ce'] < 4.0 and line['kd'] > 0 and line['attn'] > 0 for line in train_lines)
    loaded = load_checkpoint(out / 'best.safetensors')
    assert loaded.meta['recipe'] == 'cifar32_strong' and loaded.meta['step'] == 3
    # The same run unmixed (same seed: same weights, batch and augmentation, so without mixing the same
    # loss to the bit) has another first loss: the mixing reaches the loss. Near ln 10 at initialisation.
    plain = tmp_path / 'plain'
    assert main(['train', '--method', 'deit_hard+advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '1',
                 '--recipe', 'cifar32_strong', '--label-smoothing', '0.1', '--out', str(plain), *data_flags,
                 *tiny_flags()]) == 0
    assert abs(metrics(plain)[0]['ce'] - train_lines[0]['ce']) > 1e-5
    _assert_refused(['train', '--mix-prob', '1.5', '--mixup', '0.8', '--steps', '1', '--out', str(tmp_path / 'bad'),
                     *data_flags, *tiny_flags()], 'mix_prob must be between 0 and 1, got 1.5', capsys, tmp_path / 'bad')
    _assert_refused(['train', '--cutmix', '-1', '--steps', '1', '--out', str(tmp_path / 'bad'), *data_flags,
                     *tiny_flags()], 'cutmix must be between 0 and 100, got -1', capsys, tmp_path / 'bad')


def test_runs_of_one_seed_start_from_the_same_weights(tmp_path, data_flags):
    """After one step (learning rate 0 at the start of warmup) the weights are the initial ones."""
    def initial(name: str, seed: int) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        flags = ['--steps', '1', '--seed', str(seed), '--out', str(out), *data_flags, *tiny_flags()]
        assert main(['train', *flags]) == 0
        return load_checkpoint(out / 'best.safetensors').model.state_dict()
    a, b, other = initial('a', 0), initial('b', 0), initial('c', 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['blocks.0.attn.qkv.weight'], other['blocks.0.attn.qkv.weight'])


def test_compiled_run_trains_like_the_eager_one(tmp_path, data_flags, teacher_checkpoint):
    """--compile (inductor, real code generation) with the attention capture inside the graphs: the
    same losses step by step as the eager run of the same seed, and a checkpoint of plain weights."""
    losses = {}
    for name, extra in (('eager', []), ('compiled', ['--compile'])):
        out = tmp_path / name
        assert main(['train', '--method', 'advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '2',
                     '--log-every', '1', '--drop-path', '0', '--out', str(out), *data_flags,
                     *tiny_flags(depth=2), *extra]) == 0
        losses[name] = [(line['ce'], line['attn']) for line in metrics(out) if line['event'] == 'train']
        assert not any(key.startswith('_orig_mod') for key in load_checkpoint(out / 'best.safetensors').model.state_dict())
    assert len(losses['compiled']) == 2
    torch.testing.assert_close(losses['compiled'], losses['eager'], rtol=1e-4, atol=1e-5)


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_fraction=0.1)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.05, cfg) == pytest.approx(5e-4)
    assert lr_at(0.1, cfg) == pytest.approx(1e-3)
    assert lr_at(0.55, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(1.0, cfg) == pytest.approx(1e-5)
    linear = TrainConfig(lr=1e-3, min_lr=0.0, warmup_fraction=0.1, lr_decay='linear')
    assert lr_at(0.05, linear) == pytest.approx(5e-4) and lr_at(0.1, linear) == pytest.approx(1e-3)
    assert [lr_at(p, linear) for p in (0.325, 0.55, 0.775, 1.0)] == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    assert lr_at(0.325, linear) < lr_at(0.325, TrainConfig(lr=1e-3, min_lr=0.0, warmup_fraction=0.1))


def kill_once_saved(process: subprocess.Popen, lasts: list[Path], step: int, timeout: float = 120) -> list[int]:
    """SIGKILL a training process once each of its ``last`` checkpoints holds ``step`` or later; the steps they hold."""
    def saved() -> list[int]:
        return [read_metadata(last)['progress']['step'] for last in lasts]
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if all(last.is_file() for last in lasts) and min(saved()) >= step:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return saved()


def test_killed_run_resumes_from_last(tmp_path, data_flags, teacher_checkpoint):
    out = tmp_path / 'run'
    args = ['train', '--method', 'advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '400',
            '--save-every', '4', '--eval-every', '1000', '--out', str(out), *data_flags, *tiny_flags()]
    last = out / 'last.safetensors'
    [killed_at] = kill_once_saved(advit_process(*args), [last], 8)
    assert 8 <= killed_at < 400, 'the run must be killed in the middle'

    assert main(['train', '--resume', str(out)]) == 0
    assert f'resumed from {last} at step {killed_at}' in (out / 'train.log').read_text()
    steps = [line['step'] for line in metrics(out) if line['event'] == 'train']
    assert steps == list(range(1, 401)), 'each step logged once: none lost, none repeated'
    assert read_metadata(last)['progress']['step'] == 400
    assert load_checkpoint(out / 'best.safetensors').meta['step'] == 400
    first, second = read_sessions(out)  # each sitting, with its machine, steps and wall time
    assert first['first_step'] == 0 and first['last_step'] >= killed_at
    assert (second['first_step'], second['last_step']) == (killed_at, 400)
    assert first['machine'] == second['machine'] == machine() and second['wall_s'] > 0


@pytest.mark.parametrize('attn_path, ema_decay, method', [('fused', '0', 'vit'), ('explicit', '0.99', 'vit'),
                                                           ('fused', '0', 'advit_relevance')])
def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(attn_path, ema_decay, method, tmp_path, data_flags,
                                                             teacher_checkpoint):
    """Killed and resumed, a run with every random stream in use (strong augmentation, mixup and
    CutMix, drop-path) ends with the weights of the same run left alone: bitwise, on either attention path,
    and so does the weights' moving average, where the run keeps one (its selected checkpoint); and so does a
    student taught the teacher's relevance on those mixed targets."""
    teacher = ['--teacher', str(teacher_checkpoint)] if method != 'vit' else []
    common = ['train', '--method', method, *teacher, '--steps', '60', '--save-every', '4', '--eval-every', '1000',
              '--recipe', 'cifar32_strong', '--mixup', '0.8', '--cutmix', '1.0', '--drop-path', '0.2',
              '--attn-path', attn_path, '--ema-decay', ema_decay, *data_flags, *tiny_flags()]
    alone, interrupted = tmp_path / 'alone', tmp_path / 'interrupted'
    assert main([*common, '--out', str(alone)]) == 0
    last = interrupted / 'last.safetensors'
    [killed_at] = kill_once_saved(advit_process(*common, '--out', str(interrupted)), [last], 8)
    assert 8 <= killed_at < 60, 'the run must be killed in the middle'
    assert main(['train', '--resume', str(interrupted)]) == 0
    assert f'at step {killed_at}' in (interrupted / 'train.log').read_text()
    expected = load_checkpoint(alone / 'last.safetensors').model.state_dict()
    resumed = load_checkpoint(last).model.state_dict()
    assert read_metadata(last)['progress']['step'] == 60
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f'{name} differs after the resume at step {killed_at}'
    selected = [load_checkpoint(run / 'best.safetensors').model.state_dict() for run in (alone, interrupted)]
    assert all(torch.equal(selected[0][name], selected[1][name]) for name in selected[0])
    losses = [[line['loss'] for line in metrics(run) if line['event'] == 'train'] for run in (alone, interrupted)]
    assert losses[0] == losses[1], 'every step\'s loss as in the run left alone'


@pytest.mark.parametrize('flag, methods', [('--method', ['deit_hard+advit_kl']), ('--methods', ['deit_hard', 'advit_l2'])],
                         ids=['one-student', 'students-together'])
def test_torchrun_two_processes_on_cpu(flag, methods, tmp_path, data_flags, teacher_checkpoint):
    out = tmp_path / 'ddp'
    torchrun = shutil.which('torchrun') or pytest.fail('torchrun not on PATH')
    result = subprocess.run(
        [torchrun, '--standalone', '--nproc_per_node=2', '-m', 'advit', 'train', flag, ','.join(methods),
         '--teacher', str(teacher_checkpoint), '--steps', '3', '--device', 'cpu', '--out', str(out),
         *data_flags, *tiny_flags()],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [out] if flag == '--method' else [out / method for method in methods]
    for run in runs:
        assert json.loads((run / 'config.json').read_text())['world_size'] == 2
        assert [line['step'] for line in metrics(run) if line['event'] == 'train'] == [1, 2, 3], 'only rank 0 writes'
        loaded = load_checkpoint(run / 'best.safetensors')
        assert not any(key.startswith('module.') for key in loaded.model.state_dict())
    assert result.stdout.count('run folder:') == len(runs)


def test_two_ranks_train_as_one_process_on_the_same_global_batch(tmp_path, data_flags):
    """torchrun with 2 ranks of 32 images and one process of 64: the same batches (each rank its half),
    gradients averaged, losses logged over both ranks. With nothing random in the inputs (recipe
    none, no drop-path) and fp32, every step's loss and the final weights agree."""
    common = ['train', '--method', 'vit', '--steps', '4', '--recipe', 'none', '--drop-path', '0', '--no-amp',
              '--device', 'cpu', *data_flags, *tiny_flags()]
    one, two = tmp_path / 'one', tmp_path / 'two'
    assert main([*common, '--out', str(one)]) == 0
    torchrun = shutil.which('torchrun') or pytest.fail('torchrun not on PATH')
    result = subprocess.run([torchrun, '--standalone', '--nproc_per_node=2', '-m', 'advit', *common, '--out', str(two)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [[line['loss'] for line in metrics(run) if line['event'] == 'train'] for run in (one, two)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], abs=1e-4)
    assert losses[0][-1] != pytest.approx(losses[0][0], abs=1e-3), 'the weights moved: the comparison means something'
    alone, ranks = (load_checkpoint(run / 'last.safetensors').model.state_dict() for run in (one, two))
    for name, tensor in alone.items():
        torch.testing.assert_close(ranks[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_every_setting_is_one_flag_with_the_help_written_beside_its_field():
    """The flags are built from TrainConfig's fields: a new setting is added in one place."""
    from dataclasses import fields
    from advit.cli import build_parser
    parser = build_parser()
    train = next(action for action in parser._actions if action.dest == 'command').choices['train']
    by_dest = {action.dest: action for action in train._actions}
    for setting in fields(TrainConfig):
        action = by_dest[setting.name]
        assert action.help.startswith(setting.metadata['help']) and action.default is None, setting.name
    text = train.format_help()
    assert '(default: ' not in text and '(default 128)' in text and '--no-amp' in text and '--model-arg' in text
    args = parser.parse_args(['train', '--no-amp', '--model-arg', 'depth=2', '--layer-map', '1,3', '--lr', '0.01'])
    assert (args.amp, args.model_args, args.layer_map, args.lr) == (False, [('depth', 2)], [1, 3], 0.01)


def _assert_refused(args: list[str], message: str, capsys, out: Path | None = None) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err
    if out is not None:
        assert not out.exists(), 'a refused run must not leave a run folder behind'


def test_a_teacher_whose_head_was_not_trained_on_the_runs_classes_is_refused(tmp_path, data_flags, capsys):
    """A teacher by timm name gets a fresh head when its weights' head has another size: DeiT would
    distil the argmax of random logits. Only a head trained on the run's 10 classes is accepted."""
    from advit.core.models import create_model
    imagenet_head, cifar_head = tmp_path / 'imagenet.pth', tmp_path / 'cifar.pth'
    torch.save(create_model('vit_tiny_patch4_32', num_classes=1000).state_dict(), imagenet_head)
    torch.save(create_model('vit_tiny_patch4_32', num_classes=10).state_dict(), cifar_head)
    common = ['train', '--method', 'deit_hard', '--steps', '1', *data_flags, *tiny_flags()]
    for teacher, weights, message in (
            ('vit_tiny_patch4_32', imagenet_head, f'the classifier of {imagenet_head} was trained on 1000 classes'),
            ('vit_tiny_patch4_32', None, "the classifier of timm's pretrained weights was trained on no classes"),
            ('vit_base_patch16_224', None, "timm's pretrained weights was trained on 1000 classes")):
        out = tmp_path / f'refused-{teacher}-{weights is not None}'
        flags = ['--teacher-pretrained-file', str(weights)] if weights else []
        assert main([*common, '--teacher', teacher, *flags, '--out', str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and 'the dataset has 10' in error and 'Fine-tune the teacher' in error
    out = tmp_path / 'accepted'
    assert main([*common, '--teacher', 'vit_tiny_patch4_32', '--teacher-pretrained-file', str(cifar_head),
                 '--out', str(out)]) == 0


def test_an_installed_advit_train_finds_its_default_dataset_from_any_folder(tmp_path, data_flags, cifar_archive):
    """No --data: the default is an absolute path (ADVIT_DATA, else the shared archive), not one
    relative to wherever the command runs; when it is missing the message says where it looked."""
    flags = [flag for flag in data_flags if flag not in ('--data', str(cifar_archive))]
    command = [sys.executable, '-m', 'advit', 'train', '--method', 'vit', '--steps', '1', '--out', 'run', *flags,
               *tiny_flags()]
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = dict(os.environ, ADVIT_DATA=str(cifar_archive))
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((elsewhere / 'run' / 'config.json').read_text())['data'] == str(cifar_archive)
    missing = subprocess.run(command, cwd=elsewhere, env=dict(env, ADVIT_DATA=str(tmp_path / 'no.tar.xz')),
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert f'dataset not found: {tmp_path / "no.tar.xz"} (the default' in missing.stderr and 'give --data' in missing.stderr


def test_the_weights_moving_average_is_what_is_evaluated_and_selected(tmp_path, data_flags, capsys):
    """With --ema-decay, the checkpoint evaluated and selected (one evaluation, at the end) is the moving average
    that ``last`` keeps beside the trained weights for a resume, not the trained weights; it trails them."""
    out = tmp_path / 'run'
    assert main(['train', '--method', 'vit', '--steps', '12', '--eval-every', '1000', '--ema-decay', '0.9',
                 '--out', str(out), *data_flags, *tiny_flags()]) == 0
    tensors = read_tensors(out / 'last.safetensors')
    trained, average = model_weights(tensors), {name[len(AVERAGE_PREFIX):]: value for name, value in
                                                 train_state(tensors).items() if name.startswith(AVERAGE_PREFIX)}
    selected = load_checkpoint(out / 'best.safetensors').model.state_dict()
    assert average.keys() == trained.keys() == selected.keys()
    assert all(torch.equal(selected[name], average[name]) for name in selected)
    moved = [name for name in trained
             if trained[name].is_floating_point() and not torch.equal(trained[name], average[name])]
    assert 'head.weight' in moved and len(moved) > len(trained) // 2
    [evaluation] = [line for line in metrics(out) if line['event'] == 'eval']
    assert evaluation['val_top1'] == read_metadata(out / 'best.safetensors')['val_top1']
    # A run without an average cannot be resumed as one that keeps it.
    plain = tmp_path / 'plain'
    assert main(['train', '--method', 'vit', '--steps', '2', '--out', str(plain), *data_flags, *tiny_flags()]) == 0
    config = json.loads((plain / 'config.json').read_text())
    (plain / 'config.json').write_text(json.dumps(dict(config, ema_decay=0.9)))
    (plain / 'status.json').write_text(json.dumps({'state': 'cancelled', 'step': 2}))
    capsys.readouterr()
    assert main(['train', '--resume', str(plain)]) == 2
    refusal = capsys.readouterr().err
    assert 'holds no moving average of the weights: it was saved by a run without --ema-decay' in refusal


def test_bad_inputs_are_refused_clearly(tmp_path, data_flags, cifar_archive, teacher_checkpoint, capsys):
    out = tmp_path / 'run'
    common = ['--steps', '2', '--out', str(out), *tiny_flags()]
    data = data_flags[2:]  # the subset flags, without --data
    missing = tmp_path / 'nowhere.tar.xz'
    _assert_refused(['train', '--data', str(missing), *data, *common], f'dataset not found: {missing}', capsys, out)

    corrupt = tmp_path / 'cifar.tar.xz'
    corrupt.write_bytes(cifar_archive.read_bytes()[:200_000])
    _assert_refused(['train', '--data', str(corrupt), *data, *common], 'cannot read archive', capsys, out)

    garbage = tmp_path / 'teacher.safetensors'
    garbage.write_bytes(os.urandom(2048))
    _assert_refused(['train', '--method', 'advit_l1', '--teacher', str(garbage), *data_flags, *common],
                    'not a readable safetensors file', capsys, out)
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(teacher_checkpoint.read_bytes()[:5000])
    _assert_refused(['train', '--method', 'deit_hard', '--teacher', str(truncated), *data_flags, *common],
                    'cannot load teacher', capsys, out)
    _assert_refused(['train', '--method', 'deit_hard', '--teacher', str(tmp_path / 'gone.safetensors'),
                     *data_flags, *common], 'teacher checkpoint not found', capsys, out)
    _assert_refused(['train', '--method', 'advit_l1', *data_flags, *common], 'needs a teacher', capsys, out)
    _assert_refused(['train', '--model', 'vit_nonexistent_patch4_32', *data_flags, *common], 'unknown model', capsys, out)
    _assert_refused(['train', *data_flags, '--out', str(out)], 'give a run length', capsys, out)
    for share in ('1.5', 'nan', '-0.1'):
        _assert_refused(['train', '--hide-patches', share, *data_flags, *common], 'hide_patches must be', capsys, out)
    with pytest.raises(SystemExit):
        main(['train', '--lr-decay', 'step', *data_flags, *common])
    assert "invalid choice: 'step'" in capsys.readouterr().err
    for decay in ('1', 'nan', '-0.1'):
        _assert_refused(['train', '--ema-decay', decay, *data_flags, *common], 'ema_decay must be a finite number'
                        if decay == 'nan' else 'ema_decay must be between 0 and 0.99999',
                        capsys, out)
    _assert_refused(['train', '--hide-patches', '0.5', '--model', 'resnet10t', *data_flags, *common],
                    "hides patches of a ViT's grid; resnet10t has none", capsys, out)
    _assert_refused(['eval', str(truncated), '--data', str(cifar_archive)], 'not a readable safetensors file', capsys)
    with pytest.raises(SystemExit) as exited:
        main(['train', '--method', 'advit_l3', *data_flags, *common])
    assert exited.value.code == 2


def test_unknown_method_exits_nonzero_from_a_real_process(data_flags):
    process = advit_process('train', '--method', 'advit_l3', *data_flags, '--steps', '1')
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "invalid choice: 'advit_l3'" in err


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_flags, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--steps', '4', '--out', str(out), *data_flags, *tiny_flags()]) == 0
    # Continue the same run from weights whose logits overflow (every learning rate a run takes is one no AdamW
    # diverges with in a few steps): its loss is not finite, and it must stop without saving.
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(out / 'last.safetensors'), framework='pt') as saved:
        tensors, metadata = {key: saved.get_tensor(key) for key in saved.keys()}, saved.metadata()
    tensors['head.weight'] = torch.full_like(tensors['head.weight'], 3e38)  # finite, largest float32 there is
    save_file(tensors, str(out / 'last.safetensors'), metadata=metadata)
    good = (out / 'last.safetensors').read_bytes()
    config = json.loads((out / 'config.json').read_text())
    config.update(steps=40)
    (out / 'config.json').write_text(json.dumps(config))
    assert main(['train', '--resume', str(out)]) == 2
    assert 'loss is not finite' in capsys.readouterr().err
    assert (out / 'last.safetensors').read_bytes() == good
    assert all(torch.isfinite(p).all() for p in load_checkpoint(out / 'last.safetensors').model.parameters())


def test_resume_takes_no_other_flags(tmp_path, capsys):
    _assert_refused(['train', '--resume', str(tmp_path), '--lr', '0.1'], 'give no other flags', capsys)


def test_a_written_config_reads_back_as_the_runs_settings_whatever_write_config_records(tmp_path):
    # Resume reads config.json back; the bookkeeping write_config adds (machines, versions...) must not
    # break that (it once did: every resume failed with "unknown config fields: machines").
    config = TrainConfig(out=str(tmp_path), data='cifar.tar.gz', lr=1e-3)
    write_config(tmp_path, asdict(config), 1, ['vit'])
    written = json.loads((tmp_path / 'config.json').read_text())
    assert set(written) - set(asdict(config)) == RECORD_KEYS
    assert TrainConfig.from_dict(written) == config


def test_paper_preset_without_network_says_how_to_give_weights(tmp_path, data_flags):
    """The hub download path is real; with the hub unreachable (offline here) it must fail clearly."""
    out = tmp_path / 'paper'
    process = advit_process('train', '--preset', 'paper-tiny', '--method', 'vit', '--steps', '1',
                            '--out', str(out), *data_flags, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err[-2000:]
    assert 'cannot fetch pretrained weights of vit_tiny_patch16_224.augreg_in21k_ft_in1k' in err
    assert '--pretrained-file' in err and not out.exists()


@pytest.mark.parametrize('model, kind', [('resnet10t', 'ResNet'), ('cnn_airbench_32', 'CifarConvNet')])
def test_a_cnn_trains_by_cross_entropy_and_teaches_deit(model, kind, tmp_path, data_flags, cifar_archive, capsys):
    cnn = tmp_path / 'cnn'
    assert main(['train', '--method', 'vit', '--model', model, '--drop-path', '0', '--steps', '2', '--out', str(cnn),
                 *data_flags]) == 0
    loaded = load_checkpoint(cnn / 'best.safetensors')
    assert type(loaded.model).__name__ == kind and loaded.meta['image_size'] == 32
    capsys.readouterr()
    # (at least the run's own 128 test images, which a smaller look would replace: advit eval refuses that)
    assert main(['eval', str(cnn / 'best.safetensors'), '--data', str(cifar_archive), '--subset', '160']) == 0
    assert json.loads(capsys.readouterr().out)['count'] == 160  # evaluated at 32x32, the size it trained at

    student = tmp_path / 'deit'
    assert main(['train', '--method', 'deit_hard', '--teacher', str(cnn / 'best.safetensors'), '--steps', '2',
                 '--out', str(student), *data_flags, *tiny_flags()]) == 0
    assert all('kd' in line for line in metrics(student) if line['event'] == 'train')
    assert f'(teacher {kind}, no attention)' in capsys.readouterr().err


def test_attention_distillation_with_a_cnn_teacher_is_refused_before_anything_runs(tmp_path, data_flags, capsys):
    cnn = tmp_path / 'cnn'
    assert main(['train', '--method', 'vit', '--model', 'resnet10t', '--steps', '1', '--out', str(cnn),
                 *data_flags]) == 0
    out = tmp_path / 'advit'
    _assert_refused(['train', '--method', 'advit_kl', '--teacher', str(cnn / 'best.safetensors'), '--steps', '2',
                     '--out', str(out), *data_flags, *tiny_flags()], 'needs a ViT teacher, not ResNet', capsys, out)


def test_the_training_core_needs_none_of_the_apps_packages(tmp_path, data_flags, teacher_checkpoint):
    """The GPU machine has torch and timm but no gradio, matplotlib or plotly: `advit train` (here an
    ADViT run) and `advit eval` must run without them (the report's chart imports matplotlib when drawn)."""
    blocked = '''
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('gradio', 'gradio_client', 'matplotlib', 'plotly'):
            raise ModuleNotFoundError(f'no module named {name}', name=name)
sys.meta_path.insert(0, Block())
from advit.cli import main
sys.exit(main(sys.argv[1:]))
'''
    out = tmp_path / 'run'
    for args in (['train', '--method', 'advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '1',
                  '--out', str(out), *data_flags, *tiny_flags()],
                 ['eval', str(out / 'best.safetensors'), '--data', data_flags[1], '--subset', '160']):
        result = subprocess.run([sys.executable, '-c', blocked, *args], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert '"count": 160' in result.stdout and (out / 'best.safetensors').is_file()


def test_students_trained_together_share_batches_and_one_teacher_forward(tmp_path, data_flags, teacher_checkpoint,
                                                                          monkeypatch, capsys):
    """--methods: one folder per student as a single run writes it; the teacher runs once per batch
    for all of them (counted by a hook on the real teacher); a student in the group ends with the
    weights it has when trained alone (the same batches, augmentation and initial weights); the console
    names each student's lines once."""
    import advit.training.train as train_module
    real_load_teacher = train_module.load_teacher
    batch_sizes = []

    def counted_teacher(*args, **kwargs):
        teacher = real_load_teacher(*args, **kwargs)
        teacher.register_forward_hook(lambda module, inputs, output: batch_sizes.append(len(inputs[0])))
        return teacher
    monkeypatch.setattr(train_module, 'load_teacher', counted_teacher)
    flags = ['--steps', '3', '--eval-every', '2', '--drop-path', '0', *data_flags, *tiny_flags()]
    methods = ('vit', 'deit_hard', 'advit_l1')
    assert main(['train', '--methods', ','.join(methods), '--teacher', str(teacher_checkpoint),
                 '--out', str(tmp_path / 'group'), *flags]) == 0
    assert batch_sizes.count(64) == 3, 'one teacher forward per training batch, not one per student'
    console = capsys.readouterr().err
    for method in methods:
        assert f" {method}: {TrainConfig().model} (" in console and f'{method}: {method}:' not in console
    for method in methods:
        run = tmp_path / 'group' / method
        config = json.loads((run / 'config.json').read_text())
        assert config['method'] == method and config['group'] == list(methods)
        assert config['teacher'] == (None if method == 'vit' else str(teacher_checkpoint))
        assert [line['step'] for line in metrics(run) if line['event'] == 'train'] == [1, 2, 3]
        assert json.loads((run / 'status.json').read_text())['state'] == 'finished'
        assert load_checkpoint(run / 'best.safetensors').meta['method'] == method

    assert main(['train', '--method', 'vit', '--out', str(tmp_path / 'alone'), *flags]) == 0
    assert f" vit: {TrainConfig().model} (" in (tmp_path / 'alone' / 'train.log').read_text().splitlines()[0]
    alone = load_checkpoint(tmp_path / 'alone' / 'last.safetensors').model.state_dict()
    together = load_checkpoint(tmp_path / 'group' / 'vit' / 'last.safetensors').model.state_dict()
    assert all(torch.equal(alone[k], together[k]) for k in alone)


def test_selection_uses_held_out_training_images_and_the_test_set_once(tmp_path, data_flags, teacher_checkpoint):
    out = tmp_path / 'run'
    assert main(['train', '--method', 'advit_l1', '--teacher', str(teacher_checkpoint), '--steps', '6',
                 '--eval-every', '2', '--out', str(out), *data_flags, *tiny_flags()]) == 0
    lines = metrics(out)
    evals = [line for line in lines if line['event'] == 'eval']
    assert [line['step'] for line in evals] == [2, 4, 6] and not any('test_top1' in line for line in lines)
    meta = load_checkpoint(out / 'best.safetensors').meta
    best = max(evals, key=lambda line: line['val_top1'])  # the first of equal scores is kept
    assert meta['val_top1'] == best['val_top1'] and meta['step'] == best['step'] and meta['val_size'] == 128
    evaluation = json.loads((out / 'best.eval.json').read_text())  # the one record of the test figures
    assert 'test_top1' not in meta and evaluation['step'] == best['step'] and 0 <= evaluation['top1'] <= 100
    assert evaluation['split'] == 'test' and evaluation['selected_on'] == 'validation'

    # The probe: per-layer gaps to the teacher and maps on held-out images, at every evaluation.
    from advit.measure.probe import GAP_KINDS, MAP_IMAGES
    from advit.measure.probe_file import read_probe
    probe = read_probe(out / 'attention_probe.npz')
    assert list(probe['steps']) == [2, 4, 6] and probe['gaps'].shape == (3, len(GAP_KINDS), 2)
    assert probe['student_maps'].shape == (3, MAP_IMAGES, 2, 64) and probe['teacher_maps'].shape == (MAP_IMAGES, 2, 64)
    assert (probe['gaps'] > 0).all() and list(probe['teacher_layers']) == [1, 3]
    np_sums = probe['student_maps'].astype('float32').sum(-1)
    assert abs(np_sums - 1).max() < 1e-2  # distributions over the patches (float16 on disk)
    assert evals[-1]['attention_gap']['l1'] == pytest.approx(probe['gaps'][-1, 0].tolist())


def test_bf16_and_fp32_training_follow_each_other(tmp_path, data_flags):
    """bf16 changes speed, not results: over 12 steps the cross-entropy of a bf16 run stays within
    0.02 (absolute, about 1% of a loss near 2.3) of the fp32 run of the same seed."""
    from advit.core.precision import native_bf16
    if not native_bf16(torch.device('cpu')):
        pytest.skip('this CPU has no native bf16: autocast stays off, nothing to compare')
    losses = {}
    for name, extra in (('bf16', []), ('fp32', ['--no-amp'])):
        out = tmp_path / name
        assert main(['train', '--steps', '12', '--lr', '2e-3', '--warmup-fraction', '0.1', '--drop-path', '0',
                     '--out', str(out), *data_flags, *tiny_flags(), *extra]) == 0
        losses[name] = [line['ce'] for line in metrics(out) if line['event'] == 'train']
        assert ('bf16' in (out / 'train.log').read_text().splitlines()[0]) == (name == 'bf16')
    assert len(losses['bf16']) == 12
    assert losses['bf16'][-1] < losses['bf16'][0] - 0.05, 'the runs must learn for the comparison to mean anything'
    assert max(abs(a - b) for a, b in zip(losses['bf16'], losses['fp32'])) < 0.02


def test_a_killed_group_resumes_every_student_from_its_last_checkpoint(tmp_path, data_flags, teacher_checkpoint):
    out = tmp_path / 'group'
    runs = [out / 'vit', out / 'advit_l1']
    process = advit_process('train', '--methods', 'vit,advit_l1', '--teacher', str(teacher_checkpoint), '--steps',
                            '200', '--save-every', '4', '--eval-every', '1000', '--out', str(out), *data_flags,
                            *tiny_flags())
    steps = set(kill_once_saved(process, [run / 'last.safetensors' for run in runs], 8))
    assert len(steps) == 1 and 8 <= min(steps) < 200, 'killed in the middle, both students saved at one step'

    assert main(['train', '--resume', *map(str, runs)]) == 0
    for run in runs:
        assert [line['step'] for line in metrics(run) if line['event'] == 'train'] == list(range(1, 201))
        assert json.loads((run / 'status.json').read_text())['state'] == 'finished'


def test_groups_that_cannot_share_batches_are_refused(tmp_path, data_flags, teacher_checkpoint, capsys):
    with pytest.raises(SystemExit):  # argparse refuses it, with exit status 2
        main(['train', '--methods', 'vit,vit', '--steps', '1', '--out', str(tmp_path / 'g'), *data_flags])
    assert 'named twice' in capsys.readouterr().err and not (tmp_path / 'g').exists()
    _assert_refused(['train', '--methods', 'vit,deit_hard', '--method', 'vit', '--steps', '1', '--out',
                     str(tmp_path / 'g'), *data_flags], '--method or --methods', capsys, tmp_path / 'g')
    _assert_refused(['train', '--methods', 'vit,advit_l1', '--steps', '1', '--out', str(tmp_path / 'g'),
                     *data_flags], 'needs a teacher', capsys, tmp_path / 'g')


def test_a_student_fine_tuned_from_a_checkpoint_keeps_its_head_only_for_the_same_classes(tmp_path, data_flags):
    """From the shipped ViT student (64% on CIFAR-10's test set), a few steps of ADViT-L1 at a small learning rate
    start where it is, not at chance, and the run's first line says the head was kept; from a copy whose head was
    trained on ten other classes, the head is re-initialised, and the first line says so."""
    shipped = REPO / 'checkpoints' / 'vit.safetensors'
    common = ['train', '--method', 'advit_l1', '--teacher', str(REPO / 'checkpoints' / 'teacher.safetensors'),
              '--model', read_metadata(shipped)['model'], '--steps', '3', '--lr', '1e-5', '--warmup-fraction', '0',
              '--eval-every', '3', '--faithfulness-images', '0', *data_flags]
    kept = tmp_path / 'kept'
    assert main([*common, '--pretrained-file', str(shipped), '--out', str(kept)]) == 0
    assert 'it starts from vit.safetensors, its head kept (trained on the run\'s 10 classes)' in \
        (kept / 'train.log').read_text()
    first = next(line for line in metrics(kept) if line['event'] == 'eval')
    assert first['val_top1'] > 40, 'the fine-tuned student starts from the checkpoint, not at chance (10%)'
    other = tmp_path / 'other.safetensors'
    loaded = load_checkpoint(shipped)
    save_checkpoint(other, loaded.model, dict(loaded.meta, classes=[f'class {i}' for i in range(10)]))
    fresh = tmp_path / 'fresh'
    assert main([*common, '--pretrained-file', str(other), '--out', str(fresh)]) == 0
    assert 'its head re-initialised (the file\'s was trained on 10 other classes)' in (fresh / 'train.log').read_text()
    assert next(line for line in metrics(fresh) if line['event'] == 'eval')['val_top1'] < first['val_top1'] - 15
