"""Fused and explicit attention: chosen by measurement, and the same maps, losses and gradients on both."""
from __future__ import annotations

import inspect

import pytest
import timm
import torch

import advit.core.attention_path as attention_path
from advit.core.attention_path import attention_path_of, fastest_attention_path, set_attention_path, use_attention_path
from advit.core.alignment import fuse_heads
from advit.core.capture import ClsAttentionCapture
from advit.core.checkpoint import load_checkpoint, read_metadata
from advit.core.precision import native_bf16
from advit.core.losses import ATTENTION_METHODS, DistillationLoss, TeacherForward
from advit.core.models import model_normalization
from advit.training.train import TrainConfig, train
from conftest import TINY, tiny_vit

pytestmark = pytest.mark.slow  # trains, kills and resumes runs: `make test`, not `make check`

CPU = torch.device('cpu')


def loss_and_grads(path: str, method: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """An ADViT loss of a tiny pair on one batch, the student's maps and its gradients, on one attention path."""
    teacher, student = tiny_vit(0, depth=4, num_heads=4), tiny_vit(1).train()
    for model in (teacher, student):
        set_attention_path(model, path)
    criterion = DistillationLoss(method, student, teacher)
    relevance = 'rollout_last' if criterion.method.target == 'relevance' else None
    teacher_forward = TeacherForward(teacher, model_normalization(student), capture=True, relevance=relevance)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(8) % 10
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), \
            ClsAttentionCapture(student) as capture:
        outputs = student(images)
        loss, terms = criterion(outputs, labels, teacher_forward(images, labels), capture.pop())
    loss.backward()
    with ClsAttentionCapture(student) as capture, torch.no_grad():
        student.eval()(images)
        maps = fuse_heads(capture.pop())
    return loss.detach(), maps, {name: p.grad.clone() for name, p in student.named_parameters()}


DTYPES = [torch.float32] + ([torch.bfloat16] if native_bf16(CPU) else [])


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('method', ATTENTION_METHODS)
def test_both_paths_give_the_same_loss_maps_and_gradients(method, dtype):
    tolerance = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-3)
    fused_loss, fused_maps, fused_grads = loss_and_grads('fused', method, dtype)
    explicit_loss, explicit_maps, explicit_grads = loss_and_grads('explicit', method, dtype)
    torch.testing.assert_close(explicit_loss, fused_loss, **tolerance)
    torch.testing.assert_close(explicit_maps, fused_maps, **tolerance)
    for name, grad in fused_grads.items():
        torch.testing.assert_close(explicit_grads[name], grad, **tolerance, msg=lambda m: f'{name}: {m}')
    # The paths really differ in what they run: the explicit one never calls SDPA.
    student = tiny_vit(1)
    set_attention_path(student, 'explicit')
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        student(torch.randn(1, 3, 32, 32))
        assert calls == []
        set_attention_path(student, 'fused')
        student(torch.randn(1, 3, 32, 32))
        assert len(calls) == TINY['depth']
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def test_paths_are_set_on_every_block_and_auto_measures_the_models_shapes(monkeypatch):
    model = tiny_vit(0, depth=3)
    for path in ('explicit', 'fused'):
        assert use_attention_path(model, path, CPU, batch=4, training=True) == path
        assert [block.attn.fused_attn for block in model.blocks] == [path == 'fused'] * 3
        assert attention_path_of(model) == path
    seen = []
    def measured(*args, **kwargs):
        seen.append(inspect.signature(fastest_attention_path).bind(*args, **kwargs).arguments)
        return 'explicit'
    monkeypatch.setattr(attention_path, 'fastest_attention_path', measured)
    assert use_attention_path(model, 'auto', CPU, batch=16, training=True) == 'explicit'
    # tokens: 64 patches + [CLS]
    assert seen == [dict(device=CPU, batch=16, heads=3, tokens=65, head_dim=16, dtype=torch.float32, backward=True)]
    assert attention_path_of(model) == 'explicit'
    with pytest.raises(ValueError, match='unknown attention path'):
        use_attention_path(model, 'flash', CPU, batch=1, training=False)
    cnn = timm.create_model('resnet10t', num_classes=10)
    assert use_attention_path(cnn, 'auto', CPU, batch=1, training=False) == 'none'


def test_the_measurement_names_a_path_and_keeps_fused_unless_explicit_is_clearly_faster(monkeypatch):
    fastest_attention_path.cache_clear()
    assert fastest_attention_path(CPU, 4, 2, 17, 8, torch.float32, True) in ('fused', 'explicit')
    # Timings faked: a 10% lead is not enough to leave timm's default, a 30% lead is.
    for explicit_share, expected in ((0.9, 'fused'), (0.7, 'explicit')):
        fastest_attention_path.cache_clear()
        ticks = iter(range(10 ** 6))
        clock = {'now': 0.0}

        def perf_counter(share=explicit_share):
            index = next(ticks)
            # Calls come in pairs (start, end): fused first, then explicit, alternated.
            if index % 2 == 0:
                return clock['now']
            clock['now'] += 1.0 if (index // 2) % 2 == 0 else share
            return clock['now']
        monkeypatch.setattr(attention_path.time, 'perf_counter', perf_counter)
        assert fastest_attention_path(CPU, 4, 2, 17, 8, torch.float32, False) == expected
    fastest_attention_path.cache_clear()


def test_a_resumed_auto_run_keeps_the_path_it_measured_and_ends_bitwise_as_the_run_left_alone(
        tmp_path, cifar_archive, cifar, monkeypatch):
    """The run measures 'explicit'; killed at step 5 and resumed on a machine that would measure 'fused',
    it takes up 'explicit' from its last checkpoint and ends with the weights of the run left alone."""
    def config(out: str) -> TrainConfig:
        return TrainConfig(data=str(cifar_archive), subset=256, val_size=128, test_subset=128, batch_size=64,
                           steps=8, save_every=4, eval_every=1000, log_every=1, model_args=dict(TINY), out=out)
    measured = {'path': 'explicit'}
    monkeypatch.setattr(attention_path, 'fastest_attention_path', lambda *args, **kwargs: measured['path'])
    alone = train(config(str(tmp_path / 'alone')))
    assert read_metadata(alone / 'last.safetensors')['progress']['attention_paths']['student'] == 'explicit'
    assert 'attention explicit' in (alone / 'train.log').read_text()

    import advit.training.train as training
    original_step = training.Student.step
    calls = {'n': 0}

    def failing_step(self, *args):
        calls['n'] += 1
        if calls['n'] == 6:
            raise KeyboardInterrupt('killed in the middle')
        return original_step(self, *args)
    monkeypatch.setattr(training.Student, 'step', failing_step)
    interrupted = tmp_path / 'interrupted'
    with pytest.raises(KeyboardInterrupt):
        train(config(str(interrupted)))
    assert read_metadata(interrupted / 'last.safetensors')['progress']['step'] == 4
    monkeypatch.setattr(training.Student, 'step', original_step)
    measured['path'] = 'fused'  # what this "other machine" would measure
    train(config(str(interrupted)), resume=True)
    assert read_metadata(interrupted / 'last.safetensors')['progress']['attention_paths']['student'] == 'explicit'
    expected = load_checkpoint(alone / 'last.safetensors').model.state_dict()
    resumed = load_checkpoint(interrupted / 'last.safetensors').model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f'{name} differs after the resume'
