"""The attention view's numbers are the training loss's numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import advit  # noqa: F401
from advit.core.capture import ClsAttentionCapture
from advit.measure.inspection import GAP_KINDS, inspect_pair, model_input
from advit.core.losses import DistillationLoss
from conftest import REPO, TINY

CLASSES = [f'class{i}' for i in range(10)]


@pytest.fixture
def image() -> Image.Image:
    return Image.open(REPO / 'assets' / 'examples' / 'cat_3000.png').convert('RGB')


def models(teacher_args: dict) -> tuple:
    torch.manual_seed(0)
    student = timm.create_model('vit_tiny_patch4_32', **TINY).eval()
    teacher = timm.create_model('vit_tiny_patch4_32', **teacher_args).eval()
    return teacher, student


@pytest.mark.parametrize('teacher_args', [dict(TINY, depth=4, num_heads=4), dict(TINY, depth=3, patch_size=8)],
                         ids=['deeper-teacher', 'coarser-grid-teacher'])
def test_gaps_equal_the_training_loss_terms(image, teacher_args):
    teacher, student = models(teacher_args)
    meta = {'classes': CLASSES}
    report = inspect_pair(teacher, meta, student, meta, image, 'mean')

    # The loss's attention term of each distance on the same image, as a training step computes it.
    with ClsAttentionCapture(student) as student_capture, ClsAttentionCapture(teacher) as teacher_capture, \
            torch.no_grad():
        student(model_input(image, meta, student))
        teacher(model_input(image, meta, teacher))
        student_maps, teacher_maps = student_capture.pop(), teacher_capture.pop()
    for kind in GAP_KINDS:
        term = DistillationLoss(f'advit_{kind}', student, teacher).attention_term(student_maps, teacher_maps)
        assert term.item() == pytest.approx(float(report.gaps[kind].mean()), abs=1e-6)
    assert report.student_maps.shape == report.teacher_maps.shape == (2, 64) and report.grid == (8, 8)
    np.testing.assert_allclose(report.teacher_maps.sum(-1), 1, rtol=1e-5)
    assert len(report.teacher_layers) == 2


def test_default_gaps_by_hand_from_the_explicit_attention(image):
    """Independent of capture, fusion, alignment and gap code: the explicit N x N attention of each
    model, its [CLS] row renormalised over the patches per head, heads averaged, the teacher's layers
    1 and 3 for a 2-layer student of a 4-layer teacher, and L1, L2 and KL written out."""
    from attention_reference import explicit_cls_attention
    teacher, student = models(dict(TINY, depth=4, num_heads=4))
    meta = {'classes': CLASSES}
    report = inspect_pair(teacher, meta, student, meta, image, 'mean')
    with torch.no_grad():
        s = explicit_cls_attention(student, model_input(image, meta, student))[0].mean(dim=1).double()
        t = explicit_cls_attention(teacher, model_input(image, meta, teacher))[0].mean(dim=1).double()[[1, 3]]
    expected = {'l1': (s - t).abs().sum(-1), 'l2': ((s - t) ** 2).sum(-1), 'kl': (t * (t / s).log()).sum(-1)}
    assert report.teacher_layers == [1, 3]
    for kind in GAP_KINDS:
        np.testing.assert_allclose(report.gaps[kind], expected[kind].numpy(), atol=1e-5, rtol=1e-4)


def test_head_fusion_changes_the_maps(image):
    teacher, student = models(dict(TINY, depth=4, num_heads=4))
    meta = {'classes': CLASSES}
    mean = inspect_pair(teacher, meta, student, meta, image, 'mean')
    top = inspect_pair(teacher, meta, student, meta, image, 'max')
    head = inspect_pair(teacher, meta, student, meta, image, 2)
    assert not np.allclose(mean.student_maps, top.student_maps)
    assert not np.allclose(mean.student_maps, head.student_maps)
    np.testing.assert_allclose(top.student_maps.sum(-1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match='head 3 does not exist'):
        inspect_pair(teacher, meta, student, meta, image, 3)  # the student has 3 heads


def test_top5_and_data(image):
    teacher, student = models(dict(TINY, depth=4, num_heads=4))
    report = inspect_pair(teacher, {'classes': CLASSES}, student, {'classes': CLASSES}, image)
    with torch.no_grad():
        probs = student(model_input(image, {}, student)).softmax(-1)[0]
    expected = {CLASSES[i]: float(p) for p, i in zip(*probs.topk(5))}
    assert list(report.student_top5) == list(expected)
    np.testing.assert_allclose(list(report.student_top5.values()), list(expected.values()), rtol=1e-5)
    data = report.as_dict()
    assert [layer['teacher_layer'] for layer in data['layers']] == [2, 4]  # from 1, as the page's tables count
    assert [layer['layer'] for layer in data['layers']] == [1, 2] and data['settings']['teacher_layers'] == [2, 4]
    assert data['settings']['layer_map'] == 'uniform'
    assert data['layers'][0]['l1'] == pytest.approx(float(report.gaps['l1'][0]))


def test_a_model_producing_nan_is_an_error(image):
    teacher, student = models(dict(TINY, depth=4, num_heads=4))
    with torch.no_grad():
        student.blocks[0].attn.qkv.weight.fill_(float('nan'))
    with pytest.raises(ValueError, match='non-finite'):
        inspect_pair(teacher, {}, student, {}, image)


@pytest.mark.slow  # trains a run first
def test_a_run_is_shown_as_it_was_trained(tmp_path, image, data_flags, teacher_checkpoint):
    """A run trained with a non-default layer map, max head fusion and raw maps records them, and the
    view uses them: its gaps equal an independent computation from the explicit N x N attention."""
    from advit.core.checkpoint import load_checkpoint
    from advit.cli import main
    from advit.app.forms import AttentionRequest
    from advit.app.studio import Studio
    from attention_reference import explicit_cls_attention
    from conftest import tiny_flags
    out = tmp_path / 'runs' / 'mapped'
    assert main(['train', '--method', 'advit_l2', '--teacher', str(teacher_checkpoint), '--steps', '2', '--tau', '2',
                 '--head-fusion', 'max', '--layer-map', '3,0', '--attn-norm', 'raw', '--out', str(out), *data_flags,
                 *tiny_flags()]) == 0
    student = load_checkpoint(out / 'best.safetensors')
    teacher = load_checkpoint(teacher_checkpoint)
    assert {k: student.meta[k] for k in ('head_fusion', 'layer_map', 'attn_norm', 'tau')} == \
        dict(head_fusion='max', layer_map=[3, 0], attn_norm='raw', tau=2.0)

    studio = Studio([teacher_checkpoint.parent], tmp_path / 'runs', teacher_checkpoint)
    names = {Path(e.key).parent.name + '/' + Path(e.key).name: e.name for e in studio.offer.entries()}
    view = studio.attention.view(AttentionRequest(str(REPO / 'assets' / 'examples' / 'cat_3000.png'),
                                                  names['run/best.safetensors'], names['mapped/best.safetensors']))
    assert view.data['settings'] == dict(fusion='max', layer_map='as trained', attn_norm='raw', teacher_layers=[4, 1])
    assert [layer['teacher_layer'] for layer in view.data['layers']] == [4, 1]  # from 1

    def by_hand(loaded) -> torch.Tensor:  # raw rows, max over heads, normalised once
        with torch.no_grad():
            rows = explicit_cls_attention(loaded.model, model_input(image, loaded.meta, loaded.model),
                                          renormalize=False)[0]
        fused = rows.amax(dim=1)
        return fused / fused.sum(-1, keepdim=True)
    student_maps, teacher_maps = by_hand(student), by_hand(teacher)[[3, 0]]  # both on the same 8x8 grid
    expected_l2 = ((student_maps - teacher_maps) ** 2).sum(-1)
    assert [layer['l2'] for layer in view.data['layers']] == pytest.approx(expected_l2.tolist(), abs=1e-5)
    other = studio.attention.view(AttentionRequest(str(REPO / 'assets' / 'examples' / 'cat_3000.png'),
                                                   names['run/best.safetensors'], names['mapped/best.safetensors'],
                                                   'mean'))
    assert other.data['settings']['fusion'] == 'mean' and other.data['layers'][0]['l2'] != view.data['layers'][0]['l2']
